"""Both destinations at once: a C-STORE destination and a STOW-RS service behind one ``send``.

Delivery talks to one sink with ``destination`` and ``send(paths) -> list[StoreOutcome]``
(:class:`~medblip_dicom.integrations.delivery.sinks.dicom.ForwardClient`'s shape). With ``[forward]
destination`` and ``dicomweb_url`` both set, :class:`BothSinks` sends every group to each: a
report is delivered once both have it; refused by either, it fails with that reason; while either
is unavailable, the group waits and goes to both again (SR UIDs are stable, so a destination that
already has it stores the same instance again).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medblip_dicom.integrations.delivery.sinks.dicom import StoreOutcome


class BothSinks:
    """Sends to every sink in turn; one merged outcome per file."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks
        self.destination = " + ".join(str(s.destination) for s in sinks)
        self.protocol = " and ".join(getattr(s, "protocol", "C-STORE") for s in sinks)

    def send(self, paths: Sequence[Path]) -> list[StoreOutcome]:
        merged: list[StoreOutcome] | None = None
        for sink in self.sinks:  # DestinationUnavailable from any of them propagates: all wait
            outcomes = sink.send(paths)
            if merged is None:
                merged = [_named(o, sink) for o in outcomes]
                continue
            merged = [_worse(a, _named(b, sink)) for a, b in zip(merged, outcomes, strict=True)]
        return merged or []


def _named(outcome: StoreOutcome, sink: Any) -> StoreOutcome:
    if outcome.delivered:
        return outcome
    return StoreOutcome(outcome.path, outcome.status, False, outcome.permanent,
                        f"{outcome.message} (from {sink.destination})")


def _worse(a: StoreOutcome, b: StoreOutcome) -> StoreOutcome:
    """Permanent refusal beats waiting beats delivered."""
    rank = {True: 2, False: 1}
    ra = 0 if a.delivered else rank[a.permanent]
    rb = 0 if b.delivered else rank[b.permanent]
    return a if ra >= rb else b
