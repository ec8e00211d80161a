"""The one data flow, as stages: prepare -> caption (in batches) -> finish.

- :func:`prepare` reads, checks, windows and preprocesses one source (CPU; threads or processes).
- The model captions a batch of prepared sources at a time (the calling thread; GPU or CPU).
- :func:`finish` builds one source's SR and, if asked, writes it (CPU).

:func:`run` is the only batching loop. It is given a :class:`Stages`: where preparing and finishing
run (an executor each: inline in the calling thread, a thread pool, or a
:class:`~medblip_dicom.cpupool.CpuPool`'s processes) and the function that captions a batch. It
keeps preparing at most `lookahead` sources ahead of the model and yields one
:class:`CaptionResult`, :class:`CaptionFailure` or :class:`CaptionSkipped` per source, in input
order. A bad source becomes a failure naming it and the reason; it never stops the others. A source
whose SOPInstanceUID an earlier source of the run had is not captioned (its SR would take the
first one's UIDs and path): it is skipped as a ``Duplicate`` naming the first
(:mod:`medblip_dicom.duplicates`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from pydicom.dataset import Dataset

from medblip_dicom.dicomtext import dicom_text
from medblip_dicom.duplicates import DUPLICATE, SeenInstances
from medblip_dicom.errors import DicomReadError, MedblipError, ReportError
from medblip_dicom.identity import ModelIdentity
from medblip_dicom.logsafety import redact
from medblip_dicom.pixels import choose_frame, dataset_to_image
from medblip_dicom.reading import DicomSource, describe, read_image
from medblip_dicom.report import build_report, write_report

_PIXEL_DATA_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


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


@dataclass(frozen=True)
class CaptionSkipped:
    """A source not captioned, and why: selection decided so (:mod:`medblip_dicom.selection`), or its
    SOPInstanceUID was seen before in the run (:mod:`medblip_dicom.duplicates`).

    `conflict` is True for a duplicate whose content differs from the first's: an image that got no
    report of its own (the commands count it as not done).
    """

    source: str
    reason: str
    kind: str  # "rule", "localizer", "not_representative" or "Duplicate"
    conflict: bool = False

    ok = False


Outcome = Union[CaptionResult, CaptionFailure, CaptionSkipped]


@dataclass(frozen=True)
class Annotated:
    """A source whose SR carries a note beside the caption: the representative of a series says so."""

    source: DicomSource
    note: str


@dataclass
class Prepared:
    """A source ready for the model: its header (no pixels) for the report, and the model's input.

    `pixel_values` is the processor's output for one picture (a torch tensor, or a numpy array when
    it crossed a process boundary); it is dropped before finishing.
    """

    label: str
    header: Dataset
    frame_index: int
    pixel_values: Any
    timings: dict[str, float]
    note: str | None = None


def prepare(source: DicomSource | Annotated, frame: int | None,
            preprocess: Callable[[list[Any]], Any]) -> Prepared | CaptionFailure:
    """Read, check, window and preprocess one source; `preprocess` is the model's processor step."""
    note = None
    if isinstance(source, Annotated):
        source, note = source.source, source.note
    label = describe(source)
    try:
        t0 = time.perf_counter()
        found = read_image(source)
        label = found.label
        index = choose_frame(found.dataset, frame, label=label)
        t1 = time.perf_counter()
        image = dataset_to_image(found.dataset, index, label=label)
        t2 = time.perf_counter()
        pixel_values = preprocess([image])
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
        # a library's message may quote a value of the data set: the reason goes to logs and reason files
        return CaptionFailure(label, DicomReadError(
            label, f"cannot be read or decoded ({type(exc).__name__}: {redact(str(exc)[:300])})"))
    return Prepared(label, header, index, pixel_values,
                    {"read_s": t1 - t0, "pixels_s": t2 - t1, "preprocess_s": t3 - t2}, note)


