"""The Ray UDFs of a batch job: the library's pipeline stages, one batch (a pandas DataFrame) at a time.

- :func:`read_facts`: header only, the facts selection plans with (:mod:`medblip_dicom.selection`).
- :func:`prepare_batch`: :func:`medblip_dicom.pipeline.prepare` per row (read, decode, window,
  processor, and the prompt of a model given one); the model inputs leave as bytes
  (:func:`encode_inputs`), the header as DICOM bytes, never as pydicom objects (Ray moves columns
  between processes and machines).
- :class:`CaptionActor`: loads the model once (a path given to its constructor) and captions the
  prepared rows of each batch in one model call.
- :func:`write_batch`: :func:`medblip_dicom.pipeline.finish` per captioned row, unless the SR's
  deterministic path already exists: a rerun, or a retried task, never rewrites an SR.

Every error of ours on one row becomes that row's ``status = "failed"`` with the reason; only a dying
process (Ray retries it) or a broken model ends a task. A reason never quotes a value of the data
set, and every stage first makes its worker process log as the command does: other libraries'
records and warnings redacted (:func:`medblip_dicom.logsafety.protect_logs`; Ray sends a worker's
output to the driver's terminal and to its log files).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medblip_dicom.errors import MedblipError, ReportError, SourceError
from medblip_dicom.identity import ModelIdentity
from medblip_dicom.logsafety import protect_logs, redact
from medblip_dicom.pipeline import Annotated, CaptionFailure, Prepared, finish, prepare
from medblip_dicom.reading import read_header
from medblip_dicom.report import report_uids
from medblip_dicom.selection import FACT_KEYWORDS, InstanceFacts

logger = logging.getLogger(__name__)

TIMING_COLUMNS = ("read_s", "pixels_s", "preprocess_s", "caption_s", "report_s", "write_s")


def load_source(path: str) -> str | bytes:
    """What :func:`~medblip_dicom.reading.read_image` gets for a manifest entry: a local path as is,
    a URI (``s3://``, ``gs://``, ``file://``, ...) as the file's bytes, read with pyarrow's file systems."""
    if "://" not in path:
        return path
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    with filesystem.open_input_stream(inner) as fh:
        return fh.read()


def _reason(error: BaseException) -> str:
    """The row's reason: a library's words inside it may quote a value of the data set, withheld."""
    return redact(error.reason if isinstance(error, SourceError) else str(error))


# -- pass 1: facts for selection -----------------------------------------------------------------


def read_facts(batch: pd.DataFrame) -> pd.DataFrame:
    """``facts``: the JSON of each row's :class:`InstanceFacts`, or ``""`` when its header cannot be read
    (the prepare stage then says why)."""
    protect_logs()
    out = []
    for path in batch["path"]:
        try:
            header = read_header(load_source(path), FACT_KEYWORDS)
        except Exception:  # noqa: BLE001 - unreadable here: prepare reports the reason
            header = None
        out.append(json.dumps(InstanceFacts.from_dataset(header).to_dict()) if header is not None else "")
    return pd.DataFrame({"index": batch["index"].to_numpy(), "facts": out})


# -- pass 2: prepare, caption, write --------------------------------------------------------------


@lru_cache(maxsize=2)
def model_inputs(model: str, prompt: str | None = None) -> Any:
    """The model's input builder (processor and prompt, no weights), once per worker process.

    Made by the library's loader (:func:`medblip_dicom.captioner.load_inputs`), the one the
    caption actors' :meth:`~medblip_dicom.captioner.Captioner.load` uses: the same processor, the
    same prompt, the same refusals.
    """
    from medblip_dicom.captioner import load_inputs

    # No torch.set_num_threads here: Ray already gives each task's process OMP_NUM_THREADS = its
    # CPUs, and where a stage runs in the driver (Ray may), a global change would outlive the job.
    return load_inputs(model, prompt=prompt)


def encode_inputs(inputs: Any) -> tuple[bytes, str]:
    """A picture's model inputs as ``(bytes, layout)``: a pixel array as float32 bytes and its shape
    (JSON), a dict of arrays (a model given a prompt) as an ``.npz`` archive and layout ``"npz"``."""
    if isinstance(inputs, dict):
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in inputs.items()})
        return buffer.getvalue(), "npz"
    array = np.ascontiguousarray(inputs, dtype=np.float32)
    return array.tobytes(), json.dumps(list(array.shape))


def decode_inputs(data: bytes, layout: str) -> Any:
    """The inverse of :func:`encode_inputs`, as torch tensors (arrays only: nothing is unpickled)."""
    import torch

    if layout == "npz":
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {k: torch.from_numpy(archive[k].copy()) for k in archive.files}
    return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(json.loads(layout)).copy())


