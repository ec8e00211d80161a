"""The ``[fhir]`` section: the FHIR R4 server that takes each report as a DiagnosticReport. See
:mod:`.file` for how sections are built.

The sink is off while ``url`` is empty. Like the STOW-RS sink (``[forward.dicomweb]``), a bearer
token never sits in the file: it is read from ``token_file`` or the environment variable named by
``token_env`` when the sink is built, and it is refused over plain HTTP to another machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from medblip_dicom.integrations.config.checks import (
    check_bool, check_paths, check_positive, check_text, fail, not_both, shown,
)
from medblip_dicom.integrations.config.dicomweb import is_loopback, read_secret


@dataclass(frozen=True)
class FhirConfig:
    """The FHIR server's base URL (``https://fhir.example.org/r4``), its token, TLS and timeout, and the
    identifier system of the site's patient IDs (``patient_system``, a URI; empty: none is sent)."""

    url: str = ""
    token_file: Path | None = None
    token_env: str = ""
    ca: Path | None = None
    verify: bool = True
    timeout_s: float = 30.0
    patient_system: str = ""

    def __post_init__(self) -> None:
        s = "fhir"
        check_paths(self, s, "token_file", "ca")
        for name in ("url", "token_env", "patient_system"):
            check_text(s, name, getattr(self, name))
        check_bool(s, "verify", self.verify)
        check_positive(s, "timeout_s", self.timeout_s)
        not_both(s, "token_file", self.token_file, self.token_env, "token_file or token_env")
        if self.patient_system and (" " in self.patient_system or ":" not in self.patient_system):
            fail(s, "patient_system", f"{shown(self.patient_system)} is not a URI (for example urn:oid:1.2.3.4 or "
                                      "https://hospital.example/mrn)")
        url = self.url.strip().rstrip("/")
        object.__setattr__(self, "url", url)
        if not url:
            return
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            fail(s, "url", f"{url!r} is not the http(s)://HOST[:PORT]/PATH base URL of a FHIR server")
        if parts.username or parts.password:
            fail(s, "url", "credentials do not belong in the URL: use token_file or token_env")
        if parts.scheme == "http" and self.has_token and not is_loopback(parts.hostname or ""):
            fail(s, "url", f"{url} is plain HTTP: the token and the reports would travel in clear; use https://")

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def has_token(self) -> bool:
        return self.token_file is not None or bool(self.token_env)

    def token(self) -> str | None:
        """The bearer token (read now), or None."""
        return read_secret("fhir", "token_file", self.token_file, "token_env", self.token_env)
