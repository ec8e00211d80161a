"""One TOML file for both services: typed sections, validated when built.

Every section is a frozen dataclass whose ``__post_init__`` checks its values and raises
:class:`ConfigError` naming the key (``[node] port``) and what is allowed. :func:`load_config`
reads a file (or nothing), lays command-line overrides on top and builds a :class:`ServiceConfig`.
Unknown keys are errors, so a typo never silently falls back to a default.

The configuration reference page (`docs/deployment/configuration.md`) holds every section and key with its
default, tested against these dataclasses (``tests/integrations/config/test_config.py``), so the two cannot
drift apart.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from medblip_dicom.selection import SelectConfig, SelectionError, config_from_mapping

from medblip_dicom.integrations.config.checks import (
    ConfigError, Renamed, build_table, check_ae_title, check_bind_host, check_bool, check_int, check_path, check_paths,
    check_port, check_positive, check_text_list, fail, rename_keys, shown, sub_table,
)
from medblip_dicom.integrations.config.dicomweb import RENAMED as DICOMWEB_RENAMED
from medblip_dicom.integrations.config.dicomweb import DicomwebConfig, ForwardDicomwebConfig, finish_forward
from medblip_dicom.integrations.config.ops import AuditConfig, MetricsConfig
from medblip_dicom.integrations.config.fhir import FhirConfig
from medblip_dicom.integrations.config.hl7 import Hl7Config
from medblip_dicom.integrations.config.model import ModelConfig
from medblip_dicom.integrations.config.review import ReviewConfig
from medblip_dicom.integrations.config.tls import ForwardTLSConfig, NodeTLSConfig


def default_spool_dir() -> Path:
    """The platform's state directory: ``$XDG_STATE_HOME/medblip/spool``, else
    ``~/.local/state/medblip/spool`` (never the working directory)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "medblip" / "spool"


DEFAULT_IGNORE = (".DS_Store", "Thumbs.db", "desktop.ini", ".*", "~*", "*.tmp", "*.part", "*.partial",
                  "*.crdownload", "*.swp")
@dataclass(frozen=True)
class WorkerConfig:
    """Batching across jobs: a batch is taken when full or when its oldest job waited max_wait_s.

    ``separate_process``: the long-running services caption in a child process at CPU priority
    ``nice`` (see :mod:`medblip_dicom.integrations.service.worker_process`); ``--once`` and a service given a
    loaded captioner caption in-process.
    """

    batch_size: int = 8
    max_wait_s: float = 1.0
    prepare_workers: int = 2
    separate_process: bool = True
    nice: int = 10

    def __post_init__(self) -> None:
        check_int("worker", "batch_size", self.batch_size, 1)
        check_positive("worker", "max_wait_s", self.max_wait_s, allow_zero=True)
        check_int("worker", "prepare_workers", self.prepare_workers, 0)
        check_bool("worker", "separate_process", self.separate_process)
        check_int("worker", "nice", self.nice, 0)
        if self.nice > 19:
            fail("worker", "nice", f"must be 0 to 19, got {self.nice}")


@dataclass(frozen=True)
class SpoolConfig:
    """Where the spool lives and how much it may hold before it refuses new work."""

    dir: Path = field(default_factory=default_spool_dir)
    max_bytes: int = 0
    min_free_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", check_path("spool", "dir", self.dir))
        check_int("spool", "max_bytes", self.max_bytes, 0)
        check_int("spool", "min_free_bytes", self.min_free_bytes, 0)


