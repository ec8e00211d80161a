"""Scale, seed and figures of the reliability tests (printed with -s, collected as JSON)."""

from __future__ import annotations

import json
import os
import platform
import threading
from pathlib import Path
from typing import Any


#: Scale of the tests when MEDBLIP_RELIABILITY_SCALE is not set (1.0 = the full-size figures the reliability page states).
DEFAULT_SCALE = 0.2


#: The service process (tiny test model, CPU, 8 images a batch) must stay under this, whatever the load.
PEAK_RSS_BOUND = 1536 * 2**20


#: Every SR the reliability tests produced and checked with dciodvfy (all tests of the session).
CONFORMANCE = {"srs_validated": 0, "srs_with_errors": 0}


def scale() -> float:
    """MEDBLIP_RELIABILITY_SCALE (default :data:`DEFAULT_SCALE`)."""
    text = os.environ.get("MEDBLIP_RELIABILITY_SCALE", "").strip()
    value = float(text) if text else DEFAULT_SCALE
    if not value > 0:
        raise ValueError(f"MEDBLIP_RELIABILITY_SCALE must be > 0, got {text!r}")
    return value


def scaled(full: int, minimum: int = 1) -> int:
    """`full` (the number at scale 1.0) times the scale, at least `minimum`."""
    return max(minimum, round(full * scale()))


def seed() -> int:
    """MEDBLIP_RELIABILITY_SEED (default 5): the random choices of a run can be repeated."""
    return int(os.environ.get("MEDBLIP_RELIABILITY_SEED", "5"))


class Figures:
    """Each test's figures: printed at its end (visible with -s) and collected into the JSON file
    named by MEDBLIP_RELIABILITY_REPORT (rewritten after every test, so a partial run keeps its figures)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {
            "scale": scale(),
            "seed": seed(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "tests": {},
        }
        self._lock = threading.Lock()

    def record(self, test: str, **values: Any) -> None:
        with self._lock:
            self.data["tests"][test] = values
            self.data["conformance"] = dict(CONFORMANCE)
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            print(f"\n[reliability] {test} (scale {scale():g}): {shown}")
            print(f"[reliability] SRs checked with dciodvfy so far: {CONFORMANCE['srs_validated']}, "
                  f"with errors: {CONFORMANCE['srs_with_errors']}")
            target = os.environ.get("MEDBLIP_RELIABILITY_REPORT")
            if target:
                path = Path(target)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False) + "\n")
                os.replace(tmp, path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def mib(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**20, 1)
