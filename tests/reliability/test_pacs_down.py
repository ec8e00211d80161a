"""PACS down: the destination (Orthanc) stops for a while and comes back; SRs wait and are delivered.
A destination that refuses the objects permanently is not retried.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom

from tests.support.checks import check_exactly_one_sr_each, validate_srs
from tests.support.dicom import sr_source_uid
from tests.support.env import wait_for
from tests.support.figures import mib, scaled, seed
from tests.support.inputs import make_good_files
from tests.support.journal import journal_rows, pending
from tests.support.privacy import scan_for_patient_data
from tests.support.services import service_config

from tests.support.env import free_port, run_tool
from tests.support.services import pynetdicom_scp


def save_received(event, folder: Path) -> Path:  # noqa: ANN001
    """Write what a test SCP received as a Part 10 file named after its SOPInstanceUID."""
    ds = event.dataset
    ds.file_meta = event.file_meta
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmsend_all(dcmsend: str, port: int, paths: list[Path]) -> None:
    proc = run_tool([dcmsend, "127.0.0.1", str(port), "-aec", "MEDBLIP", "-aet", "MODALITY",
                     *map(str, paths)], timeout_s=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def orthanc_srs(pacs, folder: Path) -> dict[str, list[str]]:  # noqa: ANN001
    """Every SR Orthanc holds, saved into `folder`; {source SOPInstanceUID: [SR UIDs]}."""
    folder.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, list[str]] = {}
    for series in pacs.post("/tools/find", b'{"Level": "Series", "Query": {"Modality": "SR"}, "Expand": true}'):
        for iid in series["Instances"]:
            data = pacs.get(f"/instances/{iid}/file")
            ds = pydicom.dcmread(io.BytesIO(data))
            (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(data)
            by_source.setdefault(sr_source_uid(ds), []).append(str(ds.SOPInstanceUID))
    return by_source


def test_orthanc_down_then_back(tmp_path: Path, tiny_model_dir, services, orthanc_factory, tool, figures,
                                weights_sha256, dciodvfy):
    dcmsend = tool("dcmsend")
    first, during = scaled(40, 8), scaled(80, 16)
    files = make_good_files(tmp_path / "staging", first + during, studies=4, rng=random.Random(seed() + 6))
    items = list(files.items())
    before, outage = dict(items[:first]), dict(items[first:])
    spool, port = tmp_path / "spool", free_port()
    pacs = orthanc_factory()
    pacs.start()
    config = service_config(tmp_path, tiny_model_dir, node={"ae_title": "MEDBLIP", "port": port},
                            forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"})
    service = services("node", config)
    service.start()
    service.wait_ready("listening on")

    dcmsend_all(dcmsend, port, list(before.values()))
    wait_for(lambda: pending(spool) == 0 and len(journal_rows(spool, "id")) == first, 120 + first,
             "the first instances delivered", interval_s=0.2)

    pacs.stop()
    down_at = time.monotonic()
    dcmsend_all(dcmsend, port, list(outage.values()))  # the node still takes everything

    min_outage_s = scaled(20, 5)  # "a while": at least this long, and every report tried 3 times

    def all_waiting_and_retried() -> bool:
        rows = [r for r in journal_rows(spool) if r["sop_instance_uid"] in outage]
        return time.monotonic() - down_at >= min_outage_s and len(rows) == during \
            and all(r["state"] == "reported" and r["attempts"] >= 3 for r in rows)

    wait_for(all_waiting_and_retried, 120 + during + min_outage_s,
             "every report waiting, each tried at least 3 times", interval_s=0.2)
    rows = journal_rows(spool, "state, attempts, reason, sop_instance_uid, next_attempt_at, updated_at")
    waiting = [r for r in rows if r["sop_instance_uid"] in outage]
    assert not [r for r in rows if r["state"] == "failed"]
    assert all("cannot be reached" in r["reason"] for r in waiting), {r["reason"] for r in waiting}
    # Backoff is capped at retry_max_s (1 s here, 300 s by default).
    assert max(r["next_attempt_at"] - r["updated_at"] for r in waiting) <= 1.0 + 0.05
    status = subprocess.run([sys.executable, "-m", "medblip_dicom", "status", "--spool", str(spool), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and json.loads(status.stdout)["queue_depth"] == during
    attempts_while_down = sum(r["attempts"] for r in waiting)
    outage_s = time.monotonic() - down_at

    pacs.start()
    back_at = time.monotonic()
    wait_for(lambda: pending(spool) == 0, 120 + during, "the waiting reports delivered", interval_s=0.1)
    lag = time.monotonic() - back_at
    assert service.stop() == 0

    rows = journal_rows(spool)
    assert Counter(r["state"] for r in rows) == Counter({"delivered": first + during})
    held = orthanc_srs(pacs, tmp_path / "from-orthanc")
    lost, duplicates = check_exactly_one_sr_each(held, files, weights_sha256)
    validated, validate_s = validate_srs(sorted((tmp_path / "from-orthanc").iterdir()))
    scanned = scan_for_patient_data(service.log, spool)
    figures.record("pacs_down", delivered_before=first, sent_while_down=during, outage_s=round(outage_s, 1),
                   delivery_attempts_while_down=attempts_while_down, delivered_after_s=round(lag, 1),
                   srs_in_orthanc=validated, lost=lost, duplicates=duplicates, failed=0,
                   peak_rss_mib=mib(service.max_peak_rss), dciodvfy_s=round(validate_s, 1),
                   files_scanned_for_phi=scanned)


def test_permanently_rejecting_destination_is_not_retried(tmp_path: Path, tiny_model_dir, services, tool, figures,
                                                           dciodvfy):
    """C-STORE answered with permanent failure statuses: each SR is offered once, then its job fails
    with the DICOM status. (A destination that cannot be reached or rejects the association is a
    different case -- down or misconfigured -- and is retried with capped backoff: see above.)"""
    dcmsend = tool("dcmsend")
    n = scaled(30, 9)
    files = make_good_files(tmp_path / "staging", n, studies=2, rng=random.Random(seed() + 7))
    refusals = (0xA900, 0xC000, 0x0122)  # data set does not match SOP class, cannot understand, class not supported
    lock = threading.Lock()
    answered: list[int] = []

    offered_srs = tmp_path / "offered"
    offered_srs.mkdir()

    def refuse(event) -> int:  # noqa: ANN001
        save_received(event, offered_srs)  # kept only to check its conformance below
        with lock:
            status = refusals[len(answered) % len(refusals)]
            answered.append(status)
        return status

    spool, port = tmp_path / "spool", free_port()
    with pynetdicom_scp(refuse, ae_title="REJECTOR") as (dest_port, received):
        config = service_config(tmp_path, tiny_model_dir, node={"ae_title": "MEDBLIP", "port": port},
                                forward={"destination": f"REJECTOR@127.0.0.1:{dest_port}"})
        service = services("node", config)
        service.start()
        service.wait_ready("listening on")
        dcmsend_all(dcmsend, port, list(files.values()))
        wait_for(lambda: len(journal_rows(spool, "id")) == n and pending(spool) == 0, 120 + 2 * n,
                 "every job finished", interval_s=0.2)
        assert service.stop() == 0
        offered = len(received)
    rows = journal_rows(spool)
    assert offered == n, f"{offered} C-STOREs for {n} reports: a refused report was offered again"
    assert all(r["state"] == "failed" and r["attempts"] == 0 for r in rows), [(r["state"], r["attempts"]) for r in rows]
    assert Counter(r["dicom_status"] for r in rows) == Counter(answered)
    for r in rows:
        assert r["error_class"] == "DestinationRejected" and "refused" in r["reason"], r
        final = Path(r["final_path"])
        reason = final.with_name(final.name + ".reason.txt").read_text()
        assert f"dicom_status: 0x{r['dicom_status']:04X}" in reason
    validated, _ = validate_srs(sorted(offered_srs.iterdir()))
    assert validated == n
    scanned = scan_for_patient_data(service.log, spool)
    figures.record("destination_rejects", reports=n, c_stores_offered=offered, retries=0,
                   failed_with_status={f"0x{k:04X}": v for k, v in Counter(answered).items()},
                   files_scanned_for_phi=scanned)


def test_rejected_association_is_retried_with_capped_backoff_never_failed(tmp_path: Path, tiny_model_dir, services,
                                                                          tool, figures):
    """A PACS that does not (yet) know our AE title rejects the association: that is a configuration
    an operator fixes, so reports wait (visible in ``medblip status``) at the capped backoff, and go
    out once the PACS accepts us."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage

    dcmsend = tool("dcmsend")
    n = 4
    files = make_good_files(tmp_path / "staging", n, studies=1, rng=random.Random(seed() + 8))
    spool, port, dest_port = tmp_path / "spool", free_port(), free_port()
    stored: list[str] = []
    ae = AE(ae_title="PICKYPACS")
    ae.add_supported_context(ComprehensiveSRStorage)
    ae.require_calling_aet = ["SOMEONEELSE"]
    received = tmp_path / "received"
    received.mkdir()

    def store(event) -> int:  # noqa: ANN001
        save_received(event, received)
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    handlers = [(evt.EVT_C_STORE, store)]
    server = ae.start_server(("127.0.0.1", dest_port), block=False, evt_handlers=handlers)
    try:
        config = service_config(tmp_path, tiny_model_dir, node={"ae_title": "MEDBLIP", "port": port},
                                forward={"destination": f"PICKYPACS@127.0.0.1:{dest_port}",
                                         "calling_ae_title": "MEDBLIP"})
        service = services("node", config)
        service.start()
        service.wait_ready("listening on")
        dcmsend_all(dcmsend, port, list(files.values()))
        wait_for(lambda: (rows := journal_rows(spool)) and len(rows) == n
                 and all(r["state"] == "reported" and r["attempts"] >= 3 for r in rows), 120,
                 "the reports retried at least 3 times", interval_s=0.2)
        rows = journal_rows(spool)
        assert all("rejected the association" in r["reason"] for r in rows)
        attempts = sum(r["attempts"] for r in rows)
        ae.require_calling_aet = ["MEDBLIP"]  # the PACS administrator adds us
        wait_for(lambda: pending(spool) == 0, 60, "delivery once the PACS accepts us", interval_s=0.1)
        assert service.stop() == 0
    finally:
        server.shutdown()
    assert Counter(r["state"] for r in journal_rows(spool)) == Counter({"delivered": n})
    assert len(set(stored)) == n
    assert validate_srs(sorted(received.iterdir()))[0] == n
    figures.record("association_rejected", reports=n, attempts_while_rejected=attempts, then_delivered=n, failed=0)
