"""The one UID test of the project (:func:`medblip_dicom.uids.is_dicom_uid`) and stable UIDs."""

from __future__ import annotations

import pytest

from medblip_dicom.uids import UID_MAX_LENGTH, is_dicom_uid, stable_uid


@pytest.mark.parametrize("text", ["1.2.840.10008.5.1.4.1.1.88.33", "0.0", "2.25." + "9" * 59, "1.02.3"])
def test_digits_and_dots_up_to_64_characters_are_uids(text):
    assert len(text) <= UID_MAX_LENGTH and is_dicom_uid(text)


@pytest.mark.parametrize("text", ["", "1..2", "1.2.", ".1.2", "1.2\n", " 1.2", "1.2a", "../1", "1/2", "1.2.3" + ".4" * 30,
                                  "\u0661.\u0662", "1" * 65, None, 1.2])
def test_anything_else_is_not(text):
    assert not is_dicom_uid(text)


def test_stable_uids_are_uids_and_depend_on_every_part_in_order():
    uid = stable_uid("a", "b")
    assert is_dicom_uid(uid) and uid.startswith("2.25.") and uid == stable_uid("a", "b")
    assert uid != stable_uid("b", "a") and uid != stable_uid("ab")
