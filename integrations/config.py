"""One TOML file for both services: typed sections, validated when built.

Every section is a frozen dataclass whose ``__post_init__`` checks its values and raises
:class:`ConfigError` naming the key (``[node] port``) and what is allowed. :func:`load_config`
reads a file (or nothing), lays command-line overrides on top and builds a :class:`ServiceConfig`.
Unknown keys are errors, so a typo never silently falls back to a default.

A complete file (every key is optional; these are the defaults unless marked)::

    [model]
    path = "/models/blip-roco"        # required here or as --model
    device = "auto"                   # auto | cpu | cuda | cuda:N | mps
    dtype = "auto"                    # auto | float32 | bfloat16 | float16
    num_beams = 3
    max_new_tokens = 60
    min_new_tokens = 5
    no_repeat_ngram_size = 3

    [worker]
    batch_size = 8                    # images per model call
    max_wait_s = 1.0                  # a partial batch waits at most this long for more work
    prepare_workers = 2               # threads that read and decode ahead of the model
    separate_process = true           # caption in a child process: ingest never waits for the model
    nice = 10                         # CPU priority of that process (0 = same as the service)

    [spool]
    dir = "medblip-spool"             # local disk: SQLite WAL does not work on network shares
    max_bytes = 0                     # 0 = no limit on the bytes of pending inputs
    min_free_bytes = 268435456        # refuse new work when the disk would drop below this

    [output]
    dir = "/data/medblip-sr"          # folder sink (optional for the node)
    picture = false                   # also write a Secondary Capture picture with the caption
    study_quiet_s = 0.0               # hold a study's reports until it was quiet this long

    [watch]
    inbox = "/data/inbox"
    poll = false                      # polling observer, for network shares
    poll_interval_s = 1.0
    settle_s = 2.0                    # size and mtime must stay unchanged this long
    rescan_interval_s = 60.0          # full rescan as a safety net (0 = off)
    done_dir = ""                     # default INBOX/done
    failed_dir = ""                   # default INBOX/failed
    ignore = [".DS_Store", "Thumbs.db", "desktop.ini", ".*", "~*", "*.tmp", "*.part",
              "*.partial", "*.crdownload", "*.swp"]

    [node]
    ae_title = "MEDBLIP"
    host = "127.0.0.1"                # loopback unless told otherwise
    port = 11112
    allowed_calling_aets = []         # empty = any calling AE title
    max_associations = 10
    acse_timeout_s = 30.0
    dimse_timeout_s = 30.0
    network_timeout_s = 60.0
    max_pdu = 16382                   # 0 = unlimited
    keep_inputs = false               # keep delivered inputs in SPOOL/done instead of deleting

    [node.tls]                        # TLS is on when cert and key are set
    cert = "/etc/medblip/node.pem"
    key = "/etc/medblip/node.key"
    client_ca = ""                    # set: callers must present a certificate signed by it

    [forward]
    destination = "PACS@10.0.0.5:104" # AET@HOST:PORT (optional)
    calling_ae_title = "MEDBLIP"
    retry_initial_s = 2.0
    retry_max_s = 300.0
    timeout_s = 30.0

    [forward.tls]                     # optional
    ca = "/etc/medblip/pacs-ca.pem"   # verify the destination's certificate
    cert = ""                         # client certificate, if the destination asks for one
    key = ""
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medblip_dicom.errors import MedblipError

DEFAULT_SPOOL_DIR = "medblip-spool"
DEFAULT_IGNORE = (".DS_Store", "Thumbs.db", "desktop.ini", ".*", "~*", "*.tmp", "*.part", "*.partial",
                  "*.crdownload", "*.swp")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash, 1..16


class ConfigError(MedblipError):
    """The configuration file or a flag holds a value that cannot work; the message names the key."""


def _fail(section: str, key: str, message: str) -> None:
    raise ConfigError(f"[{section}] {key}: {message}")


def _check_ae_title(section: str, key: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip() or not _AE_TITLE.match(value):
        _fail(section, key, f"{value!r} is not a DICOM AE title (1 to 16 printable ASCII characters, no backslash)")


def _check_positive(section: str, key: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(section, key, f"must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        _fail(section, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_int(section: str, key: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(section, key, f"must be a whole number >= {minimum}, got {value!r}")


def _opt_path(value: str | os.PathLike[str] | None) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return Path(value).expanduser()


@dataclass(frozen=True)
class ModelConfig:
    """Which model captions, where, and how it generates."""

    path: str = ""
    device: str = "auto"
    dtype: str = "auto"
    num_beams: int = 3
    max_new_tokens: int = 60
    min_new_tokens: int = 5
    no_repeat_ngram_size: int = 3

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            _fail("model", "dtype", f"{self.dtype!r}: use auto, float32, bfloat16 or float16")
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", str(self.device)):
            _fail("model", "device", f"{self.device!r}: use auto, cpu, cuda, cuda:N or mps")
        _check_int("model", "num_beams", self.num_beams, 1)
        _check_int("model", "max_new_tokens", self.max_new_tokens, 1)
        _check_int("model", "min_new_tokens", self.min_new_tokens, 0)
        if self.min_new_tokens > self.max_new_tokens:
            _fail("model", "min_new_tokens", f"{self.min_new_tokens} exceeds max_new_tokens {self.max_new_tokens}")
        _check_int("model", "no_repeat_ngram_size", self.no_repeat_ngram_size, 0)


@dataclass(frozen=True)
class WorkerConfig:
    """Batching across jobs: a batch is taken when full or when its oldest job waited max_wait_s.

    ``separate_process``: the long-running services caption in a child process at CPU priority
    ``nice`` (see :mod:`medblip_dicom.integrations.workerproc`); ``--once`` and a service given a
    loaded captioner caption in-process.
    """

    batch_size: int = 8
    max_wait_s: float = 1.0
    prepare_workers: int = 2
    separate_process: bool = True
    nice: int = 10

    def __post_init__(self) -> None:
        _check_int("worker", "batch_size", self.batch_size, 1)
        _check_positive("worker", "max_wait_s", self.max_wait_s, allow_zero=True)
        _check_int("worker", "prepare_workers", self.prepare_workers, 0)
        if not isinstance(self.separate_process, bool):
            raise ConfigError(f"[worker] separate_process must be true or false, got {self.separate_process!r}")
        _check_int("worker", "nice", self.nice, 0)
        if self.nice > 19:
            raise ConfigError(f"[worker] nice must be 0 to 19, got {self.nice}")


@dataclass(frozen=True)
class SpoolConfig:
    """Where the spool lives and how much it may hold before it refuses new work."""

    dir: Path = Path(DEFAULT_SPOOL_DIR)
    max_bytes: int = 0
    min_free_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir).expanduser())
        _check_int("spool", "max_bytes", self.max_bytes, 0)
        _check_int("spool", "min_free_bytes", self.min_free_bytes, 0)


@dataclass(frozen=True)
class OutputConfig:
    """The folder sink, the optional picture and the per-study quiet time."""

    dir: Path | None = None
    picture: bool = False
    study_quiet_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", _opt_path(self.dir))
        if not isinstance(self.picture, bool):
            _fail("output", "picture", f"must be true or false, got {self.picture!r}")
        _check_positive("output", "study_quiet_s", self.study_quiet_s, allow_zero=True)


@dataclass(frozen=True)
class WatchConfig:
    """The watch folder: observer kind, settle time, where inputs end, which names are ignored."""

    inbox: Path | None = None
    poll: bool = False
    poll_interval_s: float = 1.0
    settle_s: float = 2.0
    rescan_interval_s: float = 60.0
    done_dir: Path | None = None
    failed_dir: Path | None = None
    ignore: tuple[str, ...] = DEFAULT_IGNORE

    def __post_init__(self) -> None:
        object.__setattr__(self, "inbox", _opt_path(self.inbox))
        object.__setattr__(self, "done_dir", _opt_path(self.done_dir))
        object.__setattr__(self, "failed_dir", _opt_path(self.failed_dir))
        if isinstance(self.ignore, str) or not all(isinstance(p, str) and p for p in self.ignore):
            _fail("watch", "ignore", f"must be a list of file name patterns, got {self.ignore!r}")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if not isinstance(self.poll, bool):
            _fail("watch", "poll", f"must be true or false, got {self.poll!r}")
        _check_positive("watch", "poll_interval_s", self.poll_interval_s)
        _check_positive("watch", "settle_s", self.settle_s, allow_zero=True)
        _check_positive("watch", "rescan_interval_s", self.rescan_interval_s, allow_zero=True)

    def resolved_done_dir(self) -> Path:
        """Where finished inputs go (default ``INBOX/done``)."""
        assert self.inbox is not None
        return self.done_dir or self.inbox / "done"

    def resolved_failed_dir(self) -> Path:
        """Where failed inputs go with their reason files (default ``INBOX/failed``)."""
        assert self.inbox is not None
        return self.failed_dir or self.inbox / "failed"

    def is_ignored(self, name: str) -> bool:
        """True when a file name matches one of the ignore patterns."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.ignore)


