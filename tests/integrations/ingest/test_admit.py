"""One admission path: C-STORE and STOW-RS give every outcome the answer the same table maps it to,
the node stores a received data set behind the file meta pynetdicom would write, and logs one
line per association."""

from __future__ import annotations

import io
import logging
import types
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, generate_uid,
)
from tests.support.env import free_port, wait_for
from tests.support.services import make_config

from pydicom.filereader import read_file_meta_info

from medblip_dicom.dicomfile import content_offset
from medblip_dicom.integrations.ingest.admit import Outcome
from medblip_dicom.integrations.ingest.node import StorageNode
from medblip_dicom.integrations.ingest.part10 import part10_prefix, received_file
from medblip_dicom.integrations.ingest.stow.multipart import Part
from medblip_dicom.integrations.ingest.stow.receiver import StowReceiver
from medblip_dicom.integrations.spool import JobState, Spool

ASSOCIATION = types.SimpleNamespace(requestor=types.SimpleNamespace(ae_title="MODALITY", address="127.0.0.1"))


def part10(**attrs: object) -> bytes:
    """CT_small as a Part 10 file with a fresh SOPInstanceUID (and `attrs` set)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def with_unknown_vr(data: bytes) -> bytes:
    """The file with an element of the invalid VR "ZZ" appended (it cannot be decoded)."""
    return data + b"\x10\x00\x10\x00ZZ\x04\x00abcd"


def cstore_event(data: bytes, *, sop_instance_uid: str | None = None, syntax: str | None = None) -> object:
    """A C-STORE event as pynetdicom hands it to the handler, carrying the data set of a Part 10 file."""
    from pynetdicom import evt
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event
    from pynetdicom.presentation import PresentationContextTuple

    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    request = C_STORE()
    request.AffectedSOPClassUID = meta.MediaStorageSOPClassUID
    request.AffectedSOPInstanceUID = sop_instance_uid if sop_instance_uid is not None else \
        meta.MediaStorageSOPInstanceUID
    request.DataSet = io.BytesIO(data[content_offset(data):])
    context = PresentationContextTuple(1, str(meta.MediaStorageSOPClassUID), syntax or meta.TransferSyntaxUID)
    return Event(ASSOCIATION, evt.EVT_C_STORE, {"request": request, "context": context})


def by_cstore(spool: Spool, data: bytes, tmp_path: Path) -> tuple[int, int | None]:
    """(DIMSE status, the FailureReason STOW-RS would give for it) of the node's answer."""
    node = StorageNode(spool, make_config(tmp_path, node={"port": free_port()}).node)
    answer = node.handle_store(cstore_event(data))
    status = answer if isinstance(answer, int) else int(answer.Status)
    return status, None if status == 0 else status


def by_stow(spool: Spool, data: bytes, study_uid: str | None = None) -> tuple[int, int | None]:
    """(0 when stored, else the FailureReason, twice) of the STOW-RS receiver's answer."""
    result = StowReceiver(spool).store([Part({"content-type": "application/dicom"}, io.BytesIO(data))], study_uid)
    if result.stored:
        return 0, None
    reason = result.failed[0][2]
    return reason, reason


GOOD = part10()
OWN = part10(Manufacturer="medblip-dicom")
BAD = with_unknown_vr(part10())


@pytest.mark.parametrize("protocol", ["cstore", "stow"])
@pytest.mark.parametrize(("case", "outcome"), [
    ("good", Outcome.STORED), ("duplicate", Outcome.DUPLICATE), ("own output", Outcome.OWN_OUTPUT),
    ("unknown VR", Outcome.CANNOT_UNDERSTAND), ("spool full", Outcome.SPOOL_FULL),
    ("disk error", Outcome.CANNOT_WRITE), ("spool bug", Outcome.INTERNAL_ERROR),
])
def test_both_protocols_answer_each_outcome_as_the_one_table_says(tmp_path, monkeypatch, caplog, protocol, case,
                                                                 outcome):
    send = (lambda spool, data: by_cstore(spool, data, tmp_path)) if protocol == "cstore" else by_stow
    limit = 10 if case == "spool full" else 0
    with Spool(tmp_path / "spool", max_bytes=limit, min_free_bytes=0) as spool:
        if case == "duplicate":
            assert send(spool, GOOD) == (0x0000, None)
        if case in ("disk error", "spool bug"):
            error = OSError(5, "Input/output error") if case == "disk error" else RuntimeError("a bug")

            def broken(*args, **kwargs):
                raise error

            monkeypatch.setattr(spool, "add_bytes", broken)
        data = {"own output": OWN, "unknown VR": BAD}.get(case, GOOD)
        caplog.set_level(logging.DEBUG, logger="medblip_dicom")
        answer = send(spool, data)
        jobs = spool.jobs()
    assert answer == (outcome.dimse_status, outcome.failure_reason)
    if outcome.stored:  # durable, as a job of its own (a duplicate and our own output are skipped)
        assert jobs[-1].state == (JobState.RECEIVED if outcome is Outcome.STORED else JobState.SKIPPED)
        assert jobs[-1].error_class == {Outcome.STORED: None, Outcome.DUPLICATE: "Duplicate",
                                        Outcome.OWN_OUTPUT: "OwnOutput"}[outcome]
    else:  # nothing of a refused instance is stored, and the log says why with its status
        assert len(jobs) == (1 if case == "duplicate" else 0)
        assert list((tmp_path / "spool" / "tmp").iterdir()) == []
        assert f"0x{outcome.dimse_status:04X}" in caplog.text or outcome is Outcome.INTERNAL_ERROR
        if outcome is Outcome.INTERNAL_ERROR:
            assert "Traceback" in caplog.text and "RuntimeError" in caplog.text


