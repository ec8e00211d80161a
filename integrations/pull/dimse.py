"""``medblip pull --from dimse://AET@HOST:PORT``: caption what is already in a DIMSE archive.

For each study: C-FIND at SERIES and IMAGE level (:mod:`.dimse_find`), decide on the answers what
will be captioned and retrieve only that (:mod:`.choose`), C-GET or C-MOVE it into a temporary
folder (:mod:`.dimse_retrieve`), caption it through the pipeline (the same selection runs again on
the headers) and C-STORE the SRs back (the delivery room's Storage SCU; default: the archive pulled
from), and/or write them into ``--out``. SR UIDs are stable, so a rerun creates nothing new.

Polite to a production archive: at most `max_concurrent` retrieves at once (each study's retrieve
is one association; the next study is retrieved while this one is captioned), only inside the
optional time window, and nothing retried here. When C-GET is refused and a move destination is
known, the pull retrieves by C-MOVE from then on. When the archive goes away part way, the study's
:class:`~.study.StudyPull` says which instances were and were not retrieved and captioned; what
was captioned is kept, nothing half-written is (files land under temporary names).
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medblip_dicom.selection import SelectConfig

from medblip_dicom.integrations.config.file import Destination
from medblip_dicom.integrations.delivery.sinks.dicom import DestinationUnavailable, ForwardClient
from medblip_dicom.integrations.pull.choose import RetrievalPlan, plan_retrieval
from medblip_dicom.integrations.pull.dimse_find import Finder
from medblip_dicom.integrations.pull.dimse_link import ArchiveUnavailable, DimseSettings, RetrieveRefused
from medblip_dicom.integrations.pull.dimse_receive import Receiver
from medblip_dicom.integrations.pull.dimse_retrieve import Retriever
from medblip_dicom.integrations.pull.study import StudyPull, caption_into, sources_to_caption
from medblip_dicom.integrations.pull.window import Window

logger = logging.getLogger(__name__)


@dataclass
class _Fetched:
    """One study retrieved and waiting to be captioned (its folder is removed once it is)."""

    result: StudyPull
    plan: RetrievalPlan
    folder: tempfile.TemporaryDirectory[str]
    received: dict[str, Path]


class DimsePuller:
    """Pulls studies from one archive. `caption` is a ``caption_dicoms`` partial whose selection is
    `select`; `store_to` C-STOREs the SRs (None: not stored). `method` is ``get`` or ``move``;
    `move_destination` is the AE title a C-MOVE sends to (the pull's listener, when `listening`, or a
    running node, which then captions the instances itself)."""

    def __init__(self, archive: Destination, settings: DimseSettings, *,
                 caption: Callable[[list[Any]], Iterator[Any]] | None, select: SelectConfig,
                 store_to: ForwardClient | None = None, method: str = "get", move_destination: str = "",
                 receiver: Receiver | None = None, listening: bool = False, listen_at: str = "",
                 max_concurrent: int = 1, window: Window | None = None,
                 progress: Callable[[int], None] | None = None, tell: Callable[[str], None] | None = None) -> None:
        if method not in ("get", "move"):
            raise ValueError(f"retrieve method must be get or move, got {method!r}")
        if max_concurrent < 1:
            raise ValueError(f"--max-concurrent must be >= 1, got {max_concurrent}")
        self.archive = archive
        self.url = f"dimse://{archive}"
        self.settings = settings
        self.finder = Finder(archive, settings)
        self.caption = caption
        self.select = select
        self.store_to = store_to
        self.method = method
        self.move_destination = move_destination
        self.receiver = receiver or Receiver()
        self.listening = listening
        self.listen_at = listen_at
        self.max_concurrent = max_concurrent
        self.window = window
        self.progress = progress
        self.tell = tell
        self.stop = threading.Event()
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._get_worked = False

    def find_studies(self, query: Mapping[str, str]) -> list[str]:
        """StudyInstanceUIDs of the studies a C-FIND query matches (:meth:`.dimse_find.Finder.find_studies`)."""
        return self.finder.find_studies(query)

    def plan(self, study_uid: str, series_uid: str | None = None) -> RetrievalPlan:
        """What to retrieve from the study, decided on the C-FIND answers (:mod:`.choose`)."""
        return plan_retrieval(self.finder.find_answers(study_uid, series_uid), self.select)

    def _retriever(self) -> Retriever:
        return Retriever(self.archive, self.settings, self.receiver, method=self.method,
                         destination=self.move_destination, listening=self.listening, listen_at=self.listen_at,
                         get_worked=self._get_worked)

    def _retrieve(self, study_uid: str, plan: RetrievalPlan, folder: Path, result: StudyPull) -> dict[str, Path]:
        with self._slots:
            retriever = self._retriever()
            try:
                received = retriever.retrieve(study_uid, plan, folder, result, self.progress)
                self._get_worked |= retriever.method == "get" and bool(received)
                return received
            except RetrieveRefused as exc:
                if retriever.method != "get" or not self.move_destination:
                    if retriever.method == "get":
                        raise RetrieveRefused(f"{exc}; retrieve by C-MOVE instead: --listen PORT (the archive must "
                                              "know our AE title at that port) or --move-destination AET") from None
                    raise
                with self._lock:
                    if self.method == "get":
                        logger.warning("%s; retrieving by C-MOVE to %s from now on", exc, self.move_destination)
                        self.method = "move"
                return self._retriever().retrieve(study_uid, plan, folder, result, self.progress)
            except ArchiveUnavailable as exc:
                result.server_error = str(exc)
                result.not_retrieved += [w.sop_uid for w in plan.wanted]
                return {}

    def fetch(self, study_uid: str, series_uid: str | None = None) -> _Fetched:
        """Find, plan and retrieve one study (a worker thread's part)."""
        result = StudyPull(study_uid)
        plan = self.plan(study_uid, series_uid)
        result.found = plan.found
        result.skipped += plan.skipped
        folder = tempfile.TemporaryDirectory(prefix="medblip-pull-")
        try:
            if plan.wanted and self.window is not None and not self.window.wait(self.stop, tell=self.tell):
                result.not_retrieved += [w.sop_uid for w in plan.wanted]
                result.server_error = "stopped before the retrieve window opened"
                return _Fetched(result, plan, folder, {})
            received = self._retrieve(study_uid, plan, Path(folder.name), result)
        except BaseException:
            folder.cleanup()
            raise
        return _Fetched(result, plan, folder, received)

    def finish(self, fetched: _Fetched) -> StudyPull:
        """Caption what arrived and store the SRs (the calling thread: the model's)."""
        result = fetched.result
        try:
            if self.caption is None:  # handed off: the destination node captions
                return result
            sources = sources_to_caption(fetched.plan, fetched.received, result)
            reports = caption_into(result, self.caption, sources)
            if reports and self.store_to is not None:
                self._store(reports, Path(fetched.folder.name), result)
        finally:
            fetched.folder.cleanup()
        return result

    def pull(self, study_uid: str, series_uid: str | None = None) -> StudyPull:
        """Retrieve, caption and store one study (or one series of it)."""
        return self.finish(self.fetch(study_uid, series_uid))

    def pull_many(self, studies: Iterable[str], series_uid: str | None = None
                  ) -> Iterator[tuple[str, StudyPull | Exception]]:
        """Each study's result (or the error that stopped it), in order; up to `max_concurrent`
        studies are retrieved ahead while the calling thread captions."""
        self.stop.clear()
        todo = iter(studies)
        pending: deque[tuple[str, Future[_Fetched]]] = deque()
        with ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="medblip-pull") as pool:
            def submit() -> None:
                study = next(todo, None)
                if study is not None and not self.stop.is_set():
                    pending.append((study, pool.submit(self.fetch, study, series_uid)))

            try:
                for _ in range(self.max_concurrent):
                    submit()
                while pending:
                    study, future = pending.popleft()
                    try:
                        fetched = future.result()
                    except (ArchiveUnavailable, RetrieveRefused, ValueError) as exc:
                        submit()
                        yield study, exc
                        continue
                    submit()
                    yield study, self.finish(fetched)
            finally:
                self.stop.set()
                for _, future in pending:
                    if not future.cancel() and future.exception() is None:
                        future.result().folder.cleanup()

    def _store(self, reports: list[Any], folder: Path, result: StudyPull) -> None:
        """C-STORE the SRs (from ``--out`` where written there, else from the study's folder)."""
        assert self.store_to is not None
        paths = []
        for report in reports:
            path = report.sr_path
            if path is None:
                path = folder / "sr" / f"{report.sr_sop_instance_uid}.dcm"
                path.parent.mkdir(exist_ok=True)
                report.sr.save_as(path, enforce_file_format=True)
            paths.append(Path(path))
        uids = [str(r.sr_sop_instance_uid) for r in reports]
        try:
            outcomes = self.store_to.send(paths)
        except DestinationUnavailable as exc:
            result.not_stored += [(uid, str(exc)) for uid in uids]
            return
        for uid, outcome in zip(uids, outcomes, strict=True):
            if outcome.delivered:
                result.stored.append(uid)
            else:
                result.not_stored.append((uid, outcome.message))