def finish(item: Prepared, caption: str, identity: ModelIdentity,
           output_dir: str | os.PathLike[str] | None) -> Outcome:
    """Build (and, with `output_dir`, write) the SR for one captioned source.

    The result's caption is the one the SR holds (machine text by the DICOM text rule), so that
    what is printed, logged or tabled never differs from the report nor holds a control character.
    """
    caption = dicom_text(caption, "UT", what="the caption", machine=True)
    try:
        t0 = time.perf_counter()
        sr = build_report(item.header, caption, identity, frame_index=item.frame_index, label=item.label,
                          note=item.note)
        t1 = time.perf_counter()
        path = None
        if output_dir is not None:
            try:
                path = write_report(sr, output_dir)
            except OSError as exc:
                raise ReportError(item.label, f"cannot write the SR to {output_dir} ({exc})") from None
        t2 = time.perf_counter()
    except MedblipError as exc:
        return CaptionFailure(item.label, exc)
    except Exception as exc:  # noqa: BLE001 - an odd source value tripping the SR builder fails this source only
        return CaptionFailure(item.label, ReportError(
            item.label, f"cannot build its SR ({type(exc).__name__}: {redact(str(exc)[:300])})"))
    timings = dict(item.timings, report_s=t1 - t0, write_s=t2 - t1)
    h = item.header
    return CaptionResult(
        source=item.label, caption=caption, sr=sr, sr_path=path,
        study_instance_uid=str(h.StudyInstanceUID), series_instance_uid=str(h.SeriesInstanceUID),
        sop_instance_uid=str(h.SOPInstanceUID), sr_sop_instance_uid=str(sr.SOPInstanceUID),
        frame_index=item.frame_index, timings=timings,
    )


class InlineExecutor(Executor):
    """Runs each submitted call at once in the calling thread (no pool: ``workers=0``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, as a pool would
            future.set_exception(exc)
        return future


@dataclass(frozen=True)
class Stages:
    """Where each stage runs: `prepare(source)` and `finish(prepared, caption)` are submitted to
    their executors (their arguments must pickle for a process pool); `generate` captions a batch
    of model inputs in the calling thread."""

    prepare: Callable[[DicomSource], Prepared | CaptionFailure]
    finish: Callable[[Prepared, str], CaptionResult | CaptionFailure]
    generate: Callable[[Sequence[Any]], list[str]]
    prepare_executor: Executor
    finish_executor: Executor


def run(sources: Iterable[DicomSource], stages: Stages, *, batch_size: int, lookahead: int) -> Iterator[Outcome]:
    """Caption `sources` through `stages`; yield one outcome per source, in input order.

    At most `lookahead` sources are being prepared ahead of the model, and at most `lookahead`
    finished ones wait to be yielded (a slow consumer holds the pipeline back, not memory). The
    first source of each SOPInstanceUID is captioned; a later one is skipped as a ``Duplicate``
    (decided in input order, when it is prepared).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    preparing: deque[tuple[Future[Prepared | CaptionFailure], DicomSource]] = deque()
    finishing: deque[Future[Outcome]] = deque()
    batch: list[Prepared | CaptionFailure | CaptionSkipped] = []
    seen = SeenInstances()
    position = 0
    it = iter(sources)
    exhausted = False

    def caption_batch() -> None:
        ready = [s for s in batch if isinstance(s, Prepared)]
        captions: list[str] = []
        if ready:
            started = time.perf_counter()
            captions = stages.generate([p.pixel_values for p in ready])
            per_image = (time.perf_counter() - started) / len(ready)
            for p in ready:
                p.timings["caption_s"] = per_image
        by_id = {id(p): c for p, c in zip(ready, captions, strict=True)}
        for slot in batch:
            if not isinstance(slot, Prepared):
                done: Future[Outcome] = Future()
                done.set_result(slot)
                finishing.append(done)
            else:
                light = dataclasses.replace(slot, pixel_values=None)  # the report needs no pixels
                finishing.append(stages.finish_executor.submit(stages.finish, light, by_id[id(slot)]))
        batch.clear()

    def drain(block: bool) -> Iterator[Outcome]:
        while finishing and (block or len(finishing) > lookahead or finishing[0].done()):
            yield finishing.popleft().result()

    def first_of_its_uid(item: Prepared | CaptionFailure,
                         source: DicomSource) -> Prepared | CaptionFailure | CaptionSkipped:
        """`item` as it is, or skipped when an earlier source of the run had its SOPInstanceUID."""
        if not isinstance(item, Prepared):
            return item
        raw = source.source if isinstance(source, Annotated) else source
        duplicate = seen.check(str(item.header.get("SOPInstanceUID", "") or ""), item.label, raw, position)
        if duplicate is None:
            return item
        return CaptionSkipped(item.label, duplicate.reason, DUPLICATE, conflict=duplicate.conflict)

    while True:
        while not exhausted and len(preparing) < lookahead:
            try:
                source = next(it)
            except StopIteration:
                exhausted = True
            else:
                preparing.append((stages.prepare_executor.submit(stages.prepare, source), source))
        if not preparing:
            break
        future, source = preparing.popleft()
        position += 1
        batch.append(first_of_its_uid(future.result(), source))
        if sum(isinstance(s, Prepared) for s in batch) >= batch_size:
            caption_batch()
        yield from drain(block=False)
    caption_batch()
    yield from drain(block=True)
