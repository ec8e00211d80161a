"""Node ingest: dcmsend into dcmtk's storescp (the C++ reference) and into our node, side by side.

The same N instances (CT_small re-issued with fresh UIDs, or full-size 512 x 512 CT slices of
~512 KiB with ``--size full``) go over loopback with ``dcmsend`` (TCP_NODELAY=1, also set for
storescp) in 1 and 4 concurrent streams (one dcmsend process and association each) to (a)
``storescp`` writing each file to a folder (``--fork`` for concurrent streams: one process per
association; it never fsyncs), and (b) the running service: node (durable spool write before each
answer; concurrent associations share group commits) + worker captioning with a tiny model +
delivery to an output folder. Prints instances/s for each, the ratio b/a (goals: >= 0.5 with 4
streams), how many instances shared a journal commit, and the time from C-STORE receipt to SR on
disk (p50, p95). (b0) is the node alone, spooling without a worker; (c), with one stream of the
small slices only, a pynetdicom listener that answers at once, storing nothing: the ceiling of any
pynetdicom node on this machine. Appends to bench/RESULTS.md.

    python bench/node_ingest.py                          # 200 instances, small and full-size, 1 and 4 streams
    python bench/node_ingest.py --size full --streams 4  # one case
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


def make_inputs(folder: Path, n: int, size: str = "small") -> None:
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if size == "full":  # a 512 x 512 slice, 16 bits: ~512 KiB like a real CT image
        big = np.kron(src.pixel_array, np.ones((4, 4), dtype=src.pixel_array.dtype))
        src.Rows, src.Columns = big.shape
        src.PixelData = big.tobytes()
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


def split_streams(inputs: Path, streams: int) -> list[Path]:
    """Deal the files of `inputs` into `streams` sub-folders (hard links), one per dcmsend."""
    files = sorted(p for p in inputs.iterdir() if p.is_file())
    folders = []
    for k in range(streams):
        folder = inputs.parent / f"{inputs.name}-stream{streams}-{k}"
        if not folder.exists():
            folder.mkdir()
            for f in files[k::streams]:
                os.link(f, folder / f.name)
        folders.append(folder)
    return folders


def dcmsend(port: int, aec: str, inputs: Path, streams: int = 1) -> float:
    """Seconds until every one of `streams` concurrent dcmsend processes has sent its share."""
    folders = split_streams(inputs, streams) if streams > 1 else [inputs]
    started = time.perf_counter()
    procs = [subprocess.Popen([find_system_tool("dcmsend"), "127.0.0.1", str(port), "-aec", aec, "+sd", str(f)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, TCP_NODELAY="1")) for f in folders]
    errors = [proc.communicate()[1] for proc in procs]
    elapsed = time.perf_counter() - started
    for proc, err in zip(procs, errors):
        if proc.returncode != 0:
            raise SystemExit(f"dcmsend failed: {err[-500:]}")
    return elapsed


def run_storescp(inputs: Path, out: Path, n: int, streams: int = 1) -> float:
    out.mkdir()
    port = free_port()
    fork = ["--fork"] if streams > 1 else []  # one process per association, else they queue
    proc = subprocess.Popen([find_system_tool("storescp"), *fork, "-od", str(out), "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, TCP_NODELAY="1"))  # its answers unhindered by Nagle too
    try:
        wait_listening(port)
        elapsed = dcmsend(port, "STORESCP", inputs, streams)
    finally:
        os.killpg(proc.pid, 15)  # with --fork, its children too
        proc.wait(timeout=10)
    stored = len(list(out.iterdir()))
    if stored != n:
        raise SystemExit(f"storescp stored {stored} of {n}")
    return n / elapsed


def run_bare_listener(inputs: Path, work: Path, *, spool_only: bool, streams: int = 1) -> tuple[float, float]:
    """The node's listener alone: spooling each instance (`spool_only`), or answering at once."""
    from medblip_dicom.integrations.config.file import config_from_dict
    from medblip_dicom.integrations.ingest.node import StorageNode
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
            elapsed = dcmsend(node.port, "MEDBLIP", inputs, streams)
        finally:
            node.stop()
        commits, items = spool.commit_stats
    return len([p for p in inputs.iterdir() if p.is_file()]) / elapsed, items / max(commits, 1)


def run_node(inputs: Path, work: Path, n: int, streams: int, *, model: Path,
             listeners: int = 1) -> tuple[float, list[float]]:
    from medblip_dicom.training.demo_model import build_blip_model
    from medblip_dicom.integrations.config.file import config_from_dict
    from medblip_dicom.integrations.service.assembly import Service
    from medblip_dicom.integrations.spool import JobState

    if not model.exists():
        build_blip_model(model, size="tiny")
    config = config_from_dict({"model": {"path": str(model), "device": "cpu", "num_beams": 1},
                               "spool": {"dir": str(work / "spool"), "min_free_bytes": 0},
                               "output": {"dir": str(work / "srs")},
                               "node": {"port": free_port(), "listeners": listeners},
                               "select": {"per_series": "each"}})  # the copies share one series: caption each
    service = Service(config, node=True)
    service.start()
    try:
        elapsed = dcmsend(service.node.port, "MEDBLIP", inputs, streams)
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
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", choices=("small", "full"), action="append", help="default: both")
    parser.add_argument("--streams", type=int, action="append", help="concurrent dcmsend streams (default: 1 and 4)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n, sizes, stream_counts = args.n, args.size or ["small", "full"], args.streams or [1, 4]
    table = ["| slices | streams | (a) storescp /s | (b) node + worker /s | **b/a** | (b2) as b, 2 listeners /s | **b2/a** "
             "| (b0) node alone /s | b0/a | instances per commit | C-STORE -> SR p50 / p95 s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ceiling = ""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in sizes:
            inputs = work / f"in-{size}"
            make_inputs(inputs, n, size)
            for streams in stream_counts:
                case = work / f"{size}-{streams}"
                case.mkdir()
                a = run_storescp(inputs, case / "storescp-out", n, streams)
                b, latencies = run_node(inputs, case, n, streams, model=work / "tiny-model")
                b2 = run_node(inputs, case / "listeners2", n, streams, model=work / "tiny-model", listeners=2)[0] \
                    if streams > 1 else None
                b0, per_commit = run_bare_listener(inputs, case / "node-alone", spool_only=True, streams=streams)
                p50, p95 = np.percentile(latencies, [50, 95])
                label = "CT_small ~38 KiB" if size == "small" else "512x512 CT ~512 KiB"
                two = f"{b2:.0f} | **{b2 / a:.2f}**" if b2 is not None else "- | -"
                table.append(f"| {label} | {streams} | {a:.0f} | {b:.0f} | **{b / a:.2f}** | {two} | {b0:.0f} | {b0 / a:.2f} "
                             f"| {per_commit:.2f} | {p50:.2f} / {p95:.2f} |")
                if size == "small" and streams == 1:
                    c, _ = run_bare_listener(inputs, case / "bare", spool_only=False)
                    ceiling = (f"(c) a pynetdicom listener that answers at once, storing nothing, one stream of the "
                               f"small slices: {c:.0f}/s, c/a {c / a:.2f}.")
    record("Node ingest", f"{n} instances per case by dcmsend over loopback, TCP_NODELAY=1, 1 or more concurrent "
           "streams (storescp --fork for several); our node durable before each answer, with its worker captioning "
           "(tiny model, CPU) and an output folder; (b2) with `[node] listeners = 2`. Goal with 4 streams: >= 0.5. " + ceiling, table, argv,
           args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
