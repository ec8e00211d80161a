"""The study the pull tests put into an archive: a shuffled multi-slice CT series, a localizer, a CR
(JPEG 2000, as archives keep them) and an SR, of one (invented) patient."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from tests.support.dicom import ct_series, reissued, sr_source_uid
from tests.support.privacy import PATIENT_ID, PATIENT_NAME


@dataclass
class ArchiveStudy:
    """The files of one study, and which instances selection captions among them."""

    study_uid: str
    ct: list[Path]  # in slice order
    localizer: Path
    cr: Path
    sr: Path
    accession: str
    paths: list[Path] = field(default_factory=list)  # every file, in the shuffled order they are stored

    @property
    def middle_ct(self) -> str:
        """The CT slice the one-caption-per-series choice takes: the middle one by position."""
        return _uid(self.ct[len(self.ct) // 2])

    @property
    def captioned(self) -> set[str]:
        """The instances a pull with the default selection captions: the middle CT slice and the CR."""
        return {self.middle_ct, _uid(self.cr)}

    @property
    def images(self) -> int:
        """Every instance but the SR."""
        return len(self.ct) + 2


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def archive_study(td: Any, folder: Path, slices: int = 7, accession: str = "A123456") -> ArchiveStudy:
    """The study's files under `folder` (a new StudyInstanceUID each call)."""
    import random

    study = generate_uid()
    common = {"StudyInstanceUID": study, "PatientID": PATIENT_ID, "PatientName": PATIENT_NAME,
              "AccessionNumber": accession}
    ct = ct_series(td, folder / "ct", slices, study_uid=study)
    for path in ct:  # one accession number for the whole study
        ds = pydicom.dcmread(path)
        ds.AccessionNumber = accession
        ds.save_as(path, enforce_file_format=True)
    localizer = reissued(td, "CT_small.dcm", folder / "localizer", SeriesInstanceUID=generate_uid(),
                         ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesNumber=99, **common)
    cr = reissued(td, "RG3_J2KI.dcm", folder / "cr", SeriesInstanceUID=generate_uid(), **common)
    sr = reissued(td, "test-SR.dcm", folder / "sr", SeriesInstanceUID=generate_uid(), **common)
    paths = [*ct, localizer, cr, sr]
    random.Random(5).shuffle(paths)
    return ArchiveStudy(study, ct, localizer, cr, sr, accession, paths)


def report_sources(srs: list[pydicom.Dataset]) -> set[str]:
    """The source SOPInstanceUIDs of our SRs (the study's own SR, not ours, is left out)."""
    return {sr_source_uid(sr) for sr in srs if "machine" in str(sr.get("SeriesDescription", "")).lower()}
