"""Debian's Orthanc as the test PACS: started on free loopback ports, stopped by PID."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support.env import free_port, in_ci, wait_for

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


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

    def __init__(self, folder: Path, *, modalities: dict[str, int | dict[str, Any]] | None = None,
                 aet: str = "ORTHANC", dicomweb: bool = False, settings: dict[str, Any] | None = None) -> None:
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
            # AE title -> port of the peers Orthanc knows (the node, so Orthanc could send to it; a
            # pull, so it answers C-FIND, C-GET and C-MOVE): a port, or Orthanc's options for the peer
            # ({"Port": ..., "AllowGet": false, ...})
            "DicomModalities": {peer.lower(): [peer, "127.0.0.1", port] if isinstance(port, int)
                                else {"AET": peer, "Host": "127.0.0.1", **port}
                                for peer, port in (modalities or {}).items()},
            "StableAge": 1,
        }
        if dicomweb:  # QIDO-RS, WADO-RS and STOW-RS under {url}/dicom-web (Debian package orthanc-dicomweb)
            if not os.path.exists(DICOMWEB_PLUGIN):
                message = f"Orthanc's DICOMweb plugin {DICOMWEB_PLUGIN} is not installed (orthanc-dicomweb)"
                if in_ci():
                    pytest.fail(message)
                pytest.skip(message)
            config["Plugins"] = [DICOMWEB_PLUGIN]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        config.update(settings or {})  # more of Orthanc's own settings (DICOM TLS: DicomTlsEnabled, ...)
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (with ``dicomweb=True``)."""
        return f"{self.url}/dicom-web"

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
