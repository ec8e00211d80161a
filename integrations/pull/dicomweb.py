"""``medblip pull``'s work: find a study's instances with QIDO-RS, retrieve them with WADO-RS,
caption them through the pipeline (selection rules apply) and store the SRs by STOW-RS and/or in
a folder.

Instances are retrieved whole (``application/dicom``, not rendered frames) into a temporary
folder, so memory holds one instance at a time; SR instances in the study (our own reports of an
earlier run among them) are not retrieved at all. The SR UIDs are derived from the source, the
model and the caption, so a rerun stores the same instances again and creates nothing new.

When the server stops answering part way, :class:`StudyPull` says which instances were
retrieved and captioned and which were not; nothing is retried here (rerun the command).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medblip_dicom.integrations.config.dicomweb import ForwardDicomwebConfig
from medblip_dicom.integrations.delivery.sinks.dicomweb import StowClient, StowUnavailable

logger = logging.getLogger(__name__)

#: SOP classes of Structured Reports (1.2.840.10008.5.1.4.1.1.88.x): never pulled for captioning.
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: QIDO-RS results asked for per request.
PAGE = 500
_STUDY_UID, _SERIES_UID, _SOP_UID, _SOP_CLASS = "0020000D", "0020000E", "00080018", "00080016"


class ServerUnavailable(Exception):
    """The DICOMweb server does not answer (connection refused or lost, 5xx, a timeout)."""


@dataclass
class StudyPull:
    """What happened to one study."""

    study_uid: str
    found: int = 0
    retrieved: list[str] = field(default_factory=list)
    not_retrieved: list[str] = field(default_factory=list)
    captioned: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    not_stored: list[tuple[str, str]] = field(default_factory=list)
    server_error: str = ""

    @property
    def complete(self) -> bool:
        """True when every instance found was retrieved, none failed, and every SR went where asked."""
        return not (self.not_retrieved or self.failed or self.not_stored or self.server_error)


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def parse_query(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as QIDO-RS search filters (keywords or tags); ValueError names a bad one."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--query {pair!r} is not KEY=VALUE (for example ModalitiesInStudy=CR)")
        out[key.strip()] = value.strip()
    return out


class Puller:
    """Pulls studies from one DICOMweb server; captions with `caption` (a ``caption_dicoms`` partial)."""

    def __init__(self, url: str, settings: ForwardDicomwebConfig | None = None, *,
                 caption: Callable[[list[Path]], Iterator[Any]], to: StowClient | None = None,
                 on_instance: Callable[[str], None] | None = None) -> None:
        self.source = StowClient(url, settings)  # its DICOMwebClient: the same auth, TLS and timeout
        self.url = self.source.url
        self.caption = caption
        self.to = to
        self.on_instance = on_instance

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code >= 500 or code in (408, 429):
                raise ServerUnavailable(f"{self.url} answered HTTP {code} to {what}") from None
            raise ValueError(f"{self.url} refused {what}: HTTP {code}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ServerUnavailable(f"{self.url} does not answer ({type(exc).__name__} during {what})") from None

    def _pages(self, what: str, search: Callable[..., list[Any]], **kwargs: Any) -> list[Any]:
        """Every result of a QIDO-RS search, PAGE at a time (limit/offset); stops at a short page, or at
        a page that brings nothing new (a server that ignores offset)."""
        out: list[Any] = []
        seen: set[str] = set()
        while True:
            page = self._call(what, search, limit=PAGE, offset=len(out), **kwargs)
            new = [item for item in page if repr(sorted(item.items())) not in seen]
            seen.update(repr(sorted(item.items())) for item in new)
            out.extend(new)
            if len(page) < PAGE or not new:
                return out

    def find_studies(self, query: Mapping[str, str]) -> list[str]:
        """StudyInstanceUIDs of every study the QIDO-RS query matches (all pages)."""
        client = self.source.client()
        found = self._pages("the study query", client.search_for_studies, search_filters=dict(query),
                            fields=["StudyInstanceUID"])
        return list(dict.fromkeys(u for u in (_value(i, _STUDY_UID) for i in found) if u))

    def find_instances(self, study_uid: str, series_uid: str | None = None) -> list[tuple[str, str]]:
        """``(SeriesInstanceUID, SOPInstanceUID)`` of every non-SR instance of the study (or series)."""
        client = self.source.client()
        found = self._pages("the instance query", client.search_for_instances, study_instance_uid=study_uid,
                            series_instance_uid=series_uid, fields=["SOPClassUID", "SeriesInstanceUID"])
        out = []
        for item in found:
            if _value(item, _SOP_CLASS).startswith(_SR_PREFIX):
                continue
            series, sop = _value(item, _SERIES_UID) or (series_uid or ""), _value(item, _SOP_UID)
            if sop:
                out.append((series, sop))
        return sorted(set(out))

    def pull(self, study_uid: str, series_uid: str | None = None) -> StudyPull:
        """Retrieve, caption and store one study (or one series of it)."""
        from medblip_dicom.api import CaptionFailure, CaptionSkipped
        from medblip_dicom.errors import NotAnImageError

        result = StudyPull(study_uid)
        instances = self.find_instances(study_uid, series_uid)
        result.found = len(instances)
        client = self.source.client()
        with tempfile.TemporaryDirectory(prefix="medblip-pull-") as tmp:
            paths: list[Path] = []
            for i, (series, sop) in enumerate(instances):
                try:
                    ds = self._call("WADO-RS", client.retrieve_instance, study_uid, series, sop)
                except ServerUnavailable as exc:
                    result.server_error = str(exc)
                    result.not_retrieved = [s for _, s in instances[i:]]
                    logger.error("study %s: %s; %d of %d instance(s) not retrieved", study_uid, exc,
                                 len(result.not_retrieved), len(instances))
                    break
                except ValueError as exc:
                    result.failed.append((sop, str(exc)))
                    continue
                path = Path(tmp) / f"{sop}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
                result.retrieved.append(sop)
                if self.on_instance is not None:
                    self.on_instance(sop)
            srs = []
            for outcome in self.caption(paths) if paths else ():
                name = Path(outcome.source).stem
                if isinstance(outcome, CaptionSkipped):
                    result.skipped.append((name, outcome.reason))
                elif isinstance(outcome, CaptionFailure) and isinstance(outcome.error, NotAnImageError):
                    result.skipped.append((name, str(outcome.error)))  # a presentation state, a KO ...
                elif isinstance(outcome, CaptionFailure):
                    result.failed.append((name, str(outcome.error)))
                else:
                    result.captioned.append(outcome.sop_instance_uid)
                    srs.append(outcome.sr)
            if srs and self.to is not None:
                self._store(srs, result)
        return result

    def _store(self, srs: list[Any], result: StudyPull) -> None:
        assert self.to is not None
        try:
            outcomes = self.to.send_datasets(srs)
        except StowUnavailable as exc:
            result.not_stored = [(str(sr.SOPInstanceUID), str(exc)) for sr in srs]
            return
        for sr, outcome in zip(srs, outcomes, strict=True):
            if outcome.delivered:
                result.stored.append(str(sr.SOPInstanceUID))
            else:
                result.not_stored.append((str(sr.SOPInstanceUID), outcome.message))
