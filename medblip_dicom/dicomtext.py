"""One rule for every text written into DICOM: the value a VR allows, and its SpecificCharacterSet.

Everything this project writes into a DICOM object (the AI caption, the signed text, a rejection
reason, the reviewer's name, the organization, notes, descriptions, model names) goes through
:func:`dicom_text`, and every document gets its character set from :func:`declare_character_set`:

- **Unicode is kept.** A document whose text values are all ASCII declares no character set (the
  default repertoire); one holding any other character declares ``ISO_IR 192`` (UTF-8), so that
  ``µ``, ``≥``, ``°`` or ``肺結節`` reach the PACS as they were typed, never as ``?``.
- **NFC.** Text is normalised to Unicode NFC, so one visible text has one encoding: ``é`` typed as
  one character or as ``e`` + combining accent gives the same bytes, the same comparison ("kept
  unchanged" or "edited"), the same derived UID, the same length against a VR's limit, and the
  form most viewers render correctly.
- **The VR's characters** (DICOM PS3.5 section 6.2, Table 6.2-1): LO, SH and PN allow no control
  character, and no backslash (it separates the values of a multi-valued element); ST, LT and UT
  allow CR, LF, FF and TAB, and a backslash. ESC is allowed by the standard only inside ISO 2022
  escape sequences, which never occur in Unicode text, so it is refused everywhere. Beyond the
  standard's control characters, characters that would make a viewer show something other than
  what was written are refused too: C1 controls (``U+0085``), the line and paragraph separators
  (``U+2028``, ``U+2029``: DICOM's line breaks are CR and LF), bidirectional embeddings, overrides
  and isolates (they reorder what is displayed), surrogates, private-use and unassigned code points.
- **Lengths are counted in characters** (LO 64, SH 16, ST 1024, LT 10240, PN 64 a component group),
  as PS3.5 defines them; machine text, which we shorten ourselves, also fits them in UTF-8 bytes.

Human text (signed text, reasons, names typed by an administrator) that breaks the rule is refused
with a :class:`TextError` naming the character (``U+XXXX``) and its position: the person who typed
it can fix it, and nothing is signed that differs from what they see. Machine text (a model's
caption, a model's name) has the characters removed and its whitespace collapsed, and is cut to the
VR's length: a caption must never fail a report.
"""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from medblip_dicom.errors import MedblipError

#: The character set declared when any value is not ASCII: ISO-IR 192, Unicode in UTF-8.
UTF8 = "ISO_IR 192"

_TEXT_CONTROLS = frozenset("\r\n\f\t")


@dataclass(frozen=True)
class VRRule:
    """What one VR allows: its length in characters (None: unlimited), the control characters it
    allows, and whether a backslash separates values (so one value may not hold it)."""

    max_chars: int | None
    controls: frozenset[str]
    backslash_delimits: bool


#: PS3.5 section 6.2: the string VRs this project writes text into.
RULES: dict[str, VRRule] = {
    "LO": VRRule(64, frozenset(), True),
    "SH": VRRule(16, frozenset(), True),
    "PN": VRRule(64, frozenset(), True),  # 64 characters per component group
    "UC": VRRule(None, frozenset(), True),
    "ST": VRRule(1024, _TEXT_CONTROLS, False),
    "LT": VRRule(10240, _TEXT_CONTROLS, False),
    "UT": VRRule(None, _TEXT_CONTROLS, False),
}
#: VRs whose values may hold characters of the declared character set (the others are ASCII only).
CHARACTER_SET_VRS = frozenset(RULES)

#: Bidirectional embeddings, overrides and isolates: they change the order in which text is shown.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Unicode categories refused in every VR: controls, separators of lines and paragraphs,
#: surrogates, private use and unassigned code points.
_REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs", "Co", "Cn"})


class TextError(MedblipError, ValueError):
    """A text cannot be written into a DICOM value as it is (the message names what to change).

    ``position`` counts characters from 1 in the text as given; ``character`` is the character
    refused (None when the text is too long).
    """

    def __init__(self, message: str, *, what: str, position: int | None = None,
                 character: str | None = None) -> None:
        super().__init__(message)
        self.what = what
        self.position = position
        self.character = character


def _rule(vr: str) -> VRRule:
    try:
        return RULES[vr]
    except KeyError:
        raise ValueError(f"no text rule for the VR {vr!r}; known: {', '.join(sorted(RULES))}") from None


def _refusal(char: str, rule: VRRule) -> str | None:
    """Why `char` may not stand in a value of `rule`'s VR (None when it may)."""
    if char in rule.controls:
        return None
    if char == "\\" and rule.backslash_delimits:
        return "the backslash separates the values of this attribute"
    if char in _BIDI_CONTROLS:
        return "bidirectional controls change the order in which a viewer shows the text"
    category = unicodedata.category(char)
    if category not in _REFUSED_CATEGORIES:
        return None
    if category == "Cc":
        return "control characters other than CR, LF, FF and TAB are not allowed" if rule.controls \
            else "control characters are not allowed"
    if category in ("Zl", "Zp"):
        return "DICOM text breaks lines with CR and LF only"
    return "a viewer cannot show surrogate, private-use or unassigned code points"


#: Names of control characters (Unicode gives them none, only aliases).
_CONTROL_NAMES = {0x00: "NULL", 0x08: "BACKSPACE", 0x0B: "LINE TABULATION", 0x1B: "ESCAPE", 0x7F: "DELETE",
                  0x85: "NEXT LINE"}


