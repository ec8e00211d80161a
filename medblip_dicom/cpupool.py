"""The pipeline's CPU side in worker processes, for hosts where the model is faster than one core.

:func:`~medblip_dicom.api.caption_dicoms` prepares images (read, decode, window, preprocess) in
threads and builds SRs in the calling thread. Much of that is Python (pydicom, highdicom) and holds
the interpreter lock, so threads stop scaling; on a GPU, which captions hundreds of images a
second, the CPU side becomes the bottleneck (bench/caption_pipeline.py rows d and e measure it).

A :class:`CpuPool` runs both ends in ``spawn`` processes: each loads only the model's processor
(no weights, no GPU), prepares sources and builds and writes SRs; the calling process only batches
and runs the model. Pass it as ``caption_dicoms(..., pool=pool)``; results, order and failures
are the same as without it. Create it once and reuse it: starting a process costs seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from medblip_dicom.identity import ModelIdentity
from medblip_dicom.pipeline import CaptionFailure, Outcome, Prepared, Stages, finish, prepare

if TYPE_CHECKING:
    from medblip_dicom.captioner import Captioner

# -- in the pool's processes ---------------------------------------------------------------------

_INPUTS: Any = None


def _init(inputs: Any) -> None:
    global _INPUTS
    import torch

    torch.set_num_threads(1)  # one process per core; the model's threads are in the caller
    _INPUTS = inputs


def _preprocess(images: list[Any]) -> Any:
    from medblip_dicom.modelinputs import as_numpy

    # plain bytes over the pipe, not torch's shared-memory handles
    return as_numpy(_INPUTS(images))


def _prepare_remote(source: Any, frame: int | None) -> Prepared | CaptionFailure:
    return prepare(source, frame, _preprocess)


def _finish_remote(item: Prepared, caption: str, identity: ModelIdentity, output_dir: str | None) -> Outcome:
    return finish(item, caption, identity, output_dir)


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
                                             initializer=_init, initargs=(captioner.inputs,))

    def warm_up(self) -> None:
        """Start every process now (they start lazily otherwise, on the first images)."""
        list(self._executor.map(_warm, range(self.processes)))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CpuPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stages(self, *, frame: int | None, output_dir: str | None,
               generate: Callable[[Sequence[Any]], list[str]]) -> Stages:
        """The pipeline's stages with both CPU ends in this pool (see :func:`medblip_dicom.pipeline.run`)."""
        return Stages(prepare=partial(_prepare_remote, frame=frame),
                      finish=partial(_finish_remote, identity=self.identity, output_dir=output_dir),
                      generate=generate, prepare_executor=self._executor, finish_executor=self._executor)
