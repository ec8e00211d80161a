"""Fine-tuning BLIP on ROCO, installed as ``medblip_dicom.training``.

The trainer, ROCO loading and validation, checkpoints and BLEU arrive with the training issue.
Pictures reach the model through :func:`medblip_dicom.pixels.open_image`, the same path that
inference uses.
"""
