"""Fine-tuning BLIP on ROCO (or a site's own image-caption pairs), installed as ``medblip_dicom.training``.

Records and both ROCO layouts (:mod:`.records`), the file check (:mod:`.validation`), the data set
and collator (:mod:`.data`), the accelerate loop (:mod:`.trainer`) with atomic, resumable
checkpoints (:mod:`.checkpoints`), BLEU (:mod:`.bleu`) and evaluation (:mod:`.evaluation`), the
export of the best model (:mod:`.export`), offline demo models built from the shipped ROCO
captions (:mod:`.demo_model`) and a learnable synthetic data set (:mod:`.synthetic`). Pictures
reach the model through :func:`medblip_dicom.pixels.open_image`, the same path that inference
uses. The ``medblip train`` and ``medblip evaluate`` commands are in :mod:`medblip_dicom.apps.training`.
"""
