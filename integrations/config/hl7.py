"""The ``[hl7]`` section: the RIS that takes each report as an HL7 v2.5.1 ORU^R01 over MLLP, with its
``[hl7.tls]`` sub-table (the shape of ``[forward.tls]``). See :mod:`.file` for how sections are built.

The sink is off while ``destination`` is empty. The application and facility names go into MSH-3
to MSH-6 as HL7 HD values: printable ASCII without the HL7 delimiters (``| ^ ~ \\ &``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medblip_dicom.integrations.config.checks import check_port, check_positive, fail, shown, sub_table
from medblip_dicom.integrations.config.tls import ForwardTLSConfig

_HD = re.compile(r"^[\x20-\x7e]{0,180}$")
_DELIMITERS = set("|^~\\&")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:@\[\]/\s]+):(\d{1,5})$")


@dataclass(frozen=True)
class Hl7TLSConfig(ForwardTLSConfig):
    """``[hl7.tls]``: TLS on the MLLP connection (on when ``ca`` or ``cert`` is set): the CA that
    verifies the receiver, and a client certificate with its key if the receiver asks for one."""

    SECTION = "hl7.tls"


def parse_host_port(section: str, key: str, text: object) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets: ``[::1]:2575``) as ``(host, port)``."""
    match = _HOST_PORT.match(text.strip()) if isinstance(text, str) else None
    if not match:
        fail(section, key, f"{shown(text)} is not HOST:PORT (for example ris.example.org:2575)")
    check_port(section, key, int(match.group(2)), what=f"{shown(text)} is not HOST:PORT: its port")
    return match.group(1).strip("[]"), int(match.group(2))


@dataclass(frozen=True)
class Hl7Config:
    """Where ORU^R01 messages go (``destination``, ``HOST:PORT``; empty: no HL7 sink) and how MSH names
    both ends. ``processing_id`` is MSH-11 (P production, T training, D debugging); ``timeout_s``
    bounds the connection and the wait for each ACK (no ACK in time: the reports wait and are sent again)."""

    destination: str = ""
    sending_application: str = "MEDBLIP"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"
    timeout_s: float = 30.0
    tls: Hl7TLSConfig = field(default_factory=Hl7TLSConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.destination, str):
            fail("hl7", "destination", f"must be HOST:PORT (text), got {shown(self.destination)}")
        object.__setattr__(self, "destination", self.destination.strip())
        if self.destination:
            parse_host_port("hl7", "destination", self.destination)
        for key in ("sending_application", "sending_facility", "receiving_application", "receiving_facility"):
            value = getattr(self, key)
            if not isinstance(value, str) or not _HD.match(value) or _DELIMITERS & set(value):
                fail("hl7", key, f"{shown(value)}: use printable ASCII without | ^ ~ \\ & (at most 180 characters)")
        if self.processing_id not in ("P", "T", "D"):
            fail("hl7", "processing_id",
                 f"{shown(self.processing_id)}: use P (production), T (training) or D (debugging)")
        check_positive("hl7", "timeout_s", self.timeout_s)
        object.__setattr__(self, "tls", sub_table(Hl7TLSConfig, self.tls, "hl7.tls"))

    @property
    def enabled(self) -> bool:
        return bool(self.destination)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the destination."""
        return parse_host_port("hl7", "destination", self.destination)
