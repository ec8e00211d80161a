"""One report as an HL7 v2.5.1 ORU^R01 message, built with python-hl7's containers, and the ACK read back.

What the message says comes from the document alone (:func:`medblip_dicom.report_view.read_document`):

- MSH: our and the receiver's application and facility (``[hl7]``), the document's content time,
  ``ORU^R01^ORU_R01``, version 2.5.1, character set ``UNICODE UTF-8``, original acknowledgment mode
  (the receiver answers AA, AE or AR). MSH-10, the message control ID, is derived from the
  document's SOPInstanceUID (:func:`control_id`), so a resend of the same document carries the same
  ID and the receiver can recognise it; the whole message is the same bytes again.
- PID (when the document has a Patient ID): the ID with its issuer, the name (DICOM's
  family^given^middle^prefix^suffix in HL7's order), birth date, sex.
- ORC/OBR: the placer and filler order numbers where the source had them, the accession number in
  OBR-18 and the requested procedure ID in OBR-19 (IHE Radiology's places), the report code LOINC
  18748-4, the result status in OBR-25 -- **P** for the AI report, **F** for a signed one, **C** for
  an amendment, **X** for a rejection -- and, for a signed version, the reviewer in OBR-32.
- OBX: the text (TX: the caption, the signed text, or the rejection reason), what the text is
  (unverified machine text, verified, amended, rejected), the model's name and version and its
  weights digest, the Study Instance UID (110180, DCM), the document's UID and the UID of the AI
  report it is a version of (every version of one report shares it).

Every value is escaped per HL7 (:func:`escape`): the delimiters become ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, a line
break or another control character its ``\\Xhh\\`` escape; other Unicode text is kept, in UTF-8.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass

import hl7
from hl7.containers import Component, Field, Message, Repetition, Segment

from medblip_dicom.report_view import AI, AMENDED, REJECTED, SIGNED, ReportDocument

#: OBR-25 / OBX-11 result status per kind of document (HL7 table 0123 / 0085).
RESULT_STATUS = {AI: "P", SIGNED: "F", AMENDED: "C", REJECTED: "X"}
WHAT_THE_TEXT_IS = {AI: "AI caption: machine-generated, UNVERIFIED, not for diagnosis",
                    SIGNED: "VERIFIED: reviewed and signed by a radiologist",
                    AMENDED: "VERIFIED: amended by a radiologist",
                    REJECTED: "REJECTED: the AI caption was rejected by a radiologist"}
REPORT_CODE = ("18748-4", "Diagnostic Imaging Report", "LN")
LOCAL = "99MEDBLIP"
_SEPARATORS = "\r|~^&"
_ESCAPES = {"|": "F", "^": "S", "&": "T", "~": "R", "\\": "E"}


def escape(text: str) -> str:
    """`text` as an HL7 value: delimiters and control characters escaped, other characters kept."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(f"\\{_ESCAPES[ch]}\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\X{ord(ch):02X}\\")
        else:
            out.append(ch)
    return "".join(out)


def control_id(sop_instance_uid: str) -> str:
    """MSH-10 for a document: 20 characters (the field's length in v2.5.1) derived from its UID."""
    digest = hashlib.sha256(f"medblip-dicom/hl7/{sop_instance_uid}".encode()).digest()
    return "MB" + base64.b32encode(digest).decode("ascii")[:18]


def hl7_time(dicom_dt: str) -> str:
    """A DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``) as an HL7 TS: at most four fractional digits."""
    value, sign, zone = dicom_dt, "", ""
    for s in "+-":
        if s in dicom_dt[8:]:
            cut = dicom_dt.rindex(s)
            value, sign, zone = dicom_dt[:cut], s, dicom_dt[cut + 1:]
    whole, _, fraction = value.partition(".")
    digits = "".join(c for c in whole if c.isdigit())[:14]
    fraction = "".join(c for c in fraction if c.isdigit())[:4]
    out = digits + (f".{fraction}" if fraction and len(digits) == 14 else "")
    return out + (f"{sign}{zone[:4]}" if sign and len(zone) >= 4 else "")


def _now() -> str:
    return dt.datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z")


@dataclass(frozen=True)
class Parties:
    """MSH-3 to MSH-6 and MSH-11 (``[hl7]``)."""

    sending_application: str = "MEDBLIP"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"


def _field(*components: str | tuple[str, ...]) -> Field:
    """A field of escaped components (a tuple is one component of subcomponents)."""
    parts = [Component("&", _trimmed([escape(s) for s in c])) if isinstance(c, tuple) else escape(c)
             for c in components]
    while len(parts) > 1 and not str(parts[-1]):
        parts.pop()
    return Field("~", [Repetition("^", parts)])


def _trimmed(values: list[str]) -> list[str]:
    while len(values) > 1 and not values[-1]:
        values.pop()
    return values


