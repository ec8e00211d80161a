"""Node ingest: the same instances into dcmtk's storescp, a fair Python peer and our node, side by side.

The same N instances (CT_small re-issued with fresh UIDs, ~38 KiB, or 512 x 512 CT slices of
~512 KiB with ``--size full``) go over loopback in 1 and 4 concurrent streams (one association
each), by ``dcmsend`` (TCP_NODELAY=1, also set for storescp) or, with ``--senders pynetdicom``,
by pynetdicom sender processes (connected before the clock starts), to:

- (a) dcmtk ``storescp`` writing each file to a folder (``--fork`` for concurrent streams: one
  process per association; it never fsyncs): the C++ reference;
- (p) the fair Python peer: a bare pynetdicom Storage SCP whose handler writes each data set as
  a file (``event.encoded_dataset()``) and fsyncs it, on the same listener as our node (TCP_NODELAY,
  0.2 ms reactor poll, the same transfer syntaxes), so that only the handler differs;
- (b0) our node alone (durable spool write before each answer; concurrent associations share
  group commits), and (b) the running service: node + worker captioning with a tiny model +
  delivery to an output folder; (b2) as (b) with ``[node] listeners = 2``;
- (c), one stream of the small slices only: a pynetdicom listener that answers at once, storing
  nothing: the ceiling of any pynetdicom node on this machine.

Prints instances/s for each, the ratios (goals, one stream of small slices: b0/p >= 0.8; four
streams: b2/a >= 0.35), how many instances shared a journal commit, and the time from C-STORE
receipt to SR on disk (p50, p95). Appends to bench/RESULTS.md. :func:`scaling_reference` and
:func:`scaling_node` are the GPU run's ingest steps (``bench/gpu_bench.py``): ``[node] listeners``
= 1, 4, 8 under 8 streams.

    python bench/node_ingest.py                          # 200 instances, small and full-size, 1 and 4 streams
    python bench/node_ingest.py --size small --streams 1 --n 400
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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
    """Deal the files of `inputs` into `streams` sub-folders (hard links), one per sender."""
    if streams == 1:
        return [inputs]
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
    started = time.perf_counter()
    procs = [subprocess.Popen([find_system_tool("dcmsend"), "127.0.0.1", str(port), "-aec", aec, "+sd", str(f)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, TCP_NODELAY="1")) for f in split_streams(inputs, streams)]
    errors = [proc.communicate()[1] for proc in procs]
    elapsed = time.perf_counter() - started
    for proc, err in zip(procs, errors):
        if proc.returncode != 0:
            raise SystemExit(f"dcmsend failed: {err[-500:]}")
    return elapsed


def _pynetdicom_sender(port: int, aec: str, folder: str, ready: Any, go: Any, done: Any) -> None:
    """One sender process: associate, wait for the start, send every file of `folder` as it is."""
    from pynetdicom.sop_class import CTImageStorage

    from medblip_dicom.integrations.net import pynetdicom_compat

    files = sorted(Path(folder).iterdir())
    ae = pynetdicom_compat.nodelay_ae("SENDER")  # TCP_NODELAY, as dcmsend runs here
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    ready.put(assoc.is_established)
    go.wait()
    failed = sum(int(assoc.send_c_store(path).Status) != 0 for path in files) if assoc.is_established else -1
    assoc.release()
    done.put((time.perf_counter(), failed))


def pynetdicom_send(port: int, aec: str, inputs: Path, streams: int = 1) -> float:
    """As :func:`dcmsend`, with one pynetdicom sender process per stream, associated before the clock starts."""
    ctx = multiprocessing.get_context("spawn")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_pynetdicom_sender, args=(port, aec, str(f), ready, go, done), daemon=True)
             for f in split_streams(inputs, streams)]
    for proc in procs:
        proc.start()
    if not all(ready.get(timeout=120) for _ in procs):
        raise SystemExit("a pynetdicom sender could not associate")
    started = time.perf_counter()
    go.set()
    results = [done.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(30)
    if any(failed for _, failed in results):
        raise SystemExit(f"pynetdicom senders: {sum(f for _, f in results)} instances refused")
    return max(end for end, _ in results) - started


SENDERS = {"dcmsend": dcmsend, "pynetdicom": pynetdicom_send}


def run_storescp(inputs: Path, out: Path, n: int, streams: int = 1, send: Any = dcmsend) -> float:
    out.mkdir()
    port = free_port()
    fork = ["--fork"] if streams > 1 else []  # one process per association, else they queue
    proc = subprocess.Popen([find_system_tool("storescp"), *fork, "-od", str(out), "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, TCP_NODELAY="1"))  # its answers unhindered by Nagle too
    try:
        wait_listening(port)
        elapsed = send(port, "STORESCP", inputs, streams)
    finally:
        os.killpg(proc.pid, 15)  # with --fork, its children too
        proc.wait(timeout=10)
    stored = len(list(out.iterdir()))
    if stored != n:
        raise SystemExit(f"storescp stored {stored} of {n}")
    return n / elapsed


def run_listener(inputs: Path, work: Path, *, kind: str, streams: int = 1, send: Any = dcmsend) -> tuple[float, float]:
    """One listener process with our node's transport: `kind` "node" spools each instance, "peer"
    writes and fsyncs a file, "bare" answers at once. Returns (instances/s, instances per commit)."""
    from medblip_dicom.integrations.config.file import config_from_dict
    from medblip_dicom.integrations.ingest.node import StorageNode
    from medblip_dicom.integrations.spool import Spool

    class FairPeer(StorageNode):
        def handle_store(self, event: Any) -> int:
            with open(self.spool.root / "peer" / f"{uuid.uuid4().hex}.dcm", "wb") as fh:
                fh.write(event.encoded_dataset(include_meta=True))
                fh.flush()
                os.fsync(fh.fileno())
            return 0x0000

    class AnswerAtOnce(StorageNode):
        def handle_store(self, event: Any) -> int:
            return 0x0000

    config = config_from_dict({"model": {"path": "unused"}, "output": {"dir": str(work / "unused")},
                               "node": {"port": free_port()}})
    with Spool(work, min_free_bytes=0) as spool:
        (spool.root / "peer").mkdir()
        node = {"node": StorageNode, "peer": FairPeer, "bare": AnswerAtOnce}[kind](spool, config.node)
        node.start()
        try:
            elapsed = send(node.port, "MEDBLIP", inputs, streams)
        finally:
            node.stop()
        commits, items = spool.commit_stats
    return len([p for p in inputs.iterdir() if p.is_file()]) / elapsed, items / max(commits, 1)


def run_node(inputs: Path, work: Path, n: int, streams: int, *, model: Path, listeners: int = 1,
             send: Any = dcmsend, wait_for_reports: bool = True) -> tuple[float, list[float]]:
    """The service (node + worker + delivery) receiving `inputs`: instances/s, and receipt -> SR seconds."""
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
    jobs = []
    try:
        elapsed = send(service.node.port, "MEDBLIP", inputs, streams)
        end = time.monotonic() + 600
        while wait_for_reports:
            jobs = service.spool.jobs()
            if len(jobs) == n and all(j.state == JobState.DELIVERED for j in jobs):
                break
            if time.monotonic() > end:
                raise SystemExit("the service did not deliver every SR within 600 s")
            time.sleep(0.2)
    finally:
        service.stop()
    return n / elapsed, [j.finished_at - j.received_at for j in jobs]


def scaling_senders() -> str:
    """dcmsend against storescp where dcmtk is installed, else pynetdicom on both sides."""
    return "dcmsend" if find_system_tool("dcmsend") and find_system_tool("storescp") else "pynetdicom"


def scaling_reference(work: Path, *, n: int, streams: int, senders: str) -> dict[str, Any]:
    """The reference for :func:`scaling_node`: storescp --fork under dcmsend, or the fair Python peer
    (one process) under pynetdicom senders; small slices."""
    inputs = _scaling_inputs(work, n)
    if senders == "dcmsend":
        rate, name = run_storescp(inputs, work / "storescp", n, streams, dcmsend), "dcmtk storescp --fork"
    else:
        rate, name = run_listener(inputs, work / "peer", kind="peer", streams=streams, send=pynetdicom_send)[0], \
            "fair Python peer (one process)"
    return {"reference": name, "per_s": round(rate, 1), "instances": n, "streams": streams, "senders": senders,
            "cpus": os.cpu_count()}


def scaling_node(work: Path, *, n: int, streams: int, listeners: int, senders: str,
                 reference_per_s: float | None) -> dict[str, Any]:
    """The service's node (with its worker, tiny model on the CPU) at `[node] listeners` under
    `streams` concurrent senders: instances/s and the ratio to the reference. The GPU run's ingest step."""
    inputs = _scaling_inputs(work, n)
    rate, _ = run_node(inputs, work / f"listeners{listeners}", n, streams, model=work / "tiny-model",
                       listeners=listeners, send=SENDERS[senders], wait_for_reports=False)
    return {"listeners": listeners, "per_s": round(rate, 1), "streams": streams, "senders": senders,
            "ratio_to_reference": round(rate / reference_per_s, 3) if reference_per_s else None}


