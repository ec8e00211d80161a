"""dcmtk's dcmqrscp as a second, independent test archive (C-FIND, C-GET, C-MOVE, C-STORE): a
configuration file with its storage area and AE table, started on a free loopback port in its own
process group, stopped by PID (with the children it forks per association).

It answers few keys at IMAGE level (SOPInstanceUID, InstanceNumber), none of ImageType or the
position: the archive a pull cannot reduce a series on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pydicom

from tests.support.env import free_port, require_tool, wait_for


class Dcmqrscp:
    """A dcmqrscp archive in a temp folder; `peers` maps AE titles it may C-MOVE to onto ports."""

    def __init__(self, folder: Path, *, aet: str = "QRSCP", peers: dict[str, int] | None = None,
                 options: Iterable[str] = ()) -> None:
        self.binary = require_tool("dcmqrscp")
        self.folder = folder
        self.aet = aet
        self.port = free_port()
        # JPEG 2000 accepted (C-STORE, C-GET) and proposed (C-MOVE) besides the uncompressed syntaxes:
        # the test study's CR is JPEG 2000, and dcmqrscp sends an instance as it holds it
        self.options = ["+xw", "-xw", *options]
        self.storage = folder / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        hosts = "\n".join(f"peer{i} = ({peer}, 127.0.0.1, {port})" for i, (peer, port) in
                          enumerate((peers or {}).items()))
        self.config_path = folder / "dcmqrscp.cfg"
        self.config_path.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{aet} {self.storage} RW (200, 1024mb) ANY\nAETable END\n")

    def start(self, timeout_s: float = 20) -> None:
        log = open(self.folder / "dcmqrscp.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config_path), "-ll", "warn", *self.options],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"dcmqrscp exited with {self.proc.returncode}: "
                                     + (self.folder / "dcmqrscp.log").read_text()[-2000:])
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(up, timeout_s, "dcmqrscp's port")

    def stop(self) -> None:
        """Kill the archive and every child it forked for an association."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def store(self, paths: Iterable[Path]) -> None:
        """C-STORE files into the archive (as a modality would)."""
        from pynetdicom import AE

        datasets = [pydicom.dcmread(p) for p in paths]
        ae = AE("LOADER")
        for sop_class, syntax in dict.fromkeys((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                                               for ds in datasets):
            ae.add_requested_context(sop_class, [syntax])  # as they are: one context per syntax
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.aet)
        assert assoc.is_established, "dcmqrscp refused the loader's association"
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                assert status is not None and status.Status == 0, f"dcmqrscp did not store {ds.SOPInstanceUID}"
        finally:
            assoc.release()

    def instances(self, study_uid: str, modality: str | None = None) -> list[pydicom.Dataset]:
        """The distinct instances the storage area holds for that study (optionally of one modality)."""
        found: dict[str, pydicom.Dataset] = {}
        for path in sorted(self.storage.iterdir()):
            if path.name == "index.dat" or not path.is_file():
                continue
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if ds.get("StudyInstanceUID") == study_uid and modality in (None, ds.get("Modality")):
                found.setdefault(str(ds.SOPInstanceUID), ds)
        return list(found.values())

    def files(self) -> int:
        """How many instance files the storage area holds (a duplicate stored twice counts twice)."""
        return sum(1 for p in self.storage.iterdir() if p.is_file() and p.name != "index.dat")
