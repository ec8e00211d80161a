"""Helpers of the reliability tests: scale, figures, the service as a real process, inputs good and
bad, and the checks every test ends with (output folders, SR conformance, no patient data).

The service under test runs as ``python -m medblip_dicom watch|node --config FILE`` in its own
session (process group), so a test can SIGKILL it like a power cut and start it again. Every
process a test starts is stopped by its PID (its group on failure) in teardown; all traffic goes
to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

# Shared with the deployment tests (the reliability conftest puts tests/integrations on sys.path).
from integration_helpers import in_ci, wait_for  # noqa: F401

#: Written into every input of the reliability tests; no log, reason file or journal may hold them.
PATIENT_NAME = "Reliabilitytest^Ottoline^Quennell"
PATIENT_ID = "RLB-4417-ZXQ"
SECRETS = (PATIENT_NAME, PATIENT_ID, "Reliabilitytest", "Ottoline", "Quennell")

#: Scale of the tests when MEDBLIP_RELIABILITY_SCALE is not set (1.0 = the numbers of issue 5).
DEFAULT_SCALE = 0.2

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

#: The service process (tiny test model, CPU, 8 images a batch) must stay under this, whatever the load.
PEAK_RSS_BOUND = 1536 * 2**20

#: Small real images (every codec family the node accepts) that the floods re-issue with fresh UIDs.
FLOOD_TEMPLATES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                   "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm")


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


# -- figures ----------------------------------------------------------------------------------------


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


# -- the service as a process --------------------------------------------------------------------------


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


# -- the journal, read from outside -------------------------------------------------------------


def journal_rows(spool: Path, columns: str = "id, state, sop_instance_uid, reason, dicom_status, owner, attempts, "
                                           "origin, name, disposed, final_path") -> list[dict[str, Any]]:
    """The spool's jobs, read without changing anything (works while the service runs or after a kill)."""
    path = spool / "journal.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT {columns} FROM jobs ORDER BY id")]
    finally:
        db.close()


