"""Where reports go: a DICOM node by C-STORE (:mod:`.dicom`), a DICOMweb server by STOW-RS
(:mod:`.dicomweb`, and :mod:`.probe` to check one answers), or both (:mod:`.both`)."""
