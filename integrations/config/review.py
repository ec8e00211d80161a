"""The review station's sections of the TOML file: ``[review]`` and ``[review.tls]`` (see :mod:`.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medblip_dicom.integrations.config.checks import check_int, check_positive, fail, optional_path, sub_table


@dataclass(frozen=True)
class ReviewTLSConfig:
    """HTTPS for the review station: on when cert and key are set."""

    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key"):
            object.__setattr__(self, name, optional_path("review.tls", name, getattr(self, name)))
        if (self.cert is None) != (self.key is None):
            fail("review.tls", "cert/key", "set both the certificate and its private key, or neither")

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class ReviewConfig:
    """The review station (``medblip review``) and what the services do for it (``enabled``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8400
    organization: str = ""
    hold_until_signed: bool = False
    send_rejection_note: bool = False
    keep_sources: bool = True
    session_idle_s: float = 1800.0
    max_login_failures: int = 5
    tls: ReviewTLSConfig = field(default_factory=ReviewTLSConfig)

    def __post_init__(self) -> None:
        for name in ("enabled", "hold_until_signed", "send_rejection_note", "keep_sources"):
            if not isinstance(getattr(self, name), bool):
                fail("review", name, f"must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.host, str) or not self.host:
            fail("review", "host", f"must be an address to bind to, got {self.host!r}")
        check_int("review", "port", self.port, 1)
        if self.port > 65535:
            fail("review", "port", f"must be 1..65535, got {self.port}")
        if not isinstance(self.organization, str) or len(self.organization) > 64:
            fail("review", "organization", "must be a text of at most 64 characters (DICOM LO)")
        check_positive("review", "session_idle_s", self.session_idle_s)
        check_int("review", "max_login_failures", self.max_login_failures, 1)
        object.__setattr__(self, "tls", sub_table(ReviewTLSConfig, self.tls, "review.tls"))