def state_counts(spool: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in journal_rows(spool, "state"):
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


def pending(spool: Path) -> int:
    c = state_counts(spool)
    return c.get("received", 0) + c.get("processing", 0) + c.get("reported", 0)


# -- inputs -----------------------------------------------------------------------------------------


def testdata(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"test file {name} not found; is pydicom-data installed?"
    return str(path)


def load_template(name: str) -> Dataset:
    """A test file as a template: our patient, no trailing padding (so Pixel Data is last)."""
    ds = pydicom.dcmread(testdata(name))
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    for tag in (0xFFFCFFFC,):
        if tag in ds:
            del ds[tag]
    return ds


def reissue(template: Dataset, folder: Path, *, study_uid: str | None = None, name: str | None = None,
            instance_number: int | None = None) -> tuple[Path, str]:
    """Save `template` with a fresh SOPInstanceUID (and series, and the given study); returns (path, uid)."""
    uid = generate_uid()
    template.SOPInstanceUID = uid
    template.file_meta.MediaStorageSOPInstanceUID = uid
    if study_uid is not None:
        template.StudyInstanceUID = study_uid
    if instance_number is not None:
        template.InstanceNumber = instance_number
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{uid}.dcm")
    template.save_as(path, enforce_file_format=True)
    return path, uid


def make_good_files(folder: Path, count: int, *, studies: int = 10, templates: Sequence[str] = FLOOD_TEMPLATES,
                    rng: random.Random | None = None) -> dict[str, Path]:
    """`count` real test images re-issued with fresh UIDs into `studies` studies; {SOPInstanceUID: path}."""
    rng = rng or random.Random(seed())
    loaded = [load_template(name) for name in templates]
    study_uids = [generate_uid() for _ in range(max(1, studies))]
    series = {(s, i): generate_uid() for s in range(len(study_uids)) for i in range(len(loaded))}
    out: dict[str, Path] = {}
    for n in range(count):
        k = n % len(loaded)
        s = rng.randrange(len(study_uids))
        ds = loaded[k]
        ds.SeriesInstanceUID = series[(s, k)]
        path, uid = reissue(ds, folder, study_uid=study_uids[s], instance_number=n + 1)
        out[uid] = path
    return out


# -- bad inputs -------------------------------------------------------------------------------------


@dataclass
class BadInput:
    """A malformed input and what must become of it: ``failed`` (quarantined) or ``skipped``
    (a valid non-image: recorded with a reason, never captioned)."""

    path: Path
    kind: str
    expect: str  # "failed" | "skipped"


def _header_only(template: str, **attrs: Any) -> Dataset:
    ds = load_template(template)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _save(ds: Dataset, path: Path, *, enforce: bool = True) -> Path:
    ds.save_as(path, enforce_file_format=enforce)
    return path


def _truncated(folder: Path, i: int, rng: random.Random) -> BadInput:
    name = rng.choice(("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                       "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "US1_UNCR.dcm"))
    buf = io.BytesIO()
    ds = _header_only(name)
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    # At least one byte kept and at least 9 cut: the last 8 bytes of an encapsulated file are the
    # sequence delimiter (tag + a zero length); a file missing only part of that lost no data, and
    # pydicom (rightly) reads it whole.
    cut = rng.randrange(1, len(data) - 8)
    path = folder / f"bad-{i:05d}-truncated.dcm"
    path.write_bytes(data[:cut])
    return BadInput(path, f"truncated ({name})", "failed")


def _random_bytes(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-random.dcm"
    path.write_bytes(rng.randbytes(rng.randrange(1, 64 * 1024)))
    return BadInput(path, "random bytes", "failed")


def _dicm_then_junk(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-dicm-junk.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + rng.randbytes(rng.randrange(1, 8192)))
    return BadInput(path, "DICM prefix then random bytes", "failed")


_BOGUS_SYNTAXES = {
    "JPEG 2000": "1.2.840.10008.1.2.4.90",
    "JPEG baseline": "1.2.840.10008.1.2.4.50",
    "JPEG-LS": "1.2.840.10008.1.2.4.80",
    "RLE": "1.2.840.10008.1.2.5",
    "JPEG lossless": "1.2.840.10008.1.2.4.70",
}


def _bogus_pixels(folder: Path, i: int, rng: random.Random) -> BadInput:
    """A valid header whose Pixel Data is garbage in the syntax the header names (or too short)."""
    choice = rng.choice([*_BOGUS_SYNTAXES, "native, short", "native, 2 bytes short"])
    ds = _header_only("MR_small.dcm")
    if choice.startswith("native"):
        size = 64 * 64 * 2
        n = rng.randrange(0, size // 2) if choice == "native, short" else size - 2
        ds.PixelData = rng.randbytes(n)
    else:
        ds.file_meta.TransferSyntaxUID = UID(_BOGUS_SYNTAXES[choice])
        ds.PixelData = encapsulate([rng.randbytes(rng.randrange(16, 4096))])
        ds["PixelData"].VR = "OB"
    path = folder / f"bad-{i:05d}-bogus-pixels.dcm"
    return BadInput(_save(ds, path, enforce=False), f"bogus pixel data ({choice})", "failed")


def _huge_dimensions(folder: Path, i: int, rng: random.Random) -> BadInput:
    """Rows = Columns = 65535: must be refused from the header, never decoded."""
    choice = rng.choice(["native", "JPEG 2000", "RLE", "JPEG baseline"])
    ds = _header_only("MR_small.dcm", Rows=65535, Columns=65535)
    if choice != "native":
        ds.file_meta.TransferSyntaxUID = UID(_BOGUS_SYNTAXES[choice])
        source = pydicom.dcmread(testdata({"JPEG 2000": "MR_small_jp2klossless.dcm", "RLE": "MR_small_RLE.dcm",
                                           "JPEG baseline": "SC_rgb_jpeg_dcmtk.dcm"}[choice]))
        ds.PixelData = source.PixelData
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    path = folder / f"bad-{i:05d}-65535x65535.dcm"
    return BadInput(_save(ds, path, enforce=False), f"claimed 65535 x 65535 ({choice})", "failed")


def _missing_transfer_syntax(folder: Path, i: int, rng: random.Random) -> BadInput:
    """Compressed pixel data, but the file meta has no (0002,0010) TransferSyntaxUID."""
    name = rng.choice(("MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"))
    ds = _header_only(name)
    del ds.file_meta["TransferSyntaxUID"]
    path = folder / f"bad-{i:05d}-no-transfer-syntax.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return BadInput(path, f"missing transfer syntax ({name})", "failed")


def _non_image(folder: Path, i: int, rng: random.Random) -> BadInput:
    name = rng.choice(("test-SR.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm", "rtdose.dcm", "liver.dcm"))
    ds = pydicom.dcmread(testdata(name), force=True)
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.SOPInstanceUID = generate_uid()
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"bad-{i:05d}-non-image.dcm"
    return BadInput(_save(ds, path, enforce=False), f"non-image SOP class ({name})", "skipped")


def _dicomdir(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-DICOMDIR"
    path.write_bytes(Path(testdata("DICOMDIR")).read_bytes())
    return BadInput(path, "DICOMDIR", "skipped")


def _zero_bytes(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-empty.dcm"
    path.write_bytes(b"")
    return BadInput(path, "zero bytes", "failed")


def _jpeg_renamed(folder: Path, i: int, rng: random.Random) -> BadInput:
    from PIL import Image

    image = Image.frombytes("L", (32, 32), rng.randbytes(32 * 32))
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    path = folder / f"bad-{i:05d}-photo.dcm"
    path.write_bytes(buf.getvalue())
    return BadInput(path, "a JPEG renamed .dcm", "failed")


def _huge_private_tag(folder: Path, i: int, rng: random.Random) -> BadInput:
    """A private element whose length claims up to 4 GiB, followed by a few bytes: the file ends early."""
    ds = _header_only("MR_small.dcm")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    pixel_at = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) in explicit VR little endian
    length = rng.choice((0xFFFFFFF0, 0x7FFFFFFF, 1 << 30, 50_000_000))
    private = (b"\x09\x00\x10\x00LO\x08\x00MEDBLIPX"  # (0009,0010) private creator
               + b"\x09\x00\x00\x10OB\x00\x00" + length.to_bytes(4, "little") + rng.randbytes(64))
    path = folder / f"bad-{i:05d}-huge-private.dcm"
    path.write_bytes(data[:pixel_at] + private)
    return BadInput(path, f"huge private tag (claims {length} bytes)", "failed")


def _absurd_header(folder: Path, i: int, rng: random.Random) -> BadInput:
    """Header values that cannot describe an image: zero or odd bit depths, no samples, unknown colour."""
    choice = rng.choice(["BitsAllocated 0", "BitsAllocated 7", "BitsAllocated 64", "SamplesPerPixel 0",
                         "PhotometricInterpretation NONSENSE", "NumberOfFrames 1000000000", "Rows 0",
                         "BitsStored > BitsAllocated", "PlanarConfiguration 7 on RGB"])
    base = "SC_rgb.dcm" if "RGB" in choice else "MR_small.dcm"
    ds = _header_only(base)
    key, _, value = choice.partition(" ")
    if choice == "BitsStored > BitsAllocated":
        ds.BitsStored = 40
    elif choice == "PlanarConfiguration 7 on RGB":
        ds.PlanarConfiguration = 7
    elif key == "PhotometricInterpretation":
        ds.PhotometricInterpretation = value
    else:
        setattr(ds, key, int(value))
    path = folder / f"bad-{i:05d}-absurd-header.dcm"
    return BadInput(_save(ds, path, enforce=False), f"absurd header ({choice})", "failed")


_BAD_MAKERS: list[Callable[[Path, int, random.Random], BadInput]] = [
    _truncated, _truncated, _truncated, _random_bytes, _dicm_then_junk, _bogus_pixels, _bogus_pixels,
    _huge_dimensions, _missing_transfer_syntax, _non_image, _dicomdir, _zero_bytes, _jpeg_renamed,
    _huge_private_tag, _absurd_header,
]


def _deflate_bomb(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-deflate-bomb.dcm"
    path.write_bytes(deflate_bomb_bytes())
    return BadInput(path, "deflate bomb (1 MiB inflating to 1 GiB)", "failed")


def make_bad_inputs(folder: Path, count: int, rng: random.Random) -> list[BadInput]:
    """`count` malformed inputs, every kind of :data:`_BAD_MAKERS` in turn (truncations weighted),
    and a deflate bomb every 50th (each costs about a second of inflating to refuse it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [_deflate_bomb(folder, i, rng) if i % 50 == 49 else _BAD_MAKERS[i % len(_BAD_MAKERS)](folder, i, rng)
            for i in range(count)]


# -- checks -----------------------------------------------------------------------------------------


def sr_source_uid(sr: Dataset) -> str:
    """The SOPInstanceUID an SR references as its evidence."""
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    return str(evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def check_output_folder(out: Path) -> dict[str, list[str]]:
    """Every entry of an output folder is a complete SR named ``<its SOPInstanceUID>.dcm`` (no temporary,
    partial or foreign file). Returns {source SOPInstanceUID: [SR SOPInstanceUIDs]}."""
    by_source: dict[str, list[str]] = {}
    if not out.exists():
        return by_source
    for entry in sorted(out.iterdir()):
        assert entry.is_file() and re.fullmatch(r"[0-9.]{1,64}\.dcm", entry.name), \
            f"unexpected entry {entry.name!r} in the output folder {out}"
        ds = pydicom.dcmread(entry)  # a truncated file raises here
        assert str(ds.SOPInstanceUID) == entry.name[:-4], f"{entry.name}: SOPInstanceUID {ds.SOPInstanceUID}"
        assert str(ds.SOPClassUID) == COMPREHENSIVE_SR
        assert ds.VerificationFlag == "UNVERIFIED"
        by_source.setdefault(sr_source_uid(ds), []).append(str(ds.SOPInstanceUID))
    return by_source


def dciodvfy_errors(path: Path) -> list[str]:
    from medblip_dicom.doctor import find_system_tool

    exe = find_system_tool("dciodvfy")
    assert exe is not None, "dciodvfy (Debian package dicom3tools) is not installed"
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def validate_srs(paths: Iterable[Path], workers: int = 4) -> tuple[int, float]:
    """Run dciodvfy on every file (in parallel); assert zero errors. Returns (files, seconds)."""
    paths = list(paths)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(dciodvfy_errors, paths))
    bad = {str(p): errs for p, errs in zip(paths, results, strict=True) if errs}
    CONFORMANCE["srs_validated"] += len(paths)
    CONFORMANCE["srs_with_errors"] += len(bad)
    assert not bad, f"dciodvfy errors in {len(bad)} of {len(paths)} SRs, e.g. " + json.dumps(
        dict(list(bad.items())[:2]), indent=1)
    return len(paths), time.perf_counter() - started


def assert_no_patient_data(text: str | bytes, where: str) -> None:
    """None of the inputs' patient names or IDs may appear in logs, reason files, journals or status."""
    blob = text.encode("utf-8", "replace") if isinstance(text, str) else text
    for value in SECRETS:
        assert value.encode() not in blob, f"patient data {value!r} found in {where}"


def scan_for_patient_data(*paths: Path) -> int:
    """Check logs and the files beside the outputs (reason files, journals) for patient data; returns the
    number of files scanned. DICOM files (inputs and SRs, which carry the patient by design) are not scanned."""
    scanned = 0
    for root in paths:
        candidates = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in candidates:
            if path.suffix == ".dcm" or path.name.endswith("DICOMDIR") or "/inputs/" in path.as_posix():
                continue
            if path.suffix in (".log", ".txt", ".json", ".toml") or path.name.startswith("journal.sqlite"):
                assert_no_patient_data(path.read_bytes(), str(path))
                scanned += 1
    return scanned


def requested_contexts(files: Iterable[str | Path]) -> list[tuple[str, str]]:
    """Presentation contexts an SCU must propose to send `files` as they are: (SOP class, syntax) pairs,
    one context per syntax (an acceptor picks one syntax per context). Test data names or paths."""
    contexts: list[tuple[str, str]] = []
    for f in files:
        path = f if isinstance(f, Path) or os.path.sep in str(f) else testdata(str(f))
        meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
        for pair in ((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)),
                     (str(meta.MediaStorageSOPClassUID), "1.2.840.10008.1.2.1")):
            if pair not in contexts:
                contexts.append(pair)
    return contexts


# -- a DICOM sender that keeps account ---------------------------------------------------------------


@dataclass
class SendLedger:
    """What a sender knows: instances acknowledged with success, and each attempt's outcome."""

    confirmed: dict[str, str] = field(default_factory=dict)  # SOPInstanceUID -> path
    refused: dict[str, int] = field(default_factory=dict)  # SOPInstanceUID -> last non-success status
    attempts: int = 0
    broken_associations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class StoreSender(threading.Thread):
    """Sends queued files to the node over associations of up to `per_association` instances and resends
    whatever got no success (the node was down, killed mid-association, ...), like a modality does."""

    def __init__(self, port: int, ledger: SendLedger, *, ae_title: str = "MODALITY", called: str = "MEDBLIP",
                 per_association: int = 10, name: str = "sender",
                 contexts: list[tuple[str, str]] | None = None) -> None:
        super().__init__(name=f"reliability-{name}", daemon=True)
        self.contexts = contexts or requested_contexts(FLOOD_TEMPLATES)
        self.port = port
        self.ledger = ledger
        self.ae_title = ae_title
        self.called = called
        self.per_association = per_association
        self.queue: list[tuple[str, Path]] = []
        self.qlock = threading.Lock()
        self.stop_event = threading.Event()
        self.idle = threading.Event()
        self.in_association = threading.Event()
        self.round_confirmed = 0
        self.error: BaseException | None = None

    def add(self, files: dict[str, Path]) -> None:
        with self.qlock:
            self.queue.extend(files.items())
            self.idle.clear()

    def remaining(self) -> int:
        with self.qlock:
            return len(self.queue)

    def _ae(self):  # noqa: ANN202
        from pynetdicom import AE

        ae = AE(ae_title=self.ae_title)
        for sop_class, syntax in self.contexts:
            ae.add_requested_context(sop_class, syntax)
        for timeout in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, timeout, 15)
        return ae

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _run(self) -> None:
        ae = self._ae()
        while not self.stop_event.is_set():
            with self.qlock:
                batch = self.queue[: self.per_association]
            if not batch:
                self.idle.set()
                self.stop_event.wait(0.05)
                continue
            assoc = ae.associate("127.0.0.1", self.port, ae_title=self.called)
            if not assoc.is_established:
                self.stop_event.wait(0.1)  # the node is down or restarting: try again
                continue
            self.in_association.set()
            done: list[str] = []
            try:
                for uid, path in batch:
                    if self.stop_event.is_set():
                        break
                    with self.ledger.lock:
                        self.ledger.attempts += 1
                    try:
                        status = assoc.send_c_store(path)
                    except (RuntimeError, ValueError, OSError):
                        status = None
                    code = getattr(status, "Status", None) if status is not None else None
                    if code is None:
                        with self.ledger.lock:
                            self.ledger.broken_associations += 1
                        break  # association lost: the rest goes again on the next one
                    if code == 0x0000:
                        with self.ledger.lock:
                            self.ledger.confirmed[uid] = str(path)
                            self.ledger.refused.pop(uid, None)
                        self.round_confirmed += 1
                        done.append(uid)
                    else:
                        with self.ledger.lock:
                            self.ledger.refused[uid] = int(code)
                        break  # e.g. out of resources: back off, send it again later
            finally:
                self.in_association.clear()
                if assoc.is_established:
                    assoc.release()
            with self.qlock:
                self.queue = [(u, p) for u, p in self.queue if u not in set(done)]
            if not done:
                self.stop_event.wait(0.1)

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the sender thread did not stop"


def expected_sr_uid(source_uid: str, weights_sha256: str) -> str:
    """The SR SOPInstanceUID the service must give the report on `source_uid` (deterministic)."""
    from medblip_dicom.uids import stable_uid

    return stable_uid("medblip-dicom/sr", source_uid, weights_sha256)


def check_exactly_one_sr_each(by_source: dict[str, list[str]], sources: Iterable[str],
                              weights_sha256: str) -> tuple[int, int]:
    """Each source has exactly one SR, with the expected UID; no SR for anything else.

    Returns (lost, duplicates) -- both asserted to be 0, returned for the figures."""
    sources = set(sources)
    lost = sorted(sources - set(by_source))
    extra = sorted(set(by_source) - sources)
    duplicates = {s: uids for s, uids in by_source.items() if len(uids) != 1}
    assert not lost, f"{len(lost)} instance(s) without an SR, e.g. {lost[:3]}"
    assert not extra, f"{len(extra)} SR(s) for instances never sent, e.g. {extra[:3]}"
    assert not duplicates, f"{len(duplicates)} instance(s) with more than one SR, e.g. {list(duplicates.items())[:2]}"
    wrong = [s for s, uids in by_source.items() if uids[0] != expected_sr_uid(s, weights_sha256)]
    assert not wrong, f"{len(wrong)} SR(s) with an unexpected UID (not idempotent), e.g. {wrong[:3]}"
    return len(lost), len(duplicates)


def drop_into(inbox: Path, files: Iterable[Path]) -> int:
    """Move files into the inbox by rename (each appears complete at once); returns how many."""
    inbox.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in files:
        os.rename(path, inbox / path.name)
        n += 1
    return n


_BOMB_CACHE: dict[int, bytes] = {}


def deflate_bomb_bytes(side: int = 23000) -> bytes:
    """A Part 10 file in Deflated Explicit VR Little Endian whose data set inflates to about
    side x side x 2 bytes of zero pixels (1 GiB for 23000) from about a megabyte: built by streaming
    zlib over the zeros, so making it costs no memory. Cached per process."""
    if side in _BOMB_CACHE:
        return _BOMB_CACHE[side]
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = load_template("MR_small.dcm")
    del ds.PixelData
    ds.Rows = ds.Columns = side
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = side * side * 2
    comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(body.getvalue()), comp.compress(b"\xe0\x7f\x10\x00OW\x00\x00" + n.to_bytes(4, "little"))]
    zeros = bytes(1 << 20)
    for _ in range(n // len(zeros)):
        parts.append(comp.compress(zeros))
    parts += [comp.compress(bytes(n % len(zeros))), comp.flush()]
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    _BOMB_CACHE[side] = b"\x00" * 128 + b"DICM" + meta.getvalue() + b"".join(parts)
    return _BOMB_CACHE[side]
