"""Flood: many files dropped into the watch inbox at once, many concurrent associations into the node.

Every instance must end with exactly one SR (or one failed record with its reason): 0 lost,
0 duplicates, and the service's peak memory stays under
:data:`reliability_helpers.PEAK_RSS_BOUND`.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from tests.support.checks import check_exactly_one_sr_each, check_output_folder, validate_srs
from tests.support.dicom import requested_contexts
from tests.support.env import wait_for
from tests.support.figures import PEAK_RSS_BOUND, mib, scale, scaled, seed
from tests.support.inputs import FLOOD_TEMPLATES, drop_into, make_good_files
from tests.support.journal import journal_rows, pending
from tests.support.privacy import scan_for_patient_data
from tests.support.services import service_config

from tests.support.env import free_port



def test_flood_watch_inbox(tmp_path: Path, tiny_model_dir, services, figures, weights_sha256, dciodvfy):
    n = scaled(1000, 50)
    files = make_good_files(tmp_path / "staging", n, studies=20, rng=random.Random(seed()))
    inbox, out, spool = tmp_path / "inbox", tmp_path / "out", tmp_path / "spool"
    inbox.mkdir()
    config = service_config(tmp_path, tiny_model_dir, watch={"inbox": inbox, "settle_s": 0.5},
                            output={"dir": out}, worker={"batch_size": 8})
    service = services("watch", config)
    service.start()
    startup = service.wait_ready("watching ")

    started = time.perf_counter()
    drop_into(inbox, files.values())  # all of them at once: one rename each
    dropped_s = time.perf_counter() - started
    wait_for(lambda: len(journal_rows(spool, "id")) == n and pending(spool) == 0, 120 + 1.5 * n,
             f"all {n} files taken and finished", interval_s=0.25)
    elapsed = time.perf_counter() - started
    assert service.alive()
    peak = service.rss_peak_now()
    assert service.stop() == 0

    rows = journal_rows(spool)
    by_uid: dict[str, list[dict]] = {}
    for row in rows:
        by_uid.setdefault(row["sop_instance_uid"], []).append(row)
    assert set(by_uid) == set(files) and all(len(v) == 1 for v in by_uid.values()), "one job per instance"
    assert {row["state"] for row in rows} == {"delivered"}, {row["state"] for row in rows}
    done = {p.name for p in (inbox / "done").iterdir()}
    assert done == {p.name for p in files.values()}
    assert not (inbox / "failed").exists() or not any((inbox / "failed").iterdir())
    assert [p for p in inbox.iterdir() if p.name not in ("done", "failed")] == []
    lost, duplicates = check_exactly_one_sr_each(check_output_folder(out), files, weights_sha256)
    validated, validate_s = validate_srs(sorted(out.iterdir()))
    scanned = scan_for_patient_data(service.log, spool, inbox / "done")
    assert peak is not None and peak < PEAK_RSS_BOUND, f"peak RSS {mib(peak)} MiB"
    figures.record("flood_watch", files=n, drop_s=round(dropped_s, 2), all_delivered_s=round(elapsed, 1),
                   instances_per_s=round(n / elapsed, 1), srs=validated, lost=lost, duplicates=duplicates,
                   failed=0, peak_rss_mib=mib(peak), rss_bound_mib=mib(PEAK_RSS_BOUND),
                   startup_s=round(startup, 1), dciodvfy_s=round(validate_s, 1), files_scanned_for_phi=scanned)


def test_flood_node_concurrent_associations(tmp_path: Path, tiny_model_dir, services, figures, weights_sha256,
                                            dciodvfy):
    """All associations are open at the same time (a barrier) before any instance is sent."""
    from pynetdicom import AE

    s = scale()
    associations = 20 if s <= 1 else round(20 * s)
    per_association = scaled(50, 5) if s <= 1 else 50
    n = associations * per_association
    files = make_good_files(tmp_path / "staging", n, studies=associations, rng=random.Random(seed() + 1))
    items = list(files.items())
    contexts = requested_contexts(FLOOD_TEMPLATES)
    out, spool, port = tmp_path / "out", tmp_path / "spool", free_port()
    config = service_config(tmp_path, tiny_model_dir, output={"dir": out},
                            node={"ae_title": "MEDBLIP", "port": port, "max_associations": associations + 4})
    service = services("node", config)
    service.start()
    startup = service.wait_ready("listening on")

    statuses: dict[str, int | None] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(associations)
    errors: list[BaseException] = []

    def send(k: int) -> None:
        try:
            ae = AE(ae_title=f"MODALITY{k:02d}")
            for sop_class, syntax in contexts:
                ae.add_requested_context(sop_class, syntax)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
            assoc = ae.associate("127.0.0.1", port, ae_title="MEDBLIP")
            try:
                barrier.wait(timeout=60)  # every association is established before anything is sent
                assert assoc.is_established, f"association {k} was not established"
                for uid, path in items[k * per_association:(k + 1) * per_association]:
                    status = assoc.send_c_store(path)
                    with lock:
                        statuses[uid] = getattr(status, "Status", None)
            finally:
                if assoc.is_established:
                    assoc.release()
        except BaseException as exc:  # noqa: BLE001 - reported below
            barrier.abort()
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=send, args=(k,), name=f"flood-sender-{k}") for k in range(associations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    received_s = time.perf_counter() - started
    assert not errors, errors[:3]
    assert all(not t.is_alive() for t in threads)
    succeeded = {uid for uid, status in statuses.items() if status == 0x0000}
    assert len(statuses) == n and len(succeeded) == n, {hex(s) if s is not None else s for s in statuses.values()}
    wait_for(lambda: pending(spool) == 0 and len(journal_rows(spool, "id")) == n, 120 + 1.5 * n,
             f"all {n} instances captioned and delivered", interval_s=0.25)
    elapsed = time.perf_counter() - started
    peak = service.rss_peak_now()
    assert service.stop() == 0

    rows = journal_rows(spool)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(files), "one job per instance"
    assert {r["state"] for r in rows} == {"delivered"}
    lost, duplicates = check_exactly_one_sr_each(check_output_folder(out), succeeded, weights_sha256)
    validated, validate_s = validate_srs(sorted(out.iterdir()))
    scanned = scan_for_patient_data(service.log, spool)
    assert peak is not None and peak < PEAK_RSS_BOUND, f"peak RSS {mib(peak)} MiB"
    figures.record("flood_node", associations=associations, instances_per_association=per_association,
                   instances=n, c_store_success=len(succeeded), all_received_s=round(received_s, 1),
                   received_per_s=round(n / received_s, 1), all_delivered_s=round(elapsed, 1),
                   srs=validated, lost=lost, duplicates=duplicates, failed=0, peak_rss_mib=mib(peak),
                   rss_bound_mib=mib(PEAK_RSS_BOUND), startup_s=round(startup, 1),
                   dciodvfy_s=round(validate_s, 1), files_scanned_for_phi=scanned)