def _scaling_inputs(work: Path, n: int) -> Path:
    inputs = work / "in"
    if not inputs.exists():
        make_inputs(inputs, n)
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", choices=("small", "full"), action="append", help="default: both")
    parser.add_argument("--streams", type=int, action="append", help="concurrent streams (default: 1 and 4)")
    parser.add_argument("--senders", choices=tuple(SENDERS), default="dcmsend")
    parser.add_argument("--no-worker", action="store_true", help="skip (b) and (b2), the service with its worker")
    parser.add_argument("--label", default="", help="a name for this code version in the title (a commit, 'before')")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n, sizes, stream_counts = args.n, args.size or ["small", "full"], args.streams or [1, 4]
    send = SENDERS[args.senders]
    table = ["| slices | streams | (a) storescp /s | (p) fair peer /s | (b0) node alone /s | **b0/p** | b0/a "
             "| (b) node + worker /s | b/a | (b2) as b, 2 listeners /s | **b2/a** | instances per commit "
             "| C-STORE -> SR p50 / p95 s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ceiling = ""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in sizes:
            inputs = work / f"in-{size}"
            make_inputs(inputs, n, size)
            for streams in stream_counts:
                case = work / f"{size}-{streams}"
                case.mkdir()
                a = run_storescp(inputs, case / "storescp-out", n, streams, send)
                p = run_listener(inputs, case / "peer", kind="peer", streams=streams, send=send)[0]
                b0, per_commit = run_listener(inputs, case / "node-alone", kind="node", streams=streams, send=send)
                b = b2 = None
                latencies: list[float] = []
                if not args.no_worker:
                    b, latencies = run_node(inputs, case, n, streams, model=work / "tiny-model", send=send)
                    if streams > 1:
                        b2 = run_node(inputs, case / "listeners2", n, streams, model=work / "tiny-model",
                                      listeners=2, send=send)[0]
                label = "CT_small ~38 KiB" if size == "small" else "512x512 CT ~512 KiB"
                with_worker = f"{b:.0f} | {b / a:.2f}" if b is not None else "- | -"
                two = f"{b2:.0f} | **{b2 / a:.2f}**" if b2 is not None else "- | -"
                p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (float("nan"), float("nan"))
                table.append(f"| {label} | {streams} | {a:.0f} | {p:.0f} | {b0:.0f} | **{b0 / p:.2f}** | {b0 / a:.2f} "
                             f"| {with_worker} | {two} | {per_commit:.2f} | {p50:.2f} / {p95:.2f} |")
                if size == "small" and streams == 1:
                    c, _ = run_listener(inputs, case / "bare", kind="bare", send=send)
                    ceiling = (f"(c) a pynetdicom listener that answers at once, storing nothing, one stream of the "
                               f"small slices: {c:.0f}/s, c/a {c / a:.2f}, c/p {c / p:.2f}.")
    title = "Node ingest" + (f" ({args.label})" if args.label else "")
    record(title, f"{n} instances per case by {args.senders} over loopback (TCP_NODELAY), 1 or more "
           "concurrent streams (storescp --fork for several); (p) a pynetdicom SCP on our listener that writes and "
           "fsyncs each file; (b0) our node alone, durable before each answer; (b) with its worker captioning (tiny "
           "model, CPU) and an output folder; (b2) with `[node] listeners = 2`. Goals: b0/p >= 0.8 (one stream, small "
           f"slices), b2/a >= 0.35 (4 streams); load average {os.getloadavg()[0]:.1f} at the end. " + ceiling,
           table, argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