def _segment(name: str, fields: dict[int, Field | str]) -> Segment:
    """Segment `name` with `fields` at their positions (1-based); the rest empty."""
    last = max(fields) if fields else 0
    values = [fields.get(i, "") for i in range(1, last + 1)]
    return Segment("|", [Field("~", [name]), *[v if isinstance(v, Field) else _field(v) for v in values]])


def _person_name(pn: str) -> tuple[str, str, str, str, str]:
    """DICOM PN (first non-empty group) as HL7 XPN's family, given, middle, suffix, prefix."""
    group = next((g for g in pn.split("=") if g.strip()), "")
    family, given, middle, prefix, suffix = (group.split("^") + [""] * 5)[:5]
    return family, given, middle, suffix, prefix


def build_oru(doc: ReportDocument, parties: Parties) -> str:
    """The ORU^R01 message for `doc` (see the module docstring), segments ending in CR."""
    status = RESULT_STATUS[doc.kind]
    when = hl7_time(doc.when) if doc.when else _now()
    msh = Segment("|", [Field("~", ["MSH"]), "|", "^~\\&", _field(parties.sending_application),
                        _field(parties.sending_facility), _field(parties.receiving_application),
                        _field(parties.receiving_facility), when, "", _field("ORU", "R01", "ORU_R01"),
                        control_id(doc.sop_instance_uid), parties.processing_id, "2.5.1", "", "", "", "", "",
                        "UNICODE UTF-8"])
    segments = [msh]
    p = doc.patient
    if p.id:
        family, given, middle, suffix, prefix = _person_name(p.name)
        segments.append(_segment("PID", {
            1: "1", 3: _field(p.id, "", "", p.issuer), 5: _field(family, given, middle, suffix, prefix),
            7: p.birth_date[:8], 8: p.sex if p.sex in ("M", "F", "O") else ""}))
    o = doc.order
    segments.append(_segment("ORC", {1: "RE", 2: _field(o.placer_order_number), 3: _field(o.filler_order_number)}))
    obr: dict[int, Field | str] = {
        1: "1", 2: _field(o.placer_order_number), 3: _field(o.filler_order_number), 4: _field(*REPORT_CODE),
        7: when, 18: _field(o.accession_number), 19: _field(o.requested_procedure_id), 22: when, 24: "RAD",
        25: status}
    if doc.reviewer and doc.kind in (SIGNED, AMENDED):
        family, given, middle, suffix, prefix = _person_name(doc.reviewer)
        obr[32] = _field(("", family, given, middle, suffix, prefix))
    segments.append(_segment("OBR", obr))
    text = doc.text if doc.kind != REJECTED else f"Rejected: {doc.text}" if doc.text else "Rejected"
    observations = [("TX", REPORT_CODE, text), ("ST", ("REPORT-STATUS", "What the report text is", LOCAL),
                                                    WHAT_THE_TEXT_IS[doc.kind])]
    if doc.model_name:
        observations += [("ST", ("AI-MODEL", "AI model name and version", LOCAL),
                          f"{doc.model_name} {doc.model_version}".strip()),
                         ("ST", ("AI-MODEL-SHA256", "AI model weights SHA-256", LOCAL), doc.weights_sha256)]
    observations += [("ST", ("110180", "Study Instance UID", "DCM"), doc.study_instance_uid),
                     ("ST", ("REPORT-UID", "Report SOP Instance UID", LOCAL), doc.sop_instance_uid),
                     ("ST", ("AI-REPORT-UID", "SOP Instance UID of the AI report this is a version of", LOCAL),
                      doc.first_uid)]
    for i, (value_type, code, value) in enumerate(observations, 1):
        segments.append(_segment("OBX", {1: str(i), 2: value_type, 3: _field(*code), 5: _field(value),
                                         11: status, 14: when}))
    return str(Message("\r", segments, separators=_SEPARATORS))


@dataclass(frozen=True)
class Ack:
    """What the receiver answered: MSA-1 (AA/AE/AR, or CA/CE/CR), MSA-2 and its reason text."""

    code: str
    control_id: str
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")

    @property
    def rejected(self) -> bool:
        """AR/CR: the receiver refuses this message for good (never sent again)."""
        return self.code in ("AR", "CR")


def parse_ack(text: str) -> Ack:
    """Read an ACK (python-hl7); raises ValueError when it is not one."""
    try:
        message = hl7.parse(text.replace("\n", "\r").strip("\r"))
        msa = message.segment("MSA")
    except (KeyError, IndexError, hl7.ParseException) as exc:
        raise ValueError(f"not an HL7 ACK ({type(exc).__name__})") from None
    reason = [str(msa(3))] if len(msa) > 3 and str(msa(3)) else []
    try:
        err = message.segment("ERR")
        reason += [s for s in (str(err(8)) if len(err) > 8 else "", str(err(3)) if len(err) > 3 else "") if s]
    except KeyError:
        pass
    return Ack(str(msa(1)), str(msa(2)) if len(msa) > 2 else "", "; ".join(reason)[:300])
