"""Building a service's parts from its configuration, once, for whichever process runs them.

The service (:mod:`.assembly`) and its worker process (:mod:`.worker_process`) both build the model, the
spool and the worker from one :class:`~medblip_dicom.integrations.config.file.ServiceConfig`; the
builders live here so that neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from medblip_dicom.integrations.config.file import ConfigError, ServiceConfig
from medblip_dicom.integrations.spool import Spool

if TYPE_CHECKING:
    from medblip_dicom.captioner import Captioner
    from medblip_dicom.integrations.delivery.loop import Delivery
    from medblip_dicom.integrations.delivery.sinks.base import Sink
    from medblip_dicom.integrations.ingest.stow.endpoint import StowEndpoint
    from medblip_dicom.integrations.spool.spool import Bell
    from medblip_dicom.integrations.ops.telemetry import Telemetry
    from medblip_dicom.integrations.worker.loop import Worker


def load_captioner(config: ServiceConfig) -> Captioner:
    """Load the configured model once, with the configured generation settings."""
    from medblip_dicom.captioner import Captioner

    m = config.model
    if not m.path:
        raise ConfigError("[model] path: no model given; pass --model or set it in the config file")
    return Captioner.load(m.path, device=m.device, dtype=m.dtype, settings=m.generation, prompt=m.prompt or None)


def open_spool(config: ServiceConfig, *, received: Bell | None = None, reported: Bell | None = None) -> Spool:
    """The configured spool (the service and its worker process open it the same way)."""
    s = config.spool
    return Spool(s.dir, max_bytes=s.max_bytes, min_free_bytes=s.min_free_bytes, received=received, reported=reported)


def build_worker(spool: Spool, captioner: Captioner, config: ServiceConfig) -> Worker:
    """The configured worker (in the service's process or in its worker process)."""
    from medblip_dicom.integrations.worker.loop import Worker

    w = config.worker
    return Worker(spool, captioner, batch_size=w.batch_size, max_wait_s=w.max_wait_s,
                  prepare_workers=w.prepare_workers, secondary_capture=config.output.secondary_capture,
                  select=config.select,
                  pdf=config.output.pdf)


def build_telemetry(spool: Spool, config: ServiceConfig, *, worker_alive: Callable[[], bool]) -> Telemetry:
    """Metrics (always kept; served when ``[metrics] port`` is set) and the audit trail (``[audit]``)."""
    import socket

    from medblip_dicom.integrations.ops.audit import AuditTrail, SyslogSender
    from medblip_dicom.integrations.ops.metrics import ServiceMetrics
    from medblip_dicom.integrations.ops.telemetry import Telemetry

    destinations = tuple(d for d, on in (("folder", config.output.dir is not None),
                                         ("dicom", config.forward.destination is not None),
                                         ("dicomweb", bool(config.forward.dicomweb_url)),
                                         ("hl7", config.hl7.enabled), ("fhir", config.fhir.enabled)) if on)
    metrics = ServiceMetrics(spool, destinations=destinations, worker_alive=worker_alive)
    audit = None
    a = config.audit
    if a.enabled:
        syslog = SyslogSender(a.syslog, ca=a.syslog_ca) if a.syslog else None
        audit = AuditTrail(a.resolved_path(spool.root), syslog=syslog,
                           source_id=f"{config.node.ae_title}@{socket.gethostname()}")
    return Telemetry(metrics=metrics, audit=audit, ae_title=config.node.ae_title)


def build_sinks(config: ServiceConfig) -> list[Sink]:
    """The configured destinations beyond the output folder, in the order delivery tries them:
    C-STORE (``[forward] destination``), STOW-RS (``dicomweb_url``), HL7 v2 (``[hl7]``), FHIR (``[fhir]``)."""
    f = config.forward
    sinks: list[Sink] = []
    if f.destination is not None:
        from medblip_dicom.integrations.delivery.sinks.dicom import ForwardClient

        sinks.append(ForwardClient(f.destination, calling_ae_title=f.calling_ae_title, timeout_s=f.timeout_s,
                                   tls=f.tls))
    if f.dicomweb_url:
        from medblip_dicom.integrations.delivery.sinks.dicomweb import StowClient

        sinks.append(StowClient(f.dicomweb_url, f.dicomweb))
    if config.hl7.enabled:
        from medblip_dicom.integrations.delivery.sinks.hl7 import Hl7Sink

        sinks.append(Hl7Sink(config.hl7))
    if config.fhir.enabled:
        from medblip_dicom.integrations.delivery.sinks.fhir import FhirSink

        sinks.append(FhirSink(config.fhir))
    return sinks


def build_delivery(spool: Spool, config: ServiceConfig, telemetry: Telemetry | None = None) -> Delivery:
    """The configured sinks (the output folder first, then :func:`build_sinks`) and the review hold."""
    from medblip_dicom.integrations.delivery.loop import Delivery

    f = config.forward
    review = None
    if config.review.enabled:  # every AI report is kept for the review station first
        from medblip_dicom.integrations.review.intake import ReviewIntake

        review = ReviewIntake(spool, hold_until_signed=config.review.hold_until_signed)
    return Delivery(spool, out_dir=config.output.dir, sinks=build_sinks(config),
                    study_quiet_s=config.output.study_quiet_s, retry_initial_s=f.retry_initial_s,
                    retry_max_s=f.retry_max_s, telemetry=telemetry, review=review)


def build_stow_endpoint(spool: Spool, config: ServiceConfig, telemetry: Telemetry | None = None) -> StowEndpoint:
    """The node's STOW-RS endpoint (``[dicomweb]``), storing into `spool` like the C-STORE handler."""
    from medblip_dicom.integrations.ingest.stow.endpoint import StowEndpoint
    from medblip_dicom.integrations.ingest.stow.receiver import StowReceiver

    done_dir = spool.root / "done" if config.node.keep_inputs else None
    alert = None
    if telemetry is not None:
        def alert(peer: str, detail: str) -> None:
            telemetry.security_alert(peer=peer, detail=detail)
    return StowEndpoint(StowReceiver(spool, done_dir=done_dir, telemetry=telemetry), config.dicomweb,
                        on_security_alert=alert)
