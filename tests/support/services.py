"""The services under test: configurations, the service as a real process, peers and certificates."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.env import wait_for


def make_config(tmp_path: Path, **sections: dict[str, Any]):
    """A ServiceConfig with the spool in tmp_path, small timings for tests, and `sections` laid on top."""
    from medblip_dicom.integrations.config.file import config_from_dict

    data: dict[str, dict[str, Any]] = {
        "model": {"path": "unused-a-captioner-is-passed", "device": "cpu"},
        "worker": {"batch_size": 4, "max_wait_s": 0.2, "prepare_workers": 1},
        "spool": {"dir": str(tmp_path / "spool"), "min_free_bytes": 0},
        "forward": {"retry_initial_s": 0.2, "retry_max_s": 1.0, "timeout_s": 10},
        # One report per instance unless a test says otherwise: most tests count instances, not series.
        "select": {"per_series": "each"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, data: dict[str, dict[str, Any]]) -> Path:
    """A TOML file from ``{section: {key: value}}`` (a nested dict becomes ``[section.sub]``)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if not isinstance(v, dict) and v is not None]
        for sub, subvalues in nested.items():
            lines.append(f"[{section}.{sub}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in subvalues.items() if v is not None]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def service_config(folder: Path, model_dir: Path, **sections: dict[str, Any]) -> Path:
    """The TOML file for a service in `folder`: the tiny model on the CPU, greedy short captions
    (the model's speed is not under test), spool in folder/spool, quick retries; `sections` on top."""
    data: dict[str, dict[str, Any]] = {
        "model": {"path": str(model_dir), "device": "cpu", "dtype": "float32", "num_beams": 1,
                  "max_new_tokens": 8, "min_new_tokens": 3},
        "worker": {"batch_size": 8, "max_wait_s": 0.2, "prepare_workers": 1},
        "spool": {"dir": str(folder / "spool"), "min_free_bytes": 0},
        "forward": {"retry_initial_s": 0.2, "retry_max_s": 1.0, "timeout_s": 10.0},
        # One report per instance unless a test says otherwise: the floods count instances, not series.
        "select": {"per_series": "each"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return write_toml(folder / "medblip.toml", data)


class ServiceProcess:
    """``medblip watch|node --config FILE`` as a child process in its own session.

    :meth:`kill` is SIGKILL to the whole group (nothing gets to clean up), :meth:`stop` is SIGTERM
    (a clean stop). Both reap the child. The log of every life is appended to one file.
    """

    def __init__(self, command: str, config: Path, log: Path, *args: str) -> None:
        self.command = command
        self.config = config
        self.log = log
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.peak_rss: list[int] = []  # VmHWM of each life, bytes
        self.startup_s: list[float] = []
        self._started_at = 0.0

    def start(self) -> ServiceProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            log.write(f"---- start {self.starts + 1} ----\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "medblip_dicom", self.command, "--config", str(self.config), *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.config.parent,
            )
        self.starts += 1
        self._started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, marker: str, timeout_s: float = 120) -> float:
        """Wait for `marker` in this life's log; returns the start-up time in seconds."""
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"medblip {self.command} exited with {self.proc.returncode if self.proc else None}:"
                                     f"\n{self.log_text()[-3000:]}")
            return marker in self.log_text().rsplit("---- start ", 1)[-1]

        wait_for(ready, timeout_s, f"medblip {self.command} to log {marker!r}")
        took = time.monotonic() - self._started_at
        self.startup_s.append(took)
        return took

    def rss_peak_now(self) -> int | None:
        """Peak resident set size so far (VmHWM), in bytes: the service process plus its
        descendants (the worker process holds the model), each process's own peak summed."""
        try:
            pids = [self.pid, *descendants(self.pid)]
        except AssertionError:
            return None
        total, seen = 0, False
        for pid in pids:
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
            if match:
                total += int(match.group(1)) * 1024
                seen = True
        return total if seen else None

    def _note_peak(self) -> None:
        peak = self.rss_peak_now()
        if peak is not None:
            self.peak_rss.append(peak)

    def kill(self) -> None:
        """SIGKILL the process group and reap the child (a zombie would look alive to the spool)."""
        assert self.proc is not None
        self._note_peak()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.kills += 1

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, wait for a clean exit (SIGKILL the group after `timeout_s`); returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self._note_peak()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            raise AssertionError(f"medblip {self.command} did not stop within {timeout_s} s of SIGTERM") from None

    def cleanup(self) -> None:
        """Teardown: whatever state the test left, no process of this service survives."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)

    @property
    def max_peak_rss(self) -> int | None:
        return max(self.peak_rss) if self.peak_rss else None


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def listening_addresses(port: int) -> list[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                local, state = parts[1], parts[3]
                address, port_hex = local.rsplit(":", 1)
                if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                    if len(address) == 8:
                        found.append(".".join(str(b) for b in reversed(bytes.fromhex(address))))
                    else:
                        found.append("ipv6:" + address)
    return found


@contextmanager
def pynetdicom_scp(handler: Callable[[Any], Any], ae_title: str = "REJECTOR") -> Iterator[tuple[int, list[Any]]]:
    """A pynetdicom Storage SCP on a free loopback port whose C-STORE answers come from `handler`.

    Yields ``(port, received)``; `received` collects the SOPInstanceUID of every C-STORE.
    """
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

    received: list[str] = []
    lock = threading.Lock()

    def on_store(event: Any) -> Any:
        with lock:
            received.append(str(event.request.AffectedSOPInstanceUID))
        return handler(event)

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(ComprehensiveSRStorage)
    ae.add_supported_context(SecondaryCaptureImageStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield int(server.server_address[1]), received
    finally:
        server.shutdown()


def make_certificates(folder: Path, openssl: str) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    folder.mkdir()
    p = {name: folder / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem",
                                          "client.key", "client.csr", "client.pem", "san.ext")}
    p["san.ext"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        proc = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p["ca.key"]), "-out", str(p["ca.pem"]),
        "-days", "2", "-subj", "/CN=medblip test CA")
    for who in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p[f"{who}.key"]), "-out", str(p[f"{who}.csr"]),
            "-subj", f"/CN=medblip test {who}")
        run("x509", "-req", "-in", str(p[f"{who}.csr"]), "-CA", str(p["ca.pem"]), "-CAkey", str(p["ca.key"]),
            "-CAcreateserial", "-out", str(p[f"{who}.pem"]), "-days", "2", "-extfile", str(p["san.ext"]))
    return p
