"""Text burned into the pixels: refuse the image, or black out the regions a mask recipe names.

No header profile removes a name written into the picture. An image is refused (never written to
the output) when

- its BurnedInAnnotation is ``YES``;
- its modality is one where burned-in text is common (:data:`RISKY_MODALITIES`: ultrasound,
  secondary capture, photographs, endoscopy, other), or it is a Secondary Capture object;
- it is a CR (:data:`UNLESS_DECLARED`) that does not declare ``BurnedInAnnotation NO``,

unless a **mask recipe** the user gives matches it: a deid recipe whose ``%filter`` section
(``LABEL`` criteria on header values, with ``coordinates x0,y0,x1,y1`` or ``all``) names the
regions to black out. deid's own detector and cleaner decide and mask; a matched image is written
with those regions set to 0 and the DICOM code of the Clean Pixel Data Option (113101). The
recipe's correctness is the user's: a region it does not name is not cleaned.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset, FileDataset

from medblip_dicom.deid.errors import DeidentificationError, import_deid

#: Modalities whose images often carry burned-in text (PS3.3 C.7.3.1.1.1 defined terms).
RISKY_MODALITIES = frozenset({"US", "SC", "XC", "ES", "OT", "GM", "SM", "DOC"})
#: Modalities refused unless BurnedInAnnotation says NO (film digitisers and plates burn in labels).
UNLESS_DECLARED = frozenset({"CR"})
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class PixelDecision:
    """Whether an image may leave: ``refused`` (the reason, or None) and the mask regions found."""

    refused: str | None
    regions: tuple[Any, ...] = ()

    @property
    def masked(self) -> bool:
        return bool(self.regions)


def risk(ds: Dataset) -> str | None:
    """Why `ds` may carry burned-in text (None when nothing says so)."""
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if burned == "YES":
        return "BurnedInAnnotation is YES"
    if str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE_PREFIX):
        return "a Secondary Capture image (often a screen with text on it)"
    if modality in RISKY_MODALITIES:
        return f"modality {modality}, where text is often burned into the pixels"
    if modality in UNLESS_DECLARED and burned != "NO":
        return f"modality {modality} without BurnedInAnnotation NO"
    return None


class MaskRecipe:
    """A user's deid recipe with a ``%filter`` section naming regions to black out."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        deid_config = import_deid("deid.config")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise DeidentificationError(f"{self.path}: no such mask recipe (a deid recipe with a %filter section)")
        with _quiet():
            try:
                self.recipe = deid_config.DeidRecipe(deid=self.path, base=False)
            except SystemExit:
                self.recipe = None
        if self.recipe is None or not self.recipe.get_filters():
            raise DeidentificationError(f"{self.path}: not a deid recipe with a %filter section (LABEL criteria with "
                                        "coordinates); see docs/deidentification.md")

    def regions(self, ds: Dataset) -> tuple[Any, ...]:
        """The flagged criteria of `ds` that name regions (deid's detector on the original header)."""
        detect = import_deid("deid.dicom.pixels.detect")
        with _quiet():
            result = detect.has_burned_pixels(as_file_dataset(ds), deid=self.recipe)
        return tuple(r for r in result.get("results", []) if r.get("coordinates"))


def decide(ds: Dataset, mask: MaskRecipe | None) -> PixelDecision:
    """Refuse, mask or pass `ds` (module docstring); read on the original header."""
    reason = risk(ds)
    if reason is None:
        return PixelDecision(None)
    regions = mask.regions(ds) if mask is not None else ()
    if regions:
        return PixelDecision(None, regions)
    suffix = ", and no mask recipe matches it" if mask is not None else " (no mask recipe given)"
    return PixelDecision(f"refused: {reason}{suffix}")


def apply_mask(ds: Dataset, decision: PixelDecision) -> None:
    """Black out the regions of `decision` in `ds`'s pixels (deid's cleaner), stored uncompressed."""
    clean = import_deid("deid.dicom.pixels.clean")
    with _quiet():
        cleaned = clean.clean_pixel_data(as_file_dataset(ds), {"results": [dict(r) for r in decision.regions]})
    if cleaned is None:
        raise DeidentificationError("the mask recipe matched an image whose pixel array has a shape deid cannot mask")
    photometric = str(ds.PhotometricInterpretation)
    if photometric.startswith("YBR"):
        photometric = "RGB"
    ds.set_pixel_data(cleaned.astype(ds.pixel_array.dtype), photometric, int(ds.get("BitsStored", 8)))


def as_file_dataset(ds: Dataset) -> FileDataset:
    """`ds` as the FileDataset deid's pixel functions insist on (the same elements, not a copy of them)."""
    if isinstance(ds, FileDataset):
        return ds
    wrapped = FileDataset("", ds, file_meta=getattr(ds, "file_meta", None), preamble=b"\0" * 128)
    return wrapped


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """deid's messages go to stdout and stderr and may quote header values: swallowed here."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
