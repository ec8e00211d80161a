"""The services assembled: :mod:`.build` makes the parts from the configuration, :mod:`.assembly`
wires and runs them (:class:`Service`), :mod:`.worker_process` runs the worker in a process of its
own and :mod:`.listeners` more node processes on one port. The only modules of
:mod:`medblip_dicom.integrations` that import across its rooms."""

from medblip_dicom.integrations.service.assembly import Service

__all__ = ["Service"]
