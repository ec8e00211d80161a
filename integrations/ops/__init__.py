"""Operations: what a service tells the people who run it. Telemetry fans each event out to the
Prometheus metrics (:mod:`.metrics`) and the DICOM audit trail (:mod:`.audit`); :mod:`.http`
serves ``/metrics`` and the health checks, :mod:`.readiness` decides them; :mod:`.status` reads
a spool for ``medblip status``."""
