"""The node's C-STORE handler, per instance and by component, in one process (no network).

Builds N real pynetdicom C-STORE events (CT_small re-issued with fresh UIDs, explicit VR little
endian, ~38 KiB) and hands each to ``StorageNode.handle_store`` on a real spool on disk, with the
service's telemetry (Prometheus metrics and an audit trail) and its logging (INFO to a file,
through the redaction filters), exactly as ``medblip node`` runs it. It prints, per instance:

- the handler's wall time and CPU time (``time.thread_time``: the wall time less the fsync waits),
  median and 10th percentile over `--rounds` rounds, without any instrumentation;
- then, in separate rounds, the wall time of each component, timed by wrapping the functions the
  handler calls (parse, parse check, header facts, the Part 10 bytes, the spool's admission and
  its parts, logging, telemetry); a component the code does not have is left out.

Run it at two commits to compare a change (the figures of one run compare; the machine is shared):

    python bench/node_profile.py [--n 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from benchlib import RESULTS, record
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: (module, attribute, label): what is timed when present. Several rows may share a label (the
#: same job done by another function in another version of the code).
COMPONENTS = (
    ("pynetdicom.events", "Event._get_dataset", "parse (pynetdicom decode)"),
    ("medblip_dicom.integrations.ingest.node", "scan", "parse and parse check, one pass (scan)"),
    ("medblip_dicom.integrations.ingest.node", "check_parsable", "parse check"),
    ("medblip_dicom.integrations.ingest.admit", "check_parsable", "parse check"),
    ("medblip_dicom.integrations.ingest.node", "instance_info", "header facts"),
    ("medblip_dicom.integrations.ingest.admit", "instance_info", "header facts"),
    ("pynetdicom.events", "Event.encoded_dataset", "Part 10 bytes"),
    ("medblip_dicom.integrations.ingest.node", "received_file", "Part 10 bytes"),
    ("medblip_dicom.integrations.spool.spool", "Spool.add_bytes", "spool admission (add_bytes, all)"),
    ("medblip_dicom.integrations.spool.files", "SpaceGuard._check", "  space check"),
    ("medblip_dicom.integrations.spool.files", "ContentHasher.update", "  content hash"),
    ("medblip_dicom.integrations.spool.spool", "os.fsync", "  fsync (file and folder)"),
    ("medblip_dicom.integrations.spool.spool", "commit_arrivals", "  group commit (rename, folder fsync, journal)"),
    ("medblip_dicom.integrations.spool.journal", "Journal.duplicate_of", "    duplicate lookup"),
    ("medblip_dicom.integrations.spool.spool", "logger._log", "  spool log line"),
    ("medblip_dicom.integrations.ingest.node", "logger._log", "node log line"),
    ("medblip_dicom.integrations.ingest.admit", "logger._log", "node log line"),
    ("medblip_dicom.integrations.ops.telemetry", "Telemetry.cstore", "telemetry (metrics)"),
    ("medblip_dicom.integrations.ops.telemetry", "Telemetry.stored", "telemetry (audit)"),
)


def make_events(n: int) -> list[Any]:
    """N C-STORE events as pynetdicom's Association hands them to a handler."""
    from pynetdicom import evt
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event
    from pynetdicom.presentation import PresentationContextTuple

    from medblip_dicom.dicomfile import content_offset

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assoc = types.SimpleNamespace(requestor=types.SimpleNamespace(ae_title="MODALITY", address="127.0.0.1"))
    context = PresentationContextTuple(1, str(src.SOPClassUID), ExplicitVRLittleEndian)
    events = []
    for _ in range(n):
        src.SOPInstanceUID = generate_uid()
        src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
        buffer = io.BytesIO()
        src.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        request = C_STORE()
        request.AffectedSOPClassUID = src.SOPClassUID
        request.AffectedSOPInstanceUID = src.SOPInstanceUID
        request.DataSet = io.BytesIO(data[content_offset(data):])
        events.append(Event(assoc, evt.EVT_C_STORE, {"request": request, "context": context}))
    return events


def _resolve(module: str, attribute: str) -> tuple[Any, str] | None:
    try:
        owner: Any = importlib.import_module(module)
    except ImportError:
        return None
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return (owner, name) if hasattr(owner, name) else None


def instrument(times: dict[str, list[float]]) -> Callable[[], None]:
    """Wrap every component present with a timer; returns the function that unwraps them."""
    undo = []
    seen: set[tuple[int, str]] = set()
    for module, attribute, label in COMPONENTS:
        found = _resolve(module, attribute)
        if found is None or (id(found[0]), found[1]) in seen:
            continue
        owner, name = found
        seen.add((id(owner), name))
        original = getattr(owner, name)

        def timed(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                times.setdefault(_label, []).append(time.perf_counter() - began)

        functools.update_wrapper(timed, original)
        setattr(owner, name, timed)
        undo.append((owner, name, original))

    def restore() -> None:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)

    return restore


