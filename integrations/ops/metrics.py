"""Prometheus metrics of a service, one registry per service object.

Most numbers come from the spool's journal at each scrape, so they agree with ``medblip status``,
cover the worker process (which writes into the same journal) and survive restarts (the counters
count since the spool was made; Prometheus copes with a counter that starts high):

- ``medblip_instances_received_total{producer}``: jobs admitted (producer ``watch``, ``dimse``,
  ``stow`` for the STOW-RS endpoint, ``review`` for signed reports; ``other`` for any other origin);
- ``medblip_jobs_finished_total{producer,outcome}``: jobs that ended ``delivered``, ``skipped`` or
  ``failed``;
- ``medblip_reports_written_total``, ``medblip_reports_delivered_total{destination}`` (``folder``,
  ``dicom``, ``dicomweb``, ``hl7``, ``fhir``), ``medblip_delivery_refused_total{destination}`` (refused
  for good: by the DICOM destination, the HL7 receiver or the FHIR server),
  ``medblip_captions_total`` (images the model captioned);
- ``medblip_jobs{state}`` (``held`` is the received jobs selection has not released yet),
  ``medblip_oldest_pending_seconds``, ``medblip_spool_pending_bytes``, ``medblip_disk_free_bytes``,
  ``medblip_worker_alive``.

Histograms: ``medblip_cstore_seconds`` (the node's C-STORE handling, observed in batches of at most
a second: :mod:`.telemetry`),
``medblip_receive_to_report_seconds`` and ``medblip_report_to_delivered_seconds`` (from jobs as
they are delivered), ``medblip_batch_seconds`` and ``medblip_batch_size`` (from the worker's batches
table). Those read from the journal start empty when the service starts. No label holds patient
data or a UID (labels are bounded).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from medblip_dicom.integrations.spool import Spool

#: The spool's job origins and the producer label each counts under (a signed report is a job too).
PRODUCERS = {"node": "dimse", "watch": "watch", "dicomweb": "stow", "review": "review"}
#: The error class of a job each destination refused for good (the delivery sinks' rejected_class).
REFUSED_CLASS = {"dicom": "DestinationRejected", "hl7": "HL7Rejected", "fhir": "FHIRRejected"}
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)


class _JournalCollector(Collector):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self.metrics.collect_journal()


class ServiceMetrics:
    """The metrics of one service (see the module docstring)."""

    def __init__(self, spool: Spool, *, destinations: tuple[str, ...], worker_alive: Callable[[], bool]) -> None:
        self.spool = spool
        self.destinations = destinations
        self.worker_alive = worker_alive
        self.registry = CollectorRegistry(auto_describe=False)
        self.cstore_seconds = Histogram("medblip_cstore_seconds", "C-STORE handling time of the node",
                                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
                                        registry=self.registry)
        self.receive_to_report = Histogram("medblip_receive_to_report_seconds",
                                           "from an instance's arrival to its report", buckets=LATENCY_BUCKETS,
                                           registry=self.registry)
        self.report_to_delivered = Histogram("medblip_report_to_delivered_seconds",
                                             "from a report to its delivery", buckets=LATENCY_BUCKETS,
                                             registry=self.registry)
        self.batch_seconds = Histogram("medblip_batch_seconds", "model batch time (read to SR written)",
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=self.registry)
        self.batch_size = Histogram("medblip_batch_size", "jobs per model batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.registry.register(_JournalCollector(self))
        #: Called before each exposition: whoever batches observations hands them over here.
        self.before_scrape: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        # Histograms read from the journal start at this service's start.
        self._batch_cursor = int(spool.journal.rows("SELECT COALESCE(MAX(id), 0) FROM batches")[0][0])
        self._delivered_cursor = float(spool.journal.rows(
            "SELECT COALESCE(MAX(finished_at), 0) FROM jobs WHERE state='delivered'")[0][0])

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric, after taking in the journal's news."""
        from prometheus_client import generate_latest

        for flush in self.before_scrape:
            flush()
        self.sync()
        return generate_latest(self.registry)

    def sync(self) -> None:
        """Observe the batches and deliveries the journal gained since the last scrape."""
        with self._lock:
            for row in self.spool.journal.rows("SELECT id, size, seconds FROM batches WHERE id>? ORDER BY id",
                                               (self._batch_cursor,)):
                self.batch_size.observe(row["size"])
                self.batch_seconds.observe(row["seconds"])
                self._batch_cursor = int(row["id"])
            for row in self.spool.journal.rows(
                    "SELECT received_at, reported_at, finished_at FROM jobs WHERE state='delivered' AND "
                    "finished_at>? ORDER BY finished_at", (self._delivered_cursor,)):
                if row["reported_at"] is not None:
                    self.receive_to_report.observe(max(0.0, row["reported_at"] - row["received_at"]))
                    self.report_to_delivered.observe(max(0.0, row["finished_at"] - row["reported_at"]))
                self._delivered_cursor = float(row["finished_at"])

    def collect_journal(self) -> Iterator[Any]:
        """The counters and gauges read from the journal (called by the registry at each scrape)."""
        journal = self.spool.journal
        received: dict[str, int] = {}
        finished: dict[tuple[str, str], int] = {}
        for row in journal.rows("SELECT origin, state, COUNT(*) FROM jobs GROUP BY origin, state"):
            producer = PRODUCERS.get(row[0], "other")  # several origins may map to one producer
            received[producer] = received.get(producer, 0) + row[2]
            if row[1] in ("delivered", "skipped", "failed"):
                finished[(producer, row[1])] = finished.get((producer, row[1]), 0) + row[2]
        family = CounterMetricFamily("medblip_instances_received", "instances admitted into the spool",
                                     labels=["producer"])
        for producer, n in sorted(received.items()):
            family.add_metric([producer], n)
        yield family
        family = CounterMetricFamily("medblip_jobs_finished", "jobs that ended, by outcome",
                                     labels=["producer", "outcome"])
        for (producer, outcome), n in sorted(finished.items()):
            family.add_metric([producer, outcome], n)
        yield family
        summary = journal.summary()
        counts = summary.counts
        written = int(journal.rows("SELECT COUNT(*) FROM jobs WHERE reported_at IS NOT NULL")[0][0])
        yield CounterMetricFamily("medblip_reports_written", "reports written into the spool", value=written)
        delivered = CounterMetricFamily("medblip_reports_delivered", "reports every sink has", labels=["destination"])
        refused = CounterMetricFamily("medblip_delivery_refused", "reports a destination refused for good",
                                      labels=["destination"])
        rejected = {str(r[0]): int(r[1]) for r in journal.rows(
            "SELECT error_class, COUNT(*) FROM jobs WHERE state='failed' AND error_class IN "
            "('DestinationRejected', 'HL7Rejected', 'FHIRRejected') GROUP BY error_class")}
        for destination in self.destinations:
            delivered.add_metric([destination], counts["delivered"])
            refused.add_metric([destination], rejected.get(REFUSED_CLASS.get(destination, ""), 0))
        yield delivered
        yield refused
        captions = int(journal.rows("SELECT COALESCE(SUM(size), 0) FROM batches")[0][0])
        yield CounterMetricFamily("medblip_captions", "images through the model (batched jobs)", value=captions)
        jobs = GaugeMetricFamily("medblip_jobs", "jobs by state now", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state], n - (summary.held if state == "received" else 0))
        jobs.add_metric(["held"], summary.held)
        yield jobs
        oldest = summary.oldest_pending
        yield GaugeMetricFamily("medblip_oldest_pending_seconds", "age of the oldest pending job (0: none)",
                                value=max(0.0, summary.now - oldest.received_at) if oldest is not None else 0.0)
        yield GaugeMetricFamily("medblip_spool_pending_bytes", "bytes of pending inputs", value=summary.pending_bytes)
        yield GaugeMetricFamily("medblip_disk_free_bytes", "free bytes on the spool's disk",
                                value=shutil.disk_usage(self.spool.root).free)
        yield GaugeMetricFamily("medblip_worker_alive", "1 while the worker runs", value=int(self.worker_alive()))