@dataclass(frozen=True)
class OutputConfig:
    """The folder sink, the optional Secondary Capture and PDF report, and the per-study quiet time."""

    dir: Path | None = None
    secondary_capture: bool = False
    pdf: bool = False
    study_quiet_s: float = 0.0

    def __post_init__(self) -> None:
        check_paths(self, "output", "dir")
        check_bool("output", "secondary_capture", self.secondary_capture)
        check_bool("output", "pdf", self.pdf)
        check_positive("output", "study_quiet_s", self.study_quiet_s, allow_zero=True)


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
        check_paths(self, "watch", "inbox", "done_dir", "failed_dir")
        if not isinstance(self.ignore, (list, tuple)) or not all(isinstance(p, str) and p for p in self.ignore):
            fail("watch", "ignore", f"must be a list of file name patterns, got {shown(self.ignore)}")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        check_bool("watch", "poll", self.poll)
        check_positive("watch", "poll_interval_s", self.poll_interval_s)
        check_positive("watch", "settle_s", self.settle_s, allow_zero=True)
        check_positive("watch", "rescan_interval_s", self.rescan_interval_s, allow_zero=True)

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
    listeners: int = 1
    tls: NodeTLSConfig = field(default_factory=NodeTLSConfig)

    def __post_init__(self) -> None:
        check_ae_title("node", "ae_title", self.ae_title)
        object.__setattr__(self, "allowed_calling_aets",
                           check_text_list("node", "allowed_calling_aets", self.allowed_calling_aets))
        for aet in self.allowed_calling_aets:
            check_ae_title("node", "allowed_calling_aets", aet)
        check_bind_host("node", "host", self.host)
        check_port("node", "port", self.port, zero="any free port")
        check_int("node", "max_associations", self.max_associations, 1)
        check_int("node", "listeners", self.listeners, 1)
        if self.listeners > 64:
            fail("node", "listeners", f"must be 1..64 listener processes, got {self.listeners}")
        for key in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
            check_positive("node", key, getattr(self, key))
        check_int("node", "max_pdu", self.max_pdu, 0)
        if 0 < self.max_pdu < 4096:
            fail("node", "max_pdu", f"must be 0 (unlimited) or at least 4096, got {self.max_pdu}")
        check_bool("node", "keep_inputs", self.keep_inputs)
        object.__setattr__(self, "tls", sub_table(NodeTLSConfig, self.tls, "node.tls"))


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
        check_ae_title("forward", "destination", self.ae_title)
        check_port("forward", "destination", self.port, what="port")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class ForwardConfig:
    """The Storage SCU that sends each report on, with its retry schedule."""

    destination: Destination | None = None
    calling_ae_title: str = "MEDBLIP"
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    timeout_s: float = 30.0
    tls: ForwardTLSConfig = field(default_factory=ForwardTLSConfig)
    dicomweb_url: str = ""
    dicomweb: ForwardDicomwebConfig = field(default_factory=ForwardDicomwebConfig)

    def __post_init__(self) -> None:
        if isinstance(self.destination, str):
            object.__setattr__(self, "destination",
                               Destination.parse(self.destination) if self.destination.strip() else None)
        elif not isinstance(self.destination, (Destination, type(None))):
            fail("forward", "destination", f"must be AET@HOST:PORT (text), got {shown(self.destination)}")
        check_ae_title("forward", "calling_ae_title", self.calling_ae_title)
        check_positive("forward", "retry_initial_s", self.retry_initial_s)
        check_positive("forward", "retry_max_s", self.retry_max_s)
        if self.retry_max_s < self.retry_initial_s:
            fail("forward", "retry_max_s", f"{self.retry_max_s} is less than retry_initial_s {self.retry_initial_s}")
        check_positive("forward", "timeout_s", self.timeout_s)
        object.__setattr__(self, "tls", sub_table(ForwardTLSConfig, self.tls, "forward.tls"))
        finish_forward(self)  # dicomweb_url and [forward.dicomweb]


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
    select: SelectConfig = field(default_factory=SelectConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    dicomweb: DicomwebConfig = field(default_factory=DicomwebConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    hl7: Hl7Config = field(default_factory=Hl7Config)
    fhir: FhirConfig = field(default_factory=FhirConfig)

    @property
    def has_sink(self) -> bool:
        """True when reports go somewhere: a folder or a destination."""
        return any((self.output.dir, self.forward.destination, self.forward.dicomweb_url, self.hl7.destination, self.fhir.url))


_SECTIONS: dict[str, type] = {
    "model": ModelConfig, "worker": WorkerConfig, "spool": SpoolConfig, "output": OutputConfig,
    "watch": WatchConfig, "node": NodeConfig, "forward": ForwardConfig, "select": SelectConfig,
    "metrics": MetricsConfig, "audit": AuditConfig, "dicomweb": DicomwebConfig,
    "review": ReviewConfig, "hl7": Hl7Config, "fhir": FhirConfig,
}


#: Keys that moved; a file that still uses the old spelling is read with a warning naming the new key.
RENAMED: tuple[Renamed, ...] = (Renamed(("output", "picture"), ("output", "secondary_capture")), *DICOMWEB_RENAMED)


def _build(cls: type, values: Mapping[str, Any], section: str) -> Any:
    if cls is SelectConfig:  # [select] with its [[select.rule]] tables
        try:
            return config_from_mapping(values)
        except SelectionError as exc:
            raise ConfigError(str(exc)) from None
    return build_table(cls, values, section)


def config_from_dict(data: Mapping[str, Any], *, source: str = "the configuration") -> ServiceConfig:
    """Build a :class:`ServiceConfig` from nested dicts (the parsed TOML plus overrides); a renamed key
    is read under its new name (:data:`RENAMED`), with a warning that names `source`."""
    data = rename_keys(data, RENAMED, source)
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
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        except OSError as exc:  # a folder, no permission, ...
            raise ConfigError(f"config file {p} cannot be read ({exc.strerror or exc})") from None
        try:  # the file's old spellings, before the flags (which use the new names) are laid on top
            data = rename_keys(data, RENAMED, str(p))
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None
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


def _path_keys(cls: type, table: str) -> set[tuple[str, str]]:
    """Every (table, key) of `cls` whose value is a path, sub-tables (``[node.tls]``) included."""
    out: set[tuple[str, str]] = set()
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        hint = hints[f.name]
        if is_dataclass(hint):
            out |= _path_keys(hint, f"{table}.{f.name}")
        elif hint is Path or Path in typing.get_args(hint):
            out.add((table, f.name))
    return out


#: The keys whose relative paths are read relative to the file, found from the sections' types.
_PATH_KEYS = {key for name, cls in _SECTIONS.items() if cls is not SelectConfig for key in _path_keys(cls, name)}


def _resolve_relative(data: dict[str, Any], base: Path, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out[key] = _resolve_relative(value, base, name)
        elif (prefix, key) in _PATH_KEYS and isinstance(value, str) and value.strip():
            try:
                path = Path(value).expanduser()
            except RuntimeError:  # ~name of an unknown user: the section's check names the key
                path = Path(value)
            out[key] = str(path if path.is_absolute() or value.startswith("~") else base / path)
        else:
            out[key] = value
    return out
