"""Export a trained model as a directory that ``caption_dicom()`` loads as it is.

``save_pretrained`` (safetensors weights + config) and the processor, plus
``medblip_provenance.json``: model name and version, base model, data, epochs, validation BLEU,
the image preprocessing parameters and the weights digest that every SR records. Written to a
temporary folder and swapped into place, so the target is never half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medblip_dicom import __version__
from medblip_dicom.captioner import weights_digest
from medblip_dicom.identity import PROVENANCE_FILE


def export_model(model: Any, processor: Any, target: str | os.PathLike[str], provenance: dict[str, Any]) -> Path:
    """Save model + processor + provenance into `target` atomically; returns `target`."""
    target = Path(target)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    digest = weights_digest(model)
    image = processor.image_processor
    record = {
        **provenance,
        "model_version": provenance.get("model_version")
        or f"e{provenance.get('epochs_trained', 0)}-s{provenance.get('step', 0)}-{digest[:8]}",
        "weights_sha256": digest,
        "preprocessing": {
            "pixel_path": "medblip_dicom.pixels.open_image / dataset_to_image",
            "size": {k: v for k, v in dict(image.size).items() if v is not None},
            "image_mean": list(image.image_mean),
            "image_std": list(image.image_std),
            "resample": int(image.resample),
            "rescale_factor": float(image.rescale_factor),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "medblip_dicom_version": __version__,
    }
    (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    old = target.with_name(f".old-{target.name}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target
