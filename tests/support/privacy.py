"""The one invented patient of every test input, and the check that it never leaks.

Logs, reason files, journals, status output and metrics may carry UIDs, never a patient's name
or ID; every test input carries this distinctive patient so that a leak is found.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


PATIENT_NAME = "Reliabilitytest^Ottoline^Quennell"
PATIENT_ID = "RLB-4417-ZXQ"
SECRETS = (PATIENT_NAME, PATIENT_ID, *PATIENT_NAME.split("^"))


def assert_no_patient_data(text: str | bytes, where: str = "logs or reason files") -> None:
    """None of the test patient's name parts or ID may appear in `text`."""
    blob = text.encode("utf-8", "replace") if isinstance(text, str) else text
    for value in SECRETS:
        assert value.encode() not in blob, f"patient data {value!r} found in {where}"


def scan_for_patient_data(*paths: Path) -> int:
    """Check logs and the files beside the outputs (reason files, journals) for patient data; returns the
    number of files scanned. DICOM files (inputs and SRs, which carry the patient by design) are not scanned."""
    scanned = 0
    for root in paths:
        candidates = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in candidates:
            if path.suffix == ".dcm" or path.name.endswith("DICOMDIR") or "/inputs/" in path.as_posix():
                continue
            if path.suffix in (".log", ".txt", ".json", ".toml") or path.name.startswith("journal.sqlite"):
                assert_no_patient_data(path.read_bytes(), str(path))
                scanned += 1
    return scanned


def value_forms(value: str) -> set[bytes]:
    """The ways a log may hold `value`: as UTF-8, JSON-escaped (``\\u00fc``, ``\\\\``) and repr-escaped."""
    import json

    forms = {value.encode("utf-8"), json.dumps(value, ensure_ascii=True)[1:-1].encode(),
             json.dumps(value, ensure_ascii=False)[1:-1].encode("utf-8"), value.encode("unicode_escape")}
    return {f for f in forms if f}


def find_values(values: Iterable[str], *paths: Path, skip: Iterable[str] = ()) -> list[str]:
    """Every non-DICOM file under `paths` (logs, reason files, journals, anything but a Part 10 file,
    which carries the patient by design) holding one of `values` in any of its :func:`value_forms`:
    ``"file: value"`` per hit. Files named in `skip` are not read."""
    wanted = [(value, value_forms(value)) for value in values]
    skipped = set(skip)
    hits = []
    for root in paths:
        candidates = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
        for path in candidates:
            if path.name in skipped:
                continue
            blob = path.read_bytes()
            if blob[128:132] == b"DICM":
                continue
            hits += [f"{path}: {value!r}" for value, forms in wanted if any(f in blob for f in forms)]
    return hits
