"""The Encapsulated PDF of a signed report (``[output] pdf``), made when it is signed.

Viewers such as OHIF list but do not draw a TID 2000 SR, so with ``[output] pdf`` the AI report goes
out with a PDF page saying *AI-generated, UNVERIFIED*. Once a radiologist signs, the viewer must
show what she signed, not only that preliminary page: each signed version (the first and every
amendment) gets its own PDF, in the signed-report PDF series, delivered in the same job as the
signed SR. The page shows the source frame the AI report referenced when the source is still kept
under review (``[review] keep_sources``), and says the image is not at hand otherwise.

A PDF that cannot be made is logged and the signed SR goes alone, as the worker does for AI
reports: the SR is the record, the PDF a rendering of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from medblip_dicom.errors import MedblipError
from medblip_dicom.fileio import atomic_write_bytes
from medblip_dicom.report_view import CaptionReport

from medblip_dicom.integrations.review.signing import document_name, encode

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


def check_pdf_support() -> None:
    """Fail at start, not at the first signature, when reportlab or the fonts are missing
    (:class:`~medblip_dicom.errors.MissingDependencyError`)."""
    from medblip_dicom.pdf_fonts import register_fonts

    register_fonts()


def write_signed_pdf(root: Path, sr: Dataset, ai_sr: Dataset, source: Path) -> list[str]:
    """Write the PDF of the signed report `sr` under ``root/review/signed/`` (atomically, before the
    signature commits: recovery removes it with an uncommitted signature); its spool path, or none
    when it cannot be made."""
    document = signed_pdf(sr, ai_sr, source)
    if document is None:
        return []
    rel = f"review/signed/{document_name(document)}"
    atomic_write_bytes(root / rel, encode(document))
    return [rel]


def signed_pdf(sr: Dataset, ai_sr: Dataset, source: Path) -> Dataset | None:
    """The Encapsulated PDF of the signed report `sr`, whose AI report is `ai_sr`, with the frame
    the AI report referenced from `source` (drawn without an image when `source` is gone or cannot
    be read); None, after a warning, when the PDF cannot be made."""
    from medblip_dicom.pdf_report import build_pdf_report

    label = str(sr.SOPInstanceUID)
    try:
        return build_pdf_report(sr, _source_image(ai_sr, source))
    except (MedblipError, ValueError, TypeError, AttributeError, KeyError) as exc:
        logger.warning("signed report %s: no PDF report (%s); the signed SR goes without it", label,
                       type(exc).__name__)
        return None


def _source_image(ai_sr: Dataset, source: Path) -> Image.Image | None:
    """The frame the AI report referenced (its first, 1-based; the middle frame otherwise, as the
    model chose), windowed as the model saw it; None when the source is not at hand."""
    from medblip_dicom.pixels import dataset_to_image
    from medblip_dicom.reading import read_image

    if not source.is_file():
        return None
    frames = CaptionReport.from_dataset(ai_sr).source_frames
    try:
        found = read_image(source)
        return dataset_to_image(found.dataset, frames[0] - 1 if frames else None, label=source.name)
    except (MedblipError, OSError, ValueError) as exc:
        logger.warning("review source %s cannot be drawn (%s); the signed report's PDF has no image",
                       source.name, type(exc).__name__)
        return None
