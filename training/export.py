"""Export a trained model as a directory that ``caption_dicom()`` loads as it is.

``save_pretrained`` (safetensors weights + config) and the processor, plus
``medblip_provenance.json``: model name and version, architecture, prompt, base model, data,
epochs, validation BLEU, the image preprocessing parameters and the weights digest that every SR
records. Written to a temporary folder and swapped into place, so the target is never half-written.

A LoRA run (:mod:`.lora`) exports either way:

- ``merged``: the base model's weights with the adapter merged into them, a plain model directory;
- ``adapter``: the adapter (PEFT's ``adapter_config.json`` naming the base model by its absolute
  path or hub id, ``adapter_model.safetensors``), the processor and the provenance, no base weights.

Both are made the way a load makes them: the base model is read again, strictly, from its files,
and the adapter is merged into it (:func:`medblip_dicom.modelload.merge_adapter`). So both record
the same ``weights_sha256``, the digest of the merged weights, which a load of the adapter export
recomputes and checks; the provenance also records the base model's digest and the adapter's.
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

_PREPROCESSING_KEYS = ("size", "crop_size", "image_mean", "image_std", "resample", "rescale_factor", "do_resize",
                       "do_center_crop", "do_image_splitting", "max_image_size", "min_pixels", "max_pixels",
                       "patch_size", "merge_size", "image_seq_length")


def _plain(value: Any) -> Any:
    """A processor attribute as JSON (sizes, which may be transformers' ``SizeDict``, tuples and enums made plain)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    try:
        pairs = dict(value)  # a dict, or a SizeDict (which iterates as pairs)
    except (TypeError, ValueError):
        return int(value) if hasattr(value, "__int__") else str(value)
    return {str(k): _plain(v) for k, v in pairs.items() if v is not None}


def preprocessing(processor: Any) -> dict[str, Any]:
    """The image preprocessing the processor applies, as the provenance records it."""
    image = getattr(processor, "image_processor", processor)
    found = {"pixel_path": "medblip_dicom.pixels.open_image / dataset_to_image",
             "image_processor": type(image).__name__}
    for key in _PREPROCESSING_KEYS:
        value = getattr(image, key, None)
        if value is not None:
            found[key] = _plain(value)
    return found


def _write(tmp: Path, target: Path, record: dict[str, Any]) -> Path:
    (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    old = target.with_name(f".old-{target.name}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _record(provenance: dict[str, Any], digest: str, processor: Any, architecture: str) -> dict[str, Any]:
    return {
        **provenance,
        "model_version": provenance.get("model_version")
        or f"e{provenance.get('epochs_trained', 0)}-s{provenance.get('step', 0)}-{digest[:8]}",
        "architecture": architecture,
        "weights_sha256": digest,
        "preprocessing": preprocessing(processor),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "medblip_dicom_version": __version__,
    }


def export_model(model: Any, processor: Any, target: str | os.PathLike[str], provenance: dict[str, Any]) -> Path:
    """Save model + processor + provenance into `target` atomically; returns `target`."""
    target = Path(target)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    return _write(tmp, target, _record(provenance, weights_digest(model), processor, type(model).__name__))


def export_lora(model: Any, processor: Any, target: str | os.PathLike[str], provenance: dict[str, Any], *,
                base_model: str, mode: str) -> Path:
    """Export a LoRA-trained ``PeftModel`` as merged weights or as base + adapter (module docstring)."""
    from safetensors.torch import load_file

    from medblip_dicom.modelload import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_model, merge_adapter

    target = Path(target)
    tmp = target.with_name(f".tmp-{target.name}")
    adapter = target.with_name(f".adapter-{target.name}")
    for folder in (tmp, adapter):
        shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(adapter, safe_serialization=True)
    (adapter / "README.md").unlink(missing_ok=True)  # PEFT's model card template, not ours
    local = Path(base_model).expanduser()
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = str(local.resolve()) if local.is_dir() else base_model
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    try:
        base = load_model(config["base_model_name_or_path"], base_model).model
        base_digest = weights_digest(base)
        merged = merge_adapter(base, adapter, str(target))
        digest = weights_digest(merged)
        adapter_digest = _tensors_digest(load_file(adapter / ADAPTER_WEIGHTS))
        if mode == "merged":
            merged.save_pretrained(tmp, safe_serialization=True)
        else:
            shutil.copytree(adapter, tmp)
        processor.save_pretrained(tmp)
    finally:
        shutil.rmtree(adapter, ignore_errors=True)
    record = _record(provenance, digest, processor, type(merged).__name__)
    record["export"] = mode
    record["base_weights_sha256"] = base_digest
    record["adapter_sha256"] = adapter_digest
    return _write(tmp, target, record)


def _tensors_digest(tensors: dict[str, Any]) -> str:
    """The weights digest's definition over a plain dict of tensors (the adapter's file)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
