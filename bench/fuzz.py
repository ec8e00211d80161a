"""Fuzz the inputs an outsider controls for a while, and count what was found.

The fuzz targets live in ``tests/security/test_fuzz.py`` (the multipart parser and the STOW-RS
Content-Type, the DICOM reader and pixel path, the TOML configuration, the review API). In CI
each runs a fixed, derandomized few seconds; here each runs for ``--seconds`` from ``--seed``
(``MEDBLIP_FUZZ_SECONDS`` / ``MEDBLIP_FUZZ_SEED``), in its own pytest process, counting every
failing input instead of stopping at the first. The table (target, inputs tried, failures found,
kinds of failure) is printed and appended to RESULTS.md; the first failing input of each target,
with its traceback, is saved under ``--out/<target>/``.

Exit status: 0 when no target failed, 1 when some input failed, 2 when a target did not report
(it crashed or ran past its time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import RESULTS, record

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = "tests/security/test_fuzz.py"


def targets() -> list[str]:
    """The fuzz targets of the test file (the tests its ``fuzz_target`` decorator marked)."""
    sys.path.insert(0, str(ROOT))
    from tests.security import test_fuzz

    return [f.fuzz_target for f in vars(test_fuzz).values() if callable(f) and hasattr(f, "fuzz_target")]


def run_target(name: str, seconds: float, seed: int, out: Path) -> dict:
    """Run one target for `seconds` in a pytest process; its findings (None when it did not report)."""
    (out / f"{name}.json").unlink(missing_ok=True)
    env = {**os.environ, "MEDBLIP_FUZZ_SECONDS": str(seconds), "MEDBLIP_FUZZ_SEED": str(seed),
           "MEDBLIP_FUZZ_OUT": str(out)}
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"{TEST_FILE}::test_{name}"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=seconds * 3 + 300)
        tail = done.stdout[-2000:]
    except subprocess.TimeoutExpired:
        tail = "timed out"
    report = out / f"{name}.json"
    if not report.exists():
        return {"target": name, "error": tail, "wall": time.monotonic() - started}
    return {**json.loads(report.read_text(encoding="utf-8")), "wall": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per target (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument("--targets", nargs="+", default=None, help="only these targets (default all)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "medblip-fuzz",
                        help="where the first failing input of each target is saved")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = args.targets or targets()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, status = [], 0
    for name in names:
        found = run_target(name, args.seconds, args.seed, args.out)
        if "error" in found:
            status = 2
            print(f"{name}: no report ({found['error'][-500:]})", file=sys.stderr)
            rows.append(f"| {name} | - | - | - | did not report (crashed or ran past its time) | - |")
            continue
        kinds = "; ".join(f"{k} x{n}" for k, n in sorted(found["kinds"].items(), key=lambda kv: -kv[1])[:3]) or "-"
        first = str(args.out / name) if found["failures"] else "-"
        rows.append(f"| {name} | {found['tried']} | {found['tried'] / args.seconds:.0f} | {found['failures']} | "
                    f"{kinds} | {first} |")
        if found["failures"]:
            status = max(status, 1)
    record("Fuzzing", f"Each target {args.seconds:.0f} s from seed {args.seed}, in its own pytest process; "
           "failures are failing inputs (a traceback, a hang, a 500, a broken limit), kinds by where they raised.",
           ["| target | inputs tried | inputs/s | failures | kinds | first failing input |",
            "|---|---|---|---|---|---|", *rows], argv, args.results)
    return status


if __name__ == "__main__":
    sys.exit(main())
