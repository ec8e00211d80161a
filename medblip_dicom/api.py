"""The Python API: ``caption_dicom`` for one source, ``caption_dicoms`` for many.

Both run the one data flow of :mod:`medblip_dicom.pipeline` (read -> pixels -> captioner ->
report -> file). ``caption_dicoms`` keeps the model busy: reading, decoding, windowing and the
processor's resize/normalise run in a small thread pool ahead of the model (decoders and numpy
release the GIL), or in a :class:`~medblip_dicom.cpupool.CpuPool`'s processes, while the calling
thread generates captions a batch at a time. Results come back in input order, one per source, as
a :class:`CaptionResult` or a :class:`CaptionFailure` that names the source and the reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, Union

from medblip_dicom.captioner import Captioner
from medblip_dicom.duplicates import DUPLICATE, Duplicate, SeenInstances
from medblip_dicom.generation import GenerationSettings
from medblip_dicom.pipeline import (
    Annotated, CaptionFailure, CaptionResult, CaptionSkipped, InlineExecutor, Stages, finish, prepare, run,
)
from medblip_dicom.reading import DicomSource, describe, read_header
from medblip_dicom.report import warm_up
from medblip_dicom.selection import FACT_KEYWORDS, InstanceFacts, SelectConfig, plan, series_note

if TYPE_CHECKING:
    from medblip_dicom.cpupool import CpuPool

__all__ = ["Annotated", "CaptionFailure", "CaptionResult", "CaptionSkipped", "ModelSpec", "caption_dicom",
           "caption_dicoms", "load_captioner"]

#: What ``model=`` accepts: a model directory, a cached hub id, or an already loaded Captioner.
ModelSpec = Union[str, "os.PathLike[str]", Captioner]


@lru_cache(maxsize=2)
def _cached_captioner(model: str, device: str, dtype: str, prompt: str | None) -> Captioner:
    return Captioner.load(model, device=device, dtype=dtype, prompt=prompt)


def load_captioner(model: ModelSpec, *, device: str = "auto", dtype: str = "auto",
                   prompt: str | None = None) -> Captioner:
    """Return `model` if it is a Captioner, else load it (the two most recent loads are cached).

    `prompt` is the instruction for a model that takes one (see :meth:`Captioner.load`).
    """
    if isinstance(model, Captioner):
        return model
    return _cached_captioner(os.fspath(model), str(device), str(dtype), prompt)


def caption_dicom(
    source: DicomSource,
    *,
    model: ModelSpec,
    output_dir: str | os.PathLike[str] | None = None,
    frame: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    generation: GenerationSettings | None = None,
    prompt: str | None = None,
) -> CaptionResult:
    """Caption one DICOM image and build (and optionally write) its Structured Report.

    Parameters
    ----------
    source
        A path, the bytes of a DICOM file, or a pydicom ``Dataset`` (not modified).
    model
        A BLIP model directory written by ``save_pretrained``, a hub id already in the local
        cache, or a loaded :class:`~medblip_dicom.captioner.Captioner`.
    output_dir
        When given, the SR is written there as ``<SR SOPInstanceUID>.dcm`` (atomically).
    frame
        0-based frame of a multi-frame image; default: the middle frame.
    device, dtype
        ``auto`` or explicit (``cpu``, ``cuda``, ``mps``; ``float32``, ``bfloat16``, ``float16``).
    generation
        Beam count, token limits and repetition guard; default :class:`GenerationSettings`.
    prompt
        The instruction for a vision-language model loaded from a path (default: the model's
        provenance, else the project's default prompt); refused for BLIP and GIT. Ignored when
        `model` is already a Captioner, which carries its own.

    Raises
    ------
    MedblipError
        A subclass naming the source and the reason (not DICOM, not an image, cannot decode, ...).
    """
    outcome = next(iter(caption_dicoms([source], model=model, output_dir=output_dir, frame=frame,
                                       device=device, dtype=dtype, generation=generation, batch_size=1,
                                       workers=0, prompt=prompt)))
    if isinstance(outcome, CaptionFailure):
        raise outcome.error
    return outcome


def caption_dicoms(
    sources: Iterable[DicomSource],
    *,
    model: ModelSpec,
    output_dir: str | os.PathLike[str] | None = None,
    frame: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    generation: GenerationSettings | None = None,
    workers: int | None = None,
    pool: CpuPool | None = None,
    select: SelectConfig | None = None,
    prompt: str | None = None,
) -> Iterator[CaptionResult | CaptionFailure | CaptionSkipped]:
    """Caption many sources with batched model calls; yield one outcome per source, in order.

    A bad source yields a :class:`CaptionFailure` and never stops the others. The first source of
    each SOPInstanceUID is captioned; a later one yields a :class:`CaptionSkipped` of kind
    ``Duplicate`` naming the first (its SR would take the first one's UIDs and file), with
    ``conflict=True`` when its content differs (:mod:`medblip_dicom.duplicates`). With `select`
    (:class:`~medblip_dicom.selection.SelectConfig`), the sources are a complete set: the rules and
    one caption per series decide first (reading headers only), and every source not captioned
    yields a :class:`CaptionSkipped` with the reason; the representative's SR notes the series it
    stands for. Without it, every source is captioned (one report per instance). `workers` threads
    (default: CPU count - 1, between 1 and 4; 0 = prepare in the calling thread) read and preprocess
    ahead of the model, at most two batches ahead. With a :class:`~medblip_dicom.cpupool.CpuPool`
    (made for this captioner), its processes prepare the sources and build and write the SRs
    instead (`workers` is then ignored): for a model faster than one CPU core, e.g. on a GPU.
    `prompt` is the instruction for a vision-language model loaded from a path (as in
    :func:`caption_dicom`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if select is not None:
        yield from _caption_selected(list(sources), select, model=model, output_dir=output_dir, frame=frame,
                                     batch_size=batch_size, device=device, dtype=dtype, generation=generation,
                                     workers=workers, pool=pool, prompt=prompt)
        return
    captioner = load_captioner(model, device=device, dtype=dtype, prompt=prompt)

    out = os.fspath(output_dir) if output_dir is not None else None
    if pool is not None:
        stages = pool.stages(frame=frame, output_dir=out, generate=_batch_captioner(captioner, generation))
        yield from run(sources, stages, batch_size=batch_size, lookahead=max(2 * batch_size, 4 * pool.processes))
        return
    if workers is None:
        # one core stays with the model: prepare threads on every core slow the model down more
        # (oversubscription) than they help
        workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    with contextlib.ExitStack() as stack:
        executor = InlineExecutor() if workers == 0 else stack.enter_context(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medblip-prepare"))
        stages = Stages(prepare=partial(prepare, frame=frame, preprocess=captioner.preprocess),
                        finish=partial(finish, identity=captioner.identity, output_dir=out),
                        generate=_batch_captioner(captioner, generation, warm_up_on=executor if workers else None),
                        prepare_executor=executor, finish_executor=InlineExecutor())
        yield from run(sources, stages, batch_size=batch_size, lookahead=2 * batch_size)


def _batch_captioner(captioner: Captioner, generation: GenerationSettings | None, *,
                     warm_up_on: Executor | None = None) -> Callable[[Sequence[Any]], list[str]]:
    """The pipeline's `generate`: one batch of model inputs (tensors or arrays) to captions.

    With `warm_up_on` (the prepare threads), the first call also has highdicom load its tables
    (:func:`medblip_dicom.report.warm_up`) there, while the model captions the first batch (torch
    releases the interpreter lock), instead of in front of the first report.
    """
    warmed: list[Future[None]] = []

    def generate(inputs: Sequence[Any]) -> list[str]:
        if warm_up_on is not None and not warmed:
            warmed.append(warm_up_on.submit(warm_up))
        return captioner.generate(captioner.collate(inputs), generation)

    return generate


def _caption_selected(sources: list[DicomSource], select: SelectConfig, **kwargs: Any) -> Iterator[Any]:
    """`caption_dicoms` for a complete set under selection: duplicates out, plan, then caption the chosen.

    A later source of a SOPInstanceUID is taken out before planning, so that it neither stands for
    a series nor counts in one.
    """
    facts: list[InstanceFacts | None] = []
    duplicates: dict[int, Duplicate] = {}
    seen = SeenInstances()
    for i, src in enumerate(sources):
        raw = src.source if isinstance(src, Annotated) else src
        header = read_header(raw, FACT_KEYWORDS)
        fact = InstanceFacts.from_dataset(header) if header is not None else None
        duplicate = seen.check(fact.sop_instance_uid, describe(raw), raw, i + 1) if fact is not None else None
        if duplicate is not None:
            duplicates[i] = duplicate
            fact = None
        facts.append(fact)
    known = [i for i, f in enumerate(facts) if f is not None and f.sop_instance_uid]
    choices = dict(zip(known, plan([facts[i] for i in known], select)))  # type: ignore[misc]
    chosen: list[Any] = []
    for i, src in enumerate(sources):
        choice = choices.get(i)
        if i in duplicates:
            continue
        if choice is None or choice.caption:  # unreadable ones go on: the pipeline says why
            if choice is not None and choice.series_size > 1 and not isinstance(src, Annotated):
                src = Annotated(src, series_note(choice.facts.series_instance_uid, choice.series_size))
            chosen.append(src)
    outcomes = caption_dicoms(chosen, **kwargs)
    for i, src in enumerate(sources):
        choice = choices.get(i)
        if i in duplicates:
            yield CaptionSkipped(describe(src.source if isinstance(src, Annotated) else src), duplicates[i].reason,
                                 DUPLICATE, conflict=duplicates[i].conflict)
        elif choice is not None and not choice.caption:
            yield CaptionSkipped(describe(src.source if isinstance(src, Annotated) else src), choice.reason,
                                 choice.kind)
        else:
            yield next(outcomes)
