"""DICOM audit messages (PS3.15 Annex A.5): who sent and received which instances, and security events.

Messages follow the DICOM audit message schema (``AuditMessage`` with ``EventIdentification``,
``ActiveParticipant``, ``AuditSourceIdentification`` and ``ParticipantObjectIdentification``):

- **Application Activity** (110100): the service started (110120) or stopped (110121);
- **DICOM Instances Transferred** (110104): received by the node (one message per study per
  association, when the association ends) or the watch folder (per file), action Create; sent on by
  C-STORE (per study group), action Read;
- **Security Alert** (110113), type Node Authentication (110126): a calling AE title that is not on
  the allow-list, or a failed TLS handshake.

Each message is one line of XML appended to the audit file (default ``SPOOL/audit.xml``; ``[audit]
path``), flushed at once; optionally also sent to a syslog collector (RFC 5424, MSGID
``IHE+RFC-3881``, octet-counted framing over TCP or TLS, RFC 6587/5425) by a background thread that
never blocks the service (its queue holds 10,000 messages; beyond that the file remains the record
and the drop is counted). The patient ID appears in the patient participant object, as the standard
intends; the operational logs and the metrics stay free of patient data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

logger = logging.getLogger(__name__)

#: (code, display name) of the events and roles used here (PS3.16 CID 400-404).
APPLICATION_ACTIVITY = ("110100", "Application Activity")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
SECURITY_ALERT = ("110113", "Security Alert")
APPLICATION_START = ("110120", "Application Start")
APPLICATION_STOP = ("110121", "Application Stop")
NODE_AUTHENTICATION = ("110126", "Node Authentication")
APPLICATION = ("110150", "Application")
SOURCE = ("110153", "Source Role ID")
DESTINATION = ("110152", "Destination Role ID")
SUCCESS, MINOR_FAILURE = "0", "4"


@dataclass(frozen=True)
class Study:
    """What one transfer moved of one study (the participant objects of its message)."""

    study_uid: str
    patient_id: str = ""
    sop_classes: dict[str, int] = field(default_factory=dict)  # SOP class UID -> instances


def _code(parent: ET.Element, tag: str, code: tuple[str, str]) -> ET.Element:
    return ET.SubElement(parent, tag, csd_code=code[0], codeSystemName="DCM", originalText=code[1])


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def message(event: tuple[str, str], *, action: str, outcome: str, event_type: tuple[str, str] | None = None,
            participants: Iterable[dict[str, str]] = (), studies: Iterable[Study] = (), source_id: str,
            description: str = "") -> str:
    """One audit message as a line of XML (see the module docstring)."""
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", EventActionCode=action, EventDateTime=_now(),
                          EventOutcomeIndicator=outcome)
    _code(ident, "EventID", event)
    if event_type is not None:
        _code(ident, "EventTypeCode", event_type)
    if description:
        ET.SubElement(ident, "EventOutcomeDescription").text = description[:512]
    for p in participants:
        role = p.pop("role", None)
        active = ET.SubElement(root, "ActiveParticipant", **{k: v for k, v in p.items() if v})
        if role:
            _code(active, "RoleIDCode", {"source": SOURCE, "destination": DESTINATION, "application": APPLICATION}[role])
    source = ET.SubElement(root, "AuditSourceIdentification", AuditSourceID=source_id)
    ET.SubElement(source, "AuditSourceTypeCode", csd_code="4", codeSystemName="DCM",
                  originalText="Application Server Process")
    for study in studies:
        obj = ET.SubElement(root, "ParticipantObjectIdentification", ParticipantObjectID=study.study_uid,
                            ParticipantObjectTypeCode="2", ParticipantObjectTypeCodeRole="3")
        ET.SubElement(obj, "ParticipantObjectIDTypeCode", csd_code="110180", codeSystemName="DCM",
                      originalText="Study Instance UID")
        desc = ET.SubElement(obj, "ParticipantObjectDescription")
        for uid, count in sorted(study.sop_classes.items()):
            ET.SubElement(desc, "SOPClass", UID=uid, NumberOfInstances=str(count))
        if study.patient_id:
            patient = ET.SubElement(root, "ParticipantObjectIdentification", ParticipantObjectID=study.patient_id,
                                    ParticipantObjectTypeCode="1", ParticipantObjectTypeCodeRole="1")
            ET.SubElement(patient, "ParticipantObjectIDTypeCode", csd_code="2", codeSystemName="RFC-3881",
                          originalText="Patient Number")
    return ET.tostring(root, encoding="unicode")


class SyslogSender:
    """Sends messages to a syslog collector in a background thread (RFC 5424, octet counting)."""

    def __init__(self, url: str, *, app_name: str = "medblip", ca: Path | None = None) -> None:
        scheme, _, rest = url.partition("://")
        host, _, port = rest.rpartition(":")
        if scheme not in ("tcp", "tls") or not host or not port.isdigit():
            raise ValueError(f"[audit] syslog: {url!r} is not tcp://HOST:PORT or tls://HOST:PORT")
        self.host, self.port, self.tls = host.strip("[]"), int(port), scheme == "tls"
        self.ca = ca
        self.app_name = app_name
        self.dropped = 0
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=10_000)
        self._thread = threading.Thread(target=self._run, name="medblip-syslog", daemon=True)
        self._thread.start()

    def send(self, xml: str) -> None:
        try:
            self._queue.put_nowait(xml)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _frame(self, xml: str) -> bytes:
        header = f"<85>1 {_now()} {socket.gethostname()[:255]} {self.app_name} {os.getpid()} IHE+RFC-3881 - "
        body = (header + xml).encode("utf-8")
        return f"{len(body)} ".encode() + body

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
            sock = ctx.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _run(self) -> None:
        sock: socket.socket | None = None
        pending: str | None = None
        while True:
            xml = pending if pending is not None else self._queue.get()
            pending = None
            if xml is None:
                break
            try:
                if sock is None:
                    sock = self._connect()
                sock.sendall(self._frame(xml))
            except OSError as exc:
                logger.warning("audit: cannot reach the syslog collector %s:%d (%s); retrying", self.host,
                               self.port, exc.strerror or type(exc).__name__)
                with contextlib.suppress(OSError):
                    if sock is not None:
                        sock.close()
                sock, pending = None, xml
                threading.Event().wait(2.0)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class AuditTrail:
    """Appends audit messages to a file (and a syslog collector). Thread-safe."""

    def __init__(self, path: str | os.PathLike[str], *, source_id: str, syslog: SyslogSender | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.source_id = source_id
        self.syslog = syslog
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the service's life

    def record(self, event: tuple[str, str], **kwargs: object) -> None:
        xml = message(event, source_id=self.source_id, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self._file.write(xml + "\n")
            self._file.flush()
        if self.syslog is not None:
            self.syslog.send(xml)

    def close(self) -> None:
        if self.syslog is not None:
            self.syslog.close()
        with self._lock:
            self._file.close()

    # -- the events ------------------------------------------------------------------------------

    def application(self, started: bool, *, ae_title: str) -> None:
        self.record(APPLICATION_ACTIVITY, action="E", outcome=SUCCESS,
                    event_type=APPLICATION_START if started else APPLICATION_STOP,
                    participants=[{"UserID": ae_title, "UserIsRequestor": "false", "role": "application",
                                   "AlternativeUserID": str(os.getpid())}])

    def received(self, studies: Iterable[Study], *, via: str, peer_ae: str, peer_host: str, our_ae: str) -> None:
        for study in studies:
            self.record(INSTANCES_TRANSFERRED, action="C", outcome=SUCCESS, studies=[study],
                        participants=[{"UserID": peer_ae, "UserIsRequestor": "true", "role": "source",
                                       "NetworkAccessPointID": peer_host, "NetworkAccessPointTypeCode": "2"},
                                      {"UserID": our_ae, "UserIsRequestor": "false", "role": "destination"}],
                        description=f"received by {via}")

    def sent(self, studies: Iterable[Study], *, destination: str, our_ae: str, ok: bool, detail: str = "") -> None:
        for study in studies:
            self.record(INSTANCES_TRANSFERRED, action="R", outcome=SUCCESS if ok else MINOR_FAILURE,
                        studies=[study], description=detail or "sent by C-STORE",
                        participants=[{"UserID": our_ae, "UserIsRequestor": "true", "role": "source"},
                                      {"UserID": destination, "UserIsRequestor": "false", "role": "destination"}])

    def security_alert(self, *, peer: str, detail: str) -> None:
        self.record(SECURITY_ALERT, action="E", outcome=MINOR_FAILURE, event_type=NODE_AUTHENTICATION,
                    participants=[{"UserID": peer, "UserIsRequestor": "true", "NetworkAccessPointID": peer}],
                    description=detail)