def one_round(n: int, work: Path, *, instrumented: bool) -> dict[str, list[float]]:
    """Hand N events to a fresh node on a fresh spool; the per-event times (and components)."""
    from medblip_dicom.integrations.config.file import config_from_dict
    from medblip_dicom.integrations.ingest.node import StorageNode
    from medblip_dicom.integrations.ops.audit import AuditTrail
    from medblip_dicom.integrations.ops.metrics import ServiceMetrics
    from medblip_dicom.integrations.ops.telemetry import Telemetry
    from medblip_dicom.integrations.spool import Spool

    events = make_events(n)
    times: dict[str, list[float]] = {}
    config = config_from_dict({"model": {"path": "unused"}, "output": {"dir": str(work / "unused")},
                               "node": {"port": 0}})
    with Spool(work / "spool", min_free_bytes=0) as spool:
        metrics = ServiceMetrics(spool, destinations=("folder",), worker_alive=lambda: True)
        audit = AuditTrail(work / "audit.log", source_id="MEDBLIP")
        node = StorageNode(spool, config.node, Telemetry(metrics=metrics, audit=audit, ae_title="MEDBLIP"))
        restore = instrument(times) if instrumented else (lambda: None)
        try:
            for event in events:
                wall, cpu = time.perf_counter(), time.thread_time()
                status = node.handle_store(event)
                times.setdefault("CPU", []).append(time.thread_time() - cpu)
                times.setdefault("WALL", []).append(time.perf_counter() - wall)
                if status != 0 and getattr(status, "Status", None) != 0:
                    raise SystemExit(f"the handler refused an instance: {status}")
            if hasattr(node, "flush_telemetry"):
                node.flush_telemetry()
        finally:
            restore()
            audit.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="instances per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="", help="a name for this code version in the table (a commit, 'before')")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from medblip_dicom.apps.common import LOG_FORMAT, configure_logging

    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "node.log", "w", encoding="utf-8")  # noqa: SIM115 - the service's stderr
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
        configure_logging(argparse.Namespace(quiet=False, verbose=False, log_format="text"), service=True)
        plain: list[dict[str, list[float]]] = []
        parts: list[dict[str, list[float]]] = []
        for r in range(args.rounds):  # plain and instrumented rounds alternate
            plain.append(one_round(args.n, Path(tmp) / f"plain{r}", instrumented=False))
            parts.append(one_round(args.n, Path(tmp) / f"parts{r}", instrumented=True))
        logging.getLogger().removeHandler(handler)
        log.close()
    skip = min(10, args.n // 10)  # the first calls warm caches up

    def per_instance(rounds: list[dict[str, list[float]]], label: str) -> list[float]:
        """The median per instance of each round (a component called twice per instance counts twice)."""
        return [statistics.median(r[label][skip:]) * len(r[label]) / args.n for r in rounds if label in r]

    def p10(rounds: list[dict[str, list[float]]], label: str) -> float:
        return min(sorted(r[label][skip:])[len(r[label][skip:]) // 10] for r in rounds)

    version = f" ({args.label})" if args.label else ""
    table = ["| per instance | ms, best round | ms, each round |", "|---|---|---|"]
    for label, name in (("WALL", "**handler, wall**"), ("CPU", "**handler, CPU**")):
        values = per_instance(plain, label)
        table.append(f"| {name} (p10 {1000 * p10(plain, label):.3f}) | **{1000 * min(values):.3f}** | "
                     + " ".join(f"{1000 * v:.3f}" for v in values) + " |")
    labels = [label for r in parts for label in r if label not in ("WALL", "CPU")]
    for label in dict.fromkeys(labels):
        values = per_instance(parts, label)
        table.append(f"| {label} | {1000 * min(values):.3f} | " + " ".join(f"{1000 * v:.3f}" for v in values) + " |")
    values = per_instance(parts, "WALL")
    table.append(f"| (instrumented handler, wall) | {1000 * min(values):.3f} | "
                 + " ".join(f"{1000 * v:.3f}" for v in values) + " |")
    record(f"Node C-STORE handler profile{version}",
           f"{args.n} CT_small instances (~38 KiB) per round, {args.rounds} rounds, real pynetdicom C-STORE events "
           "handed to StorageNode.handle_store in one process, a spool on local disk, metrics, audit and INFO "
           f"logging on as in the service; medians per instance; load average {os.getloadavg()[0]:.1f} at the end. "
           "Components are timed in separate rounds (wrappers add ~1 us each).", table, argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
