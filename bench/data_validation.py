"""Training-data file check: our parallel check against a sequential open-and-verify loop.

Both contenders look at the same folder of ROCO-like JPEGs (the synthetic generator's pictures
scaled to ~800 px, like ROCO's figures, saved at quality 90) with some bad files mixed in (missing,
empty, truncated, not an image):

(a) sequential, the original notebook's way: for each row, ``Image.open(path).convert("RGB")``
    (a full decode) inside try/except;
(b) ``medblip_dicom.training.validation.validate_records``: a thread pool, JPEG draft decoding.

Prints files/s, the ratio b/a, and whether both dropped the same rows; appends to bench/RESULTS.md.

    python bench/data_validation.py            # 1,500 files
    python bench/data_validation.py --full     # 10,000 files
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from benchlib import RESULTS, record
from PIL import Image

from medblip_dicom.training.records import Record
from medblip_dicom.training.synthetic import make_sample
from medblip_dicom.training.validation import validate_records


def make_files(folder: Path, n: int) -> list[Record]:
    rng = random.Random(0)
    base = [make_sample(rng).image.resize((800, 800), Image.Resampling.BILINEAR).convert("RGB") for _ in range(20)]
    records = []
    for i in range(n):
        path = folder / f"ROCO_{i:06d}.jpg"
        kind = i % 50
        if kind == 0:
            pass  # missing
        elif kind == 1:
            path.write_bytes(b"")
        elif kind == 2:
            base[i % 20].save(path, quality=90)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == 3:
            path.write_bytes(os.urandom(4000))
        else:
            base[i % 20].save(path, quality=90)
        records.append(Record(path.stem, path, "a caption"))
    return records


def sequential(records: list[Record]) -> set[str]:
    bad = set()
    for r in records:
        try:
            with Image.open(r.image) as img:
                img.convert("RGB")
        except Exception:  # noqa: BLE001 - the notebook's catch-all
            bad.add(r.id)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = args.n or (10_000 if args.full else 1_500)
    with tempfile.TemporaryDirectory() as tmp:
        records = make_files(Path(tmp), n)
        started = time.perf_counter()
        bad_a = sequential(records)
        a = n / (time.perf_counter() - started)
        started = time.perf_counter()
        report = validate_records(records)
        b = n / (time.perf_counter() - started)
    bad_b = {r.id for r, _, _ in report.dropped}
    same = "yes" if bad_a == bad_b else f"NO ({len(bad_a ^ bad_b)} rows differ)"
    record("Data validation", f"{n} files, {len(bad_b)} bad (missing, empty, truncated, random bytes).", [
        "| contender | files/s |", "|---|---|",
        f"| (a) sequential open + full decode | {a:.0f} |",
        f"| (b) validate_records (threads, draft decode) | {b:.0f} |",
        f"| **b/a** | **{b / a:.2f}** |",
        f"| same rows dropped | {same} |"], argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
