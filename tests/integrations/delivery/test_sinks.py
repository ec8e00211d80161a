"""The Sink protocol and the delivery loop's rules with sinks made for the test: a sink's fault makes
the job wait without stopping the others, a retry goes only to the sinks that lack a report, a
refusal by any sink fails the job, and the verdict's order."""

from __future__ import annotations

from pathlib import Path

import pytest

from medblip_dicom.integrations.delivery.loop import Delivery
from medblip_dicom.integrations.delivery.sinks.base import (
    DestinationUnavailable, Sink, StoreOutcome, verdict,
)
from medblip_dicom.integrations.spool import JobState, Spool

from tests.support.dicom import load_template, reissue
from tests.support.review import report_into_spool


class Scripted:
    """A sink whose answer per call comes from `mode`: "ok", "boom" (raises), "down", "refuse", "busy"."""

    def __init__(self, kind: str, mode: str = "ok") -> None:
        self.kind, self.destination, self.protocol, self.mode = kind, f"test-{kind}", "test", mode
        self.sent: list[str] = []

    def send(self, paths):
        if self.mode == "boom":
            raise RuntimeError("a bug in the sink")
        if self.mode == "down":
            raise DestinationUnavailable(f"{self.destination} is down")
        self.sent += [p.name for p in paths]
        return [StoreOutcome(p, None, self.mode == "ok", self.mode == "refuse", self.mode) for p in paths]


@pytest.fixture
def spool(tmp_path):
    with Spool(tmp_path / "spool", min_free_bytes=0) as s:
        yield s


def _reported(spool: Spool, tmp_path: Path) -> int:
    source, _ = reissue(load_template("CT_small.dcm"), tmp_path / "sources")
    job_id, _ = report_into_spool(spool, source, "a ct image of the chest")
    return job_id


def _retry(spool: Spool, delivery: Delivery) -> None:
    for group in spool.claim_for_delivery(ignore_quiet=True, now=float("inf")):
        delivery.deliver(group)


@pytest.mark.parametrize("mode", ["boom", "down", "busy"])
def test_a_sink_that_fails_makes_the_job_wait_and_the_others_get_it_once(tmp_path, spool, mode):
    good, bad = Scripted("good"), Scripted("bad", mode)
    delivery = Delivery(spool, sinks=[good, bad], retry_initial_s=0.01, retry_max_s=0.01)
    job = _reported(spool, tmp_path)
    _retry(spool, delivery)
    assert spool.job(job).state is JobState.REPORTED and spool.job(job).attempts == 1
    _retry(spool, delivery)
    assert len(good.sent) == 1  # not sent again while the other sink waits
    bad.mode = "ok"
    _retry(spool, delivery)
    assert spool.job(job).state is JobState.DELIVERED and len(good.sent) == 1
    assert len(bad.sent) == (3 if mode == "busy" else 1)  # a busy sink answered each try; the others never got it
    assert delivery.destination_reached is True


def test_a_refusal_by_any_sink_fails_the_job_with_that_sinks_error_class(tmp_path, spool):
    hl7 = Scripted("hl7", "refuse")
    _reported(spool, tmp_path)
    Delivery(spool, sinks=[Scripted("dicom"), hl7]).deliver_all_once()
    (job,) = spool.jobs()
    assert job.state is JobState.FAILED and job.error_class == "HL7Rejected"
    assert job.reason.startswith("hl7 destination test-hl7 refused ")


def test_an_unreachable_sink_is_not_tried_again_in_the_same_round(tmp_path, spool):
    down = Scripted("fhir", "down")
    calls = []
    original = down.send
    down.send = lambda paths: calls.append(len(paths)) or original(paths)
    for _ in range(3):
        _reported(spool, tmp_path)
    folder = Scripted("folder")
    delivery = Delivery(spool, sinks=[folder, down])
    delivery.deliver_all_once()  # three studies: three groups in one round
    assert len(calls) == 1 and len(folder.sent) == 3
    assert delivery.destination_reached is False and "test-fhir is down" in delivery.destination_error


def test_the_verdict_refused_beats_waiting_beats_delivered():
    sink: Sink = Scripted("x")
    p = Path("r.dcm")
    ok, wait, no = (StoreOutcome(p, None, True, False, "ok"), StoreOutcome(p, None, False, False, "wait"),
                    StoreOutcome(p, None, False, True, "no"))
    assert verdict([(sink, ok), (sink, wait), (sink, no)]).state == "refused"
    assert verdict([(sink, ok), (sink, wait)]).outcome is wait
    assert verdict([(sink, ok)]).state == "delivered" and verdict([]).state == "delivered"
