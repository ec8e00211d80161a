"""Load a BLIP captioning model once and caption batches of pictures with it.

A model is a Hugging Face ``save_pretrained`` directory (``BlipForConditionalGeneration`` plus its
``BlipProcessor``) or a hub id that is already in the local cache. Weights are loaded from
safetensors only (a pickled ``pytorch_model.bin`` is refused), strictly: every weight the model
uses comes from those files (:mod:`medblip_dicom.modelload`). The processor stored with the model
holds the resize and normalisation used in training, so inference normalises the same way.

Device ``auto`` picks CUDA, then Apple MPS, then the CPU. Dtype ``auto`` picks bfloat16 on a GPU
that supports it (else float16), float16 on MPS, and on the CPU bfloat16 when the processor has
native bf16 instructions (AVX512-BF16 or AMX), else float32. A reduced precision casts the weights
themselves, on the CPU too (autocast would re-cast them at every call; the data-flow page and
bench/RESULTS.md give the measured difference). Generation is greedy or beam search (never
sampling), so the same picture gives the same caption on the same machine and precision.

The model's identity (:mod:`medblip_dicom.identity`) includes a digest of its weights; it is
cached per fingerprint of the weight files (:mod:`medblip_dicom.digestcache`), so a start does not
hash a gigabyte of weights when nothing changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from medblip_dicom import digestcache
from medblip_dicom.errors import MedblipError, ModelLoadError
from medblip_dicom.generation import GenerationSettings
from medblip_dicom.identity import PROVENANCE_FILE, ModelIdentity, model_identity
from medblip_dicom.modelload import check_architecture, load_strict

__all__ = ["PROVENANCE_FILE", "CaptionGenerator", "Captioner", "GenerationSettings", "ModelIdentity", "resolve_device", "resolve_dtype",
           "weights_digest"]

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict in name order (see :class:`ModelIdentity`)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device for ``auto`` (cuda > mps > cpu) or an explicit name."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise MedblipError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MedblipError(f"device {device!r} was requested but CUDA is not available; use --device cpu")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MedblipError(f"device {device!r} was requested but MPS is not available; use --device cpu")
    return resolved


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Return the compute dtype for ``auto`` or an explicit name (see the module docstring)."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    elif dtype in _DTYPES:
        resolved = _DTYPES[dtype]
    else:
        raise MedblipError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    if device.type == "cpu" and resolved == torch.float16:
        raise MedblipError("float16 is not supported on the CPU; use --dtype bfloat16 or float32")
    return resolved


@dataclass
class CaptionGenerator:
    """A BLIP model and its processor on a device: pictures in, captions out.

    What evaluation needs during training (the model being trained has no identity yet); a
    :class:`Captioner` is a generator with the loaded model's identity, which reports need.
    """

    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    settings: GenerationSettings = field(default_factory=GenerationSettings)

    @cached_property
    def _suppressed_token_ids(self) -> list[int]:
        """Special tokens a caption must never contain (padding, unknown, [CLS], [MASK], [DEC])."""
        tok = self.processor.tokenizer
        ids = {tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.mask_token_id, tok.bos_token_id}
        ids.add(self.model.config.text_config.bos_token_id)
        ids.discard(self.model.config.text_config.sep_token_id)
        return sorted(i for i in ids if i is not None)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize and normalise pictures exactly as the processor stored with the model says."""
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def generate(self, pixel_values: torch.Tensor, settings: GenerationSettings | None = None) -> list[str]:
        """Caption a batch of preprocessed pictures; returns one stripped caption per picture."""
        settings = settings or self.settings
        kwargs = settings.generate_kwargs()
        kwargs["suppress_tokens"] = self._suppressed_token_ids
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        out = self.model.generate(pixel_values=pixel_values, **kwargs)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def caption(self, images: Sequence[Image.Image], settings: GenerationSettings | None = None) -> list[str]:
        """Caption pictures as one batch (the caller chooses the batch size)."""
        if not images:
            return []
        return self.generate(self.preprocess(images), settings)


