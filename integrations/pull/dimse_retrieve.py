"""C-GET and C-MOVE for ``medblip pull``: retrieve what the plan wants, say what happened to each
instance.

C-GET is the default: the archive sends the instances as storage sub-operations on our own
association (:mod:`.dimse_receive` proposes the contexts and writes them). C-MOVE sends them over
the archive's own association to a destination AE title: the pull's listener (``--listen``), or a
running ``medblip node`` (``--move-destination``), which then captions them itself (hand-off).

One request per instance the plan reduced to a representative (IMAGE level); one SERIES-level
request for a series retrieved whole. After each request, each of its instances is retrieved (it
arrived), failed (with the archive's status, and whether the archive listed it as failed), or, when
the association died, not retrieved, as are all those after it (the archive went away).

An archive that sends each instance on the first context it accepted for the SOP class, whatever
the instance's transfer syntax (dcmtk's dcmqrscp), cannot send a compressed instance once an
uncompressed context was accepted too. So the instances a C-GET could not bring are asked for once
more, each alone, on an association that offers only the compressed syntaxes.

An archive that will not do C-GET (no C-GET context, 0x0122 / 0x0124, or, before any C-GET of the
pull brought an instance, an association aborted on the first C-GET while the archive still
answers) raises :class:`RetrieveRefused` before anything is counted, so the caller can retry the
study by C-MOVE. So does a C-MOVE to a destination the archive does not know (0xA801; Orthanc
answers 0xC000 and sends nothing), with the sentence that tells the operator what to configure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from medblip_dicom.integrations.config.file import Destination
from medblip_dicom.integrations.pull.choose import RetrievalPlan
from medblip_dicom.integrations.pull.dimse_find import VERIFICATION
from medblip_dicom.integrations.pull.dimse_link import (
    ArchiveUnavailable, DimseSettings, RetrieveRefused, accepted, open_association, release, status_words,
)
from medblip_dicom.integrations.pull.dimse_receive import Receiver, classes_for, storage_contexts
from medblip_dicom.integrations.pull.study import StudyPull

logger = logging.getLogger(__name__)

GET = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve Information Model - MOVE
_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_PENDING = (0xFF00, 0xFF01)
_COUNTS = ("NumberOfCompletedSuboperations", "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")
PEERS_HINT = "Orthanc: DicomModalities; dcm4chee: a DICOM device with that AE title; see docs/deployment/pull.md"


@dataclass(frozen=True)
class Request:
    """One C-GET / C-MOVE: its level, series and the instances it brings."""

    level: str
    series_uid: str
    sop_uids: tuple[str, ...]


def requests_for(plan: RetrievalPlan) -> list[Request]:
    """A SERIES-level request for each series wanted whole, one IMAGE-level request per other instance."""
    out: list[Request] = []
    for series in dict.fromkeys(w.series_uid for w in plan.wanted):
        wanted = plan.wanted_in(series)
        if series in plan.whole_series and len(wanted) == plan.members.get(series) and len(wanted) > 1:
            out.append(Request("SERIES", series, tuple(w.sop_uid for w in wanted)))
        else:
            out += [Request("IMAGE", series, (w.sop_uid,)) for w in wanted]
    return out


@dataclass
class Reply:
    """The archive's final answer to one request (status None: the association died first)."""

    status: int | None
    counts: dict[str, int] = field(default_factory=dict)
    failed_uids: frozenset[str] = frozenset()

    @property
    def attempted(self) -> int:
        return sum(self.counts.values())


def collect(responses: Any) -> Reply:
    """Read a C-GET / C-MOVE response stream to its end."""
    counts: dict[str, int] = {}
    for status, identifier in responses:
        if "Status" not in status:
            return Reply(None, counts)
        counts = {k: int(status.get(k) or 0) for k in _COUNTS if k in status} or counts
        code = int(status.Status)
        if code in _PENDING:
            continue
        failed = identifier.get("FailedSOPInstanceUIDList") if identifier is not None else None
        uids = [failed] if isinstance(failed, str) else list(failed or ())
        return Reply(code, counts, frozenset(str(u) for u in uids if u))
    return Reply(None, counts)


