"""C-FIND for ``medblip pull``: the studies a query matches, and every instance of a study as the
archive describes it (Study Root; STUDY, SERIES and IMAGE level).

Answers are taken as the archive sends them, one pending response at a time, however many there
are. An archive may ignore a matching key it does not support and answer every study: a study whose
answer holds the key with a value that does not match is left out (with a warning), and
``ModalitiesInStudy``, which dcmtk's dcmqrscp, among others, does not answer, is checked against the
study's series' Modality. A key the archive does not return cannot be checked: a warning says so.

:func:`probe` is ``medblip doctor``'s check: C-ECHO, then a C-FIND that matches nothing.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from pydicom.dataset import Dataset

from medblip_dicom.integrations.config.file import Destination
from medblip_dicom.integrations.pull.choose import INSTANCE_KEYS, SERIES_KEYS, Answer, merged
from medblip_dicom.integrations.pull.dimse_link import (
    ArchiveUnavailable, DimseSettings, accepted, open_association, release, status_words,
)

logger = logging.getLogger(__name__)

FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
VERIFICATION = "1.2.840.10008.1.1"
_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_PENDING = (0xFF00, 0xFF01)


def keyword_of(key: str) -> str:
    """The DICOM keyword a ``--query`` key names (a keyword or a ``GGGGEEEE`` tag); ValueError otherwise."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

    keyword = key
    if tag_for_keyword(key) is None:
        try:
            keyword = keyword_for_tag(int(key, 16)) or ""
        except ValueError:
            keyword = ""
    if not keyword or tag_for_keyword(keyword) is None or dictionary_VR(keyword) == "SQ":
        raise ValueError(f"--query {key}: not a DICOM keyword or tag a C-FIND can match on "
                         "(for example AccessionNumber, PatientID, StudyDate, ModalitiesInStudy)")
    return keyword


