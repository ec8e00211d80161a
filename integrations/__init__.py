"""Deployment, installed as ``medblip_dicom.integrations``: the services around the library.

One room per job, imported in one direction. The base rooms, each using only those before it:
:mod:`.config` (the TOML file), :mod:`.net` (pynetdicom's private hooks, the guarded HTTP server),
:mod:`.spool` (the durable queue every producer feeds) and :mod:`.ops` (metrics, audit trail,
health, status). Then the peer rooms, which use the base rooms and never each other:
:mod:`.ingest` (watch folder, DICOM node, STOW-RS endpoint), :mod:`.worker` (jobs to reports),
:mod:`.delivery` (reports out, to the folder and the sinks), :mod:`.review` (the review station)
and :mod:`.batch` (Ray Data). On top, the assemblies, which may use any room: :mod:`.service`
(the services) and :mod:`.pull` (``medblip pull``). ``tests/test_architecture.py`` holds these
rules. The command line is in :mod:`medblip_dicom.apps`; nothing here is imported by
``import medblip_dicom``.
"""