@dataclass(frozen=True)
class NodeTLSConfig:
    """TLS of the listener: on when cert and key are set; client_ca makes client certificates required."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            object.__setattr__(self, name, _opt_path(getattr(self, name)))
        if (self.cert is None) != (self.key is None):
            _fail("node.tls", "cert/key", "set both the certificate and its private key, or neither")
        if self.client_ca is not None and self.cert is None:
            _fail("node.tls", "client_ca", "client certificates need TLS: set cert and key too")

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class NodeConfig:
    """The Storage SCP: who it is, where it listens, whom it lets in, and its limits."""

    ae_title: str = "MEDBLIP"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    max_associations: int = 10
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 30.0
    network_timeout_s: float = 60.0
    max_pdu: int = 16382
    keep_inputs: bool = False
    tls: NodeTLSConfig = field(default_factory=NodeTLSConfig)

    def __post_init__(self) -> None:
        _check_ae_title("node", "ae_title", self.ae_title)
        if isinstance(self.allowed_calling_aets, str):
            _fail("node", "allowed_calling_aets", "must be a list of AE titles")
        for aet in self.allowed_calling_aets:
            _check_ae_title("node", "allowed_calling_aets", aet)
        object.__setattr__(self, "allowed_calling_aets", tuple(self.allowed_calling_aets))
        if not isinstance(self.host, str) or not self.host:
            _fail("node", "host", f"must be an address to bind to, got {self.host!r}")
        _check_int("node", "port", self.port, 0)
        if self.port > 65535:
            _fail("node", "port", f"must be 0..65535, got {self.port}")
        _check_int("node", "max_associations", self.max_associations, 1)
        for key in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
            _check_positive("node", key, getattr(self, key))
        _check_int("node", "max_pdu", self.max_pdu, 0)
        if 0 < self.max_pdu < 4096:
            _fail("node", "max_pdu", f"must be 0 (unlimited) or at least 4096, got {self.max_pdu}")
        if isinstance(self.tls, Mapping):
            object.__setattr__(self, "tls", _build(NodeTLSConfig, self.tls, "node.tls"))


@dataclass(frozen=True)
class Destination:
    """A DICOM peer: AE title, host and port (``AET@HOST:PORT``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AET@HOST:PORT`` (IPv6 hosts in brackets: ``AET@[::1]:104``)."""
        match = re.match(r"^([^@]{1,16})@(\[[0-9A-Fa-f:.]+\]|[^:@\[\]]+):(\d{1,5})$", text.strip())
        if not match:
            raise ConfigError(f"[forward] destination: {text!r} is not AET@HOST:PORT (for example PACS@10.0.0.5:104)")
        host = match.group(2).strip("[]")
        return cls(match.group(1), host, int(match.group(3)))

    def __post_init__(self) -> None:
        _check_ae_title("forward", "destination", self.ae_title)
        if not 0 < self.port <= 65535:
            _fail("forward", "destination", f"port must be 1..65535, got {self.port}")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class ForwardTLSConfig:
    """TLS towards the destination: CA to verify it, optional client certificate."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            object.__setattr__(self, name, _opt_path(getattr(self, name)))
        if (self.cert is None) != (self.key is None):
            _fail("forward.tls", "cert/key", "set both the client certificate and its key, or neither")

    @property
    def enabled(self) -> bool:
        return self.ca is not None or self.cert is not None


@dataclass(frozen=True)
class ForwardConfig:
    """The Storage SCU that sends each report on, with its retry schedule."""

    destination: Destination | None = None
    calling_ae_title: str = "MEDBLIP"
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    timeout_s: float = 30.0
    tls: ForwardTLSConfig = field(default_factory=ForwardTLSConfig)

    def __post_init__(self) -> None:
        if isinstance(self.destination, str):
            object.__setattr__(self, "destination",
                               Destination.parse(self.destination) if self.destination.strip() else None)
        _check_ae_title("forward", "calling_ae_title", self.calling_ae_title)
        _check_positive("forward", "retry_initial_s", self.retry_initial_s)
        _check_positive("forward", "retry_max_s", self.retry_max_s)
        if self.retry_max_s < self.retry_initial_s:
            _fail("forward", "retry_max_s", f"{self.retry_max_s} is less than retry_initial_s {self.retry_initial_s}")
        _check_positive("forward", "timeout_s", self.timeout_s)
        if isinstance(self.tls, Mapping):
            object.__setattr__(self, "tls", _build(ForwardTLSConfig, self.tls, "forward.tls"))


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the watch folder and the node need; sections as in the TOML file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)

    @property
    def has_sink(self) -> bool:
        """True when reports go somewhere: a folder or a destination."""
        return self.output.dir is not None or self.forward.destination is not None