@dataclass
class Captioner(CaptionGenerator):
    """A loaded BLIP model, its processor, the settings it generates with and its identity.

    Build it with :meth:`Captioner.load`; then :meth:`caption` a list of pictures (one batch).
    """

    identity: ModelIdentity = field(kw_only=True)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        settings: GenerationSettings | None = None,
    ) -> Captioner:
        """Load a model directory or a cached hub id.

        The load is strict (:mod:`medblip_dicom.modelload`): a directory holding another
        architecture, or weights that are missing, unused or of the wrong shape, is refused.
        Raises :class:`~medblip_dicom.errors.ModelLoadError` with one sentence saying what to do
        when the model is not there (for example a hub id that is not cached and no network) or is
        not the model it claims to be.
        """
        from transformers import AutoConfig, BlipForConditionalGeneration, BlipProcessor

        source = os.fspath(model)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        local = Path(source).expanduser()
        if local.exists() and not local.is_dir():
            raise ModelLoadError(f"model {source!r} is a file; pass the directory written by save_pretrained")
        if not local.exists() and _looks_like_path(source):
            raise ModelLoadError(f"model directory {source!r} does not exist")
        where = str(local) if local.is_dir() else source

        def _load(local_only: bool) -> tuple[Any, Any, str | None]:
            check_architecture(AutoConfig.from_pretrained(where, local_files_only=local_only), source)
            before = _weights_fingerprint(source, local if local.is_dir() else None)
            proc = BlipProcessor.from_pretrained(where, local_files_only=local_only)
            net = load_strict(BlipForConditionalGeneration, where, source, local_files_only=local_only)
            return proc, net, before

        try:
            try:
                processor, net, fingerprint = _load(local_only=True)
            except OSError:
                if local.is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
                    raise
                processor, net, fingerprint = _load(local_only=False)
        except (OSError, ValueError) as exc:
            if local.is_dir():
                raise ModelLoadError(
                    f"{source} is not a usable BLIP model directory ({_first_line(exc)}); it must hold "
                    "config.json, model.safetensors and the processor files written by save_pretrained"
                ) from None
            raise ModelLoadError(
                f"model {source!r} is not a local directory and is not in the Hugging Face cache, and it "
                "could not be downloaded (offline?); pass --model /path/to/model-dir, a directory "
                "written by save_pretrained (model + processor)"
            ) from None

        identity = _identity(net, source, local if local.is_dir() else None, fingerprint)
        net.eval()
        if torch_device.type != "cpu" or torch_dtype != torch.float32:
            # The weights themselves are cast: half the memory and no per-op casts (see above).
            net.to(device=torch_device, dtype=torch_dtype)
        logger.info(
            "loaded model %s (version %s, sha256 %s…) on %s as %s",
            identity.name, identity.version, identity.weights_sha256[:12], torch_device, str(torch_dtype).split(".")[-1],
        )
        return cls(net, processor, torch_device, torch_dtype, settings or GenerationSettings(), identity=identity)


def _looks_like_path(source: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else that does not exist is a missing folder."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or source.endswith("/")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _weights_fingerprint(source: str, directory: Path | None) -> str | None:
    """The digest cache's key for the weight files `source` loads from (see :mod:`.digestcache`)."""
    return digestcache.fingerprint(directory if directory is not None else _hub_snapshot(source))


def _identity(net: Any, source: str, directory: Path | None, before: str | None) -> ModelIdentity:
    """The loaded model's identity; its weights digest comes from the cache when the files are unchanged.

    `before` is the files' fingerprint taken before the (strict) load. The cache is used, and
    written, only when the fingerprint after the load is the same: files replaced while loading
    would otherwise certify weights that did not produce the captions.
    """
    after = _weights_fingerprint(source, directory)
    key = after if after is not None and after == before else None
    digest = digestcache.lookup(key)
    if digest is None:
        digest = weights_digest(net)
        digestcache.store(key, digest, source)
    else:
        logger.debug("weights digest of %s from the cache", source)
    return model_identity(source, directory, digest, getattr(net.config, "_commit_hash", None))


def _hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot folder of a hub model (where its weight files are), or an empty path."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - no snapshot: the digest is computed, not cached
        return Path()
