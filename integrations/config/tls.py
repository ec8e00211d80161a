"""The TLS sub-tables of the TOML file: ``[node.tls]`` and ``[forward.tls]`` (see :mod:`.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medblip_dicom.integrations.config.checks import fail, optional_path


@dataclass(frozen=True)
class NodeTLSConfig:
    """TLS of the listener: on when cert and key are set; client_ca makes client certificates required."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            object.__setattr__(self, name, optional_path("node.tls", name, getattr(self, name)))
        if (self.cert is None) != (self.key is None):
            fail("node.tls", "cert/key", "set both the certificate and its private key, or neither")
        if self.client_ca is not None and self.cert is None:
            fail("node.tls", "client_ca", "client certificates need TLS: set cert and key too")

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class ForwardTLSConfig:
    """TLS towards the destination: CA to verify it, optional client certificate."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            object.__setattr__(self, name, optional_path("forward.tls", name, getattr(self, name)))
        if (self.cert is None) != (self.key is None):
            fail("forward.tls", "cert/key", "set both the client certificate and its key, or neither")

    @property
    def enabled(self) -> bool:
        return self.ca is not None or self.cert is not None
