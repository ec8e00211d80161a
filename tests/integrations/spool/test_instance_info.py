"""What admission reads of a header: each attribute once, and exactly what reading it attribute by
attribute (and :class:`~medblip_dicom.selection.InstanceFacts`) gives, for every test file pydicom ships."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pydicom.data

from medblip_dicom.selection import InstanceFacts

from medblip_dicom.integrations.spool.files import instance_info

#: The test files inside pydicom's own package (listed here, so nothing is looked up online).
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
IDENTITY = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Manufacturer")


def _read_each(ds: pydicom.Dataset, keyword: str) -> str | None:
    """An attribute read on its own, as admission read each one before."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a broken value counts as absent
        return None
    text = str(value).strip() if value is not None else ""
    return text[:128] or None


def test_instance_info_reads_what_each_attribute_read_alone_gives():
    compared = 0
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            expected_facts = InstanceFacts.from_dataset(ds).to_dict()
        except Exception:  # noqa: BLE001 - files pydicom itself cannot read are not headers
            continue
        expected = [_read_each(ds, keyword) for keyword in IDENTITY]
        info = instance_info(ds, transfer_syntax_uid="1.2.840.10008.1.2.1")
        got = [info.sop_instance_uid, info.sop_class_uid, info.study_instance_uid, info.series_instance_uid,
               info.manufacturer]
        assert (got, info.facts) == (expected, expected_facts), path
        assert info.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        compared += 1
    assert compared > 50
