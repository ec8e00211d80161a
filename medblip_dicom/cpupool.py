"""The pipeline's CPU side in worker processes, for hosts where the model is faster than one core.

:func:`~medblip_dicom.api.caption_dicoms` prepares images (read, decode, window, preprocess) in
threads and builds SRs in the calling thread. Much of that is Python (pydicom, highdicom) and holds
the interpreter lock, so threads stop scaling: with a model that answers at once, 2 prepare
threads reached 24 images/s on a 2-core machine where 2 processes reached 36 (bench/RESULTS.md).
On a GPU, which captions hundreds of images a second, the CPU side is the bottleneck.

A :class:`CpuPool` runs both ends in ``spawn`` processes: each loads only the model's processor
(no weights, no GPU), prepares sources and builds and writes SRs; the calling process only batches
and runs the model. Pass it as ``caption_dicoms(..., pool=pool)``; results, order and failures
are the same as without it. Create it once and reuse it: starting a process costs seconds.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from medblip_dicom.captioner import Captioner, GenerationSettings, ModelIdentity

# -- in the pool's processes ---------------------------------------------------------------------

_PROCESSOR: Any = None


class _ProcessorOnly:
    """What preparing needs of a captioner: its processor."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def preprocess(self, images: list[Any]) -> torch.Tensor:
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]


class _IdentityOnly:
    """What building a report needs of a captioner: the model's identity."""

    def __init__(self, identity: ModelIdentity) -> None:
        self.identity = identity


def _init(processor: Any) -> None:
    global _PROCESSOR
    torch.set_num_threads(1)  # one process per core; the model's threads are in the caller
    _PROCESSOR = _ProcessorOnly(processor)


def _prepare_remote(source: Any, frame: int | None) -> Any:
    from medblip_dicom.api import _prepare, _Prepared

    out = _prepare(source, frame, _PROCESSOR)
    if isinstance(out, _Prepared):  # plain bytes over the pipe, not torch's shared-memory handles
        out.pixel_values = out.pixel_values.numpy()
    return out


def _finish_remote(item: Any, caption: str, identity: ModelIdentity, output_dir: str | None) -> Any:
    from medblip_dicom.api import _finish

    return _finish(item, caption, _IdentityOnly(identity), output_dir)  # type: ignore[arg-type]


def _warm(_: int) -> int:
    time.sleep(0.2)  # long enough that each warm-up task lands in a process of its own
    return os.getpid()


# -- in the calling process ----------------------------------------------------------------------


class CpuPool:
    """`processes` spawn processes that prepare sources and build SRs for one captioner's model."""

    def __init__(self, captioner: Captioner, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = processes
        self.identity = captioner.identity
        self._executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init, initargs=(captioner.processor,))

    def warm_up(self) -> None:
        """Start every process now (they start lazily otherwise, on the first images)."""
        list(self._executor.map(_warm, range(self.processes)))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CpuPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def caption(self, sources: Iterable[Any], captioner: Captioner, *, frame: int | None, batch_size: int,
                generation: GenerationSettings | None, output_dir: str | os.PathLike[str] | None) -> Iterator[Any]:
        """The body of ``caption_dicoms(..., pool=self)``: outcomes in source order."""
        from medblip_dicom.api import CaptionFailure, _Prepared

        out = os.fspath(output_dir) if output_dir is not None else None
        lookahead = max(2 * batch_size, 4 * self.processes)
        preparing: deque[Future[Any]] = deque()
        finishing: deque[Future[Any] | CaptionFailure] = deque()
        slots: list[Any] = []
        it = iter(sources)
        exhausted = False

        def run_batch(batch: list[Any]) -> None:
            ready = [s for s in batch if isinstance(s, _Prepared)]
            captions: list[str] = []
            if ready:
                started = time.perf_counter()
                captions = captioner.generate(torch.cat([p.pixel_values for p in ready]), generation)
                for p in ready:
                    p.timings["caption_s"] = (time.perf_counter() - started) / len(ready)
            by_id = {id(p): c for p, c in zip(ready, captions)}
            for slot in batch:
                if isinstance(slot, CaptionFailure):
                    finishing.append(slot)
                else:
                    light = dataclasses.replace(slot, pixel_values=None)  # the report needs no pixels
                    finishing.append(self._executor.submit(_finish_remote, light, by_id[id(slot)], self.identity, out))

        def done(entry: Future[Any] | CaptionFailure, block: bool) -> bool:
            return block or isinstance(entry, CaptionFailure) or entry.done()

        def drain(block: bool) -> Iterator[Any]:
            while finishing and done(finishing[0], block or len(finishing) > lookahead):
                entry = finishing.popleft()
                yield entry if isinstance(entry, CaptionFailure) else entry.result()

        while True:
            while not exhausted and len(preparing) < lookahead:
                try:
                    preparing.append(self._executor.submit(_prepare_remote, next(it), frame))
                except StopIteration:
                    exhausted = True
            if not preparing:
                break
            slot = preparing.popleft().result()
            if isinstance(slot, _Prepared):
                slot.pixel_values = torch.from_numpy(np.asarray(slot.pixel_values))
            slots.append(slot)
            if sum(isinstance(s, _Prepared) for s in slots) >= batch_size:
                run_batch(slots)
                slots = []
            yield from drain(block=False)
        run_batch(slots)
        yield from drain(block=True)
