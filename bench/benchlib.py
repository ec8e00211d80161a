"""What every benchmark script shares: the machine line and appending a run to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """CPU model and count (and the GPU when torch sees one)."""
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()} x {model}"
    try:
        import torch

        text += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
        if torch.cuda.is_available():
            text = f"GPU {torch.cuda.get_device_name(0)}; " + text
    except ImportError:
        pass
    return text


def record(title: str, description: str, table: list[str], argv: list[str] | None,
           results: Path = RESULTS) -> str:
    """Print a run (heading, machine, command, description, table) and append it to `results`."""
    script = Path(sys.argv[0]).name
    command = f"python bench/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([f"### {title} — {datetime.date.today().isoformat()}",
                      f"Machine: {machine()}. Command: `{command.strip()}`. {description}", "", *table, ""])
    print(text)
    with results.open("a", encoding="utf-8") as fh:
        fh.write("\n" + text)
    return text
