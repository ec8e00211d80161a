"""medblip-dicom: caption radiology DICOM images with BLIP and write DICOM Structured Reports.

The public API is imported lazily so that ``import medblip_dicom`` (and ``medblip --help``) does
not pay for importing torch and transformers::

    from medblip_dicom import caption_dicom
    result = caption_dicom("chest.dcm", model="path/to/model-dir", output_dir="reports/")
    print(result.caption, result.sr_path)

Captions are machine-generated, written as UNVERIFIED, PRELIMINARY reports, and are not for
diagnostic use.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "caption_dicom": "medblip_dicom.api",
    "caption_dicoms": "medblip_dicom.api",
    "CaptionResult": "medblip_dicom.api",
    "CaptionFailure": "medblip_dicom.api",
    "CaptionSkipped": "medblip_dicom.api",
    "SelectConfig": "medblip_dicom.selection",
    "load_captioner": "medblip_dicom.api",
    "Captioner": "medblip_dicom.captioner",
    "GenerationSettings": "medblip_dicom.generation",
    "ModelIdentity": "medblip_dicom.identity",
    "CaptionReport": "medblip_dicom.report_view",
    "dataset_to_image": "medblip_dicom.pixels",
    "dataset_to_array": "medblip_dicom.pixels",
    "read_image": "medblip_dicom.reading",
    "build_report": "medblip_dicom.report",
    "MedblipError": "medblip_dicom.errors",
    "DicomReadError": "medblip_dicom.errors",
    "NotDicomError": "medblip_dicom.errors",
    "InvalidDicomError": "medblip_dicom.errors",
    "NotAnImageError": "medblip_dicom.errors",
    "PixelDecodeError": "medblip_dicom.errors",
    "ModelLoadError": "medblip_dicom.errors",
    "ReportError": "medblip_dicom.errors",
    "SourceError": "medblip_dicom.errors",
    "MissingDependencyError": "medblip_dicom.errors",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from medblip_dicom.api import (
        CaptionFailure, CaptionResult, CaptionSkipped, caption_dicom, caption_dicoms, load_captioner,
    )
    from medblip_dicom.captioner import Captioner
    from medblip_dicom.generation import GenerationSettings
    from medblip_dicom.identity import ModelIdentity
    from medblip_dicom.report_view import CaptionReport
    from medblip_dicom.selection import SelectConfig
    from medblip_dicom.errors import (
        DicomReadError, InvalidDicomError, MedblipError, MissingDependencyError, ModelLoadError, NotAnImageError,
        NotDicomError, PixelDecodeError, ReportError, SourceError,
    )
    from medblip_dicom.pixels import dataset_to_array, dataset_to_image
    from medblip_dicom.reading import read_image
    from medblip_dicom.report import build_report


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medblip_dicom' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
