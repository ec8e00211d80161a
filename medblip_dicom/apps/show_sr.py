"""``medblip show-sr FILE...``: a Structured Report as a readable text tree (also used by the quickstart).

It shows the document's flags, the model that wrote it (its architecture, and the prompt of a model
given one, when the report records them), the referenced image and every content
item with its relationship, value type, concept name and value. Patient names and IDs are not
printed (the output often ends up in logs and tickets); UIDs identify the study and the image.
The essentials come from :class:`~medblip_dicom.report_view.CaptionReport`, the reader of our SRs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from pydicom.dataset import Dataset

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, say_error


def _concept(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeMeaning) if seq else "(no concept name)"


def _value(item: Dataset) -> str:
    kind = item.get("ValueType", "")
    if kind == "TEXT":
        return f'"{item.TextValue}"'
    if kind == "CODE":
        code = item.ConceptCodeSequence[0]
        return f"{code.CodeMeaning} ({code.CodeValue}, {code.CodingSchemeDesignator})"
    if kind == "UIDREF":
        return str(item.UID)
    if kind in ("IMAGE", "COMPOSITE"):
        ref = item.ReferencedSOPSequence[0]
        frames = ref.get("ReferencedFrameNumber")
        text = f"{ref.ReferencedSOPClassUID.name} {ref.ReferencedSOPInstanceUID}"
        return text + (f" frame {frames}" if frames else "")
    if kind == "NUM":
        measured = item.MeasuredValueSequence[0]
        return f"{measured.NumericValue} {measured.MeasurementUnitsCodeSequence[0].CodeValue}"
    if kind == "CONTAINER":
        template = item.get("ContentTemplateSequence")
        return f"[template {template[0].TemplateIdentifier}]" if template else ""
    return ""


def content_lines(item: Dataset, depth: int = 0) -> Iterator[str]:
    """Lines of the content tree below (and including) `item`, indented two spaces per level."""
    relation = str(item.get("RelationshipType", "ROOT"))
    kind = str(item.get("ValueType", ""))
    value = _value(item)
    yield f"{'  ' * depth}{relation} {kind} {_concept(item)}" + (f": {value}" if value else "")
    for child in item.get("ContentSequence", []):
        yield from content_lines(child, depth + 1)


def render(sr: Dataset) -> str:
    """The whole text: a header with the essentials, then the content tree.

    Raises :class:`~medblip_dicom.errors.ReportError` for a data set that is not a caption SR.
    """
    from pydicom.uid import UID

    from medblip_dicom.report_view import CaptionReport, value_list

    report = CaptionReport.from_dataset(sr)
    versions = value_list(sr.get("SoftwareVersions"))
    header = [
        f"{sr.SOPClassUID.name}  {report.sop_instance_uid}",
        f"  series       : {sr.get('SeriesDescription', '')} (#{sr.get('SeriesNumber', '')})",
        f"  study        : {report.study_instance_uid}",
        f"  flags        : {report.verification_flag or '?'}, {report.preliminary_flag or '?'}, "
        f"{report.completion_flag or '?'}",
        f"  model        : {sr.get('ManufacturerModelName', '?')} (versions {', '.join(map(str, versions))})",
        f"  weights hash : {report.weights_sha256 or '?'}",
    ]
    if report.architecture:
        header.append(f"  architecture : {report.architecture}")
    if report.prompt:
        header.append(f"  prompt       : {report.prompt}")
    if report.source_sop_instance_uid:
        header.append(f"  evidence     : {UID(report.source_sop_class_uid).name} {report.source_sop_instance_uid}")
    header.append(f"  caption      : {report.caption}")
    return "\n".join([*header, "", *content_lines(sr)])


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``medblip show-sr``."""
    show = sub.add_parser("show-sr", help="print a Structured Report as a readable tree",
                          description="Print an SR's essentials (caption, model, referenced image) and its content tree.",
                          epilog="example:\n  medblip show-sr reports/2.25.1234.dcm",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("files", nargs="+", metavar="FILE", help="SR files")
    show.set_defaults(func=cmd_show_sr, quick_exit=True)


def cmd_show_sr(args: argparse.Namespace) -> int:
    """Run ``medblip show-sr``: exit 1 when a file is not a readable caption SR."""
    import pydicom

    from medblip_dicom.errors import MedblipError

    status = EXIT_OK
    for i, name in enumerate(args.files):
        try:
            text = render(pydicom.dcmread(name))
        except MedblipError as exc:
            say_error("show-sr", exc)
            status = EXIT_FAILED
            continue
        except (OSError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
            say_error("show-sr", f"{name}: {exc}")
            status = EXIT_FAILED
            continue
        print(("\n" if i else "") + f"{name}\n{text}")
    return status
