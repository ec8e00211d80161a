"""DICOM test data: pydicom's and pydicom-data's files, re-issued copies, and SR conformance checks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support.env import require_tool
from tests.support.privacy import PATIENT_ID, PATIENT_NAME


COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def testdata(name: str) -> str:
    """Path of a file from pydicom's test data or the pydicom-data package."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"test file {name} not found; is pydicom-data installed?"
    return str(path)


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The error lines dciodvfy reports for a file (warnings are not errors)."""
    exe = require_tool("dciodvfy")
    # Tools print a file's text in its own character set: decode tolerantly, never crash on it.
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def validate_sr(path: str | Path) -> str:
    """Check an SR file with dciodvfy (zero errors) and dsrdump (reads it); return dsrdump's text."""
    errors = dciodvfy_errors(path)
    assert not errors, f"dciodvfy found errors in {path}:\n" + "\n".join(errors)
    proc = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=60)
    assert proc.returncode == 0, f"dsrdump could not read {path}: {proc.stderr}"
    return proc.stdout


def reissued(td: Any, name: str, folder: Path, **attrs: Any) -> Path:
    """A copy of a test file with a fresh SOPInstanceUID (and any attributes given)."""
    return save_as_new(pydicom.dcmread(td(name)), folder, **attrs)


def save_as_new(ds: Dataset, folder: Path, **attrs: Any) -> Path:
    """Save `ds` into `folder` as ``<UID>.dcm`` under a fresh SOPInstanceUID, with `attrs` set last."""
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in attrs.items():
        setattr(ds, key, value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def load_template(name: str) -> Dataset:
    """A test file as a template: our patient, no trailing padding (so Pixel Data is last)."""
    ds = pydicom.dcmread(testdata(name))
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    for tag in (0xFFFCFFFC,):
        if tag in ds:
            del ds[tag]
    return ds


def reissue(template: Dataset, folder: Path, *, study_uid: str | None = None, name: str | None = None,
            instance_number: int | None = None) -> tuple[Path, str]:
    """Save `template` with a fresh SOPInstanceUID (and series, and the given study); returns (path, uid)."""
    uid = generate_uid()
    template.SOPInstanceUID = uid
    template.file_meta.MediaStorageSOPInstanceUID = uid
    if study_uid is not None:
        template.StudyInstanceUID = study_uid
    if instance_number is not None:
        template.InstanceNumber = instance_number
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{uid}.dcm")
    template.save_as(path, enforce_file_format=True)
    return path, uid


def requested_contexts(files: Iterable[str | Path]) -> list[tuple[str, str]]:
    """Presentation contexts an SCU must propose to send `files` as they are: (SOP class, syntax) pairs,
    one context per syntax (an acceptor picks one syntax per context). Test data names or paths."""
    contexts: list[tuple[str, str]] = []
    for f in files:
        path = f if isinstance(f, Path) or os.path.sep in str(f) else testdata(str(f))
        meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
        for pair in ((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)),
                     (str(meta.MediaStorageSOPClassUID), "1.2.840.10008.1.2.1")):
            if pair not in contexts:
                contexts.append(pair)
    return contexts


def sr_source_uid(sr: Dataset) -> str:
    """The SOPInstanceUID an SR references as its source (read through the project's own SR reader)."""
    from medblip_dicom.report_view import CaptionReport

    return CaptionReport.from_dataset(sr).source_sop_instance_uid


def ct_series(td: Any, folder: Path, count: int, *, shuffle: bool = False, study_uid: str | None = None,
              seed: int = 11) -> list[Path]:
    """A CT series of `count` slices made from CT_small: one new SeriesInstanceUID, distinct positions
    5 mm apart along the slice normal, InstanceNumbers that disagree with the positions (as some
    scanners number them), the test patient; in slice order, or shuffled as a clinic may send them."""
    import random

    import numpy as np

    rng = random.Random(seed)
    template = pydicom.dcmread(td("CT_small.dcm"))
    template.PatientName, template.PatientID = PATIENT_NAME, PATIENT_ID
    template.SeriesInstanceUID = generate_uid()
    if study_uid is not None:
        template.StudyInstanceUID = study_uid
    orientation = np.array([float(v) for v in template.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([float(v) for v in template.ImagePositionPatient])
    numbers = list(range(1, count + 1))
    rng.shuffle(numbers)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.ImagePositionPatient = [f"{v:.3f}" for v in origin + 5.0 * i * normal]
        template.SliceLocation = f"{float(origin @ normal) + 5.0 * i:.3f}"
        template.InstanceNumber = numbers[i]
        path = folder / f"ct-{i:03d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    if shuffle:
        rng.shuffle(paths)
    return paths
