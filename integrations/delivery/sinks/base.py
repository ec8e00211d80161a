"""The contract every destination of reports keeps, and the one place where what a sink said
becomes what happens to a job.

A sink (:class:`Sink`) takes the files of one group of jobs (a study's reports) and answers one
:class:`StoreOutcome` per file, in order:

- *delivered*: the destination has it (a warning status still counts);
- *transient*: not now (out of resources, an HL7 AE, no answer for this file): the job waits and
  is tried again with the delivery loop's backoff;
- *permanent*: the destination refuses this object for good (a DICOM refusal, an HL7 AR, a FHIR
  server's 4xx): the job fails with that reason and is never tried again.

A sink that cannot be reached at all (refused, unreachable, timed out, TLS failed, a 5xx) raises
:class:`DestinationUnavailable` instead: every file of the call waits, and the loop leaves that
sink alone for the rest of its round. Anything else a sink raises is a fault of the sink, not of
the report: :func:`send_guarded` turns it into a transient outcome for every file, so a bug in one
sink never fails a job and never stops the others.

:func:`verdict` is how the loop reads the outcomes of one job: refused by any sink beats waiting
for any sink beats delivered by all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from medblip_dicom.errors import MedblipError

logger = logging.getLogger(__name__)

#: The error class a job fails with when a sink of this kind refuses it for good (the metrics count
#: refusals per destination by it; DICOM's C-STORE and STOW-RS share the historical name).
REJECTED_CLASS = {"hl7": "HL7Rejected", "fhir": "FHIRRejected"}
DEFAULT_REJECTED_CLASS = "DestinationRejected"


class DestinationUnavailable(MedblipError):
    """The destination cannot be reached now (refused, unreachable, rejected, aborted, timed out).

    ``retry_after_s``: the shortest wait the destination asked for (an HTTP Retry-After), if any.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class StoreOutcome:
    """What the destination said to one file: delivered, or not and whether for good."""

    path: Path
    status: int | None
    delivered: bool
    permanent: bool
    message: str


@runtime_checkable
class Sink(Protocol):
    """A destination of reports: its kind (the metrics label), its name for logs and the audit
    trail, the protocol it speaks, and :meth:`send`."""

    #: ``folder``, ``dicom``, ``dicomweb``, ``hl7`` or ``fhir``: bounded, used as a metrics label.
    kind: str
    #: Where it sends (``AET@HOST:PORT``, a URL, ``HOST:PORT``, a folder), for logs and the audit.
    destination: object
    #: How it sends, for the audit trail (``C-STORE``, ``STOW-RS``, ``HL7 v2 MLLP``, ...).
    protocol: str

    def send(self, paths: Sequence[Path]) -> list[StoreOutcome]:
        """One outcome per file, in order; raises :class:`DestinationUnavailable` when the
        destination cannot be reached."""
        ...


def sink_name(sink: Sink) -> str:
    """``KIND DESTINATION``: what the delivery ledger remembers a sink by (a changed destination is
    a new sink, which gets every pending report)."""
    return f"{sink.kind} {sink.destination}"


def rejected_class(sink: Sink) -> str:
    """The error class of a job this sink refused for good."""
    return REJECTED_CLASS.get(sink.kind, DEFAULT_REJECTED_CLASS)


def send_guarded(sink: Sink, paths: Sequence[Path]) -> list[StoreOutcome]:
    """``sink.send(paths)``, with anything but :class:`DestinationUnavailable` turned into a
    transient outcome per file (logged with its type: a sink's fault is not the report's)."""
    if not paths:
        return []
    try:
        outcomes = sink.send(paths)
    except DestinationUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - one sink's bug must not fail jobs or stop the others
        logger.exception("%s sink %s failed unexpectedly (%s); its reports wait", sink.kind, sink.destination,
                         type(exc).__name__)
        return [StoreOutcome(p, None, False, False, f"the {sink.kind} sink failed ({type(exc).__name__})")
                for p in paths]
    if len(outcomes) != len(paths):
        logger.error("%s sink %s answered %d outcomes for %d files; its reports wait", sink.kind, sink.destination,
                     len(outcomes), len(paths))
        return [StoreOutcome(p, None, False, False, f"the {sink.kind} sink answered for the wrong files")
                for p in paths]
    return outcomes


@dataclass(frozen=True)
class Verdict:
    """What one job's outcomes across the sinks mean: ``delivered``, ``waiting`` or ``refused``,
    with the first outcome that decided it (and the sink that said it)."""

    state: str
    outcome: StoreOutcome | None = None
    sink: Sink | None = None


def verdict(results: Sequence[tuple[Sink, StoreOutcome]]) -> Verdict:
    """Refused by any sink beats waiting for any beats delivered by all (no results: delivered)."""
    for sink, outcome in results:
        if not outcome.delivered and outcome.permanent:
            return Verdict("refused", outcome, sink)
    for sink, outcome in results:
        if not outcome.delivered:
            return Verdict("waiting", outcome, sink)
    return Verdict("delivered")
