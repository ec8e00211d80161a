"""The secret key and the pseudonyms made from it (HMAC-SHA256).

One key file, kept by the site and never moved with the data, makes every replacement: the same
patient, identifier or UID gets the same pseudonym in every run and every file, so series and
studies stay together and an amended report still meets its predecessor; without the key nobody
can compute a pseudonym from a name or reverse one. Each kind of value is hashed under its own
label, so a patient ID and an accession number that happen to be equal do not share a pseudonym.

- UIDs become ``2.25.<integer>`` (the UUID-derived root of PS3.5 B.2) from 128 bits of the HMAC:
  valid, at most 44 characters;
- identifiers (patient ID, accession number, study ID) become ``ID`` + 14 hex digits (16
  characters: they fit SH);
- the patient's name becomes ``ANONYMOUS^`` + the patient's pseudonym;
- dates move back by a number of days (1 to 3650) that depends only on the patient.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from medblip_dicom.errors import MedblipError

logger = logging.getLogger(__name__)

#: The shortest key accepted, in bytes: 256 bits, the output size of the hash.
MIN_KEY_BYTES = 32
#: The largest shift back in time, in days (about ten years).
MAX_SHIFT_DAYS = 3650


class KeyFileError(MedblipError, ValueError):
    """The de-identification key file is missing, too short or cannot be written."""


def read_key(path: str | os.PathLike[str]) -> bytes:
    """The key in `path` (its bytes, surrounding whitespace removed); at least :data:`MIN_KEY_BYTES`.

    A key others can read is used, with a warning: anyone who holds it can link pseudonyms to
    the people they came from.
    """
    path = Path(path)
    try:
        key = path.read_bytes().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file ({exc.strerror}); make one with "
                           f"medblip deid --new-key {path}") from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"{path}: the key holds {len(key)} bytes, at least {MIN_KEY_BYTES} are needed; "
                           f"make one with medblip deid --new-key FILE")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s: the de-identification key is readable by others (mode %o); chmod 600 it", path,
                       stat.S_IMODE(mode))
    return key


def new_key(path: str | os.PathLike[str]) -> Path:
    """Write a new random key (64 hex digits) to `path`, readable by its owner only; never overwrites."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists already; a key is never overwritten (its pseudonyms would "
                           "change): choose another file name") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create the key file ({exc.strerror})") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(MIN_KEY_BYTES) + "\n")
    return path


class Pseudonyms:
    """Keyed, stable replacements (module docstring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise KeyFileError(f"a de-identification key needs at least {MIN_KEY_BYTES} bytes, this one has {len(key)}")
        self._key = bytes(key)

    def digest(self, label: str, value: str) -> bytes:
        """HMAC-SHA256 of `value` under `label` (the kind of value)."""
        return hmac.new(self._key, label.encode() + b"\0" + value.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """``2.25.<integer>``: the pseudonym of a UID (always the same for the same UID and key)."""
        return "2.25." + str(int.from_bytes(self.digest("uid", value.strip())[:16], "big"))

    def identifier(self, value: str, label: str = "id") -> str:
        """``ID`` + 14 hex digits; an empty value stays empty."""
        value = value.strip()
        return "ID" + self.digest(label, value).hex()[:14].upper() if value else ""

    def patient_id(self, patient: str) -> str:
        """The pseudonymous PatientID of the patient whose key is `patient` (:func:`patient_key`)."""
        return self.identifier(patient, "patient")

    def patient_name(self, patient: str) -> str:
        """``ANONYMOUS^`` + the patient's pseudonymous ID."""
        return f"ANONYMOUS^{self.patient_id(patient)}"

    def day_shift(self, patient: str) -> int:
        """Days (negative, -1 to -:data:`MAX_SHIFT_DAYS`) this patient's dates move."""
        return -(1 + int.from_bytes(self.digest("days", patient)[:8], "big") % MAX_SHIFT_DAYS)

    def fingerprint(self) -> str:
        """16 hex digits that tell two exports made with the same key apart from others (not the key)."""
        return self.digest("fingerprint", "medblip-dicom").hex()[:16]


def patient_key(ds: object) -> str:
    """What identifies the patient of `ds` for pseudonyms and date shifts: issuer and PatientID, or,
    without an ID, the name and birth date, or, without those, the study."""
    get = getattr(ds, "get")
    patient_id = str(get("PatientID", "") or "").strip()
    if patient_id:
        return f"id\0{str(get('IssuerOfPatientID', '') or '').strip()}\0{patient_id}"
    name = str(get("PatientName", "") or "").strip()
    if name:
        return f"name\0{name.upper()}\0{str(get('PatientBirthDate', '') or '').strip()}"
    return f"study\0{str(get('StudyInstanceUID', '') or '').strip()}"
