"""The DIMSE pull's parts without an archive: addresses, query checks, the contexts a C-GET proposes,
the C-STORE handler that takes only what was asked for, the time window and the concurrency limit."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.dataset import Dataset

from medblip_dicom.integrations.config.file import Destination
from medblip_dicom.integrations.pull.choose import RetrievalPlan, Wanted
from medblip_dicom.integrations.pull.dimse import DimsePuller, _Fetched
from medblip_dicom.integrations.pull.dimse_find import answer_matches, query_dataset
from medblip_dicom.integrations.pull.dimse_link import DimseSettings, parse_dimse_url, status_words
from medblip_dicom.integrations.pull.dimse_listen import parse_listen
from medblip_dicom.integrations.pull.dimse_receive import (
    MAX_CONTEXTS, UNCOMPRESSED, Receiver, classes_for, compressed_syntaxes, storage_contexts,
)
from medblip_dicom.integrations.pull.dimse_retrieve import requests_for
from medblip_dicom.integrations.pull.study import StudyPull
from medblip_dicom.integrations.pull.window import Window
from medblip_dicom.selection import SelectConfig


def test_archive_addresses_and_listen_addresses():
    assert parse_dimse_url("dimse://PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    assert parse_dimse_url("DIMSE://PACS@[::1]:11112/") == Destination("PACS", "::1", 11112)
    for bad in ("dimse://10.0.0.5:104", "dimse://PACS@host", "dimse://A-TITLE-LONGER-THAN-16@h:1"):
        with pytest.raises(ValueError, match="--from .* is not dimse://AET@HOST:PORT"):
            parse_dimse_url(bad)
    assert parse_listen("11113") == ("127.0.0.1", 11113)  # loopback unless a host is given
    assert parse_listen("0.0.0.0:11113") == ("0.0.0.0", 11113)
    for bad in ("x", ":5", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="--listen"):
            parse_listen(bad)
    assert status_words(0xA801) == "0xA801 move destination unknown" and "aborted" in status_words(None)


def test_a_query_names_real_keys_and_answers_are_checked_as_an_archive_should_have_matched():
    ds = query_dataset("STUDY", {"ModalitiesInStudy": "CR", "00080050": "A1", "PatientName": "Müller*"},
                       ("StudyInstanceUID",))
    assert ds.AccessionNumber == "A1" and ds.SpecificCharacterSet == "ISO_IR 192" and ds.StudyInstanceUID is None
    with pytest.raises(ValueError, match="--query Modality_In_Study: not a DICOM keyword"):
        query_dataset("STUDY", {"Modality_In_Study": "CR"})
    answer = Dataset()
    answer.ModalitiesInStudy = ["CT", "SR"]
    answer.StudyDate = "20261115"
    answer.PatientName = "MUELLER^ANNA"
    answer.StudyInstanceUID = "1.2.3"
    assert answer_matches(answer, "ModalitiesInStudy", "CT") and not answer_matches(answer, "ModalitiesInStudy", "CR")
    assert answer_matches(answer, "StudyDate", "20261101-20261130")
    assert not answer_matches(answer, "StudyDate", "20261201-")
    assert answer_matches(answer, "PatientName", "mueller*") and not answer_matches(answer, "PatientName", "M?LLER*")
    assert answer_matches(answer, "StudyInstanceUID", "1.2.4\\1.2.3")
    assert answer_matches(answer, "AccessionNumber", "A1") is None  # not answered: cannot be checked


def test_cget_contexts_stay_under_the_limit_uncompressed_first_then_the_common_compressed_syntaxes():
    compressed = compressed_syntaxes()
    assert compressed[:2] == ["1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50"]
    few = storage_contexts(["1.2.840.10008.5.1.4.1.1.2"])
    assert few[0] == ("1.2.840.10008.5.1.4.1.1.2", UNCOMPRESSED) and len(few) == 1 + len(compressed)
    every = classes_for([("", "")])  # nothing answered: every image class we know
    contexts = storage_contexts(every)
    assert len(contexts) == MAX_CONTEXTS - 1  # and the C-GET context makes 128
    assert [c for c, syntaxes in contexts[:len(every)]] == every and all(s == UNCOMPRESSED for _, s in
                                                                          contexts[:len(every)])
    used = [syntaxes[0] for _, syntaxes in contexts[len(every):]]
    rounds = list(dict.fromkeys(used))  # the common syntaxes got the room, each for every class in turn
    assert rounds == compressed[:len(rounds)] and all(used.count(s) == len(every) for s in rounds[:-1])
    assert classes_for([("", "CT")])[:2] == ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"]
    assert classes_for([("1.2.3", "CT"), ("", "CR")]) == ["1.2.3", "1.2.840.10008.5.1.4.1.1.1",
                                                          *classes_for([("", "CR")])[1:]]


def test_a_series_retrieved_whole_is_one_request_and_a_representative_is_one_instance():
    plan = RetrievalPlan(wanted=[Wanted("s1", "a"), Wanted("s1", "b"), Wanted("s2", "c"), Wanted("s3", "d"),
                                 Wanted("s3", "e")], whole_series={"s1", "s3"}, members={"s1": 2, "s2": 5, "s3": 3})
    assert [(r.level, r.sop_uids) for r in requests_for(plan)] == [
        ("SERIES", ("a", "b")), ("IMAGE", ("c",)), ("IMAGE", ("d",)), ("IMAGE", ("e",))]  # s3: one skipped


def _store_event(ds: Dataset, claimed: str) -> SimpleNamespace:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPInstanceUID = claimed

    def encoded(include_meta: bool = True) -> bytes:
        from io import BytesIO

        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    request = SimpleNamespace(AffectedSOPInstanceUID=claimed)
    return SimpleNamespace(request=request, encoded_dataset=encoded,
                           assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="PACS")))


def test_the_receiver_takes_only_what_was_asked_for_whole_and_under_its_own_uid(tmp_path):
    receiver = Receiver()
    receiver.expect(["1.2.3"], tmp_path)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3"
    assert receiver.handle_store(_store_event(ds, "1.2.3")) == 0
    assert receiver.received(["1.2.3"]) == {"1.2.3": tmp_path / "1.2.3.dcm"}
    assert pydicom.dcmread(tmp_path / "1.2.3.dcm").SOPInstanceUID == "1.2.3"
    other = Dataset()
    other.SOPClassUID, other.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "9.9"
    assert receiver.handle_store(_store_event(other, "9.9")).Status == 0x0124  # not asked for
    receiver.expect(["4.5"], tmp_path)
    assert receiver.handle_store(_store_event(other, "4.5")).Status == 0xA900  # claims another UID
    receiver.forget(["1.2.3", "4.5"])
    assert receiver.handle_store(_store_event(ds, "1.2.3")).Status == 0x0124  # its retrieve is over
    receiver.expect(["1.2.3"], tmp_path / "again")
    assert receiver.received(["1.2.3"]) == {}  # a later retrieve of it starts from nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.2.3.dcm"]  # no partial file anywhere


def test_the_window_spans_midnight_and_waits_until_it_opens():
    window = Window.parse("20:00-06:00")
    day = dt.datetime(2026, 11, 3)
    assert window.is_open(day.replace(hour=23)) and window.is_open(day.replace(hour=5, minute=59))
    assert not window.is_open(day.replace(hour=6)) and not window.is_open(day.replace(hour=12))
    assert window.seconds_until_open(day.replace(hour=19, minute=30)) == 1800
    assert Window.parse("08:00-17:00").seconds_until_open(day.replace(hour=18)) == 14 * 3600
    for bad in ("8-17", "20:00-20:00", "25:00-01:00"):
        with pytest.raises(ValueError, match="--between"):
            Window.parse(bad)
    clock = [day.replace(hour=19, minute=59, second=59)]
    told: list[str] = []

    def now() -> dt.datetime:
        clock[0] += dt.timedelta(seconds=0.5)
        return clock[0]

    assert window.wait(threading.Event(), clock=now, tell=told.append, step_s=0.001)
    assert len(told) == 1 and "20:00-06:00" in told[0]
    stop = threading.Event()
    stop.set()
    assert not window.wait(stop, clock=lambda: day.replace(hour=12))


def test_at_most_max_concurrent_retrieves_run_and_results_come_in_order(monkeypatch, tmp_path):
    import tempfile

    puller = DimsePuller(Destination("PACS", "127.0.0.1", 104), DimseSettings(), caption=None,
                         select=SelectConfig(), max_concurrent=2)
    running, peak, lock = [0], [0], threading.Lock()

    def fetch(study: str, series: str | None = None) -> _Fetched:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05 if study != "s1" else 0.2)
        with lock:
            running[0] -= 1
        return _Fetched(StudyPull(study, found=1), RetrievalPlan(), tempfile.TemporaryDirectory(dir=tmp_path), {})

    monkeypatch.setattr(puller, "fetch", fetch)
    order = [study for study, _ in puller.pull_many([f"s{i}" for i in range(6)])]
    assert order == [f"s{i}" for i in range(6)] and peak[0] == 2
    assert not list(Path(tmp_path).iterdir())  # every study's folder removed
