"""Signing: the VERIFIED SR contract, idempotence, amendments, two reviewers at once, a crash mid-sign."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pydicom
import pytest

from medblip_dicom.integrations.review.signing import EDITED, KEPT, REVIEW_OUTCOME, Reviewer
from medblip_dicom.integrations.review.store import ReviewConflict
from medblip_dicom.report_view import CaptionReport, content_items

from tests.support.dicom import validate_sr

ALICE = Reviewer("alice", "Doe^Alice", "Test Hospital")
BOB = Reviewer("bob", "Roe^Bob", "Test Hospital")


def outcome(sr) -> str:
    (item,) = [c for c in content_items(sr) if c.get("ConceptNameCodeSequence")
               and c.ConceptNameCodeSequence[0].CodeValue == REVIEW_OUTCOME.value]
    return str(item.TextValue)


def predecessor_uid(sr) -> str:
    return str(sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
               .ReferencedSOPInstanceUID)


def test_a_signed_report_follows_the_sr_contract(review_spool):
    rs = review_spool(1)
    ai_uid = rs.ai_uids[0]
    ai = pydicom.dcmread(rs.out / f"{ai_uid}.dcm")
    signature = rs.store.sign(ai_uid, ALICE, "  A small   CT of the chest, no nodule. ")
    sr = pydicom.dcmread(signature.path)
    validate_sr(signature.path)  # dciodvfy: 0 errors; dsrdump reads it
    assert (sr.VerificationFlag, sr.PreliminaryFlag, sr.CompletionFlag) == ("VERIFIED", "FINAL", "COMPLETE")
    verifier = sr.VerifyingObserverSequence[0]
    assert str(verifier.VerifyingObserverName) == "Doe^Alice" and verifier.VerifyingOrganization == "Test Hospital"
    assert verifier.VerificationDateTime.startswith(time.strftime("%Y%m%d"))
    assert predecessor_uid(sr) == ai_uid
    assert sr.StudyInstanceUID == ai.StudyInstanceUID and sr.PatientID == ai.PatientID
    view = CaptionReport.from_dataset(sr)
    assert view.caption == "A small CT of the chest, no nodule." and view.verified
    assert view.source_sop_instance_uid == CaptionReport.from_dataset(ai).source_sop_instance_uid
    assert view.device_uid == CaptionReport.from_dataset(ai).device_uid and view.model_version == "v1.0"
    observers = {str(c.ConceptNameCodeSequence[0].CodeValue): c for c in content_items(sr)
                 if c.get("ConceptNameCodeSequence")}
    assert str(observers["121008"].PersonName) == "Doe^Alice"  # Person Observer Name
    types = [c.ConceptCodeSequence[0].CodeValue for c in content_items(sr) if c.get("ConceptNameCodeSequence")
             and c.ConceptNameCodeSequence[0].CodeValue == "121005"]  # Observer Type
    assert types == ["121006", "121007"]  # the person (the reviewer), then the device (the model)
    assert outcome(sr) == EDITED and signature.edited


def test_a_signed_report_answers_the_same_orders_as_the_ai_report(review_spool):
    rs = review_spool(1)
    ai_uid = rs.ai_uids[0]
    ai_path = rs.out / f"{ai_uid}.dcm"
    ai = pydicom.dcmread(ai_path)
    request = pydicom.Dataset()
    request.StudyInstanceUID, request.AccessionNumber = ai.StudyInstanceUID, "A1"
    request.PlacerOrderNumberImagingServiceRequest, request.FillerOrderNumberImagingServiceRequest = "PL-1", "FI-1"
    request.RequestedProcedureID, request.RequestedProcedureDescription = "RP1", ""
    request.ReferencedStudySequence, request.RequestedProcedureCodeSequence = [], []
    ai.ReferencedRequestSequence = [request]
    for kept in rs.root.glob(f"review/items/{ai_uid}/ai.dcm"):  # the copy under review signs from
        ai.save_as(kept, enforce_file_format=True)
    signature = rs.store.sign(ai_uid, ALICE, "A small CT of the chest.")
    validate_sr(signature.path)
    (item,) = pydicom.dcmread(signature.path).ReferencedRequestSequence
    assert (item.PlacerOrderNumberImagingServiceRequest, item.FillerOrderNumberImagingServiceRequest) == ("PL-1", "FI-1")


def test_signing_the_ai_text_unchanged_says_so(review_spool):
    rs = review_spool(1)
    caption = rs.store.item(rs.ai_uids[0])["caption"]
    signature = rs.store.sign(rs.ai_uids[0], ALICE, caption)
    assert not signature.edited and outcome(pydicom.dcmread(signature.path)) == KEPT


def test_a_double_click_signs_once_and_an_amendment_points_at_the_signed_report(review_spool):
    rs = review_spool(1)
    ai_uid = rs.ai_uids[0]
    first = rs.store.sign(ai_uid, ALICE, "first text")
    again = rs.store.sign(ai_uid, ALICE, "first  text")
    assert again.uid == first.uid and not again.created
    amended = rs.store.sign(ai_uid, BOB, "second text", predecessor=first.uid)
    sr = pydicom.dcmread(amended.path)
    validate_sr(amended.path)
    assert predecessor_uid(sr) == first.uid and amended.uid != first.uid
    assert [s.uid for s in rs.store.signatures(ai_uid)] == [first.uid, amended.uid]
    jobs = [j for j in rs.spool.jobs() if j.origin == "review"]
    assert sorted(j.sr_sop_instance_uid for j in jobs) == sorted([first.uid, amended.uid])
    with pytest.raises(ReviewConflict, match="bob signed this report meanwhile"):
        rs.store.sign(ai_uid, ALICE, "stale edit", predecessor=first.uid)


def test_two_reviewers_at_once_give_one_signed_report_and_a_clear_message(review_spool):
    rs = review_spool(1)
    ai_uid = rs.ai_uids[0]
    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def sign(who: Reviewer, text: str) -> None:
        start.wait()
        try:
            results[who.username] = rs.store.sign(ai_uid, who, text, predecessor=ai_uid)
        except ReviewConflict as exc:
            results[who.username] = exc

    threads = [threading.Thread(target=sign, args=(r, f"text of {r.username}")) for r in (ALICE, BOB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    conflicts = [v for v in results.values() if isinstance(v, ReviewConflict)]
    assert len(conflicts) == 1 and "signed this report meanwhile" in str(conflicts[0])
    assert len(rs.store.signatures(ai_uid)) == 1
    assert len(list((rs.root / "review" / "signed").iterdir())) == 1
    assert len([j for j in rs.spool.jobs() if j.origin == "review"]) == 1


def test_two_processes_signing_at_once_give_one_signed_report(review_spool, tmp_path):
    rs = review_spool(1)
    script = (
        "import sys\n"
        "from medblip_dicom.integrations.review.store import ReviewStore, ReviewConflict\n"
        "from medblip_dicom.integrations.review.signing import Reviewer\n"
        "store = ReviewStore(sys.argv[1])\n"
        "try:\n"
        "    store.sign(sys.argv[2], Reviewer(sys.argv[3], 'X^Y', ''), 'text of ' + sys.argv[3], predecessor=sys.argv[2])\n"
        "    print('signed')\n"
        "except ReviewConflict as exc:\n"
        "    print('conflict:', exc)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(rs.root), rs.ai_uids[0], who],
                              stdout=subprocess.PIPE, text=True) for who in ("alice", "bob")]
    outputs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outputs[0].startswith("conflict:") and outputs[1] == "signed", outputs
    assert len(rs.store.signatures(rs.ai_uids[0])) == 1


def test_a_station_killed_mid_sign_leaves_no_signed_report_then_signs_once(review_spool):
    rs = review_spool(1)
    ai_uid = rs.ai_uids[0]
    script = (
        "import os, sys\n"
        "from medblip_dicom.integrations.review import store as s\n"
        "from medblip_dicom.integrations.review.signing import Reviewer\n"
        "s._before_commit = lambda: os._exit(9)  # killed after the file, before the commit\n"
        "s.ReviewStore(sys.argv[1]).sign(sys.argv[2], Reviewer('alice', 'Doe^Alice', ''), 'killed text')\n")
    proc = subprocess.run([sys.executable, "-c", script, str(rs.root), ai_uid], timeout=120)
    assert proc.returncode == 9
    assert rs.store.signatures(ai_uid) == [] and rs.store.item(ai_uid)["state"] == "pending"
    assert not [j for j in rs.spool.jobs() if j.origin == "review"]
    assert rs.store.recover() == 1  # the complete but uncommitted file goes
    assert list((rs.root / "review" / "signed").iterdir()) == []
    signature = rs.store.sign(ai_uid, ALICE, "killed text")
    validate_sr(signature.path)
    assert len(list((rs.root / "review" / "signed").iterdir())) == 1
