"""Bad input: hundreds of malformed files and data sets, with good ones in between.

No crash and no hang; each malformed input is quarantined with a reason (``failed/`` with a
``.reason.txt``, or -- for valid non-images such as SRs and DICOMDIRs -- recorded as skipped with a
reason); the good inputs between them are still captioned; memory stays bounded (absurd claimed
dimensions are refused from the header, never decoded).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from pathlib import Path

import pydicom

from tests.support.checks import check_exactly_one_sr_each, check_output_folder, validate_srs
from tests.support.dicom import load_template, requested_contexts
from tests.support.env import wait_for
from tests.support.figures import PEAK_RSS_BOUND, mib, scaled, seed
from tests.support.inputs import BadInput, drop_into, make_bad_inputs, make_good_files
from tests.support.journal import journal_rows, pending
from tests.support.privacy import PATIENT_ID, PATIENT_NAME, scan_for_patient_data
from tests.support.services import service_config

from tests.support.env import free_port

#: A valid image carrying a private element this large: captioned, and memory stays bounded.
BIG_PRIVATE_BYTES = 48 * 2**20


def big_private_tag_image(folder: Path) -> tuple[str, Path]:
    """A real CT with a 48 MiB private OB element: valid, so it must be captioned like any other."""
    from pydicom.uid import generate_uid

    ds = load_template("CT_small.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    block = ds.private_block(0x0009, "MEDBLIP RELIABILITY", create=True)
    block.add_new(0x01, "OB", b"\x5a" * BIG_PRIVATE_BYTES)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "good-big-private-tag.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID), path


def reason_fields(path: Path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)


def test_malformed_files_into_the_watch_folder(tmp_path: Path, tiny_model_dir, services, figures, weights_sha256,
                                               dciodvfy):
    rng = random.Random(seed() + 4)
    n_bad = max(510, scaled(1000))
    bad = make_bad_inputs(tmp_path / "staging" / "bad", n_bad, rng)
    good = make_good_files(tmp_path / "staging" / "good", n_bad // 10, studies=5, rng=rng)
    big_uid, big_path = big_private_tag_image(tmp_path / "staging" / "good")
    good[big_uid] = big_path
    good_list = list(good.values())
    order: list[Path] = []
    for i, item in enumerate(bad):  # a good file after every ten bad ones
        order.append(item.path)
        if i % 10 == 9 and good_list:
            order.append(good_list.pop())
    order += good_list
    inbox, out, spool = tmp_path / "inbox", tmp_path / "out", tmp_path / "spool"
    inbox.mkdir()
    config = service_config(tmp_path, tiny_model_dir, watch={"inbox": inbox, "settle_s": 0.5},
                            output={"dir": out})
    service = services("watch", config)
    service.start()
    service.wait_ready("watching ")

    total = len(order)
    started = time.perf_counter()
    drop_into(inbox, order)
    wait_for(lambda: len(journal_rows(spool, "id")) == total and pending(spool) == 0, 180 + 0.5 * total,
             f"all {total} inputs taken and finished (no hang)", interval_s=0.25)
    elapsed = time.perf_counter() - started
    assert service.alive(), "the service crashed:\n" + service.log_text()[-3000:]
    peak = service.rss_peak_now()
    assert service.stop() == 0

    failed_dir, done_dir = inbox / "failed", inbox / "done"
    by_class: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    wrong: list[tuple[str, str, str]] = []
    for item in bad:
        folder = failed_dir if item.expect == "failed" else done_dir
        target, reason_file = folder / item.path.name, folder / f"{item.path.name}.reason.txt"
        if not (target.exists() and reason_file.exists()):
            elsewhere = [p for p in (failed_dir / item.path.name, done_dir / item.path.name) if p.exists()]
            wrong.append((item.path.name, item.kind, f"expected {item.expect}, found {elsewhere}"))
            continue
        fields = reason_fields(reason_file)
        assert fields.get("state") == item.expect and fields.get("error") and fields.get("message"), fields
        if item.kind.startswith("claimed 65535"):  # refused from the header, never decoded
            assert fields["error"] == "InvalidDicomError" and "refusing to decode" in fields["message"], fields
        by_class[fields["error"]] += 1
        by_kind[re.sub(r" \(.*", "", item.kind)] += 1
    assert not wrong, f"{len(wrong)} malformed input(s) not quarantined as expected, e.g. {wrong[:5]}"
    for path in good.values():
        assert (done_dir / path.name).exists() and not (done_dir / f"{path.name}.reason.txt").exists(), path.name
    rows = journal_rows(spool)
    assert Counter(r["state"] for r in rows) == Counter(
        {"failed": sum(b.expect == "failed" for b in bad), "skipped": sum(b.expect == "skipped" for b in bad),
         "delivered": len(good)})
    lost, duplicates = check_exactly_one_sr_each(check_output_folder(out), good, weights_sha256)
    validated, validate_s = validate_srs(sorted(out.iterdir()))
    scanned = scan_for_patient_data(service.log, spool, failed_dir, done_dir)
    assert peak is not None and peak < PEAK_RSS_BOUND, f"peak RSS {mib(peak)} MiB"
    figures.record("bad_input_watch", malformed=len(bad), good=len(good), quarantined_failed=by_class.total()
                   - by_class.get("NotAnImageError", 0), recorded_skipped=by_class.get("NotAnImageError", 0),
                   by_error=dict(by_class), by_kind=dict(by_kind), good_captioned=validated, lost=lost,
                   duplicates=duplicates, all_finished_s=round(elapsed, 1), peak_rss_mib=mib(peak),
                   rss_bound_mib=mib(PEAK_RSS_BOUND), big_private_tag_mib=mib(BIG_PRIVATE_BYTES),
                   dciodvfy_s=round(validate_s, 1), files_scanned_for_phi=scanned)


def sendable(items: list[BadInput]) -> list[BadInput]:
    """The malformed inputs a storage SCU can put on the wire as they are (a file meta naming the SOP
    class and the transfer syntax)."""
    out = []
    for item in items:
        try:
            meta = pydicom.dcmread(item.path, stop_before_pixels=True).file_meta
            if meta.get("MediaStorageSOPClassUID") and meta.get("TransferSyntaxUID") \
                    and meta.MediaStorageSOPClassUID != "1.2.840.10008.1.3.10":
                out.append(item)
        except Exception:  # noqa: BLE001 - not sendable as a Part 10 file
            continue
    return out


def test_malformed_data_sets_sent_to_the_node(tmp_path: Path, tiny_model_dir, services, figures, weights_sha256,
                                              dciodvfy, monkeypatch):
    """Over C-STORE, each file's data set sent byte for byte as it is (debug logging on: the logs must
    still hold no patient data)."""
    from pynetdicom import AE, _config

    # Send the bytes after the file meta unchanged (by default pynetdicom decodes and re-encodes,
    # which would repair some damage and inflate a deflate bomb in the sender).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    rng = random.Random(seed() + 5)
    bad = sendable(make_bad_inputs(tmp_path / "staging" / "bad", scaled(600, 150), rng))
    good = make_good_files(tmp_path / "staging" / "good", max(10, len(bad) // 5), studies=3, rng=rng)
    good_items = list(good.items())
    order: list[tuple[str, Path, BadInput | None]] = []
    for i, item in enumerate(bad):
        order.append((str(item.path), item.path, item))
        if i % 5 == 4 and good_items:
            uid, path = good_items.pop()
            order.append((uid, path, None))
    order += [(uid, path, None) for uid, path in good_items]
    out, spool, port = tmp_path / "out", tmp_path / "spool", free_port()
    config = service_config(tmp_path, tiny_model_dir, output={"dir": out},
                            node={"ae_title": "MEDBLIP", "port": port})
    service = services("node", config, "-v")
    service.start()
    service.wait_ready("listening on")

    ae = AE(ae_title="MODALITY")
    for sop_class, syntax in requested_contexts([path for _, path, _ in order])[:120]:
        ae.add_requested_context(sop_class, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    statuses: dict[str, int | None] = {}
    unsendable = reassociations = 0
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDBLIP")
    started = time.perf_counter()
    try:
        for key, path, item in order:
            if not assoc.is_established:
                reassociations += 1
                assoc = ae.associate("127.0.0.1", port, ae_title="MEDBLIP")
                assert assoc.is_established, "the node stopped accepting associations"
            try:
                status = assoc.send_c_store(path)
            except Exception:  # noqa: BLE001 - pynetdicom refuses (or trips over) some files before sending
                assert item is not None, f"a good file could not be sent: {path}"
                unsendable += 1  # the SCU itself refuses to put it on the wire
                continue
            statuses[key] = getattr(status, "Status", None)
    finally:
        if assoc.is_established:
            assoc.release()
    sent_s = time.perf_counter() - started
    stored = sum(1 for s in statuses.values() if s == 0x0000)
    wait_for(lambda: len(journal_rows(spool, "id")) == stored and pending(spool) == 0, 120 + len(order),
             "every stored instance finished", interval_s=0.25)
    assert service.alive(), "the service crashed:\n" + service.log_text()[-3000:]
    peak = service.rss_peak_now()
    assert service.stop() == 0

    for uid in good:
        assert statuses.get(uid) == 0x0000, f"good instance {uid}: status {statuses.get(uid)}"
    rows = journal_rows(spool)
    outcomes: Counter[str] = Counter()
    for key, path, item in order:
        if item is None or key not in statuses:
            continue
        status = statuses[key]
        if status != 0x0000:
            assert status in (0xC210, 0xA900) or (status is not None and 0xC000 <= status <= 0xCFFF), hex(status or 0)
            outcomes[f"refused 0x{status:04X}"] += 1
    failed_rows = [r for r in rows if r["state"] == "failed"]
    skipped_rows = [r for r in rows if r["state"] == "skipped"]
    assert all(r["reason"] for r in failed_rows + skipped_rows)
    for r in failed_rows:  # the input is in SPOOL/failed with its reason file
        final = Path(r["final_path"])
        assert final.parent == spool / "failed" and final.exists(), r
        assert reason_fields(final.with_name(final.name + ".reason.txt"))["state"] == "failed"
    outcomes["stored, then failed with a reason"] = len(failed_rows)
    outcomes["stored, then skipped with a reason"] = len(skipped_rows)
    delivered = {r["sop_instance_uid"] for r in rows if r["state"] == "delivered"}
    assert delivered == set(good), "exactly the good instances are captioned"
    lost, duplicates = check_exactly_one_sr_each(check_output_folder(out), good, weights_sha256)
    validated, validate_s = validate_srs(sorted(out.iterdir()))
    text = service.log_text()
    assert "DEBUG" in text  # the scan below covered debug output too
    scanned = scan_for_patient_data(service.log, spool)
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    assert peak is not None and peak < PEAK_RSS_BOUND, f"peak RSS {mib(peak)} MiB"
    figures.record("bad_input_node", malformed_sent=len(bad) - unsendable, unsendable_by_scu=unsendable,
                   good=len(good), outcomes=dict(outcomes), reassociations=reassociations,
                   good_captioned=validated, lost=lost, duplicates=duplicates, send_s=round(sent_s, 1),
                   peak_rss_mib=mib(peak), dciodvfy_s=round(validate_s, 1), files_scanned_for_phi=scanned)
