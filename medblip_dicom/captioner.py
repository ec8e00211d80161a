"""Load an image-to-text model once and caption batches of pictures with it.

A model is a Hugging Face ``save_pretrained`` directory (the model plus its processor: BLIP by
default, or any family transformers loads with ``AutoModelForImageTextToText``, see
:mod:`medblip_dicom.families`), a base model + LoRA adapter export, or a hub id that is already in
the local cache. Weights are loaded from safetensors only (a pickled ``pytorch_model.bin`` is
refused), strictly: every weight the model uses comes from those files
(:mod:`medblip_dicom.modelload`). The processor stored with the model holds the resize and
normalisation used in training, so inference normalises the same way. A model that takes an
instruction is given its prompt through the processor's chat template
(:mod:`medblip_dicom.modelinputs`); decoder-only models batch with left padding, and only the
generated tokens become the caption.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from medblip_dicom import digestcache
from medblip_dicom.errors import MedblipError, ModelLoadError
from medblip_dicom.families import resolve_prompt
from medblip_dicom.generation import GenerationSettings
from medblip_dicom.identity import PROVENANCE_FILE, ModelIdentity, model_identity, read_provenance
from medblip_dicom.modelinputs import InputBuilder, collate, to_device
from medblip_dicom.modelload import LoadedModel, adapter_base, is_adapter_dir, load_model, load_processor, model_kind

__all__ = ["PROVENANCE_FILE", "CaptionGenerator", "Captioner", "GenerationSettings", "ModelIdentity", "load_inputs",
           "resolve_device", "resolve_dtype", "weights_digest"]

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
    """A model and its processor on a device: pictures in, captions out.

    What evaluation needs during training (the model being trained has no identity yet); a
    :class:`Captioner` is a generator with the loaded model's identity, which reports need.
    `prompt` is the instruction a model that takes one is given (empty for BLIP and GIT); its
    inputs are built by :class:`~medblip_dicom.modelinputs.InputBuilder`.
    """

    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    prompt: str = field(default="", kw_only=True)

    @cached_property
    def inputs(self) -> InputBuilder:
        """Pictures to model inputs: the processor and the prompt's text (picklable, for worker processes)."""
        return InputBuilder.for_prompt(self.processor, self.prompt)

    @cached_property
    def _suppressed_token_ids(self) -> list[int]:
        """Special tokens a caption must never contain: every special token of the tokenizer (padding,
        unknown, image placeholders, [CLS], [MASK], [DEC], ...) and the model's start token, except the
        tokens that end a caption."""
        tok = getattr(self.processor, "tokenizer", self.processor)
        text_config = self.model.config.get_text_config()
        ids = set(tok.all_special_ids)
        ids.add(getattr(text_config, "bos_token_id", None))
        ids -= set(self._end_token_ids)
        return sorted(i for i in ids if isinstance(i, int))

    @cached_property
    def _end_token_ids(self) -> list[int]:
        """The tokens that end a caption: the generation config's end tokens, and the text model's
        separator, which is where BLIP's ``generate()`` stops whatever its end token says."""
        text_config = self.model.config.get_text_config()
        found = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if found is None:
            found = getattr(text_config, "eos_token_id", None)
        ends = list(found) if isinstance(found, (list, tuple)) else [found]
        ends.append(getattr(text_config, "sep_token_id", None))
        return sorted({int(i) for i in ends if i is not None})

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        """The model's inputs for pictures, exactly as the processor stored with the model makes them:
        ``pixel_values`` (one tensor) for a model without a prompt, else a dict of tensors."""
        return self.inputs(images)

    def collate(self, items: Sequence[Any]) -> Any:
        """One batch from the inputs of single pictures (see :func:`medblip_dicom.modelinputs.collate`)."""
        return collate(items, self.inputs.pad_token_id)

    @torch.inference_mode()
    def generate(self, inputs: Any, settings: GenerationSettings | None = None) -> list[str]:
        """Caption a batch of model inputs (:meth:`preprocess`'s); returns one stripped caption per picture.

        Only the tokens the model generated become the caption: a decoder-only model's output
        starts with its prompt, which is cut off.
        """
        settings = settings or self.settings
        kwargs = settings.generate_kwargs()
        kwargs["suppress_tokens"] = self._suppressed_token_ids
        if isinstance(inputs, Mapping):
            batch = to_device(inputs, self.device, self.dtype)
            out = self.model.generate(**batch, **kwargs)
            prompt = batch.get("input_ids")
            if prompt is not None and out.shape[1] >= prompt.shape[1] and torch.equal(out[:, :prompt.shape[1]], prompt):
                out = out[:, prompt.shape[1]:]
        else:
            pixel_values = inputs.to(device=self.device, dtype=self.dtype)
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
    """A loaded model, its processor, the settings it generates with and its identity.

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
        prompt: str | None = None,
    ) -> Captioner:
        """Load a model directory (or a base model + LoRA adapter export) or a cached hub id.

        Any architecture transformers loads with ``AutoModelForImageTextToText`` is served
        (:mod:`medblip_dicom.families`). The load is strict (:mod:`medblip_dicom.modelload`): a
        directory holding an architecture we cannot serve, or weights that are missing, unused or of
        the wrong shape, is refused. `prompt` is the instruction for a model that takes one
        (default: the provenance's, else :data:`~medblip_dicom.families.DEFAULT_PROMPT`); giving one
        to a model that takes none is refused. Raises :class:`~medblip_dicom.errors.ModelLoadError`
        with one sentence saying what to do when the model is not there (for example a hub id that
        is not cached and no network) or is not the model it claims to be.
        """
        source = os.fspath(model)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        local = Path(source).expanduser()
        if local.exists() and not local.is_dir():
            raise ModelLoadError(f"model {source!r} is a file; pass the directory written by save_pretrained")
        if not local.exists() and _looks_like_path(source):
            raise ModelLoadError(f"model directory {source!r} does not exist")
        where = str(local) if local.is_dir() else source
        directory = local if local.is_dir() else None

        def _load(local_only: bool) -> tuple[LoadedModel, str | None]:
            before = _weights_fingerprint(source, directory)
            return load_model(where, source, local_files_only=local_only), before

        try:
            try:
                loaded, fingerprint = _load(local_only=True)
            except OSError:
                if local.is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
                    raise
                loaded, fingerprint = _load(local_only=False)
        except (OSError, ValueError) as exc:
            if local.is_dir():
                raise ModelLoadError(
                    f"{source} is not a usable model directory ({_first_line(exc)}); it must hold "
                    "config.json, model.safetensors and the processor files written by save_pretrained"
                ) from None
            raise ModelLoadError(
                f"model {source!r} is not a local directory and is not in the Hugging Face cache, and it "
                "could not be downloaded (offline?); pass --model /path/to/model-dir, a directory "
                "written by save_pretrained (model + processor)"
            ) from None

        net = loaded.model
        chosen = resolve_prompt(loaded.model_type, loaded.architecture, source, given=prompt,
                                recorded=read_provenance(directory).get("prompt"))
        identity = _identity(net, source, directory, fingerprint, architecture=loaded.architecture, prompt=chosen)
        net.eval()
        if torch_device.type != "cpu" or torch_dtype != torch.float32:
            # The weights themselves are cast: half the memory and no per-op casts (see above).
            net.to(device=torch_device, dtype=torch_dtype)
        logger.info(
            "loaded model %s (%s, version %s, sha256 %s…) on %s as %s%s",
            identity.name, loaded.architecture, identity.version, identity.weights_sha256[:12], torch_device,
            str(torch_dtype).split(".")[-1], " with a prompt" if chosen else "",
        )
        return cls(net, loaded.processor, torch_device, torch_dtype, settings or GenerationSettings(), prompt=chosen,
                   identity=identity)


def load_inputs(model: str | os.PathLike[str], *, prompt: str | None = None) -> InputBuilder:
    """The model's input builder without its weights: its processor and prompt, as :meth:`Captioner.load`
    makes them (for processes that prepare pictures for a model loaded elsewhere, e.g. Ray's tasks).

    Only local files are read (a directory or a cached hub id). Raises ModelLoadError for a model
    we cannot serve or a prompt it cannot take; ``OSError``/``ValueError`` when nothing is there.
    """
    source = os.fspath(model)
    local = Path(source).expanduser()
    directory = local if local.is_dir() else None
    where = str(local) if directory is not None else source
    model_type, architecture = model_kind(where, source, local_files_only=True)
    processor = load_processor(where, source, model_type, local_files_only=True)
    chosen = resolve_prompt(model_type, architecture, source, given=prompt,
                            recorded=read_provenance(directory).get("prompt"))
    return InputBuilder.for_prompt(processor, chosen)


def _looks_like_path(source: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else that does not exist is a missing folder."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or source.endswith("/")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _weights_fingerprint(source: str, directory: Path | None) -> str | None:
    """The digest cache's key for the weight files `source` loads from (see :mod:`.digestcache`).

    An adapter export loads from two places, the adapter's folder and its base model's: the key
    covers both, so that a changed base model is never certified by an old entry.
    """
    own = digestcache.fingerprint(directory if directory is not None else _hub_snapshot(source))
    if own is None or not is_adapter_dir(directory):
        return own
    try:
        base = adapter_base(directory)  # type: ignore[arg-type]
    except ModelLoadError:
        return None
    base_dir = Path(base).expanduser()
    inner = _weights_fingerprint(base, base_dir if base_dir.is_dir() else None)
    return None if inner is None else hashlib.sha256(f"{own}\n{inner}".encode()).hexdigest()


def _identity(net: Any, source: str, directory: Path | None, before: str | None, *, architecture: str,
              prompt: str) -> ModelIdentity:
    """The loaded model's identity; its weights digest comes from the cache when the files are unchanged.

    `before` is the files' fingerprint taken before the (strict) load. The cache is used, and
    written, only when the fingerprint after the load is the same: files replaced while loading
    would otherwise certify weights that did not produce the captions. An adapter export whose
    merged weights are not those its provenance records (its base model changed) is refused.
    """
    after = _weights_fingerprint(source, directory)
    key = after if after is not None and after == before else None
    digest = digestcache.lookup(key)
    if digest is None:
        digest = weights_digest(net)
        recorded = read_provenance(directory).get("weights_sha256") if is_adapter_dir(directory) else None
        if isinstance(recorded, str) and recorded != digest:
            raise ModelLoadError(
                f"{source} is an adapter whose base model no longer holds the weights it was trained on (merged "
                f"weights sha256 {digest[:12]}…, exported as {recorded[:12]}…); restore the base model or "
                "export merged weights")
        digestcache.store(key, digest, source)
    else:
        logger.debug("weights digest of %s from the cache", source)
    return model_identity(source, directory, digest, getattr(net.config, "_commit_hash", None),
                          architecture=architecture, prompt=prompt)


def _hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot folder of a hub model (where its weight files are), or an empty path."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - no snapshot: the digest is computed, not cached
        return Path()