def character_label(char: str) -> str:
    """``U+XXXX (NAME)`` for an error message (``CONTROL`` or the category for unnamed code points)."""
    name = unicodedata.name(char, "") or _CONTROL_NAMES.get(ord(char)) or (
        "CONTROL" if unicodedata.category(char) == "Cc" else f"category {unicodedata.category(char)}")
    return f"U+{ord(char):04X} ({name})"


def first_refused(text: str, vr: str) -> tuple[int, str, str] | None:
    """``(position from 1, character, why)`` of the first character the VR refuses, or None."""
    rule = _rule(vr)
    for index, char in enumerate(text):
        why = _refusal(char, rule)
        if why is not None:
            return index + 1, char, why
    return None


def dicom_text(text: str, vr: str, *, what: str, machine: bool = False) -> str:
    """`text` as a value of `vr`: NFC, only characters the VR allows, within its length.

    `what` names the text in an error message ("the signed text", "[review] organization").
    Human text (``machine=False``) that holds a refused character raises :class:`TextError`
    naming the character and its position (counted from 1 in `text` as given), and one that is
    too long raises it naming the limit; trailing spaces (and, in LO, SH, PN and UC, leading
    ones), which DICOM treats as padding, are removed. Machine text (``machine=True``) never
    raises: refused characters are removed (those Python counts as whitespace become a space),
    every whitespace run becomes one space, and the value is cut to the VR's length (in characters
    and in UTF-8 bytes).
    """
    rule = _rule(vr)
    text = str(text)
    if machine:
        kept = []
        for char in text:
            if _refusal(char, rule) is None:
                kept.append(char)
            elif char.isspace():
                kept.append(" ")
        text = " ".join(unicodedata.normalize("NFC", "".join(kept)).split())
        return _cut(text, rule, vr)
    found = first_refused(text, vr)
    if found is not None:
        position, char, why = found
        raise TextError(f"{what}: the character at position {position}, {character_label(char)}, cannot be "
                        f"written into DICOM ({vr}: {why}); remove it and try again", what=what,
                        position=position, character=char)
    text = unicodedata.normalize("NFC", text)
    text = text.strip(" ") if rule.backslash_delimits else text.rstrip(" ")
    for group in (text.split("=") if vr == "PN" else [text]):
        if rule.max_chars is not None and len(group) > rule.max_chars:
            part = " (one component group of the name, between '=')" if vr == "PN" else ""
            raise TextError(f"{what} has {len(group)} characters{part}; a DICOM {vr} value holds at most "
                            f"{rule.max_chars}: shorten it", what=what)
    return text


def _cut(text: str, rule: VRRule, vr: str) -> str:
    """Machine text cut to the VR's length in characters and, in UTF-8, in bytes too: dciodvfy and
    PACS databases with byte-sized columns count bytes, and for text we shorten ourselves the
    stricter limit costs nothing."""
    if rule.max_chars is None:
        return text
    limit = rule.max_chars

    def fit(part: str) -> str:
        part = part[:limit]
        while len(part.encode("utf-8")) > limit:
            part = part[:-1]
        return part.rstrip()

    return "=".join(fit(group) for group in text.split("=")) if vr == "PN" else fit(text)


def _text_values(value: object) -> Iterator[str]:
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    for v in values:
        if v is not None:
            yield str(v)


def needs_character_set(ds: Dataset) -> bool:
    """True when any text value in `ds` (sequences included) is not ASCII."""
    for elem in ds:
        if elem.VR == "SQ":
            if any(needs_character_set(item) for item in elem.value):
                return True
        elif elem.VR in CHARACTER_SET_VRS and not all(v.isascii() for v in _text_values(elem.value)):
            return True
    return False


def declare_character_set(ds: Dataset) -> Dataset:
    """Set SpecificCharacterSet on a document we built: ``ISO_IR 192`` when any value is not
    ASCII, none otherwise (and none in its sequence items, which inherit it). Returns `ds`.

    pydicom then encodes every text value, person names included, as UTF-8 when it writes `ds`.
    Values copied from a source must already be Unicode (:func:`decoded_copy`).
    """
    _drop_item_character_sets(ds)
    if needs_character_set(ds):
        ds.SpecificCharacterSet = UTF8
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
    return ds


def _drop_item_character_sets(ds: Dataset) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                if "SpecificCharacterSet" in item:
                    del item.SpecificCharacterSet
                _drop_item_character_sets(item)


def decoded_copy(elem: DataElement) -> DataElement:
    """A copy of a source's element whose text is Unicode, decoded with the source's character set.

    pydicom decodes a value with its data set's SpecificCharacterSet (``ISO_IR 100``, ISO 2022
    Japanese, ...) when the element is read; this copies the decoded text (person names as plain
    text, sequence items element by element) so that nothing keeps the source's bytes, and the
    document it goes into can encode it in its own character set.
    """
    if elem.VR == "SQ":
        items = []
        for item in elem.value:
            copy_item = Dataset()
            for child in item:  # iterating converts each raw element with the item's character set
                if child.tag != 0x00080005:  # SpecificCharacterSet: the document declares its own
                    copy_item.add(decoded_copy(child))
            items.append(copy_item)
        return DataElement(elem.tag, "SQ", items)
    if elem.VR == "PN":
        names = [str(v) for v in _text_values(elem.value)]
        value = (PersonName(names[0]) if len(names) == 1 else [PersonName(n) for n in names]) if names else ""
        return DataElement(elem.tag, "PN", value)
    return copy.deepcopy(elem)  # text was decoded when the element was read; other values carry no text
