"""``[output] pdf`` and the review station: each signed version gets its own Encapsulated PDF, in the
same delivery job as its signed SR, so a viewer that cannot draw an SR shows what was signed."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from medblip_dicom import pdf_report
from medblip_dicom.errors import ReportError
from medblip_dicom.integrations.delivery.loop import Delivery
from medblip_dicom.integrations.review.signing import Reviewer
from medblip_dicom.integrations.review.store import ReviewStore
from medblip_dicom.pixels import dataset_to_image

pypdf = pytest.importorskip("pypdf", reason="pypdf (the dev extra) reads the PDF back")
pytest.importorskip("reportlab", reason="reportlab (the pdf extra) writes the PDF")

ALICE = Reviewer("alice", "Doe^Alice", "Test Hospital")


def _page(document) -> pypdf.PageObject:
    return pypdf.PdfReader(io.BytesIO(bytes(document.EncapsulatedDocument))).pages[0]


def _review_jobs(rs):
    return [j for j in rs.spool.jobs() if j.origin == "review"]


def test_signing_writes_a_verified_pdf_beside_the_signed_sr_and_delivers_both(review_spool, tool):
    from tests.support.dicom import dciodvfy_errors

    tool("dciodvfy")
    rs = review_spool(1)
    store = ReviewStore(rs.root, organization="Test Hospital", pdf=True)
    try:
        signature = store.sign(rs.ai_uids[0], ALICE, "no acute findings, signed")
        (job,) = _review_jobs(rs)
        assert len(job.reports) == 2 and rs.root / job.reports[0] == signature.path
        pdf_path = rs.root / job.reports[1]
        assert not dciodvfy_errors(pdf_path)
        document, sr = pydicom.dcmread(pdf_path), pydicom.dcmread(signature.path)
        assert document.SOPClassUID == pdf_report.ENCAPSULATED_PDF and document.VerificationFlag == "VERIFIED"
        assert (document.SeriesInstanceUID, document.SOPInstanceUID) == pdf_report.pdf_uids(sr)
        assert document.SourceInstanceSequence[0].ReferencedSOPInstanceUID == signature.uid
        page = _page(document)
        text = " ".join(page.extract_text().split())
        assert "no acute findings, signed" in text and "Signed by Doe, Alice" in text and "UNVERIFIED" not in text
        embedded = np.asarray(page.images[0].image.convert("RGB"))
        source = dataset_to_image(pydicom.dcmread(rs.sources[0]))
        expected = np.asarray(pdf_report._page_picture(source).convert("RGB"))
        assert embedded.shape == expected.shape and np.array_equal(embedded, expected)

        Delivery(rs.spool, out_dir=rs.out).deliver_all_once()
        assert rs.spool.job(job.id).state.value == "delivered"
        assert (rs.out / pdf_path.name).read_bytes() == pdf_path.read_bytes()
        assert (rs.out / signature.path.name).is_file()
    finally:
        store.close()


def test_an_amendment_gets_its_own_pdf_and_without_the_source_the_page_has_no_image(review_spool):
    rs = review_spool(1)
    store = ReviewStore(rs.root, organization="Test Hospital", keep_sources=False, pdf=True)
    try:
        first = store.sign(rs.ai_uids[0], ALICE, "first signed text")
        amended = store.sign(rs.ai_uids[0], ALICE, "amended signed text", predecessor=first.uid)
        pdfs = [pydicom.dcmread(rs.root / j.reports[1]) for j in _review_jobs(rs)]
        assert len({str(d.SOPInstanceUID) for d in pdfs}) == 2
        assert [d.SourceInstanceSequence[0].ReferencedSOPInstanceUID for d in pdfs] == [first.uid, amended.uid]
        page = _page(pdfs[1])
        assert "Amended and signed by Doe, Alice" in " ".join(page.extract_text().split())
        assert len(page.images) == 0  # keep_sources = false: the source went with the first decision
    finally:
        store.close()


def test_a_pdf_that_cannot_be_made_leaves_the_signed_sr_to_go_alone(review_spool, monkeypatch, caplog):
    def refuse(sr, image):
        raise ReportError(str(sr.SOPInstanceUID), "cannot build the PDF report (test)")

    monkeypatch.setattr(pdf_report, "build_pdf_report", refuse)
    rs = review_spool(1)
    store = ReviewStore(rs.root, pdf=True)
    try:
        with caplog.at_level(logging.WARNING):
            signature = store.sign(rs.ai_uids[0], ALICE, "signed without a pdf")
        (job,) = _review_jobs(rs)
        assert list(job.reports) == [str(signature.path.relative_to(rs.root))]
        assert "no PDF report (ReportError)" in caplog.text
    finally:
        store.close()


def test_without_the_setting_a_signature_writes_no_pdf(review_spool):
    rs = review_spool(1)
    rs.store.sign(rs.ai_uids[0], ALICE, "signed, no pdf asked for")
    (job,) = _review_jobs(rs)
    assert len(job.reports) == 1 and len(list((rs.root / "review" / "signed").iterdir())) == 1


def test_a_station_killed_mid_sign_leaves_neither_the_sr_nor_its_pdf(review_spool):
    rs = review_spool(1)
    script = (
        "import os, sys\n"
        "from medblip_dicom.integrations.review import store as s\n"
        "from medblip_dicom.integrations.review.signing import Reviewer\n"
        "s._before_commit = lambda: os._exit(9)  # killed after both files, before the commit\n"
        "s.ReviewStore(sys.argv[1], pdf=True).sign(sys.argv[2], Reviewer('alice', 'Doe^Alice', ''), 'killed')\n")
    proc = subprocess.run([sys.executable, "-c", script, str(rs.root), rs.ai_uids[0]], timeout=120)
    assert proc.returncode == 9
    signed = rs.root / "review" / "signed"
    assert len(list(signed.iterdir())) == 2
    store = ReviewStore(rs.root, pdf=True)
    try:
        assert store.recover() == 2 and list(signed.iterdir()) == []
        store.sign(rs.ai_uids[0], ALICE, "signed after the crash")
        assert store.recover() == 0 and len(list(signed.iterdir())) == 2  # committed: both kept
    finally:
        store.close()
