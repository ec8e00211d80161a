"""The DICOMweb keys of the TOML file: ``[forward] dicomweb_url`` with its ``[forward.dicomweb]``
sub-table (auth, TLS, timeout of the STOW-RS sink) and the ``[dicomweb]`` section (the STOW-RS
endpoint of the node service) with its ``[dicomweb.tls]`` sub-table. See :mod:`.file` for how
sections are built.

Secrets never sit in the file or on the command line: a bearer token or a password is read from
a file or an environment variable named here, when the sink or the endpoint is built.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medblip_dicom.integrations.config.checks import (
    ConfigError, Renamed, both_or_neither, check_bind_host, check_bool, check_int, check_paths, check_port,
    check_positive, check_text, fail, not_both, sub_table,
)
from medblip_dicom.integrations.config.tls import DicomwebTLSConfig

#: The endpoint refuses bodies above this many bytes unless ``[dicomweb] max_body_bytes`` says otherwise.
DEFAULT_MAX_BODY = 512 * 1024 * 1024

#: ``[dicomweb]``'s TLS keys moved into ``[dicomweb.tls]``, the shape of ``[node.tls]`` and ``[review.tls]``.
RENAMED = (Renamed(("dicomweb", "cert"), ("dicomweb.tls", "cert")),
           Renamed(("dicomweb", "key"), ("dicomweb.tls", "key")))


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (where plain HTTP and no token are acceptable)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(section: str, key: str, url: str) -> None:
    """A DICOMweb base URL: ``http(s)://HOST[:PORT]/PATH`` (the service root, e.g. ``.../dicom-web``)."""
    if not isinstance(url, str):
        fail(section, key, f"must be an http(s) URL, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        fail(section, key, f"{url!r} is not an http(s)://HOST[:PORT]/PATH URL of a DICOMweb service")
    if parts.username or parts.password:
        fail(section, key, "credentials do not belong in the URL: use [forward.dicomweb] username and "
                           "password_file / password_env, or token_file / token_env")


def read_secret(section: str, file_key: str, path: Path | None, env_key: str, env: str) -> str | None:
    """The secret from its file (first line) or environment variable; None when neither is set."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise ConfigError(f"[{section}] {file_key}: cannot read {path} ({exc.strerror or exc})") from None
        if not text or not text[0].strip():
            raise ConfigError(f"[{section}] {file_key}: {path} is empty")
        return text[0].strip()
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"[{section}] {env_key}: the environment variable {env} is not set or empty")
        return value
    return None


@dataclass(frozen=True)
class ForwardDicomwebConfig:
    """How the STOW-RS sink authenticates, verifies TLS and waits (``[forward.dicomweb]``)."""

    username: str = ""
    password_file: Path | None = None
    password_env: str = ""
    token_file: Path | None = None
    token_env: str = ""
    ca: Path | None = None
    verify: bool = True
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        s = "forward.dicomweb"
        check_paths(self, s, "password_file", "token_file", "ca")
        check_text(s, "username", self.username)
        for name in ("password_env", "token_env"):
            check_text(s, name, getattr(self, name), "the name of an environment variable")
        check_bool(s, "verify", self.verify)
        check_positive(s, "timeout_s", self.timeout_s)
        not_both(s, "password_file", self.password_file, self.password_env, "password_file or password_env")
        not_both(s, "token_file", self.token_file, self.token_env, "token_file or token_env")
        has_password = self.password_file is not None or bool(self.password_env)
        has_token = self.token_file is not None or bool(self.token_env)
        both_or_neither(s, "username", self.username, has_password,
                        "username and password_file (or password_env) for HTTP basic auth")
        not_both(s, "token_file", self.username, has_token, "either HTTP basic auth (username) or a bearer token")

    @property
    def has_credentials(self) -> bool:
        return bool(self.username) or self.token_file is not None or bool(self.token_env)

    def token(self) -> str | None:
        """The bearer token (read now), or None."""
        return read_secret("forward.dicomweb", "token_file", self.token_file, "token_env", self.token_env)

    def password(self) -> str | None:
        """The basic-auth password (read now), or None."""
        return read_secret("forward.dicomweb", "password_file", self.password_file, "password_env", self.password_env)


def finish_forward(forward: Any) -> None:
    """``[forward]``'s DICOMweb part: build the sub-table, check the URL, refuse credentials over plain
    HTTP to another machine (called from ``ForwardConfig.__post_init__``)."""
    object.__setattr__(forward, "dicomweb", sub_table(ForwardDicomwebConfig, forward.dicomweb, "forward.dicomweb"))
    url = forward.dicomweb_url
    if not isinstance(url, str):
        fail("forward", "dicomweb_url", f"must be an http(s) URL, got {url!r}")
    url = url.strip().rstrip("/")
    object.__setattr__(forward, "dicomweb_url", url)
    if url:
        check_url("forward", "dicomweb_url", url)
        parts = urlsplit(url)
        if parts.scheme == "http" and forward.dicomweb.has_credentials and not is_loopback(parts.hostname or ""):
            fail("forward", "dicomweb_url", f"{url} is plain HTTP: credentials would travel in clear; use https://")


@dataclass(frozen=True)
class DicomwebConfig:
    """The STOW-RS endpoint of the node service (``[dicomweb]``); off while ``port`` is 0.

    Tokens: one per line in ``token_file`` and/or one in the environment variable ``token_env``;
    a request must carry ``Authorization: Bearer <token>``. Without any token the endpoint takes
    anonymous requests, which is allowed on a loopback address only. TLS is on when ``[dicomweb.tls]``
    sets cert and key; then plain HTTP is not answered at all.
    """

    host: str = "127.0.0.1"
    port: int = 0
    token_file: Path | None = None
    token_env: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY
    tls: DicomwebTLSConfig = field(default_factory=DicomwebTLSConfig)

    def __post_init__(self) -> None:
        s = "dicomweb"
        check_paths(self, s, "token_file")
        check_bind_host(s, "host", self.host)
        check_port(s, "port", self.port, zero="off")
        check_text(s, "token_env", self.token_env, "the name of an environment variable")
        check_int(s, "max_body_bytes", self.max_body_bytes, 1024)
        object.__setattr__(self, "tls", sub_table(DicomwebTLSConfig, self.tls, "dicomweb.tls"))
        if self.enabled and not self.has_tokens and not is_loopback(self.host):
            fail(s, "token_file", f"the endpoint listens on {self.host}: set token_file or token_env "
                                  "(anonymous STOW-RS is allowed on a loopback address only)")

    @property
    def enabled(self) -> bool:
        return self.port > 0

    @property
    def has_tokens(self) -> bool:
        return self.token_file is not None or bool(self.token_env)

    def tokens(self) -> frozenset[str]:
        """Every accepted token (read now); empty means anonymous requests are accepted."""
        out: set[str] = set()
        if self.token_file is not None:
            try:
                lines = self.token_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(f"[dicomweb] token_file: cannot read {self.token_file} "
                                  f"({exc.strerror or exc})") from None
            out.update(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
            if not out:
                raise ConfigError(f"[dicomweb] token_file: {self.token_file} holds no token")
        if self.token_env:
            value = os.environ.get(self.token_env, "").strip()
            if not value:
                raise ConfigError(f"[dicomweb] token_env: the environment variable {self.token_env} is not set "
                                  "or empty")
            out.add(value)
        return frozenset(out)
