"""Node ingest: dcmsend into dcmtk's storescp (the C++ reference) and into our node, side by side.

The same N instances (CT_small re-issued with fresh UIDs) go over loopback with ``dcmsend``
(TCP_NODELAY=1, also set for storescp) to (a) ``storescp`` writing each file to a folder, and (b) the running service:
node (durable spool write, fsync per instance) + worker captioning with a tiny model + delivery to
an output folder. Prints instances/s for each, the ratio b/a (goal >= 0.7), and the time from
C-STORE receipt to SR on disk (p50, p95, from the spool journal). Two more rows say where the
time goes: (b0) the node alone, spooling without a worker, and (c) the same pynetdicom listener
with a C-STORE handler that answers at once, storing nothing: the ceiling of any pynetdicom node
on this machine. Appends to bench/RESULTS.md.

    python bench/node_ingest.py            # 200 instances
    python bench/node_ingest.py --full     # 2,000 instances
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from benchlib import RESULTS, record
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medblip_dicom.systemtools import find_system_tool


def make_inputs(folder: Path, n: int) -> None:
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True)
    for _ in range(n):
        src.SOPInstanceUID = generate_uid()
        src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
        src.save_as(folder / f"{src.SOPInstanceUID}.dcm", enforce_file_format=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def dcmsend(port: int, aec: str, inputs: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([find_system_tool("dcmsend"), "127.0.0.1", str(port), "-aec", aec, "+sd", str(inputs)],
                          capture_output=True, text=True, env=dict(os.environ, TCP_NODELAY="1"))
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"dcmsend failed: {proc.stderr[-500:]}")
    return elapsed


def run_storescp(inputs: Path, out: Path, n: int) -> float:
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([find_system_tool("storescp"), "-od", str(out), "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, TCP_NODELAY="1"))  # its answers unhindered by Nagle too
    try:
        wait_listening(port)
        elapsed = dcmsend(port, "STORESCP", inputs)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    stored = len(list(out.iterdir()))
    if stored != n:
        raise SystemExit(f"storescp stored {stored} of {n}")
    return n / elapsed


def run_bare_listener(inputs: Path, work: Path, *, spool_only: bool) -> float:
    """The node's listener alone: spooling each instance (`spool_only`), or answering at once."""
    from medblip_dicom.integrations.config import config_from_dict
    from medblip_dicom.integrations.node import StorageNode
    from medblip_dicom.integrations.spool import Spool

    class AnswerAtOnce(StorageNode):
        def handle_store(self, event: object) -> int:
            return 0x0000

    config = config_from_dict({"model": {"path": "unused"}, "output": {"dir": str(work / "unused")},
                               "node": {"port": free_port()}})
    with Spool(work, min_free_bytes=0) as spool:
        node = (StorageNode if spool_only else AnswerAtOnce)(spool, config.node)
        node.start()
        try:
            elapsed = dcmsend(node.port, "MEDBLIP", inputs)
        finally:
            node.stop()
    return len(list(inputs.iterdir())) / elapsed


def run_node(inputs: Path, work: Path, n: int) -> tuple[float, list[float]]:
    from medblip_dicom.training.demo_model import build_blip_model
    from medblip_dicom.integrations.config import config_from_dict
    from medblip_dicom.integrations.service import Service
    from medblip_dicom.integrations.spool import JobState

    model = build_blip_model(work / "tiny-model", size="tiny")
    config = config_from_dict({"model": {"path": str(model), "device": "cpu", "num_beams": 1},
                               "spool": {"dir": str(work / "spool"), "min_free_bytes": 0},
                               "output": {"dir": str(work / "srs")}, "node": {"port": free_port()}})
    service = Service(config, node=True)
    service.start()
    try:
        elapsed = dcmsend(service.node.port, "MEDBLIP", inputs)
        end = time.monotonic() + 600
        while True:
            jobs = service.spool.jobs()
            if len(jobs) == n and all(j.state == JobState.DELIVERED for j in jobs):
                break
            if time.monotonic() > end:
                raise SystemExit("the service did not deliver every SR within 600 s")
            time.sleep(0.2)
    finally:
        service.stop()
    latencies = [j.finished_at - j.received_at for j in jobs]
    return n / elapsed, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = args.n or (2000 if args.full else 200)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_inputs(work / "in", n)
        a = run_storescp(work / "in", work / "storescp-out", n)
        b, latencies = run_node(work / "in", work, n)
        b0 = run_bare_listener(work / "in", work / "node-alone", spool_only=True)
        c = run_bare_listener(work / "in", work / "bare", spool_only=False)
    p50, p95 = np.percentile(latencies, [50, 95])
    record("Node ingest", f"{n} CT_small instances (~38 KiB) by dcmsend over loopback, TCP_NODELAY=1; our node "
           "with its worker captioning (tiny model, CPU) and an output folder.", [
               "| contender | instances/s | note |", "|---|---|---|",
               f"| (a) dcmtk storescp | {a:.0f} | files to a folder |",
               f"| (b) medblip node + worker | {b:.0f} | fsync per instance into the spool |",
               f"| **b/a** (goal >= 0.7) | **{b / a:.2f}** | |",
               f"| (b0) medblip node alone | {b0:.0f} | spooling, no worker running; b0/a {b0 / a:.2f} |",
               f"| (c) pynetdicom listener, answers at once | {c:.0f} | stores nothing; the ceiling, c/a {c / a:.2f} |",
               f"| C-STORE -> SR on disk | p50 {p50:.2f} s, p95 {p95:.2f} s | |"], argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
