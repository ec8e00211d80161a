"""``medblip pull``: find studies in an archive, retrieve what will be captioned, caption it and send
the reports back. :mod:`.choose` decides on the query answers what to retrieve (the selection rules
and the one-caption-per-series choice) and :mod:`.study` holds the per-instance account and the
captioning step both pulls share. :mod:`medblip_dicom.integrations.pull.dicomweb`: QIDO-RS and WADO-RS in, STOW-RS out.
:mod:`.dimse`: C-FIND (:mod:`.dimse_find`), C-GET or C-MOVE (:mod:`.dimse_retrieve`, into
:mod:`.dimse_receive`, with :mod:`.dimse_listen` as the C-MOVE destination) in, C-STORE out. Like the
services, a pull assembles the other rooms' parts (the delivery sinks), so it sits above them."""