def _header_bytes(header: Any) -> bytes:
    """The header (no pixels) as explicit VR little endian DICOM bytes, for the write stage."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset

    plain = Dataset()
    plain.update(header)  # without file_meta: the SR needs the data set's values only
    buffer = io.BytesIO()
    dcmwrite(buffer, plain, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def prepare_batch(batch: pd.DataFrame, *, model: str, frame: int | None, prompt: str | None = None) -> pd.DataFrame:
    """Prepare each row (columns ``index, path, note``); failed rows carry ``error`` and ``reason``."""
    from medblip_dicom.modelinputs import as_numpy

    protect_logs()
    inputs = model_inputs(model, prompt)

    def preprocess(images: list[Any]) -> Any:
        return as_numpy(inputs(images))

    rows = []
    for index, path, note in zip(batch["index"], batch["path"], batch["note"]):
        row: dict[str, Any] = {"index": int(index), "path": path, "note": note, "error": "", "reason": "",
                               "pixels": b"", "shape": "", "header": b"", "frame_index": 0,
                               "sop_instance_uid": "", "series_instance_uid": ""}
        try:
            source = load_source(path)
            outcome = prepare(Annotated(source, note) if note else source, frame, preprocess)
            if isinstance(outcome, Prepared):
                data, layout = encode_inputs(outcome.pixel_values)
                row.update(pixels=data, shape=layout,
                           header=_header_bytes(outcome.header), frame_index=outcome.frame_index,
                           sop_instance_uid=str(outcome.header.SOPInstanceUID),
                           series_instance_uid=str(outcome.header.SeriesInstanceUID), **outcome.timings)
            else:
                row.update(error=type(outcome.error).__name__, reason=_reason(outcome.error))
        except Exception as exc:  # noqa: BLE001 - an error of ours on one file is its row, not a crash
            row.update(error=type(exc).__name__,
                       reason=f"cannot be prepared ({type(exc).__name__}: {redact(str(exc)[:300])})")
        rows.append(row)
    return pd.DataFrame(rows)


class CaptionActor:
    """A caption worker: the model is loaded once per actor, from `model` (a directory or cached hub id).

    `threads` is the number of CPUs Ray gave the actor (torch uses as many threads). `crash_once`
    is a test hook: the path of a marker file; when it does not exist yet, the first batch creates
    it and the process dies (``os._exit``), as an out-of-memory kill would, so Ray must restart it.
    """

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", threads: int = 1,
                 generation: dict[str, Any] | None = None, crash_once: str | None = None,
                 prompt: str | None = None) -> None:
        import torch

        from medblip_dicom.api import load_captioner
        from medblip_dicom.generation import GenerationSettings

        protect_logs()
        torch.set_num_threads(max(1, int(threads)))
        self.captioner = load_captioner(model, device=device, dtype=dtype, prompt=prompt)
        self.settings = GenerationSettings(**generation) if generation else self.captioner.settings
        self.crash_once = crash_once

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self.crash_once and not os.path.exists(self.crash_once):
            Path(self.crash_once).write_text(str(os.getpid()))
            os._exit(17)
        batch = batch.copy()
        ready = [i for i, err in enumerate(batch["error"]) if not err]
        captions = [""] * len(batch)
        per_image = 0.0
        if ready:
            inputs = [decode_inputs(batch["pixels"].iat[i], batch["shape"].iat[i]) for i in ready]
            started = time.perf_counter()
            for i, text in zip(ready, self.captioner.generate(self.captioner.collate(inputs), self.settings),
                               strict=True):
                captions[i] = text
            per_image = (time.perf_counter() - started) / len(ready)
        identity = self.captioner.identity
        batch["caption"] = captions
        chosen = set(ready)
        batch["caption_s"] = [per_image if i in chosen else 0.0 for i in range(len(batch))]
        batch["identity"] = json.dumps([identity.name, identity.version, identity.weights_sha256, identity.source,
                                        identity.architecture, identity.prompt])
        return batch.drop(columns=["pixels", "shape"])


def write_batch(batch: pd.DataFrame, *, output_dir: str) -> pd.DataFrame:
    """Build and write the SR of each captioned row, unless its deterministic path exists already.

    Returns one result row per input row: ``status`` captioned or failed, ``reason``, ``sr_path``,
    the model's name and version, and the timings.
    """
    from pydicom import dcmread

    protect_logs()  # highdicom warns here, quoting a person name it finds odd
    rows = []
    for rec in batch.to_dict("records"):
        identity = ModelIdentity(*json.loads(rec["identity"]))
        out = {"index": rec["index"], "path": rec["path"], "sop_instance_uid": rec["sop_instance_uid"],
               "series_instance_uid": rec["series_instance_uid"], "status": "failed", "kind": rec["error"],
               "reason": rec["reason"], "sr_path": "", "sr_sop_instance_uid": "", "caption": "",
               "model_name": identity.name, "model_version": identity.version}
        out.update({k: float(rec.get(k) or 0.0) for k in TIMING_COLUMNS})
        if not rec["error"]:
            try:
                header = dcmread(io.BytesIO(rec["header"]), force=True)
                _, sr_uid = report_uids(header, identity)
                target = Path(output_dir) / f"{sr_uid}.dcm"
                if target.exists():  # written by an earlier run or a retried task: never rewritten
                    out.update(status="captioned", kind="", reason="", sr_path=os.fspath(target),
                               sr_sop_instance_uid=sr_uid, caption=rec["caption"])
                else:
                    item = Prepared(rec["path"], header, int(rec["frame_index"]), None, {}, rec["note"] or None)
                    result = finish(item, rec["caption"], identity, output_dir)
                    if isinstance(result, CaptionFailure):
                        out.update(kind=type(result.error).__name__, reason=_reason(result.error))
                    else:
                        out.update(status="captioned", kind="", reason="", sr_path=os.fspath(result.sr_path),
                                   sr_sop_instance_uid=result.sr_sop_instance_uid, caption=result.caption,
                                   report_s=result.timings["report_s"], write_s=result.timings["write_s"])
            except MedblipError as exc:
                out.update(kind=type(exc).__name__, reason=_reason(exc))
            except Exception as exc:  # noqa: BLE001 - one odd header fails its row only
                error = ReportError(rec["path"], f"cannot build its SR ({type(exc).__name__}: {str(exc)[:300]})")
                out.update(kind="ReportError", reason=_reason(error))
        rows.append(out)
    frame = pd.DataFrame(rows)
    frame["done_at"] = time.time()  # wall clock, for the job's steady-state rate (the end of the pipeline)
    return frame
