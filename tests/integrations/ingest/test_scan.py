"""The node's one-pass parse check: whatever it accepts, pydicom parses and check_parsable passes,
with the same header values; whatever it leaves alone is judged by pydicom exactly as before."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ImplicitVRLittleEndian, generate_uid
from tests.support.figures import seed

from medblip_dicom.dicomfile import content_offset
from medblip_dicom.reading import check_parsable

from medblip_dicom.integrations.ingest.node import HEADER_TAGS
from medblip_dicom.integrations.ingest.scan import ScannedHeader, scan
from medblip_dicom.integrations.spool.files import INFO_TAGS, instance_info

#: The test files inside pydicom's own package (listed here, so nothing is looked up online).
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
KEYWORDS = (*INFO_TAGS, "SpecificCharacterSet", "PatientID")


def pydicom_verdict(data: bytes, syntax: str) -> pydicom.Dataset | None:
    """What the node did before the scan: pynetdicom's parse, then check_parsable (None: refused)."""
    uid = UID(syntax)
    try:
        ds = read_dataset(io.BytesIO(data), uid.is_implicit_VR, uid.is_little_endian)
        check_parsable(ds)
        return ds
    except Exception:  # noqa: BLE001 - any failure is a refusal (0xC210)
        return None


def same_header(scanned: ScannedHeader, ds: pydicom.Dataset) -> None:
    for keyword in KEYWORDS:
        assert str(scanned.get(keyword)) == str(ds.get(keyword)), keyword
    assert instance_info(scanned, "1.2.3") == instance_info(ds, "1.2.3")


def received(path: Path) -> tuple[bytes, str] | None:
    """A Part 10 file's data set as a C-STORE carries it, and its transfer syntax."""
    data = path.read_bytes()
    start = content_offset(data)
    if not start:
        return None
    try:
        meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=[]).file_meta
    except Exception:  # noqa: BLE001 - not a file to learn from
        return None
    return data[start:], str(meta.get("TransferSyntaxUID", ""))


def test_every_test_file_the_scan_accepts_pydicom_parses_with_the_same_header():
    accepted = refused_by_both = 0
    for path in sorted(TEST_FILES.glob("*.dcm")):
        got = received(path)
        if got is None or not got[1]:
            continue
        data, syntax = got
        scanned = scan(data, syntax, HEADER_TAGS)
        ds = pydicom_verdict(data, syntax)
        if scanned is None:
            refused_by_both += ds is None
            continue
        assert ds is not None, f"{path.name}: the scan accepts what pydicom refuses"
        same_header(scanned, ds)
        accepted += 1
    assert accepted >= 40  # the fast path is the common path, not a corner


def _template(name: str, implicit: bool = False) -> bytes:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    ds.SOPInstanceUID = generate_uid()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data[content_offset(data):]


def _mutations(data: bytes, rng: random.Random) -> bytes:
    """One random corruption: bytes overwritten, cut, inserted or removed, or a length field changed."""
    out = bytearray(data)
    kind = rng.randrange(5)
    at = rng.randrange(len(out))
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 1:
        del out[at:]
    elif kind == 2:
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
    elif kind == 3:
        del out[at:at + rng.randint(1, 12)]
    else:  # a plausible length: near the real ones, so that structure stays almost right
        out[at:at + 2] = rng.randrange(0, 600).to_bytes(2, "little")
    return bytes(out)


@pytest.mark.parametrize(("name", "implicit"), [("CT_small.dcm", False), ("CT_small.dcm", True),
                                                 ("rtplan.dcm", False), ("JPEG2000.dcm", False)])
def test_corrupted_data_sets_the_scan_accepts_pydicom_parses_with_the_same_header(name, implicit):
    data = _template(name, implicit)
    syntax = ImplicitVRLittleEndian if implicit else str(
        pydicom.dcmread(pydicom.data.get_testdata_file(name), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert scan(data, syntax, HEADER_TAGS) is not None  # the untouched data set takes the fast path
    rng = random.Random(seed() * 1000 + len(data))
    accepted = left = 0
    for _ in range(400):
        mutated = _mutations(data, rng)
        scanned = scan(mutated, syntax, HEADER_TAGS)
        if scanned is None:
            left += 1
            continue
        ds = pydicom_verdict(mutated, syntax)
        assert ds is not None, "the scan accepts a corrupted data set pydicom refuses"
        same_header(scanned, ds)
        accepted += 1
    assert left > 50 and accepted > 50  # both ways were exercised


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.3.4.5"])
def test_other_transfer_syntaxes_are_left_to_pydicom(syntax):
    assert scan(_template("CT_small.dcm"), syntax, HEADER_TAGS) is None


def test_a_value_cut_short_and_a_stray_delimiter_are_left_to_pydicom():
    data = _template("CT_small.dcm")
    assert scan(data[:-10], "1.2.840.10008.1.2.1", HEADER_TAGS) is None
    assert scan(data + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", "1.2.840.10008.1.2.1", HEADER_TAGS) is None
    assert scan(data + b"\x10\x00\x10\x00ZZ\x04\x00abcd", "1.2.840.10008.1.2.1", HEADER_TAGS) is None


def test_the_node_stores_a_common_instance_without_pynetdicoms_parse(tmp_path, monkeypatch):
    from pynetdicom.events import Event

    from medblip_dicom.integrations.spool import Spool

    from tests.integrations.ingest.test_admit import GOOD, by_cstore

    def parsed(self):  # noqa: ANN001, ANN202 - the property it replaces
        raise AssertionError("pynetdicom parsed the data set")

    monkeypatch.setattr(Event, "dataset", property(parsed))
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        assert by_cstore(spool, GOOD, tmp_path) == (0x0000, None)
        (job,) = spool.jobs()
    expected = instance_info(pydicom.dcmread(io.BytesIO(GOOD)), "1.2.840.10008.1.2.1")
    assert (job.sop_instance_uid, job.study_instance_uid, job.series_instance_uid) == (
        expected.sop_instance_uid, expected.study_instance_uid, expected.series_instance_uid)
