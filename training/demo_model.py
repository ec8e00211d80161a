"""Build BLIP models locally, from a config and a WordPiece vocabulary, without any download.

Tests, benchmarks and the offline quickstart need a real ``BlipForConditionalGeneration`` with a
real processor, but nothing may be fetched from a model hub. :func:`build_blip_model` trains a
WordPiece vocabulary on the ROCO captions shipped with the package, builds a BLIP model of the
requested size with random weights (seeded), and saves model + processor with ``save_pretrained``,
so the result loads through exactly the same path as a fine-tuned checkpoint.

Sizes: ``tiny`` (~150k parameters, 32 px pictures; for tests), ``small`` (~0.6M parameters, 64 px;
learns the synthetic data set in a minute or two on a CPU) and ``base``
(BLIP-base's architecture, 384 px; for speed measurements, its captions are noise).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]

SIZES: dict[str, dict[str, dict[str, int]]] = {
    "tiny": {
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=128),
    },
    "small": {
        "vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=64, patch_size=16),
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=128),
    },
    "base": {
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=384, patch_size=16),
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=512),
    },
}


def roco_captions() -> list[str]:
    """The 3,388 real ROCO captions shipped in ``medblip_dicom/training/roco_captions`` (CC BY / CC0)."""
    text = resources.files("medblip_dicom.training").joinpath("roco_captions/captions.txt").read_text(encoding="utf-8")
    captions = []
    for line in text.splitlines():
        _, _, caption = line.partition("\t")
        if caption.strip():
            captions.append(caption.strip())
    return captions


def build_tokenizer(out_dir: str | os.PathLike[str], captions: Iterable[str], vocab_size: int = 3000,
                    pad_to: int | None = None):
    """Train a lower-cased WordPiece vocabulary on `captions` and return a BLIP-style ``BertTokenizer``.

    Like BLIP's own tokenizer it has ``[DEC]`` as the beginning-of-caption token and ``[SEP]`` as
    the end. With `pad_to`, ``[unusedN]`` entries (as in BERT's vocabulary) fill it up to that size,
    so that a model's output layer has BLIP's real width. The vocabulary is written to
    ``out_dir/vocab.txt``.
    """
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=True, strip_accents=True)
    trainer.train_from_iterator(list(captions), vocab_size=vocab_size, min_frequency=2,
                                special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokens = sorted(trainer.get_vocab(), key=trainer.get_vocab().get)
    tokens += [f"[unused{i}]" for i in range(max(0, (pad_to or 0) - len(tokens)))]
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return BertTokenizer(vocab=str(vocab), do_lower_case=True, bos_token="[DEC]",
                         model_max_length=512)


def build_blip_model(
    out_dir: str | os.PathLike[str],
    *,
    size: str = "tiny",
    captions: Iterable[str] | None = None,
    vocab_size: int = 3000,
    seed: int = 0,
) -> Path:
    """Build a randomly initialised BLIP captioning model + processor and save it to `out_dir`.

    Returns the model directory, loadable by :meth:`medblip_dicom.captioner.Captioner.load` and by
    ``BlipForConditionalGeneration.from_pretrained``.
    """
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # base: BLIP-base's real output width (30524 tokens), so speed measurements are honest
        tokenizer = build_tokenizer(tmp, captions if captions is not None else roco_captions(), vocab_size,
                                    pad_to=30524 if size == "base" else None)
    vocab = tokenizer.get_vocab()
    dims = SIZES[size]
    text = dict(dims["text"], vocab_size=len(vocab), bos_token_id=vocab["[DEC]"], eos_token_id=vocab["[SEP]"],
                sep_token_id=vocab["[SEP]"], pad_token_id=vocab["[PAD]"])
    # BlipVisionConfig's default initializer_range (1e-10) suits loading pretrained weights, not
    # training from scratch: give the vision tower the text tower's 0.02.
    config = BlipConfig(text_config=text, vision_config=dict(dims["vision"], initializer_range=0.02))
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    image_size = dims["vision"]["image_size"]
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    logger.info("built %s BLIP model (%d parameters) in %s", size, sum(p.numel() for p in model.parameters()), out)
    return out
