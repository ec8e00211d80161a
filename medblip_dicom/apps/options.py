"""The flags several subcommands share, each declared once: model, generation, frame, selection, inputs.

``medblip caption``, ``batch``, ``pull`` and the services (``watch``, ``node``) each add the groups
they need, so a flag is spelled, defaulted and explained the same way wherever it appears:

- :func:`add_model`: ``--model/-m``, ``--prompt``, ``--device``, ``--dtype``, ``--batch-size``. The services
  take them ``from_config``: no default of their own, the TOML file's ``[model]`` and ``[worker]``
  values apply unless a flag is given.
- :func:`add_generation`: ``--num-beams``, ``--max-new-tokens``, ``--min-new-tokens``,
  ``--no-repeat-ngram-size``; :func:`generation_settings` checks them (one set of checks, in
  :class:`~medblip_dicom.generation.GenerationSettings`).
- :func:`add_frame`: ``--frame``, which frame of a multi-frame image becomes the model's picture.
- :func:`add_selection`: ``--per-series`` and ``--select FILE``; :func:`select_config` reads them.
- :func:`iter_inputs`: the files under the paths given (folders walked recursively).

Nothing heavy is imported here: ``medblip --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medblip_dicom.generation import GenerationSettings  # light: a dataclass, no torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from medblip_dicom.selection import SelectConfig

#: The compute precisions ``--dtype`` (and ``[model] dtype``) accept.
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: Default images per model call, where the command has no configuration file.
DEFAULT_BATCH_SIZE = 8

MODEL_HELP = ("model directory (save_pretrained: model + processor; BLIP or any image-to-text family, "
              "medblip doctor lists them) or a cached hub id")
PROMPT_HELP = ("instruction for a model that takes one (vision-language models; default: the model's "
               "provenance, else \"Describe this radiology image in one sentence.\"); recorded in every SR")
DEVICE_HELP = "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps"
DTYPE_HELP = "compute precision"


def add_model(parser: argparse.ArgumentParser, *, required: bool = True, from_config: bool = False,
              note: str = "") -> None:
    """``--model/-m``, ``--prompt``, ``--device``, ``--dtype`` and ``--batch-size``: which model captions
    (asked what), where, how many at once.

    `from_config`: the flags only override the configuration file (their default is None and their
    help names the key they override). `note` is appended to ``--model``'s help (batch: every Ray
    worker must read the model).
    """
    def key(name: str) -> str:
        return f" ({name})" if from_config else ""

    parser.add_argument("--model", "-m", required=required, default=None,
                        help=MODEL_HELP + (f"; {note}" if note else "") + key("[model] path"))
    parser.add_argument("--prompt", default=None, help=PROMPT_HELP + key("[model] prompt"))
    parser.add_argument("--device", default=None if from_config else "auto", help=DEVICE_HELP + key("[model] device"))
    parser.add_argument("--dtype", default=None if from_config else "auto", choices=DTYPES,
                        help=DTYPE_HELP + (key("[model] dtype") or " (auto: bf16/fp16 where the device supports it)"))
    parser.add_argument("--batch-size", type=int, default=None if from_config else DEFAULT_BATCH_SIZE,
                        help="images per model call " + ("([worker] batch_size)" if from_config
                                                          else f"(default {DEFAULT_BATCH_SIZE})"))


def batch_size_error(args: argparse.Namespace) -> str | None:
    """The sentence saying ``--batch-size`` is unusable, or None (None, from a configuration, is fine)."""
    if args.batch_size is not None and args.batch_size < 1:
        return "--batch-size must be >= 1"
    return None


def add_generation(parser: argparse.ArgumentParser) -> None:
    """``--num-beams``, ``--max-new-tokens``, ``--min-new-tokens``, ``--no-repeat-ngram-size``.

    Defaults are :class:`~medblip_dicom.generation.GenerationSettings`'s, the ones the services'
    ``[model]`` section has too.
    """
    d = GenerationSettings()
    parser.add_argument("--num-beams", type=int, default=d.num_beams,
                        help=f"beam search width; 1 = greedy (default {d.num_beams})")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                        help=f"longest caption in tokens (default {d.max_new_tokens})")
    parser.add_argument("--min-new-tokens", type=int, default=d.min_new_tokens,
                        help=f"shortest caption in tokens (default {d.min_new_tokens})")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=d.no_repeat_ngram_size,
                        help=f"repetition guard: never repeat an n-gram of this size; 0 = off "
                        f"(default {d.no_repeat_ngram_size})")


def generation_keywords(args: argparse.Namespace) -> dict[str, int]:
    """The generation flags as keyword arguments of :class:`~medblip_dicom.generation.GenerationSettings`."""
    return {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens,
            "min_new_tokens": args.min_new_tokens, "no_repeat_ngram_size": args.no_repeat_ngram_size}


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The settings the generation flags describe; ValueError naming the setting when one cannot work."""
    return GenerationSettings(**generation_keywords(args))


def add_frame(parser: argparse.ArgumentParser) -> None:
    """``--frame``: which frame of a multi-frame image becomes the model's picture."""
    parser.add_argument("--frame", type=int, default=None,
                        help="0-based frame of multi-frame images (default: the middle frame)")


def add_selection(parser: argparse.ArgumentParser) -> None:
    """``--per-series`` and ``--select FILE``: what gets captioned (:mod:`medblip_dicom.selection`)."""
    parser.add_argument("--per-series", choices=["representative", "each"], default=None,
                        help="one caption per series (representative, the default) or per image (each)")
    parser.add_argument("--select", type=Path, default=None, metavar="FILE",
                        help="TOML file whose [select] table holds the rules and per_series")


def select_config(args: argparse.Namespace) -> SelectConfig:
    """The ``[select]`` table of ``--select`` (if any) with ``--per-series`` on top.

    Raises ValueError (naming the file) for a file that is not TOML or a table that cannot work,
    OSError for a file that cannot be read.
    """
    import dataclasses
    import tomllib

    from medblip_dicom.selection import config_from_mapping

    path: Path | None = args.select
    table = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                table = tomllib.load(fh).get("select", {})
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
    try:
        config = config_from_mapping(table)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}" if path is not None else str(exc)) from None
    return dataclasses.replace(config, per_series=args.per_series) if args.per_series else config


def iter_inputs(paths: Sequence[str]) -> Iterator[tuple[str, bool]]:
    """Yield ``(path, named)`` for every file under `paths`; `named` is True for files given directly.

    Folders are walked recursively in sorted order; hidden files and folders are skipped. A file
    named on the command line that cannot be captioned counts as failed; a non-image found in a
    folder counts as skipped (the caller decides, from `named`).
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield os.path.join(root, name), False
        else:
            yield raw, True
