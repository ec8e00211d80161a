"""The operations sections of the TOML file: ``[metrics]`` and ``[audit]`` (see :mod:`.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medblip_dicom.integrations.config.checks import check_int, fail, optional_path


@dataclass(frozen=True)
class MetricsConfig:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP (:mod:`medblip_dicom.integrations.ops.http`); off while ``port`` is 0."""

    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            fail("metrics", "host", f"must be an address to bind to, got {self.host!r}")
        check_int("metrics", "port", self.port, 0)
        if self.port > 65535:
            fail("metrics", "port", f"must be 0 (off) or 1..65535, got {self.port}")

    @property
    def enabled(self) -> bool:
        return self.port > 0


@dataclass(frozen=True)
class AuditConfig:
    """The DICOM audit trail (:mod:`medblip_dicom.integrations.ops.audit`): a file, and optionally a syslog collector."""

    enabled: bool = True
    path: Path | None = None
    syslog: str = ""
    syslog_ca: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            fail("audit", "enabled", f"must be true or false, got {self.enabled!r}")
        object.__setattr__(self, "path", optional_path("audit", "path", self.path))
        object.__setattr__(self, "syslog_ca", optional_path("audit", "syslog_ca", self.syslog_ca))
        if not isinstance(self.syslog, str):
            fail("audit", "syslog", f"must be tcp://HOST:PORT or tls://HOST:PORT, got {self.syslog!r}")
        if self.syslog:
            scheme, _, rest = self.syslog.partition("://")
            host, _, port = rest.rpartition(":")
            if scheme not in ("tcp", "tls") or not host or not (port.isascii() and port.isdigit()) \
                    or not 0 < int(port) < 65536:
                fail("audit", "syslog", f"{self.syslog!r} is not tcp://HOST:PORT or tls://HOST:PORT")

    def resolved_path(self, spool_dir: Path) -> Path:
        """Where the messages go (default ``SPOOL/audit.xml``)."""
        return self.path or spool_dir / "audit.xml"
