"""The TLS sub-tables of the TOML file, one shape for every listener and one for the clients.

Every TLS setting sits in a ``.tls`` sub-table of its section: ``[node.tls]`` (the Storage SCP),
``[dicomweb.tls]`` (the STOW-RS endpoint), ``[review.tls]`` (the review station) are listeners
(:class:`ServerTLSConfig`: a certificate and its key, both or neither); ``[forward.tls]`` is the
Storage SCU towards the destination (:class:`ForwardTLSConfig`: a CA, and a client certificate
with its key). Each class names its sub-table in ``SECTION`` (a class attribute, not a key), so
one ``__post_init__`` serves them all. See :mod:`.file` for how sections are built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medblip_dicom.integrations.config.checks import both_or_neither, check_paths, fail


@dataclass(frozen=True)
class ServerTLSConfig:
    """TLS of a listener: on when cert and key are set (PEM files; the key unencrypted)."""

    #: The sub-table's name in the file, for error messages (a plain class attribute, not a field).
    SECTION = "tls"

    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        check_paths(self, self.SECTION, "cert", "key")
        both_or_neither(self.SECTION, "cert/key", self.cert, self.key, "the certificate and its private key")

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class NodeTLSConfig(ServerTLSConfig):
    """``[node.tls]``: TLS of the Storage SCP; client_ca makes client certificates required."""

    SECTION = "node.tls"

    client_ca: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_paths(self, self.SECTION, "client_ca")
        if self.client_ca is not None and self.cert is None:
            fail(self.SECTION, "client_ca", "client certificates need TLS: set cert and key too")


@dataclass(frozen=True)
class DicomwebTLSConfig(ServerTLSConfig):
    """``[dicomweb.tls]``: HTTPS for the STOW-RS endpoint; then plain HTTP is not answered at all."""

    SECTION = "dicomweb.tls"


@dataclass(frozen=True)
class ReviewTLSConfig(ServerTLSConfig):
    """``[review.tls]``: HTTPS for the review station."""

    SECTION = "review.tls"


@dataclass(frozen=True)
class ForwardTLSConfig:
    """``[forward.tls]``: TLS towards the destination: CA to verify it, optional client certificate.

    The shape of every client-side TLS sub-table: another one subclasses it and names itself in
    ``SECTION``.
    """

    SECTION = "forward.tls"

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        check_paths(self, self.SECTION, "ca", "cert", "key")
        both_or_neither(self.SECTION, "cert/key", self.cert, self.key, "the client certificate and its key")

    @property
    def enabled(self) -> bool:
        return self.ca is not None or self.cert is not None
