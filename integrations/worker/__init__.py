"""Jobs to reports: the batching loop (:mod:`.loop`) that captions claimed spool jobs through
:func:`medblip_dicom.api.caption_dicoms`, and the series hold (:mod:`.series_hold`) that applies
the selection rules and one caption per series to instances arriving one at a time."""
