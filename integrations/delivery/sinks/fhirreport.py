"""One report as a FHIR R4 ``DiagnosticReport``, built and validated with ``fhir.resources``.

The model is ``fhir.resources.R4B``: FHIR 4.3, whose DiagnosticReport, Observation, Device and
Practitioner are those of R4 (4.0.1) unchanged, so the JSON is an R4 resource. What it says comes
from the document alone (:func:`medblip_dicom.report_view.read_document`):

- ``identifier``: the AI report's SOPInstanceUID (``urn:dicom:uid`` / ``urn:oid:...``), shared by
  every version of one report, so the server keeps **one** DiagnosticReport per report whose status
  moves on (:func:`report_identifier`; the sink updates it conditionally by this identifier), and,
  for a later version, that version's own UID beside it;
- ``status``: **preliminary** for the AI report, **final** for a signed one, **amended** for an
  amendment, **cancelled** for a rejection;
- ``code`` LOINC 18748-4, category RAD; ``conclusion``: the caption, the signed text, or the
  rejection reason;
- ``subject``: the patient by identifier (``[fhir] patient_system`` and the Patient ID), never by
  name; ``basedOn``: the order by its accession, placer and filler numbers where the source had them;
- ``imagingStudy``: the study by its identifier (``urn:dicom:uid`` / the StudyInstanceUID);
- the model: a contained ``Device`` (name, version, weights digest as serial number, the device
  UID). FHIR R4 does not allow a Device as a DiagnosticReport's ``performer``, so it is the
  ``device`` of the contained ``Observation`` that holds the text, the report's ``result``;
- ``resultsInterpreter``: the reviewer of a signed version (a contained ``Practitioner``);
- ``issued``: the document's content time (this machine's time zone when the document has none).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from medblip_dicom.report_view import AI, AMENDED, REJECTED, SIGNED, ReportDocument

STATUS = {AI: "preliminary", SIGNED: "final", AMENDED: "amended", REJECTED: "cancelled"}
#: How far along a report is: the server never goes back (a late AI report after the signed one).
PROGRESS = {"preliminary": 0, "final": 1, "cancelled": 1, "amended": 2}
DICOM_UID = "urn:dicom:uid"
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


class FhirBuildError(ValueError):
    """The resource does not validate; the message names the elements only (never their values)."""


def report_identifier(doc: ReportDocument) -> tuple[str, str]:
    """``(system, value)`` of the identifier every version of `doc`'s report shares."""
    return DICOM_UID, f"urn:oid:{doc.first_uid}"


def fhir_instant(dicom_dt: str) -> str:
    """A DICOM DT (``YYYYMMDD[HH[MM[SS]]][.F][&ZZXX]``) as a FHIR instant: seconds and a time zone
    (this machine's when the DT has none); the time now when it is empty or unreadable."""
    match = re.fullmatch(r"(\d{8}|\d{10}|\d{12}|\d{14})(?:\.\d{1,6})?([+-]\d{4})?", dicom_dt.strip())
    try:
        when = dt.datetime.strptime(match.group(1).ljust(14, "0"), "%Y%m%d%H%M%S") if match else None
    except ValueError:
        when = None
    if when is None:
        return dt.datetime.now().astimezone().isoformat(timespec="seconds")
    zone = match.group(2)
    if zone:
        offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        when = when.replace(tzinfo=dt.timezone(offset if zone[0] == "+" else -offset))
    else:
        when = when.astimezone()
    return when.isoformat(timespec="seconds")


