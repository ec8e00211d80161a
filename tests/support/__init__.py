"""Helpers shared by every test folder, one copy each: the environment (:mod:`.env`), DICOM test
data and SR checks (:mod:`.dicom`), the invented patient (:mod:`.privacy`), Orthanc
(:mod:`.orthanc`), the services as processes (:mod:`.services`), the journal from outside
(:mod:`.journal`), good and bad inputs (:mod:`.inputs`), a resending DICOM sender
(:mod:`.sender`), the reliability checks and figures (:mod:`.checks`, :mod:`.figures`) and the
shared fixtures (:mod:`.fixtures`)."""
