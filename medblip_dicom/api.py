"""The Python API: ``caption_dicom`` for one source, ``caption_dicoms`` for many.

Both run the one data flow: read -> pixels -> captioner -> report -> file. ``caption_dicoms``
keeps the model busy: reading, decoding, windowing and the processor's resize/normalise run in a
small thread pool ahead of the model (decoders and numpy release the GIL), while the main thread
generates captions a batch at a time. Results come back in input order, one per source, as a
:class:`CaptionResult` or a :class:`CaptionFailure` that names the source and the reason.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from pydicom.dataset import Dataset

from medblip_dicom.captioner import Captioner, GenerationSettings
from medblip_dicom.errors import DicomReadError, MedblipError, ReportError
from medblip_dicom.pixels import choose_frame, dataset_to_image
from medblip_dicom.reading import DicomSource, describe, read_image
from medblip_dicom.report import build_report, write_report

#: What ``model=`` accepts: a model directory, a cached hub id, or an already loaded Captioner.
ModelSpec = Union[str, "os.PathLike[str]", Captioner]

_PIXEL_DATA_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}

if TYPE_CHECKING:
    from medblip_dicom.cpupool import CpuPool


@dataclass(frozen=True)
class CaptionResult:
    """One captioned source: the caption, its SR and where it was written."""

    source: str
    caption: str
    sr: Dataset
    sr_path: Path | None
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sr_sop_instance_uid: str
    frame_index: int
    timings: dict[str, float] = field(default_factory=dict)

    ok = True


@dataclass(frozen=True)
class CaptionFailure:
    """A source that produced no report, with the error that says why."""

    source: str
    error: MedblipError

    ok = False


@dataclass
class _Prepared:
    label: str
    header: Dataset  # the source without its pixel data: all the report needs
    frame_index: int
    pixel_values: torch.Tensor
    timings: dict[str, float]


@lru_cache(maxsize=2)
def _cached_captioner(model: str, device: str, dtype: str) -> Captioner:
    return Captioner.load(model, device=device, dtype=dtype)


def load_captioner(model: ModelSpec, *, device: str = "auto", dtype: str = "auto") -> Captioner:
    """Return `model` if it is a Captioner, else load it (the two most recent loads are cached)."""
    if isinstance(model, Captioner):
        return model
    return _cached_captioner(os.fspath(model), str(device), str(dtype))


def caption_dicom(
    source: DicomSource,
    *,
    model: ModelSpec,
    output_dir: str | os.PathLike[str] | None = None,
    frame: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    generation: GenerationSettings | None = None,
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

    Raises
    ------
    MedblipError
        A subclass naming the source and the reason (not DICOM, not an image, cannot decode, ...).
    """
    outcome = next(iter(caption_dicoms([source], model=model, output_dir=output_dir, frame=frame,
                                       device=device, dtype=dtype, generation=generation, batch_size=1,
                                       workers=0)))
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
) -> Iterator[CaptionResult | CaptionFailure]:
    """Caption many sources with batched model calls; yield one outcome per source, in order.

    A bad source yields a :class:`CaptionFailure` and never stops the others. `workers` threads
    (default: CPU count - 1, between 1 and 4; 0 = prepare in the calling thread) read and preprocess
    ahead of the model, at most two batches ahead. With a :class:`~medblip_dicom.cpupool.CpuPool`
    (made for this captioner), its processes prepare the sources and build and write the SRs
    instead (`workers` is then ignored): for a model faster than one CPU core, e.g. on a GPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    captioner = load_captioner(model, device=device, dtype=dtype)
    if pool is not None:
        yield from pool.caption(sources, captioner, frame=frame, batch_size=batch_size, generation=generation,
                                output_dir=output_dir)
        return
    if workers is None:
        # one core stays with the model: prepare threads on every core slow the model down more
        # (oversubscription) than they help
        workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    lookahead = 2 * batch_size

    def prepare(src: DicomSource) -> _Prepared | CaptionFailure:
        return _prepare(src, frame, captioner)

    def flush(slots: list[_Prepared | CaptionFailure]) -> Iterator[CaptionResult | CaptionFailure]:
        ready = [s for s in slots if isinstance(s, _Prepared)]
        captions: list[str] = []
        if ready:
            started = time.perf_counter()
            captions = captioner.generate(torch.cat([p.pixel_values for p in ready]), generation)
            per_image = (time.perf_counter() - started) / len(ready)
            for p in ready:
                p.timings["caption_s"] = per_image
        by_id = {id(p): c for p, c in zip(ready, captions)}
        for slot in slots:
            if isinstance(slot, CaptionFailure):
                yield slot
            else:
                yield _finish(slot, by_id[id(slot)], captioner, output_dir)

    slots: list[_Prepared | CaptionFailure] = []
    if workers == 0:
        for src in sources:
            slots.append(prepare(src))
            if sum(isinstance(s, _Prepared) for s in slots) >= batch_size:
                yield from flush(slots)
                slots = []
        yield from flush(slots)
        return

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medblip-prepare") as pool:
        pending: deque[Future[_Prepared | CaptionFailure]] = deque()
        it = iter(sources)
        exhausted = False
        while True:
            while not exhausted and len(pending) < lookahead:
                try:
                    pending.append(pool.submit(prepare, next(it)))
                except StopIteration:
                    exhausted = True
            if not pending:
                break
            slots.append(pending.popleft().result())
            if sum(isinstance(s, _Prepared) for s in slots) >= batch_size:
                yield from flush(slots)
                slots = []
        yield from flush(slots)


def _prepare(source: DicomSource, frame: int | None, captioner: Captioner) -> _Prepared | CaptionFailure:
    """Read, check, window and preprocess one source (runs in a worker thread)."""
    label = describe(source)
    try:
        t0 = time.perf_counter()
        found = read_image(source)
        label = found.label
        index = choose_frame(found.dataset, frame, label=label)
        t1 = time.perf_counter()
        image = dataset_to_image(found.dataset, index, label=label)
        t2 = time.perf_counter()
        pixel_values = captioner.preprocess([image])
        t3 = time.perf_counter()
        # Copying the header converts every remaining value: one that breaks its VR (a 6-byte FD,
        # say) fails this source here, not the whole batch.
        header = Dataset()
        if hasattr(found.dataset, "file_meta"):
            header.file_meta = found.dataset.file_meta
        for elem in found.dataset:
            if elem.tag not in _PIXEL_DATA_TAGS:
                header.add(elem)
    except MedblipError as exc:
        return CaptionFailure(label, exc)
    except Exception as exc:  # noqa: BLE001 - a library error on one odd source must not stop the others
        return CaptionFailure(label, DicomReadError(
            label, f"cannot be read or decoded ({type(exc).__name__}: {str(exc)[:300]})"))
    return _Prepared(label, header, index, pixel_values,
                     {"read_s": t1 - t0, "pixels_s": t2 - t1, "preprocess_s": t3 - t2})


def _finish(item: _Prepared, caption: str, captioner: Captioner,
            output_dir: str | os.PathLike[str] | None) -> CaptionResult | CaptionFailure:
    """Build and write the SR for one captioned source."""
    try:
        t0 = time.perf_counter()
        sr = build_report(item.header, caption, captioner.identity, frame_index=item.frame_index, label=item.label)
        t1 = time.perf_counter()
        path = None
        if output_dir is not None:
            try:
                path = write_report(sr, output_dir)
            except OSError as exc:
                raise ReportError(f"{item.label}: cannot write the SR to {output_dir} ({exc})") from None
        t2 = time.perf_counter()
    except MedblipError as exc:
        return CaptionFailure(item.label, exc)
    except Exception as exc:  # noqa: BLE001 - an odd source value tripping the SR builder fails this source only
        return CaptionFailure(item.label, ReportError(
            f"{item.label}: cannot build its SR ({type(exc).__name__}: {str(exc)[:300]})"))
    timings = dict(item.timings, report_s=t1 - t0, write_s=t2 - t1)
    h = item.header
    return CaptionResult(
        source=item.label, caption=caption, sr=sr, sr_path=path,
        study_instance_uid=str(h.StudyInstanceUID), series_instance_uid=str(h.SeriesInstanceUID),
        sop_instance_uid=str(h.SOPInstanceUID), sr_sop_instance_uid=str(sr.SOPInstanceUID),
        frame_index=item.frame_index, timings=timings,
    )
