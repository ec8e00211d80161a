"""Deployment, installed as ``medblip_dicom.integrations``: a watch folder and a DICOM node on one
durable spool, reports out to a folder and/or a PACS.

Modules, one job each: :mod:`.config` (the TOML file), :mod:`.spool` (folder + SQLite WAL journal),
:mod:`.worker` (batched captioning through :func:`medblip_dicom.api.caption_dicoms`),
:mod:`.watch` (watch folder), :mod:`.node` (Storage SCP), :mod:`.forward` (Storage SCU),
:mod:`.delivery` (sinks, retries, study quiet time), :mod:`.picture` (Secondary Capture),
:mod:`.service` (wiring), :mod:`.status` and :mod:`.cli` (``medblip watch | node | status``).
Nothing here is imported by ``import medblip_dicom``; pynetdicom and watchdog come with the
``[integrations]`` extra.
"""