_SECTIONS: dict[str, type] = {
    "model": ModelConfig, "worker": WorkerConfig, "spool": SpoolConfig, "output": OutputConfig,
    "watch": WatchConfig, "node": NodeConfig, "forward": ForwardConfig,
}


def _build(cls: type, values: Mapping[str, Any], section: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"[{section}] unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as exc:  # a wrong type that the checks above did not name
        raise ConfigError(f"[{section}] {exc}") from None


def config_from_dict(data: Mapping[str, Any]) -> ServiceConfig:
    """Build a :class:`ServiceConfig` from nested dicts (the parsed TOML plus overrides)."""
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; known sections: {', '.join(_SECTIONS)}")
    built: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = data.get(name, {})
        if not isinstance(section, Mapping):
            raise ConfigError(f"[{name}] must be a table, got {section!r}")
        built[name] = _build(cls, section, name)
    return ServiceConfig(**built)


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None) -> ServiceConfig:
    """Read the TOML file at `path` (if any), apply `overrides` (``{section: {key: value}}``, None
    values are ignored) and return the validated configuration.

    Raises :class:`ConfigError` naming the file, section and key when something is wrong.
    """
    data: dict[str, dict[str, Any]] = {}
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        # Relative paths in the file are relative to the file, not to the working directory.
        data = _resolve_relative(data, p.parent.resolve())
    merged: dict[str, dict[str, Any]] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                merged.setdefault(section, {})[key] = value
    try:
        return config_from_dict(merged)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


_PATH_KEYS = {("spool", "dir"), ("output", "dir"), ("watch", "inbox"), ("watch", "done_dir"),
              ("watch", "failed_dir"), ("node.tls", "cert"), ("node.tls", "key"), ("node.tls", "client_ca"),
              ("forward.tls", "ca"), ("forward.tls", "cert"), ("forward.tls", "key")}


def _resolve_relative(data: dict[str, Any], base: Path, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out[key] = _resolve_relative(value, base, name)
        elif (prefix, key) in _PATH_KEYS and isinstance(value, str) and value.strip():
            path = Path(value).expanduser()
            out[key] = str(path if path.is_absolute() else base / path)
        else:
            out[key] = value
    return out
