"""Deployment, installed as ``medblip_dicom.integrations``: a watch folder and a DICOM node on one
durable spool, reports out to a folder and/or a PACS.

Modules, one job each: :mod:`.config` (the TOML file), :mod:`.spool` (the durable queue: journal,
files, owners, recovery), :mod:`.worker` (batched captioning through
:func:`medblip_dicom.api.caption_dicoms`), :mod:`.workerproc` (the worker in a process of its own)
and :mod:`.doorbell` (its wake-up signals), :mod:`.watch` and :mod:`.settle` (watch folder),
:mod:`.node` (Storage SCP), :mod:`.forward` (Storage SCU), :mod:`.pynetdicom_compat` (pynetdicom's
private hooks, checked), :mod:`.delivery` (sinks, retries, study quiet time), :mod:`.picture`
(Secondary Capture), :mod:`.components` (parts built from the configuration), :mod:`.service`
(wiring), :mod:`.status`. The command line is in :mod:`medblip_dicom.apps.services`. Nothing here
is imported by ``import medblip_dicom``.
"""
