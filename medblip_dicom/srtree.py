"""A readable text tree of a Structured Report: what ``medblip show-sr`` and the quickstart print.

It shows the document's flags, the model that wrote it, the referenced image and every content
item with its relationship, value type, concept name and value. Patient names and IDs are not
printed (the output often ends up in logs and tickets); UIDs identify the study and the image.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset


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


def find_text(item: Dataset, concept_value: str) -> str | None:
    """The first TEXT value whose concept code is `concept_value` (e.g. 121071 Finding)."""
    for child in item.get("ContentSequence", []):
        seq = child.get("ConceptNameCodeSequence")
        if child.get("ValueType") == "TEXT" and seq and seq[0].CodeValue == concept_value:
            return str(child.TextValue)
        found = find_text(child, concept_value)
        if found is not None:
            return found
    return None


def render(sr: Dataset) -> str:
    """The whole text: a header with the essentials, then the content tree."""
    if "ContentSequence" not in sr or sr.get("Modality") != "SR":
        raise ValueError("not a Structured Report (no SR content tree)")
    caption = find_text(sr, "121071")
    header = [
        f"{sr.SOPClassUID.name}  {sr.SOPInstanceUID}",
        f"  series       : {sr.get('SeriesDescription', '')} (#{sr.get('SeriesNumber', '')})",
        f"  study        : {sr.StudyInstanceUID}",
        f"  flags        : {sr.get('VerificationFlag', '?')}, {sr.get('PreliminaryFlag', '?')}, "
        f"{sr.get('CompletionFlag', '?')}",
        f"  model        : {sr.get('ManufacturerModelName', '?')} "
        f"(versions {', '.join(map(str, _as_list(sr.get('SoftwareVersions'))))})",
        f"  weights hash : {sr.get('DeviceSerialNumber', '?')}",
    ]
    for study in sr.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.ReferencedSeriesSequence:
            for ref in series.ReferencedSOPSequence:
                header.append(f"  evidence     : {ref.ReferencedSOPClassUID.name} {ref.ReferencedSOPInstanceUID}")
    if caption is not None:
        header.append(f"  caption      : {caption}")
    return "\n".join([*header, "", *content_lines(sr)])


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)  # type: ignore[arg-type]
    return [value]
