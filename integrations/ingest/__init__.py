"""Producers: bytes in, spool jobs out. The watch folder (:mod:`.watch`, :mod:`.settle`,
:mod:`.inbox`), the DICOM node's Storage SCP (:mod:`.node`) and the STOW-RS endpoint
(:mod:`.stow`). Each answers a sender only once its instance is durably in the spool."""
