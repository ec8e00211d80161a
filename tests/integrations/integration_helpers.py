"""Helpers for the deployment tests: free ports, polling with deadlines, Orthanc as the PACS,
dcmtk as the sender, a running Service, and a mixed study re-issued into one StudyInstanceUID.

Every server, process and thread a test starts is stopped in its teardown; network traffic goes
to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest

#: Values written into the re-issued test study; the logs must never contain them.
PATIENT_NAME = "Testpatient^Wilhelmina"
PATIENT_ID = "PID-7731-XQ"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk tools: TCP_NODELAY on (dcmtk reads it from the environment)."""
    return dict(os.environ, TCP_NODELAY="1")


def run_tool(args: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=dcmtk_env())


def orthanc_binary() -> str:
    """Orthanc's path (Debian puts it in /usr/sbin); skip when missing, fail under CI=true."""
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
    if found is None:
        message = "Orthanc is not installed (Debian package orthanc)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found


class Orthanc:
    """An Orthanc PACS in a temp folder on free ports; start/stop by PID (restartable, same storage)."""

    def __init__(self, folder: Path, *, modalities: dict[str, int] | None = None, aet: str = "ORTHANC") -> None:
        self.binary = orthanc_binary()
        self.folder = folder
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medblip-test-pacs",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            # AE title -> port of the peers Orthanc knows (the node, so Orthanc could send to it)
            "DicomModalities": {peer.lower(): [peer, "127.0.0.1", port] for peer, port in (modalities or {}).items()},
            "StableAge": 1,
        }
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 30) -> None:
        log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen([self.binary, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # its own process group: killed as one
        log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited with {self.proc.returncode}: "
                                     + (self.folder / "orthanc.log").read_text()[-2000:])
            try:
                return bool(self.get("/system"))
            except (urllib.error.URLError, OSError):
                return False

        wait_for(up, timeout_s, "Orthanc's REST API")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    # Straight to 127.0.0.1, whatever http_proxy the environment sets.
    _opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str) -> Any:
        with self._opener.open(self.url + path, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, data: bytes) -> Any:
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with self._opener.open(req, timeout=10) as resp:
            return json.loads(resp.read())

    def study_id(self, study_uid: str) -> str | None:
        hits = self.post("/tools/lookup", study_uid.encode())
        for hit in hits:
            if hit.get("Type") == "Study":
                return hit["ID"]
        return None

    def instances(self, study_uid: str, modality: str | None = None) -> list[pydicom.Dataset]:
        """Every instance Orthanc holds in that study (optionally of one modality), read back as files."""
        sid = self.study_id(study_uid)
        if sid is None:
            return []
        out = []
        for series in self.get(f"/studies/{sid}/series"):
            if modality is not None and series["MainDicomTags"].get("Modality") != modality:
                continue
            for iid in series["Instances"]:
                out.append(pydicom.dcmread(io.BytesIO(self.get(f"/instances/{iid}/file"))))
        return out

    def count(self, study_uid: str, modality: str) -> int:
        sid = self.study_id(study_uid)
        if sid is None:
            return 0
        return sum(len(s["Instances"]) for s in self.get(f"/studies/{sid}/series")
                   if s["MainDicomTags"].get("Modality") == modality)


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Make Orthanc instances (not started); all are stopped in teardown."""
    made: list[Orthanc] = []

    def make(**kwargs: Any) -> Orthanc:
        pacs = Orthanc(tmp_path / f"orthanc{len(made)}", **kwargs)
        made.append(pacs)
        return pacs

    yield make
    for pacs in made:
        pacs.stop()


@pytest.fixture(scope="session")
def mixed_study(tmp_path_factory: pytest.TempPathFactory, td) -> tuple[str, list[Path]]:
    """CT, MR, a JPEG 2000 radiograph and the uncompressed chest CR re-issued into one study of
    one (invented) patient. Pixel data and transfer syntaxes are kept as they are."""
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("mixed-study")
    study_uid = generate_uid()
    paths = []
    for i, name in enumerate(["CT_small.dcm", "MR_small.dcm", "RG1_J2KR.dcm", "RG1_UNCI.dcm"], start=1):
        ds = pydicom.dcmread(td(name))
        ds.StudyInstanceUID = study_uid
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.AccessionNumber = "ACC0001"
        ds.InstanceNumber = i
        path = folder / f"{i}-{name}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def reissued(td, name: str, folder: Path, **attrs: Any) -> Path:
    """A copy of a test file with a fresh SOPInstanceUID (and any attributes given)."""
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(td(name))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in attrs.items():
        setattr(ds, key, value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def make_config(tmp_path: Path, **sections: dict[str, Any]):
    """A ServiceConfig with the spool in tmp_path, small timings for tests, and `sections` laid on top."""
    from medblip_dicom.integrations.config import config_from_dict

    data: dict[str, dict[str, Any]] = {
        "model": {"path": "unused-a-captioner-is-passed", "device": "cpu"},
        "worker": {"batch_size": 4, "max_wait_s": 0.2, "prepare_workers": 1},
        "spool": {"dir": str(tmp_path / "spool"), "min_free_bytes": 0},
        "forward": {"retry_initial_s": 0.2, "retry_max_s": 1.0, "timeout_s": 10},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


@pytest.fixture
def run_service(captioner) -> Iterator[Callable[..., Any]]:
    """Start Services with the session's tiny captioner; every one is stopped in teardown."""
    from medblip_dicom.integrations.service import Service

    started: list[Service] = []

    def start(config, *, watch: bool = False, node: bool = False) -> Service:
        service = Service(config, watch=watch, node=node, captioner=captioner)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


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


def assert_no_patient_data(text: str) -> None:
    """The logs and reason files of the services must never hold the patient's name or ID."""
    for value in (PATIENT_NAME, PATIENT_ID, PATIENT_NAME.split("^")[0], PATIENT_NAME.split("^")[1]):
        assert value not in text, f"patient data {value!r} leaked into logs or reason files"


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


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread running (servers, observers, workers, senders must be stopped)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, "threads left running: " + ", ".join(sorted(t.name for t in leaked))
