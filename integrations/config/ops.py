"""The operations sections of the TOML file: ``[metrics]`` and ``[audit]`` (see :mod:`.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medblip_dicom.integrations.config.checks import check_bind_host, check_bool, check_paths, check_port, fail


@dataclass(frozen=True)
class MetricsConfig:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP (:mod:`medblip_dicom.integrations.ops.http`); off while ``port`` is 0."""

    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        check_bind_host("metrics", "host", self.host)
        check_port("metrics", "port", self.port, zero="off")

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
        check_bool("audit", "enabled", self.enabled)
        check_paths(self, "audit", "path", "syslog_ca")
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