class Retriever:
    """Retrieves studies from one archive into folders by C-GET (``method="get"``) or C-MOVE to
    `destination`; `listening` says that `receiver` gets what the C-MOVE sends (else: hand-off)."""

    def __init__(self, archive: Destination, settings: DimseSettings, receiver: Receiver, *, method: str = "get",
                 destination: str = "", listening: bool = False, listen_at: str = "",
                 get_worked: bool = False) -> None:
        self.archive = archive
        self.settings = settings
        self.receiver = receiver
        self.method = method
        self.destination = destination
        self.listening = listening
        self.listen_at = listen_at  # host:port of our listener, for the operator's sentence
        self.get_worked = get_worked  # a C-GET of this pull brought something: an abort is no refusal

    def identifier(self, study_uid: str, request: Request) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = request.level
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = request.series_uid
        if request.level == "IMAGE":
            ds.SOPInstanceUID = request.sop_uids[0] if len(request.sop_uids) == 1 else list(request.sop_uids)
        return ds

    def _open(self, plan: RetrievalPlan, compressed_only: bool = False) -> Any:
        from pynetdicom import build_role, evt

        if self.method == "move":
            assoc = open_association(self.archive, self.settings, [(MOVE, _SYNTAXES)])
            if not accepted(assoc, MOVE):
                release(assoc)
                raise RetrieveRefused(f"archive {self.archive} does not offer Study Root C-MOVE")
            return assoc
        classes = classes_for((w.sop_class_uid, w.modality) for w in plan.wanted)
        contexts = [(GET, _SYNTAXES), *storage_contexts(classes, uncompressed=not compressed_only)]
        roles = [build_role(c, scp_role=True) for c in dict.fromkeys(c for c, _ in contexts[1:])]
        assoc = open_association(self.archive, self.settings, contexts, roles=roles,
                                 handlers=[(evt.EVT_C_STORE, self.receiver.handle_store)])
        if not accepted(assoc, GET):
            release(assoc)
            raise RetrieveRefused(f"archive {self.archive} does not offer C-GET")
        return assoc

    def _answers(self) -> bool:
        """True when the archive still accepts an association (a C-GET refusal, not a lost archive)."""
        try:
            release(open_association(self.archive, self.settings, [(VERIFICATION, _SYNTAXES)]))
            return True
        except ArchiveUnavailable:
            return False

    def _refusal(self, reply: Reply, got: int) -> str | None:
        """Why the first request says the archive will not retrieve this way, or None."""
        if got or reply.attempted:
            return None
        aborted = reply.status is None and not self.get_worked and self._answers()
        if self.method == "get" and (reply.status in (0x0122, 0x0124) or aborted):
            return f"archive {self.archive} refused C-GET ({status_words(reply.status)})"
        where = f" at {self.listen_at}" if self.listen_at else ""
        if self.method == "move" and reply.status == 0xA801:
            return (f"archive {self.archive} does not know the move destination {self.destination} (0xA801): add "
                    f"{self.destination}{where} to its DICOM peers ({PEERS_HINT})")
        if self.method == "move" and reply.status is not None and 0xC000 <= reply.status <= 0xCFFF:
            return (f"archive {self.archive} could not process the C-MOVE to {self.destination} "
                    f"({status_words(reply.status)}) and sent nothing: check that it knows {self.destination}"
                    f"{where} as a DICOM peer ({PEERS_HINT})")
        return None

    def retrieve(self, study_uid: str, plan: RetrievalPlan, folder: Path, result: StudyPull,
                 progress: Callable[[int], None] | None = None) -> dict[str, Path]:
        """Retrieve the plan's instances into `folder`; file each in `result`; return what arrived.

        Raises :class:`RetrieveRefused` (nothing counted yet) or :class:`ArchiveUnavailable` (no
        association at all); an archive lost part way is recorded in `result` instead.
        """
        requests = requests_for(plan)
        if not requests:
            return {}
        wanted = [uid for r in requests for uid in r.sop_uids]
        assoc = self._open(plan)
        self.receiver.expect(wanted, folder)
        try:
            outcomes = self._send(assoc, study_uid, requests, progress, first=True)
            release(assoc)
            retry = [Request("IMAGE", r.series_uid, (uid,)) for r, reply, got in outcomes.values()
                     for uid in r.sop_uids if uid not in got and reply.status is not None]
            if self.method == "get" and retry and all(reply.status is not None for _, reply, _ in outcomes.values()):
                try:  # once more, offering only compressed syntaxes (module docstring)
                    assoc = self._open(plan, compressed_only=True)
                    outcomes.update(self._send(assoc, study_uid, retry, None, first=False))
                except (ArchiveUnavailable, RetrieveRefused) as exc:
                    logger.warning("study %s: no second try with compressed syntaxes (%s)", study_uid, exc)
            self._file_all(study_uid, requests, outcomes, result)
            return self.receiver.received(wanted)
        finally:
            self.receiver.forget(wanted)
            release(assoc)

    def _send(self, assoc: Any, study_uid: str, requests: list[Request], progress: Callable[[int], None] | None,
              *, first: bool) -> dict[str, tuple[Request, Reply, dict[str, Path]]]:
        """Send `requests` in turn until one finds the association dead; each instance's outcome.
        On the `first` pass, the first request's answer may say the archive refuses this way."""
        outcomes: dict[str, tuple[Request, Reply, dict[str, Path]]] = {}
        for i, request in enumerate(requests):
            ident = self.identifier(study_uid, request)
            responses = assoc.send_c_get(ident, GET) if self.method == "get" else \
                assoc.send_c_move(ident, self.destination, MOVE)
            reply = collect(responses)
            got = self.receiver.received(request.sop_uids)
            if first and i == 0 and (why := self._refusal(reply, len(got))) is not None:
                raise RetrieveRefused(why)
            outcomes.update({uid: (request, reply, got) for uid in request.sop_uids})
            if progress is not None:
                progress(len(request.sop_uids))
            if reply.status is None:
                break
        return outcomes

    def _file_all(self, study_uid: str, requests: list[Request],
                  outcomes: dict[str, tuple[Request, Reply, dict[str, Path]]], result: StudyPull) -> None:
        """Every instance of `requests` into `result`; those no request reached are not retrieved."""
        lost = next((reply for _, reply, _ in outcomes.values() if reply.status is None), None)
        for request in requests:
            for uid in request.sop_uids:
                if uid in outcomes:
                    self._file(uid, *outcomes[uid], result)
                else:
                    result.not_retrieved.append(uid)
        if lost is not None:
            result.server_error = f"archive {self.archive} stopped answering during the " \
                                  f"{'C-GET' if self.method == 'get' else 'C-MOVE'}"
            logger.error("study %s: %s; %d instance(s) not retrieved", study_uid, result.server_error,
                         len(result.not_retrieved))

    def _file(self, uid: str, request: Request, reply: Reply, got: dict[str, Path], result: StudyPull) -> None:
        """One instance into `result` (module docstring)."""
        warned = reply.counts.get("NumberOfWarningSuboperations", 0) > 0 or reply.status == 0xB000
        handed_off = self.method == "move" and not self.listening
        if uid in got or (handed_off and self._moved(uid, request, reply)):
            (result.moved if handed_off else result.retrieved).append(uid)
            if warned and len(request.sop_uids) == 1:
                result.warnings.append((uid, f"the archive answered {status_words(reply.status)}"))
        elif reply.status is None:
            result.not_retrieved.append(uid)
        else:
            listed = ", listed as failed by the archive" if uid in reply.failed_uids else ""
            result.failed.append((uid, f"not retrieved: {status_words(reply.status)}{listed}"))

    @staticmethod
    def _moved(uid: str, request: Request, reply: Reply) -> bool:
        """Whether a C-MOVE to another node delivered `uid` (it did not arrive here to be seen)."""
        if reply.status == 0x0000:
            return True
        if reply.status == 0xB000 and reply.failed_uids:
            return uid not in reply.failed_uids
        return reply.status == 0xB000 and reply.counts.get("NumberOfFailedSuboperations", 0) == 0
