"""The four documents a report goes through, written as the worker and the review station write them:
the AI report, its signed version, an amendment of that, and (for another source) a rejection note."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from medblip_dicom.report import build_report, write_report
from medblip_dicom.integrations.review.signing import (
    Reviewer, build_rejection_note, build_signed_report, document_name, encode, source_header,
)

from tests.support.dicom import load_template, reissue
from tests.support.review import IDENTITY

#: Every HL7 delimiter, the escape character, non-ASCII letters and a CJK character.
CAPTION = "a ct | image ^ of the chest & lungs ~ clear \\ no effusion, épanchement 无"
REVIEWER = Reviewer("alice", "Doe^Alice", "Test Hospital")


@dataclass(frozen=True)
class Documents:
    ai: Path
    signed: Path
    amended: Path
    rejection: Path
    rejected_ai: Path


def write(ds: pydicom.Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / document_name(ds)
    path.write_bytes(encode(ds))
    return path


def make_documents(folder: Path, *, caption: str = CAPTION, **source_attrs: object) -> Documents:
    """The documents of one CT source (attributes of the source set from `source_attrs`) and an MR one."""
    template = load_template("CT_small.dcm")
    for key, value in source_attrs.items():
        setattr(template, key, value)
    source, _ = reissue(template, folder / "sources")
    ai = build_report(pydicom.dcmread(source), caption, IDENTITY)
    signed = build_signed_report(ai, ai, source_header(ai), REVIEWER, "no acute findings | signed")
    amended = build_signed_report(ai, signed, source_header(ai), REVIEWER, "no acute findings, amended")
    other, _ = reissue(load_template("MR_small.dcm"), folder / "sources")
    other_ai = build_report(pydicom.dcmread(other), "an mr image of the head", IDENTITY)
    note = build_rejection_note(other_ai, REVIEWER, "wrong side & wrong patient?")
    out = folder / "documents"
    return Documents(write_report(ai, out), write(signed, out), write(amended, out), write(note, out),
                     write_report(other_ai, out))