def test_a_stow_part_of_another_study_is_refused_and_a_cstore_has_no_such_check(tmp_path):
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        assert by_stow(spool, GOOD, study_uid="1.2.3.4") == (0xA900, 0xA900)
        assert spool.jobs() == []
        study = str(pydicom.dcmread(io.BytesIO(GOOD), stop_before_pixels=True).StudyInstanceUID)
        assert by_stow(spool, GOOD, study_uid=study) == (0, None)


def test_the_node_answers_with_the_comment_of_its_outcome(tmp_path):
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        node = StorageNode(spool, make_config(tmp_path, node={"port": free_port()}).node)
        answer = node.handle_store(cstore_event(BAD))
    assert int(answer.Status) == 0xC210 and answer.ErrorComment == "data set cannot be decoded"
    assert (node.stored, node.refused) == (0, 1)


def test_a_data_set_without_its_own_sop_instance_uid_is_stored_under_the_requests(tmp_path):
    ds = pydicom.dcmread(io.BytesIO(GOOD))
    uid = str(ds.SOPInstanceUID)
    del ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        node = StorageNode(spool, make_config(tmp_path, node={"port": free_port()}).node)
        assert node.handle_store(cstore_event(buffer.getvalue(), sop_instance_uid=uid)) == 0
        (job,) = spool.jobs()
    assert job.sop_instance_uid == uid and job.name == f"{uid}.dcm"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                                    JPEG2000Lossless])
@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.3.45", "2.25." + "9" * 59])
def test_the_file_meta_is_what_pynetdicom_writes_byte_for_byte(tmp_path, syntax, uid):
    event = cstore_event(GOOD, sop_instance_uid=uid, syntax=syntax)
    expected = event.encoded_dataset(include_meta=True)
    assert received_file(event) == expected
    prefix = part10_prefix("1.2.840.10008.5.1.4.1.1.2", uid, syntax)
    assert prefix is not None and expected.startswith(prefix)
    (tmp_path / "stored.dcm").write_bytes(expected)
    meta = read_file_meta_info(tmp_path / "stored.dcm")
    assert (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID) == (uid, syntax)


def test_a_uid_longer_than_a_ui_value_gets_no_prefix_of_ours():
    assert part10_prefix("1.2.840.10008.5.1.4.1.1.2", "1." + "2" * 70, ExplicitVRLittleEndian) is None


@pytest.mark.parametrize("uid", ["", "1.2.3.\u00e94"])
def test_an_unusual_uid_is_left_to_pynetdicoms_encoder(uid):
    assert part10_prefix("1.2.840.10008.5.1.4.1.1.2", uid, ExplicitVRLittleEndian) is None
    event = cstore_event(GOOD, sop_instance_uid=uid)
    try:
        expected: bytes | type[BaseException] = event.encoded_dataset(include_meta=True)
    except Exception as exc:  # noqa: BLE001 - then the node must fail the same way
        expected = type(exc)
    if isinstance(expected, bytes):
        assert received_file(event) == expected
    else:
        with pytest.raises(expected):
            received_file(event)


def test_an_association_is_logged_once_when_it_ends_and_each_instance_only_at_debug(tmp_path, caplog):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    caplog.set_level(logging.INFO, logger="medblip_dicom")
    files = []
    for i, data in enumerate([GOOD, GOOD, part10(), with_unknown_vr(part10())]):
        files.append(tmp_path / f"{i}.dcm")
        files[-1].write_bytes(data)
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        node = StorageNode(spool, make_config(tmp_path, node={"port": free_port()}).node)
        node.start()
        try:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDBLIP")
            assert assoc.is_established
            statuses = [int(assoc.send_c_store(path).Status) for path in files]  # sent as they are
            assoc.release()
            ended = wait_for(lambda: [r for r in caplog.records if "ended" in r.getMessage()], 10,
                             "the association's log line")
        finally:
            node.stop()
    assert statuses == [0x0000, 0x0000, 0x0000, 0xC210]
    assert len(ended) == 1 and ended[0].levelno == logging.INFO
    assert ended[0].getMessage() == ("association from MODALITY@127.0.0.1 ended: 3 stored (1 duplicate), "
                                     "1 refused (1 cannot understand, 0xC210)")
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name.endswith(("admit", "spool"))]
    assert info == []  # no INFO line per stored instance


def test_cstore_times_reach_the_histogram_in_batches_and_all_of_them_by_the_next_scrape(tmp_path, monkeypatch):
    from medblip_dicom.integrations.ops import telemetry as telemetry_module
    from medblip_dicom.integrations.ops.metrics import ServiceMetrics
    from medblip_dicom.integrations.ops.telemetry import Telemetry

    clock = [1000.0]
    monkeypatch.setattr(telemetry_module, "monotonic", lambda: clock[0])
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        metrics = ServiceMetrics(spool, destinations=("folder",), worker_alive=lambda: True)
        node = StorageNode(spool, make_config(tmp_path, node={"port": free_port()}).node, Telemetry(metrics=metrics))

        def count() -> float:
            return metrics.registry.get_sample_value("medblip_cstore_seconds_count") or 0

        for _ in range(5):
            assert node.handle_store(cstore_event(part10())) == 0
        assert count() == 1  # the first after a quiet spell at once, the others wait for their batch
        assert b"medblip_cstore_seconds_count 5.0" in metrics.exposition()
        clock[0] += telemetry_module.CSTORE_BATCH_S
        assert node.handle_store(cstore_event(part10())) == 0
        assert count() == 6
