"""DICOMweb: the STOW-RS sink (:mod:`.stow_client`), the STOW-RS endpoint of the node service
(:mod:`.endpoint`, with its streaming multipart parser :mod:`.multipart`) and ``medblip pull``'s
QIDO-RS / WADO-RS side (:mod:`.pull`). Nothing here is imported until a DICOMweb feature is used.
"""
