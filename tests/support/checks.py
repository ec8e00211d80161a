"""The checks every reliability test ends with: output folders, one SR per instance, conformance."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom

from tests.support.dicom import COMPREHENSIVE_SR, dciodvfy_errors, sr_source_uid
from tests.support.figures import CONFORMANCE


def check_output_folder(out: Path) -> dict[str, list[str]]:
    """Every entry of an output folder is a complete SR named ``<its SOPInstanceUID>.dcm`` (no temporary,
    partial or foreign file). Returns {source SOPInstanceUID: [SR SOPInstanceUIDs]}."""
    by_source: dict[str, list[str]] = {}
    if not out.exists():
        return by_source
    for entry in sorted(out.iterdir()):
        assert entry.is_file() and re.fullmatch(r"[0-9.]{1,64}\.dcm", entry.name), \
            f"unexpected entry {entry.name!r} in the output folder {out}"
        ds = pydicom.dcmread(entry)  # a truncated file raises here
        assert str(ds.SOPInstanceUID) == entry.name[:-4], f"{entry.name}: SOPInstanceUID {ds.SOPInstanceUID}"
        assert str(ds.SOPClassUID) == COMPREHENSIVE_SR
        assert ds.VerificationFlag == "UNVERIFIED"
        by_source.setdefault(sr_source_uid(ds), []).append(str(ds.SOPInstanceUID))
    return by_source


def validate_srs(paths: Iterable[Path], workers: int = 4) -> tuple[int, float]:
    """Run dciodvfy on every file (in parallel); assert zero errors. Returns (files, seconds)."""
    paths = list(paths)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(dciodvfy_errors, paths))
    bad = {str(p): errs for p, errs in zip(paths, results, strict=True) if errs}
    CONFORMANCE["srs_validated"] += len(paths)
    CONFORMANCE["srs_with_errors"] += len(bad)
    assert not bad, f"dciodvfy errors in {len(bad)} of {len(paths)} SRs, e.g. " + json.dumps(
        dict(list(bad.items())[:2]), indent=1)
    return len(paths), time.perf_counter() - started


def expected_sr_uid(source_uid: str, weights_sha256: str) -> str:
    """The SR SOPInstanceUID the service must give the report on `source_uid` (deterministic)."""
    from medblip_dicom.uids import stable_uid

    return stable_uid("medblip-dicom/sr", source_uid, weights_sha256)


def check_exactly_one_sr_each(by_source: dict[str, list[str]], sources: Iterable[str],
                              weights_sha256: str) -> tuple[int, int]:
    """Each source has exactly one SR, with the expected UID; no SR for anything else.

    Returns (lost, duplicates) -- both asserted to be 0, returned for the figures."""
    sources = set(sources)
    lost = sorted(sources - set(by_source))
    extra = sorted(set(by_source) - sources)
    duplicates = {s: uids for s, uids in by_source.items() if len(uids) != 1}
    assert not lost, f"{len(lost)} instance(s) without an SR, e.g. {lost[:3]}"
    assert not extra, f"{len(extra)} SR(s) for instances never sent, e.g. {extra[:3]}"
    assert not duplicates, f"{len(duplicates)} instance(s) with more than one SR, e.g. {list(duplicates.items())[:2]}"
    wrong = [s for s, uids in by_source.items() if uids[0] != expected_sr_uid(s, weights_sha256)]
    assert not wrong, f"{len(wrong)} SR(s) with an unexpected UID (not idempotent), e.g. {wrong[:3]}"
    return len(lost), len(duplicates)
