"""Producers: bytes in, spool jobs out. The watch folder (:mod:`.watch`, :mod:`.settle`,
:mod:`.inbox`), the DICOM node's Storage SCP (:mod:`.node`: headers checked in one pass by
:mod:`.scan`, instances stored behind the file meta of :mod:`.part10`) and the STOW-RS endpoint
(:mod:`.stow`). The node and STOW-RS admit each instance through one path (:mod:`.admit`: parse
check, header facts, durable write, one table of answers); each producer answers a sender only
once its instance is durably in the spool."""
