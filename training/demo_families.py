"""Build models of the other families locally, from a config and a word-level vocabulary, without any download.

The family tests and the GPU benchmark need real models of each family :mod:`medblip_dicom.families`
serves, with real processors and chat templates, but nothing may be fetched from a model hub.
:func:`build_family_model` builds one with random (seeded) weights and saves model + processor with
``save_pretrained``, so it loads through the same path as a downloaded or fine-tuned checkpoint:

- ``git``: GIT (an encoder-decoder-style captioner without a prompt), BLIP's WordPiece vocabulary;
- ``paligemma``: PaliGemma (decoder-only; no chat template, the processor places the image);
- ``idefics3``: Idefics3 in SmolVLM's layout (decoder-only; SmolVLM's chat template);
- ``gemma3``: Gemma 3 (decoder-only; Gemma's chat template), MedGemma's architecture.

The decoder-only families get a word-level vocabulary of the shipped ROCO captions plus the
family's special tokens (:func:`build_word_tokenizer`). Sizes: ``tiny`` (32 px, a few hundred
thousand parameters, for tests), ``small`` (64 px; learns the synthetic set), and the benchmark's
real shapes, ``smolvlm-256m`` (idefics3: SmolVLM-256M's vision and text towers, vocabulary width
and 64 image tokens) and ``gemma3-4b`` (gemma3: Gemma 3 4B / MedGemma 4B's towers, 262,208-token
output layer, 256 image tokens); their captions are noise, their cost is real.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from medblip_dicom.training.demo_model import build_tokenizer, roco_captions

logger = logging.getLogger(__name__)

FAMILIES = ("git", "paligemma", "idefics3", "gemma3")

#: SmolVLM's chat template (as in HuggingFaceTB/SmolVLM-256M-Instruct).
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
#: Gemma 3's chat template, reduced to text and image turns.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}<start_of_turn>{{ role }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_SPECIALS = {
    "paligemma": (["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], dict(bos="<bos>", eos="<eos>", pad="<pad>")),
    "idefics3": (["<|endoftext|>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<image>",
                  "<fake_token_around_image>", "<global-img>"],
                 dict(bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>")),
    "gemma3": (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                "<end_of_image>", "<image_soft_token>"], dict(bos="<bos>", eos="<eos>", pad="<pad>")),
}

_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
_SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
#: (vision tower, text tower, image size, patch size) of each size.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"vision": _TINY, "text": dict(_TINY, num_hidden_layers=2, num_key_value_heads=1, head_dim=16),
             "image": 32, "patch": 8},
    "small": {"vision": _SMALL, "text": dict(_SMALL, num_key_value_heads=1, head_dim=32), "image": 64, "patch": 16},
    "smolvlm-256m": {"vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                    num_attention_heads=12),
                     "text": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                  num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                                  rope_theta=100000.0, tie_word_embeddings=True),
                     "image": 512, "patch": 16, "vocab": 49280, "scale_factor": 4},
    "gemma3-4b": {"vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                 num_attention_heads=16),
                  "text": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                               num_key_value_heads=4, head_dim=256, sliding_window=1024,
                               query_pre_attn_scalar=256, max_position_embeddings=131072),
                  "image": 896, "patch": 14, "vocab": 262208, "mm_tokens": 256},
}


def build_word_tokenizer(captions: list[str], specials: list[str], *, bos: str, eos: str, pad: str,
                         pad_to: int | None = None, named: dict[str, str] | None = None) -> Any:
    """A lower-cased word-level tokenizer of `captions` with `specials` first (ids 0..), as a
    ``PreTrainedTokenizerFast``; with `pad_to`, ``<unusedN>`` words fill the vocabulary to that width.
    `named` gives special tokens the names a processor looks them up by (Gemma 3's ``boi_token``)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    words = Counter(w for caption in captions for w, _ in split.pre_tokenize_str(caption.lower()))
    vocab = {token: i for i, token in enumerate(specials)}
    for word, _n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        vocab.setdefault(word, len(vocab))
    for i in range(max(0, (pad_to or 0) - len(vocab))):
        vocab[f"<unused{i}>"] = len(vocab)
    model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    model.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, bos_token=bos, eos_token=eos, pad_token=pad,
                                        unk_token="<unk>", extra_special_tokens=named or {})
    extra = [t for t in specials if t not in (bos, eos, pad, "<unk>")]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def make_family_model(family: str, *, size: str = "tiny", seed: int = 0, captions: list[str] | None = None,
                      device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """A randomly initialised `family` model and its processor, in memory (module docstring).

    `device` and `dtype` build the benchmark's large models where they will run (a GPU, bfloat16).
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    torch.manual_seed(seed)
    with torch.device(device):
        model, processor = _BUILDERS[family](SIZES[size], captions if captions is not None else roco_captions())
    if dtype is not None:
        model.to(dtype)
    return model, processor


def build_family_model(out_dir: str | os.PathLike[str], family: str, *, size: str = "tiny", seed: int = 0,
                       captions: list[str] | None = None) -> Path:
    """Build a randomly initialised `family` model + processor and save it to `out_dir` (module docstring).

    Returns the model directory, loadable by :meth:`medblip_dicom.captioner.Captioner.load`.
    """
    model, processor = make_family_model(family, size=size, seed=seed, captions=captions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    logger.info("built %s %s model (%d parameters) in %s", size, family, sum(p.numel() for p in model.parameters()), out)
    return out


def _git(dims: dict[str, Any], captions: list[str]) -> tuple[Any, Any]:
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp, captions, 3000)
    vocab = tokenizer.get_vocab()
    size = dims["image"]
    config = GitConfig(vision_config=dict(dims["vision"], image_size=size, patch_size=dims["patch"]),
                       **{k: v for k, v in dims["text"].items() if k in ("hidden_size", "intermediate_size",
                                                                         "num_hidden_layers", "num_attention_heads")},
                       vocab_size=len(vocab), bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"],
                       pad_token_id=vocab["[PAD]"])
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return GitForCausalLM(config), GitProcessor(image_processor=images, tokenizer=tokenizer)


def _text(dims: dict[str, Any], tokenizer: Any, vocab: int, **extra: Any) -> dict[str, Any]:
    return dict(dims["text"], vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, **extra)


def _paligemma(dims: dict[str, Any], captions: list[str]) -> tuple[Any, Any]:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    specials, named = _SPECIALS["paligemma"]
    tokenizer = build_word_tokenizer(captions, specials, pad_to=dims.get("vocab"), **named)
    size, patch = dims["image"], dims["patch"]
    images = SiglipImageProcessor(size={"height": size, "width": size})
    images.image_seq_length = (size // patch) ** 2
    text = {k: v for k, v in _text(dims, tokenizer, len(tokenizer)).items() if k != "sliding_window"}
    config = PaliGemmaConfig(vision_config=dict(dims["vision"], image_size=size, patch_size=patch),
                             text_config=dict(text, model_type="gemma"),
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                             projection_dim=dims["text"]["hidden_size"])
    return PaliGemmaForConditionalGeneration(config), PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer)


def _idefics3(dims: dict[str, Any], captions: list[str]) -> tuple[Any, Any]:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    specials, named = _SPECIALS["idefics3"]
    tokenizer = build_word_tokenizer(captions, specials, pad_to=dims.get("vocab"), **named)
    size, patch, scale = dims["image"], dims["patch"], dims.get("scale_factor", 2)
    images = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": size},
                                    max_image_size={"longest_edge": size})
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer,
                                  image_seq_len=(size // patch) ** 2 // scale ** 2, chat_template=SMOLVLM_TEMPLATE)
    config = Idefics3Config(vision_config=dict(dims["vision"], image_size=size, patch_size=patch),
                            text_config=dict(_text(dims, tokenizer, len(tokenizer)), model_type="llama"),
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=scale)
    return Idefics3ForConditionalGeneration(config), processor


def _gemma3(dims: dict[str, Any], captions: list[str]) -> tuple[Any, Any]:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    specials, named = _SPECIALS["gemma3"]
    tokenizer = build_word_tokenizer(captions, specials, pad_to=dims.get("vocab"), **named,
                                     named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                            "image_token": "<image_soft_token>"})
    size, patch, mm = dims["image"], dims["patch"], dims.get("mm_tokens", 4)
    images = Gemma3ImageProcessor(size={"height": size, "width": size})
    processor = Gemma3Processor(image_processor=images, tokenizer=tokenizer, image_seq_length=mm,
                                chat_template=GEMMA3_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<start_of_image>", "<end_of_image>", "<image_soft_token>",
                                                           "<end_of_turn>")}
    text = _text(dims, tokenizer, len(tokenizer), **({} if "sliding_window" in dims["text"] else {"sliding_window": 64}))
    config = Gemma3Config(vision_config=dict(dims["vision"], image_size=size, patch_size=patch),
                          text_config=text, mm_tokens_per_image=mm, image_token_index=ids["<image_soft_token>"],
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"])
    model = Gemma3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, ids["<end_of_turn>"]]
    return model, processor


_BUILDERS = {"git": _git, "paligemma": _paligemma, "idefics3": _idefics3, "gemma3": _gemma3}