def query_dataset(level: str, keys: Mapping[str, str], returned: tuple[str, ...] = ()) -> Dataset:
    """A C-FIND identifier: matching `keys` (keywords or ``GGGGEEEE`` tags), universal `returned` keys."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for name in returned:
        setattr(ds, name, None)
    for key, value in keys.items():
        keyword = keyword_of(key)
        ds.add_new(tag_for_keyword(keyword), dictionary_VR(keyword), value)
    if any(not str(v).isascii() for v in keys.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def answer_matches(answer: Dataset, keyword: str, pattern: str) -> bool | None:
    """Whether `answer` matches ``keyword=pattern`` as a C-FIND SCP should have matched it (single
    values, wildcards, ranges, UID lists); None when the answer does not hold the key with a value."""
    from pydicom.datadict import dictionary_VR

    value = answer.get(keyword)
    if value is None or value == "" or (hasattr(value, "__len__") and not isinstance(value, str) and not len(value)):
        return None
    values = [str(v).strip() for v in (value if isinstance(value, (list, tuple)) or
                                       type(value).__name__ == "MultiValue" else [value])]
    vr, pattern = dictionary_VR(keyword), pattern.strip()
    if not pattern or pattern == "*":
        return True
    if vr in ("DA", "TM", "DT") and "-" in pattern:
        low, _, high = pattern.partition("-")
        return any((not low or v[:len(low)] >= low) and (not high or v[:len(high)] <= high) for v in values)
    if vr == "UI":
        return any(v in pattern.split("\\") for v in values)
    fold = (lambda t: t.upper()) if vr == "PN" else (lambda t: t)
    if "*" in pattern or "?" in pattern:
        return any(fnmatch.fnmatchcase(fold(v), fold(pattern)) for v in values)
    return any(fold(v) == fold(pattern) for v in values)


class Finder:
    """C-FIND against one archive; each method uses one association and releases it."""

    def __init__(self, archive: Destination, settings: DimseSettings) -> None:
        self.archive = archive
        self.settings = settings

    def _open(self) -> Any:
        assoc = open_association(self.archive, self.settings, [(FIND, _SYNTAXES)])
        if not accepted(assoc, FIND):
            release(assoc)
            raise ArchiveUnavailable(f"archive {self.archive} does not offer Study Root C-FIND "
                                     "(Query/Retrieve); check that it is a Query/Retrieve SCP and knows our AE title")
        return assoc

    def _find(self, assoc: Any, query: Dataset, what: str) -> Iterator[Dataset]:
        """Every pending answer; ArchiveUnavailable when the association dies, ValueError on a failure."""
        for status, identifier in assoc.send_c_find(query, FIND):
            code = int(status.Status) if "Status" in status else None
            if code in _PENDING:
                if identifier is not None:
                    yield identifier
                continue
            if code == 0x0000:
                return
            if code is None:
                raise ArchiveUnavailable(f"archive {self.archive} stopped answering during {what}")
            raise ValueError(f"archive {self.archive} refused {what}: {status_words(code)}")
        if not assoc.is_established:
            raise ArchiveUnavailable(f"archive {self.archive} stopped answering during {what}")

    def find_studies(self, query: Mapping[str, str]) -> list[str]:
        """StudyInstanceUIDs of the studies matching `query`, checked as the module docstring says."""
        keys = {keyword_of(k): v for k, v in query.items()}
        identifier = query_dataset("STUDY", keys, ("StudyInstanceUID",))
        assoc = self._open()
        try:
            answers = list(self._find(assoc, identifier, "the study query"))
            out, unanswered = [], set()
            for answer in answers:
                uid = str(answer.get("StudyInstanceUID") or "")
                verdicts = {k: answer_matches(answer, k, v) for k, v in keys.items()}
                wrong = [k for k, ok in verdicts.items() if ok is False]
                if wrong:
                    logger.warning("archive %s answered study %s, which does not match %s: the archive may not "
                                   "match on it; left out", self.archive, uid, wrong[0])
                    continue
                unanswered |= {k for k, ok in verdicts.items() if ok is None}
                modalities = keys.get("ModalitiesInStudy") if verdicts.get("ModalitiesInStudy") is None else None
                if uid and modalities and not self._has_modality(assoc, uid, modalities):
                    continue
                if uid:
                    out.append(uid)
            for key in sorted(unanswered - {"ModalitiesInStudy"}):
                logger.warning("archive %s does not return %s: whether its studies match the query's %s "
                               "cannot be checked", self.archive, key, key)  # the value may name a patient
            return list(dict.fromkeys(out))
        finally:
            release(assoc)

    def _has_modality(self, assoc: Any, study_uid: str, modalities: str) -> bool:
        wanted = {m.strip().upper() for m in modalities.split("\\") if m.strip()}
        series = list(self._find(assoc, query_dataset("SERIES", {"StudyInstanceUID": study_uid}, ("Modality",)),
                                 "the series query"))  # read to the end: the association stays in step
        return any(str(s.get("Modality") or "").upper() in wanted for s in series)

    def find_answers(self, study_uid: str, series_uid: str | None = None) -> list[Answer]:
        """Every instance of the study (or series): each IMAGE-level answer merged with its series'."""
        assoc = self._open()
        try:
            keys = {"StudyInstanceUID": study_uid, **({"SeriesInstanceUID": series_uid} if series_uid else {})}
            series = [s for s in self._find(assoc, query_dataset("SERIES", keys, SERIES_KEYS), "the series query")
                      if s.get("SeriesInstanceUID")]
            answers = []
            for one in series:
                uid = str(one.SeriesInstanceUID)
                query = query_dataset("IMAGE", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": uid},
                                      INSTANCE_KEYS)
                for image in self._find(assoc, query, f"the instance query of series {uid}"):
                    both = merged(one, image)
                    both.SeriesInstanceUID = uid
                    if both.get("SOPInstanceUID"):
                        answers.append(Answer.from_dataset(both))
            return answers
        finally:
            release(assoc)


def probe(archive: Destination, settings: DimseSettings) -> list[tuple[str, bool, str]]:
    """``(check, ok, words)`` for C-ECHO and C-FIND; one association, nothing retrieved."""
    from pydicom.uid import generate_uid

    try:
        assoc = open_association(archive, settings, [(VERIFICATION, _SYNTAXES), (FIND, _SYNTAXES)])
    except ArchiveUnavailable as exc:
        return [("C-ECHO", False, str(exc))]
    try:
        out = []
        if accepted(assoc, VERIFICATION):
            status = assoc.send_c_echo()
            code = int(status.Status) if status is not None and "Status" in status else None
            out.append(("C-ECHO", code == 0, f"archive {archive} answered C-ECHO: {status_words(code)}"))
        else:
            out.append(("C-ECHO", False, f"archive {archive} does not accept C-ECHO (Verification)"))
        if not accepted(assoc, FIND):
            out.append(("C-FIND", False, f"archive {archive} does not offer Study Root C-FIND"))
            return out
        finder = Finder(archive, settings)
        try:  # a study UID made now: it matches nothing, so the archive does no work
            count = sum(1 for _ in finder._find(assoc, query_dataset("STUDY", {"StudyInstanceUID": generate_uid()},
                                                                     ("StudyDate",)), "a test query"))
            out.append(("C-FIND", True, f"archive {archive} answered a Study Root C-FIND ({count} match)"))
        except (ArchiveUnavailable, ValueError) as exc:
            out.append(("C-FIND", False, str(exc)))
        return out
    finally:
        release(assoc)
