"""Where reports go, each destination one :class:`~.base.Sink` (:mod:`.base`: the protocol, the outcomes,
the one rule that turns outcomes into a job's fate): the output folder (:mod:`.folder`), a DICOM node by
C-STORE (:mod:`.dicom`), a DICOMweb server by STOW-RS (:mod:`.dicomweb`, and :mod:`.probe` to check one
answers), a RIS by HL7 v2 over MLLP (:mod:`.hl7`, :mod:`.hl7message`, :mod:`.mllp`) and a FHIR server
(:mod:`.fhir`, :mod:`.fhirreport`)."""