def _code(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _name(pn: str) -> dict[str, Any]:
    group = next((g for g in pn.split("=") if g.strip()), "")
    family, given, middle, prefix, suffix = (group.split("^") + [""] * 5)[:5]
    name: dict[str, Any] = {"text": " ".join(p for p in (prefix, given, middle, family, suffix) if p)}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [p for p in (given, middle) if p]
    return name


def build_resource(doc: ReportDocument, *, patient_system: str = "") -> dict[str, Any]:
    """The DiagnosticReport for `doc` as JSON (a dict), validated; raises :class:`FhirBuildError`."""
    status = STATUS[doc.kind]
    system, value = report_identifier(doc)
    identifiers = [{"use": "official", "system": system, "value": value}]
    if doc.sop_instance_uid != doc.first_uid:
        identifiers.append({"use": "secondary", "system": DICOM_UID, "value": f"urn:oid:{doc.sop_instance_uid}"})
    text = doc.text if doc.kind != REJECTED else f"Rejected: {doc.text}" if doc.text else "Rejected"
    issued = fhir_instant(doc.when)
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "identifier": identifiers, "status": status,
        "category": [_code(V2_0074, "RAD", "Radiology")],
        "code": _code(LOINC, "18748-4", "Diagnostic imaging study"),
        "issued": issued, "conclusion": text,
        "imagingStudy": [{"type": "ImagingStudy",
                          "identifier": {"system": DICOM_UID, "value": f"urn:oid:{doc.study_instance_uid}"}}],
    }
    subject = _subject(doc, patient_system)
    if subject is not None:
        resource["subject"] = subject
    orders = [(code, number) for code, number in (("ACSN", doc.order.accession_number),
                                                  ("PLAC", doc.order.placer_order_number),
                                                  ("FILL", doc.order.filler_order_number)) if number]
    if orders:
        resource["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": {"coding": [{"system": V2_0203, "code": code}]}, "value": number}} for code, number in orders]
    contained: list[dict[str, Any]] = []
    if doc.model_name:
        device: dict[str, Any] = {"resourceType": "Device", "id": "model", "manufacturer": "medblip-dicom",
                                  "deviceName": [{"name": doc.model_name, "type": "model-name"}]}
        if doc.model_version:
            device["version"] = [{"value": doc.model_version}]
        if doc.weights_sha256:
            device["serialNumber"] = doc.weights_sha256
        if doc.device_uid:
            device["identifier"] = [{"system": DICOM_UID, "value": f"urn:oid:{doc.device_uid}"}]
        observation = {"resourceType": "Observation", "id": "text", "status": status,
                       "code": _code(LOINC, "59776-5", "Procedure Findings"), "valueString": text,
                       "issued": issued, "device": {"reference": "#model"}}
        if subject is not None:
            observation["subject"] = subject
        contained += [device, observation]
        resource["result"] = [{"reference": "#text"}]
    if doc.reviewer and doc.kind in (SIGNED, AMENDED):
        contained.append({"resourceType": "Practitioner", "id": "reviewer", "name": [_name(doc.reviewer)]})
        resource["resultsInterpreter"] = [{"reference": "#reviewer"}]
    if contained:
        resource["contained"] = contained
    return validate(resource)


def _subject(doc: ReportDocument, patient_system: str) -> dict[str, Any] | None:
    if not doc.patient.id:
        return None
    identifier: dict[str, Any] = {"value": doc.patient.id}
    if patient_system:
        identifier["system"] = patient_system
    if doc.patient.issuer:
        identifier["assigner"] = {"display": doc.patient.issuer}
    return {"type": "Patient", "identifier": identifier}


def validate(resource: dict[str, Any]) -> dict[str, Any]:
    """`resource` checked by ``fhir.resources`` (and its status against R4's value set) and returned as
    the model writes it; :class:`FhirBuildError` names what is wrong, never a value."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from pydantic import ValidationError

    if resource.get("status") not in ("registered", "partial", "preliminary", "final", "amended", "corrected",
                                      "appended", "cancelled", "entered-in-error", "unknown"):
        raise FhirBuildError("DiagnosticReport.status is not in the R4 value set")
    try:
        model = DiagnosticReport.model_validate(resource)
    except ValidationError as exc:
        where = "; ".join(".".join(str(p) for p in e["loc"]) + f" ({e['type']})" for e in exc.errors()[:5])
        raise FhirBuildError(f"the DiagnosticReport does not validate: {where}") from None
    return json.loads(model.model_dump_json())
