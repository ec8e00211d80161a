"""``medblip pull``'s work against a DICOMweb server: find a study's series and instances with
QIDO-RS, retrieve what will be captioned with WADO-RS, caption it through the pipeline and store
the SRs by STOW-RS and/or in a folder.

The QIDO-RS instance search asks (``includefield``) for what the selection rules and the choice of
a series' representative read, so a series whose answers say enough costs one retrieved instance
(:mod:`.choose`); otherwise the series is retrieved and chosen as it arrives. Instances are
retrieved whole (``application/dicom``, not rendered frames) into a temporary folder, so memory
holds one instance at a time; SR instances in the study (our own reports of an earlier run among
them) are not retrieved at all. The SR UIDs are derived from the source, the model and the caption,
so a rerun stores the same instances again and creates nothing new.

When the server stops answering part way, :class:`StudyPull` says which instances were
retrieved and captioned and which were not; nothing is retried here (rerun the command).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medblip_dicom.selection import SelectConfig

from medblip_dicom.integrations.config.dicomweb import ForwardDicomwebConfig
from medblip_dicom.integrations.delivery.sinks.dicomweb import StowClient, StowUnavailable
from medblip_dicom.integrations.pull.choose import (
    INSTANCE_KEYS, SERIES_KEYS, Answer, RetrievalPlan, is_report, plan_retrieval,
)
from medblip_dicom.integrations.pull.study import StudyPull, caption_into, sources_to_caption

__all__ = ["PAGE", "Puller", "ServerUnavailable", "StudyPull", "parse_query"]

logger = logging.getLogger(__name__)

#: QIDO-RS results asked for per request.
PAGE = 500
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"


class ServerUnavailable(Exception):
    """The DICOMweb server does not answer (connection refused or lost, 5xx, a timeout)."""


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
    """Pulls studies from one DICOMweb server; captions with `caption` (a ``caption_dicoms`` partial
    whose selection is `select`: the same rules decide what is retrieved)."""

    def __init__(self, url: str, settings: ForwardDicomwebConfig | None = None, *,
                 caption: Callable[[list[Any]], Iterator[Any]], to: StowClient | None = None,
                 on_instance: Callable[[str], None] | None = None, select: SelectConfig | None = None) -> None:
        self.source = StowClient(url, settings)  # its DICOMwebClient: the same auth, TLS and timeout
        self.url = self.source.url
        self.caption = caption
        # The selection `caption` applies; without one, every instance but reports is retrieved.
        self.select = select if select is not None else SelectConfig(per_series="each", defaults=False)
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

    def find_answers(self, study_uid: str, series_uid: str | None = None) -> list[Answer]:
        """Every instance of the study (or series) as the server describes it: the series search's
        attributes merged into each instance's (``includefield``: what selection reads)."""
        from pydicom.dataset import Dataset

        client = self.source.client()
        series = self._pages("the series query", client.search_for_series, study_instance_uid=study_uid,
                             fields=list(SERIES_KEYS))
        by_series = {_value(item, _SERIES_UID): item for item in series}
        found = self._pages("the instance query", client.search_for_instances, study_instance_uid=study_uid,
                            series_instance_uid=series_uid, fields=["SeriesInstanceUID", *INSTANCE_KEYS])
        answers = []
        for item in found:
            uid = _value(item, _SERIES_UID) or (series_uid or "")
            both = {**by_series.get(uid, {}), **item}
            try:
                ds = Dataset.from_json(both)
            except Exception:  # noqa: BLE001 - a value pydicom cannot read: keep the UIDs, the rest is unknown
                ds = Dataset()
                ds.SOPInstanceUID = _value(item, _SOP_UID)
            if not ds.get("SeriesInstanceUID"):
                ds.SeriesInstanceUID = uid
            if ds.get("SOPInstanceUID"):
                answers.append(Answer.from_dataset(ds))
        return answers

    def find_instances(self, study_uid: str, series_uid: str | None = None) -> list[tuple[str, str]]:
        """``(SeriesInstanceUID, SOPInstanceUID)`` of every instance of the study (or series) but reports."""
        return sorted({(a.series_instance_uid, a.sop_instance_uid)
                       for a in self.find_answers(study_uid, series_uid) if not is_report(a)})

    def plan(self, study_uid: str, series_uid: str | None = None) -> RetrievalPlan:
        """What to retrieve from the study, decided on the QIDO-RS answers (:mod:`.choose`)."""
        return plan_retrieval(self.find_answers(study_uid, series_uid), self.select)

    def pull(self, study_uid: str, series_uid: str | None = None) -> StudyPull:
        """Retrieve, caption and store one study (or one series of it)."""
        result = StudyPull(study_uid)
        plan = self.plan(study_uid, series_uid)
        result.found = plan.found
        result.skipped += plan.skipped
        client = self.source.client()
        with tempfile.TemporaryDirectory(prefix="medblip-pull-") as tmp:
            received: dict[str, Path] = {}
            for i, wanted in enumerate(plan.wanted):
                sop = wanted.sop_uid
                try:
                    ds = self._call("WADO-RS", client.retrieve_instance, study_uid, wanted.series_uid, sop)
                except ServerUnavailable as exc:
                    result.server_error = str(exc)
                    result.not_retrieved = [w.sop_uid for w in plan.wanted[i:]]
                    logger.error("study %s: %s; %d of %d instance(s) not retrieved", study_uid, exc,
                                 len(result.not_retrieved), len(plan.wanted))
                    break
                except ValueError as exc:
                    result.failed.append((sop, str(exc)))
                    continue
                path = Path(tmp) / f"{sop}.dcm"
                ds.save_as(path, enforce_file_format=True)
                received[sop] = path
                result.retrieved.append(sop)
                if self.on_instance is not None:
                    self.on_instance(sop)
            reports = caption_into(result, self.caption, sources_to_caption(plan, received, result))
            if reports and self.to is not None:
                self._store([r.sr for r in reports], result)
        return result

    def pull_many(self, studies: Iterable[str], series_uid: str | None = None
                  ) -> Iterator[tuple[str, StudyPull | Exception]]:
        """Each study's result (or the error that stopped it), one study after the other."""
        for study in studies:
            try:
                yield study, self.pull(study, series_uid)
            except (ServerUnavailable, ValueError) as exc:
                yield study, exc

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
