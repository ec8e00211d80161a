"""The review station's section of the TOML file: ``[review]``, with ``[review.tls]`` (:mod:`.tls`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from medblip_dicom.dicomtext import TextError, dicom_text
from medblip_dicom.integrations.config.checks import (
    ConfigError, check_bind_host, check_bool, check_int, check_port, check_positive, fail, shown, sub_table,
)
from medblip_dicom.integrations.config.tls import ReviewTLSConfig


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
            check_bool("review", name, getattr(self, name))
        check_bind_host("review", "host", self.host)
        check_port("review", "port", self.port)
        if not isinstance(self.organization, str):
            fail("review", "organization", f"must be a text (DICOM LO), got {shown(self.organization)}")
        try:  # the value signed reports and rejection notes name: the DICOM text rule, checked now
            object.__setattr__(self, "organization", dicom_text(self.organization, "LO", what="[review] organization"))
        except TextError as exc:
            raise ConfigError(str(exc)) from None
        check_positive("review", "session_idle_s", self.session_idle_s)
        check_int("review", "max_login_failures", self.max_login_failures, 1)
        object.__setattr__(self, "tls", sub_table(ReviewTLSConfig, self.tls, "review.tls"))
