"""The applications: the ``medblip`` command and its subcommands, thin ``main()``s over the library.

Like pynetdicom's ``apps/``, nothing here holds logic of its own: each subcommand parses its
flags, builds library objects and reports outcomes. The library (``medblip_dicom``'s modules),
``medblip_dicom.training`` and ``medblip_dicom.integrations`` never import from here.

- :mod:`.main`: the parser and :func:`~.main.main` (the console script ``medblip``).
- :mod:`.common`: exit codes, ``-q`` / ``-v`` and logging, one-line errors, missing extras.
- :mod:`.options`: the flags several subcommands share (model, generation, frame, selection) and
  the walk over input files and folders, each declared once.
- :mod:`.caption`, :mod:`.batch`, :mod:`.pull`, :mod:`.watch_node` (watch, node and the status of
  their spool), :mod:`.review`, :mod:`.training` (train, evaluate), :mod:`.doctor`,
  :mod:`.quickstart`, :mod:`.show_sr`.
"""
