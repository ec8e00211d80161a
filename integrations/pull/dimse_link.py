"""The DIMSE side of ``medblip pull``: who the archive is, who we are, and one association at a time.

``--from dimse://AET@HOST:PORT`` names the archive (:func:`parse_dimse_url`); :class:`DimseSettings`
holds our calling AE title, DICOM TLS (as ``[forward.tls]``: the archive's CA, our certificate) and
the timeouts. :func:`open_association` opens one association with the presentation contexts asked
for and raises :class:`ArchiveUnavailable` with a sentence when the archive cannot be reached or
rejects us. :func:`status_words` says what a Query/Retrieve status means (PS3.4 C.4).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medblip_dicom.errors import MedblipError

from medblip_dicom.integrations.config.file import Destination, ForwardTLSConfig
from medblip_dicom.integrations.delivery.sinks.dicom import client_ssl_context
from medblip_dicom.integrations.net import pynetdicom_compat

logger = logging.getLogger(__name__)

SCHEME = "dimse://"


class ArchiveUnavailable(MedblipError):
    """The archive cannot be reached, rejected the association, or went away during it."""


class RetrieveRefused(MedblipError):
    """The archive will not retrieve this way (C-GET not offered or refused; a move destination it
    does not know); the message says what the operator can configure."""


def is_dimse_url(text: str | None) -> bool:
    return bool(text) and str(text).lower().startswith(SCHEME)


def parse_dimse_url(text: str, flag: str = "--from") -> Destination:
    """``dimse://AET@HOST:PORT`` (or bare ``AET@HOST:PORT``) as a :class:`Destination`; ValueError
    naming `flag` otherwise."""
    raw = text[len(SCHEME):] if is_dimse_url(text) else text
    try:
        return Destination.parse(raw.rstrip("/"))
    except MedblipError:
        form = "dimse://AET@HOST:PORT" if flag == "--from" else "AET@HOST:PORT"
        example = "dimse://PACS@10.0.0.5:104" if flag == "--from" else "PACS@10.0.0.5:104"
        raise ValueError(f"{flag} {text!r} is not {form} (for example {example})") from None


def check_ae(flag: str, title: str) -> str:
    """`title` if it is a DICOM AE title; ValueError naming `flag` otherwise."""
    from medblip_dicom.integrations.config.checks import ConfigError, check_ae_title

    try:
        check_ae_title("pull", flag, title)
    except ConfigError as exc:
        raise ValueError(f"{flag} {str(exc).split(': ', 1)[-1]}") from None
    return title


@dataclass(frozen=True)
class DimseSettings:
    """Our side of every association: calling AE title, TLS towards the archive, timeouts (seconds)."""

    calling_ae_title: str = "MEDBLIP"
    tls: ForwardTLSConfig = field(default_factory=ForwardTLSConfig)
    timeout_s: float = 30.0
    max_pdu: int = 16382


def open_association(archive: Destination, settings: DimseSettings, contexts: Sequence[tuple[str, Sequence[str]]],
                     *, roles: Sequence[Any] = (), handlers: Sequence[Any] = ()) -> Any:
    """An established association with `archive` proposing `contexts` ((abstract syntax, transfer
    syntaxes) pairs); `roles` are SCP/SCU role selection items, `handlers` pynetdicom event handlers.

    Raises :class:`ArchiveUnavailable` naming the archive and what to check.
    """
    pynetdicom_compat.check()
    raw_sockets: list[socket.socket] = []
    ae = pynetdicom_compat.nodelay_ae(settings.calling_ae_title, sockets=raw_sockets)
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    for name in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
        setattr(ae, name, settings.timeout_s)
    ae.maximum_pdu_size = settings.max_pdu
    kwargs: dict[str, Any] = {"ae_title": archive.ae_title, "ext_neg": list(roles) or None}
    if settings.tls.enabled:
        kwargs["tls_args"] = (client_ssl_context(settings.tls), archive.host)
    assoc, failure = pynetdicom_compat.associate(ae, raw_sockets, archive.host, archive.port,
                                                 evt_handlers=handlers, **kwargs)
    if not failure:
        return assoc
    why = {"unreachable": "cannot be reached (no TCP connection): check the host, the port and that it runs",
           "rejected": (f"rejected the association: check its AE title {archive.ae_title!r} and that it knows ours "
                        f"({settings.calling_ae_title!r}, this host)"),
           "aborted": "aborted the association (a TLS mismatch, or it does not accept us)"}[failure]
    raise ArchiveUnavailable(f"archive {archive} {why}")


def accepted(assoc: Any, abstract: str) -> bool:
    """True when the archive accepted a presentation context for `abstract`."""
    return any(cx.abstract_syntax == abstract for cx in assoc.accepted_contexts)


def release(assoc: Any) -> None:
    """Release `assoc` if it is still up (an aborted one needs nothing)."""
    if assoc.is_established:
        with contextlib.suppress(Exception):
            assoc.release()


_WORDS = {
    0x0000: "success", 0xFE00: "cancelled", 0xB000: "warning: sub-operations completed with failures or warnings",
    0xA700: "out of resources", 0xA701: "out of resources: unable to calculate the number of matches",
    0xA702: "out of resources: unable to perform the sub-operations",
    0xA801: "move destination unknown", 0xA900: "identifier does not match SOP class",
    0x0122: "SOP class not supported", 0x0124: "not authorized", 0xAA00: "none of the frames found",
}


def status_words(status: int | None) -> str:
    """``0xA801 move destination unknown``: a Query/Retrieve status in words."""
    if status is None:
        return "no answer (the association was aborted or timed out)"
    words = _WORDS.get(status)
    if words is None:
        words = "unable to process" if 0xC000 <= status <= 0xCFFF else \
            "pending" if status in (0xFF00, 0xFF01) else "failure"
    return f"0x{status:04X} {words}"
