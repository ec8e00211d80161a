"""Deployment throughput on loopback, measured side by side (a benchmark, never run as a test).

1. Forwarding: ForwardClient sends the same N reports to dcmtk's storescp (its own process) over
   one association, with TCP_NODELAY on (what the service does) and off; prints instances/s and
   the ratio. Needs storescp on PATH.
2. Ingest: dcmsend (dcmtk) sends N instances into the node (StorageNode + Spool, fsync per
   instance, no captioning); prints instances/s. Needs dcmsend on PATH.

    python bench/integrations_throughput.py [--n 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def make_reports(folder: Path, n: int) -> list[Path]:
    """N small SR files (the shipped test SR, re-issued with fresh UIDs)."""
    src = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    paths = []
    for _ in range(n):
        src.SOPInstanceUID = generate_uid()
        src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
        path = folder / f"{src.SOPInstanceUID}.dcm"
        src.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def bench_forward(n: int, folder: Path) -> None:
    from pynetdicom.sop_class import EnhancedSRStorage

    from medblip_dicom.integrations.config.file import Destination
    from medblip_dicom.integrations.delivery.sinks.dicom import ForwardClient

    storescp = shutil.which("storescp")
    if storescp is None:
        print("forward: storescp not found (Debian package dcmtk); skipped")
        return
    reports = make_reports(folder, n)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The receiver is dcmtk's storescp in its own process (receives, does not store), with Nagle
    # off on its side, so only our side's setting differs between the runs.
    env = dict(os.environ, TCP_NODELAY="1")
    sink = subprocess.Popen([storescp, "--ignore", "-aet", "SINK", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates: dict[bool, list[float]] = {}
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("storescp did not start")
            time.sleep(0.05)
        for nodelay in (True, False, True, False):
            # test-SR.dcm is an Enhanced SR: request that class besides the service's two.
            client = ForwardClient(Destination("SINK", "127.0.0.1", port), nodelay=nodelay,
                                   sop_classes=[*ForwardClient.DEFAULT_SOP_CLASSES, EnhancedSRStorage])
            start = time.perf_counter()
            outcomes = client.send(reports)
            elapsed = time.perf_counter() - start
            failed = [o for o in outcomes if not o.delivered]
            assert not failed, failed[:3]
            rates.setdefault(nodelay, []).append(n / elapsed)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    on, off = max(rates[True]), max(rates[False])
    print(f"forward {n} SRs to storescp over one association: TCP_NODELAY on {on:.0f}/s, off {off:.0f}/s, "
          f"ratio {on / off:.1f}x (best of 2 each)")


def bench_ingest(n: int, folder: Path) -> None:
    from medblip_dicom.integrations.config.file import NodeConfig
    from medblip_dicom.integrations.ingest.node import StorageNode
    from medblip_dicom.integrations.spool import Spool

    dcmsend = shutil.which("dcmsend")
    if dcmsend is None:
        print("ingest: dcmsend not found (Debian package dcmtk); skipped")
        return
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    inputs = folder / "ct"
    inputs.mkdir()
    for _ in range(n):
        src.SOPInstanceUID = generate_uid()
        src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
        src.save_as(inputs / f"{src.SOPInstanceUID}.dcm", enforce_file_format=True)
    with Spool(folder / "spool", min_free_bytes=0) as spool:
        node = StorageNode(spool, NodeConfig(port=0))
        node.start()
        try:
            start = time.perf_counter()
            proc = subprocess.run([dcmsend, "127.0.0.1", str(node.port), "-aec", "MEDBLIP", "+sd", str(inputs)],
                                  capture_output=True, text=True, env=dict(os.environ, TCP_NODELAY="1"))
            elapsed = time.perf_counter() - start
        finally:
            node.stop()
        assert proc.returncode == 0, proc.stderr
        stored = len(spool.jobs())
    size = os.path.getsize(next(inputs.iterdir()))
    print(f"ingest {stored} CT instances ({size / 1024:.0f} KiB each) via dcmsend into the node: "
          f"{stored / elapsed:.0f} instances/s ({elapsed:.2f} s, fsync per instance)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="instances per run (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_forward(args.n, Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        bench_ingest(args.n, Path(tmp))


if __name__ == "__main__":
    main()
