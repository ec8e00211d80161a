"""The source image as a PNG for the reviewer, through the one pixel path (:mod:`medblip_dicom.pixels`).

``window = "file"`` shows what the model saw (the file's own VOI, else the percentile fallback). For
CT, standard presets replace the window: the preset is set on a shallow copy of the data set (the
source is never changed) and the same modality LUT -> VOI -> 8-bit path runs.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

from medblip_dicom.reading import read_image

#: CT window presets: name -> (center, width) in Hounsfield units.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


def presets_for(modality: str) -> list[str]:
    """The windows offered for a modality: always the file's own, plus the CT presets for CT."""
    return ["file", *CT_PRESETS] if modality.upper() == "CT" else ["file"]


def render_png(path: Path, window: str = "file", *, max_side: int = 2048) -> bytes:
    """PNG bytes of the source at `path` in `window` ("file" or a CT preset name).

    Raises ValueError for an unknown window, and the library's errors for an unreadable file.
    """
    from medblip_dicom.pixels import dataset_to_image

    if window != "file" and window not in CT_PRESETS:
        raise ValueError(f"unknown window {window!r}; choose one of file, {', '.join(CT_PRESETS)}")
    found = read_image(path)
    ds = found.dataset
    if window != "file":
        ds = copy.copy(ds)  # a new element dict: the changes below never reach the source
        for keyword in ("VOILUTSequence", "WindowCenterWidthExplanation", "VOILUTFunction"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.WindowCenter, ds.WindowWidth = CT_PRESETS[window]
    image = dataset_to_image(ds, label=found.label)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
