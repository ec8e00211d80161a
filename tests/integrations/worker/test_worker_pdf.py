"""``[output] pdf``: the worker writes the Encapsulated PDF beside each AI report, in the same job."""

from __future__ import annotations

import io
import logging

import numpy as np
import pydicom
import pytest

from medblip_dicom import pdf_fonts, pdf_report
from medblip_dicom.errors import MissingDependencyError, ReportError
from medblip_dicom.integrations.config.checks import ConfigError
from medblip_dicom.integrations.config.file import config_from_dict
from medblip_dicom.integrations.spool import JobState, Spool
from medblip_dicom.integrations.worker.loop import Worker
from medblip_dicom.pixels import dataset_to_image
from medblip_dicom.report_view import CaptionReport
from medblip_dicom.selection import SelectConfig

pypdf = pytest.importorskip("pypdf", reason="pypdf (the dev extra) reads the PDF back")
pytest.importorskip("reportlab", reason="reportlab (the pdf extra) writes the PDF")

EACH = SelectConfig(per_series="each")


@pytest.fixture
def spool(tmp_path):
    with Spool(tmp_path / "spool", min_free_bytes=0) as s:
        yield s


def test_the_pdf_goes_beside_the_sr_and_says_what_it_says(spool, captioner, td, tool):
    from tests.support.dicom import dciodvfy_errors

    tool("dciodvfy")
    worker = Worker(spool, captioner, batch_size=2, prepare_workers=0, select=EACH, pdf=True)
    source = pydicom.dcmread(td("RG1_UNCI.dcm"))
    admission = spool.add_file(td("RG1_UNCI.dcm"), origin="test", name="cr.dcm")
    worker.process_available()
    job = spool.job(admission.job_id)
    assert job.state is JobState.REPORTED and len(job.reports) == 2
    sr = pydicom.dcmread(spool.root / job.reports[0])
    pdf_path = spool.root / job.reports[1]
    assert not dciodvfy_errors(pdf_path)
    document = pydicom.dcmread(pdf_path)
    assert document.SOPClassUID == pdf_report.ENCAPSULATED_PDF
    assert (document.StudyInstanceUID, document.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert document.SourceInstanceSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert (document.SeriesInstanceUID, document.SOPInstanceUID) == pdf_report.pdf_uids(sr)

    reader = pypdf.PdfReader(io.BytesIO(bytes(document.EncapsulatedDocument)))
    text = " ".join(reader.pages[0].extract_text().split())
    report = CaptionReport.from_dataset(sr)
    assert report.caption in text and "UNVERIFIED" in text and captioner.identity.weights_sha256 in text
    embedded = np.asarray(reader.pages[0].images[0].image.convert("RGB"))
    expected = np.asarray(pdf_report._page_picture(dataset_to_image(source)).convert("RGB"))
    assert embedded.shape == expected.shape and np.array_equal(embedded, expected)


def test_the_pdf_reaches_the_pacs_with_the_sr(tmp_path, td, orthanc_factory, run_service):
    from tests.support.dicom import reissued
    from tests.support.env import wait_for
    from tests.support.services import make_config

    pacs = orthanc_factory()
    pacs.start()
    config = make_config(tmp_path, forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"},
                         output={"pdf": True})
    service = run_service(config)
    source = reissued(td, "CT_small.dcm", tmp_path / "in")
    admission = service.spool.add_file(source, origin="test", name=source.name)
    finished = (JobState.DELIVERED, JobState.FAILED)
    job = wait_for(lambda: (j := service.spool.job(admission.job_id)).state in finished and j, 60, "delivery")
    assert job.state is JobState.DELIVERED, job.reason  # the C-STORE association proposes Encapsulated PDF
    study = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    (sr,) = pacs.instances(study, "SR")
    (document,) = pacs.instances(study, "DOC")
    assert document.SOPClassUID == pdf_report.ENCAPSULATED_PDF
    assert document.SourceInstanceSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID == job.sr_sop_instance_uid


def test_a_pdf_that_cannot_be_made_leaves_the_sr_alone(spool, captioner, td, monkeypatch, caplog):
    def refuse(sr, image):
        raise ReportError(str(sr.SOPInstanceUID), "cannot build the PDF report (test)")

    monkeypatch.setattr(pdf_report, "build_pdf_report", refuse)
    worker = Worker(spool, captioner, batch_size=2, prepare_workers=0, select=EACH, pdf=True)
    admission = spool.add_file(td("CT_small.dcm"), origin="test", name="ct.dcm")
    with caplog.at_level(logging.WARNING):
        worker.process_available()
    job = spool.job(admission.job_id)
    assert job.state is JobState.REPORTED and len(job.reports) == 1
    assert "no PDF report (ReportError" in caplog.text


def test_missing_fonts_stop_the_worker_at_start(spool, captioner, monkeypatch, tmp_path):
    pdf_fonts.register_fonts.cache_clear()
    monkeypatch.setattr(pdf_fonts, "FONT_DIRS", (tmp_path,))
    monkeypatch.setattr(pdf_fonts, "_matplotlib_fonts", lambda: [])
    try:
        with pytest.raises(MissingDependencyError, match="fonts-dejavu-core"):
            Worker(spool, captioner, select=EACH, pdf=True)
        Worker(spool, captioner, select=EACH)  # without [output] pdf the fonts are not needed
    finally:
        pdf_fonts.register_fonts.cache_clear()


def test_output_pdf_is_a_switch():
    assert config_from_dict({}).output.pdf is False
    assert config_from_dict({"output": {"pdf": True}}).output.pdf is True
    with pytest.raises(ConfigError, match=r"\[output\] pdf: must be true or false"):
        config_from_dict({"output": {"pdf": "yes"}})
