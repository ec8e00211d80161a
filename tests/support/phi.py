"""A corpus with known identifiers, and the scanner that proves none of them leaves de-identification.

:func:`crafted` makes DICOM objects of the test patient (:mod:`tests.support.privacy`) with
identifying values in every place they hide: person names, IDs, dates, an institution and an
address, free-text descriptions, private attributes, sequences (other IDs, request attributes,
a referenced study), a physician and an operator. :func:`identifying_values` lists what an input
holds that identifies someone (its UIDs too); :func:`scan` looks for every one of them in every
byte of an output folder (DICOM files included, unlike :func:`tests.support.privacy.find_values`),
in any letter case and in the usual escapings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from tests.support.dicom import save_as_new, testdata
from tests.support.privacy import PATIENT_ID, PATIENT_NAME, value_forms

REFERRING = "Marchbanks^Eudora"
OPERATOR = "Thistlewood^Ambrose"
ACCESSION = "ACC-99173-QZ"
OTHER_ID = "OPX-77123-KW"
REQUEST_ID = "RPX-5521-JH"
INSTITUTION = "St Wendelinus Clinic"
ADDRESS = "17 Larkspur Crescent, Oldwick"
PHONE = "+44 1632 960718"
BIRTH_DATE = "19610817"
STUDY_DATE = "20230514"
PRIVATE_NOTE = "Ottoline Quennell private note"


def crafted(folder: Path, template: str = "CT_small.dcm", *, study_uid: str | None = None,
            instance: int = 1, **attrs: object) -> Path:
    """A copy of `template` holding the test patient's identifiers everywhere (module docstring)."""
    ds = pydicom.dcmread(testdata(template))
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientAddress = ADDRESS
    ds.PatientTelephoneNumbers = PHONE
    ds.AccessionNumber = ACCESSION
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = STUDY_DATE
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = REFERRING
    ds.OperatorsName = OPERATOR
    ds.StudyDescription = "CT chest for Quennell, Ottoline"
    ds.ImageComments = f"patient {PATIENT_ID} seen {STUDY_DATE}"
    other = Dataset()
    other.PatientID = OTHER_ID
    other.IssuerOfPatientID = "OLDWICK GENERAL"
    ds.OtherPatientIDsSequence = Sequence([other])
    request = Dataset()
    request.RequestedProcedureID = REQUEST_ID
    request.ScheduledProcedureStepID = "SPS-33918-LM"
    ds.RequestAttributesSequence = Sequence([request])
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = generate_uid()
    ds.ReferencedStudySequence = Sequence([ref])
    block = ds.private_block(0x0099, "MEDBLIP TEST PRIVATE", create=True)
    block.add_new(0x01, "LO", PRIVATE_NOTE)
    block.add_new(0x02, "PN", "Quennell^Ottoline")
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = instance
    return save_as_new(ds, folder, **attrs)


def _walk(ds: Dataset) -> Iterable[pydicom.DataElement]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)
        else:
            yield elem


def identifying_values(paths: Iterable[Path]) -> set[str]:
    """What the inputs hold that identifies a person, a visit or an object: person names and their
    longer words, IDs and accession numbers, dates (DICOM and ISO form), institution, addresses,
    telephone numbers, free text of private attributes and every instance UID."""
    values: set[str] = set()
    for path in paths:
        ds = pydicom.dcmread(path)
        maker = str(ds.get("Manufacturer", "")).strip().upper()  # a maker's name identifies no one
        for elem in [*_walk(ds.file_meta), *_walk(ds)]:
            if elem.value in (None, "", b""):
                continue
            keyword = elem.keyword or ""
            texts = [str(v) for v in (elem.value if elem.VM > 1 else [elem.value])]
            if elem.VR == "PN":
                for text in texts:
                    values.update(w for w in [text, *re.split(r"[\^=\s,]+", text)] if len(w) >= 5)
            elif elem.VR == "UI" and not texts[0].startswith("1.2.840.10008."):
                if keyword.endswith(("InstanceUID", "FrameOfReferenceUID")) or keyword == "StudyInstanceUID":
                    values.update(texts)
            elif elem.VR == "DA":
                for text in texts:
                    if len(text) == 8:
                        values.update({text, f"{text[:4]}-{text[4:6]}-{text[6:]}"})
            elif keyword.endswith(("ID", "IDs", "Number", "Numbers")) and elem.VR in ("LO", "SH"):
                values.update(t for t in texts if len(t) >= 4)
            elif keyword in ("InstitutionName", "InstitutionAddress", "PatientAddress") or elem.tag.is_private:
                values.update(t for t in texts if isinstance(elem.value, str) and len(t) >= 5
                              and not (maker and t.strip().upper() in maker))
    # a placeholder a source already carries ("ANON", "ANONYMIZED") identifies no one
    return {v for v in values if not v.upper().startswith("ANON")}


def scan(values: Iterable[str], *roots: Path, texts: Iterable[str] = ()) -> list[str]:
    """``"where: value"`` for every value found in any file under `roots` or in `texts` (logs), in
    any letter case; an empty list means nothing identifying left."""
    wanted = [(v, {f.lower() for f in value_forms(v)}) for v in values]
    blobs = [(str(p), p.read_bytes().lower()) for root in roots for p in
             ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()]
    blobs += [(f"text {i}", t.encode("utf-8", "replace").lower()) for i, t in enumerate(texts)]
    return [f"{where}: {value!r}" for where, blob in blobs for value, forms in wanted if any(f in blob for f in forms)]
