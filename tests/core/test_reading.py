"""Reading: what is accepted, what is refused, and how the refusal is worded."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from medblip_dicom.errors import DicomReadError, InvalidDicomError, NotAnImageError, NotDicomError
from medblip_dicom.reading import read_image


class TestAccepted:
    def test_path_bytes_and_dataset_give_the_same_instance(self, td):
        path = td("CT_small.dcm")
        from_path = read_image(path)
        from_bytes = read_image(Path(path).read_bytes())
        from_ds = read_image(pydicom.dcmread(path))
        uids = {r.dataset.SOPInstanceUID for r in (from_path, from_bytes, from_ds)}
        assert len(uids) == 1
        assert from_path.label == path
        assert from_bytes.label.startswith("<") and "bytes" in from_bytes.label

    def test_callers_dataset_is_not_modified(self, td):
        ds = pydicom.dcmread(td("CT_small.dcm"))
        del ds.file_meta.TransferSyntaxUID
        ds.set_original_encoding(False, True)
        before = ds.to_json_dict()
        out = read_image(ds).dataset
        assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert "TransferSyntaxUID" not in ds.file_meta
        assert ds.to_json_dict() == before

    @pytest.mark.parametrize("name", ["ExplVR_BigEnd.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm",
                                      "JPEGLSNearLossless_08.dcm" and "emri_small_jpeg_ls_lossless.dcm",
                                      "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"])
    def test_compressed_and_big_endian_syntaxes_read(self, td, name):
        assert read_image(td(name)).dataset.Rows > 0


class TestRefused:
    def test_empty_file(self, tmp_path):
        f = tmp_path / "empty.dcm"
        f.write_bytes(b"")
        with pytest.raises(NotDicomError, match=r"empty\.dcm: empty file"):
            read_image(f)

    def test_text_file(self, tmp_path):
        f = tmp_path / "notes.txt"
        f.write_text("not an image at all\n" * 20)
        with pytest.raises(NotDicomError, match="notes.txt: not a DICOM file"):
            read_image(f)

    def test_jpeg_renamed_dcm(self, tmp_path):
        from PIL import Image

        f = tmp_path / "photo.dcm"
        Image.new("RGB", (16, 16), "white").save(f, format="JPEG")
        with pytest.raises(NotDicomError, match="photo.dcm"):
            read_image(f)

    def test_missing_file(self, tmp_path):
        with pytest.raises(DicomReadError, match="no such file"):
            read_image(tmp_path / "nope.dcm")

    def test_structured_report(self, td):
        with pytest.raises(NotAnImageError, match=r"test-SR\.dcm: holds no Pixel Data.*Comprehensive SR"):
            read_image(td("test-SR.dcm"))

    def test_rt_plan(self, td):
        with pytest.raises(NotAnImageError, match="RT Plan Storage"):
            read_image(td("rtplan.dcm"))

    def test_dicomdir(self, td):
        with pytest.raises(NotAnImageError, match="DICOMDIR"):
            read_image(td("DICOMDIR"))

    def test_encapsulated_pdf(self, td):
        ds = pydicom.dcmread(td("CT_small.dcm"))
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
        del ds.PixelData
        ds.EncapsulatedDocument = b"%PDF-1.4 fake"
        with pytest.raises(NotAnImageError, match="Encapsulated PDF"):
            read_image(ds)

    def test_segmentation(self, td):
        with pytest.raises(NotAnImageError, match="Segmentation"):
            read_image(td("liver_1frame.dcm"))

    def test_truncated_file(self, td, tmp_path):
        data = Path(td("CT_small.dcm")).read_bytes()
        f = tmp_path / "cut.dcm"
        f.write_bytes(data[: len(data) // 3])
        with pytest.raises(DicomReadError, match="cut.dcm"):
            read_image(f)

    def test_image_class_without_pixel_data_says_truncated(self, td):
        ds = pydicom.dcmread(td("CT_small.dcm"))
        del ds.PixelData
        with pytest.raises(InvalidDicomError, match="CT Image Storage.*no Pixel Data.*truncated"):
            read_image(ds)

    def test_missing_study_uid_names_the_attribute(self, td):
        ds = pydicom.dcmread(td("CT_small.dcm"))
        del ds.StudyInstanceUID
        with pytest.raises(InvalidDicomError, match=r"\(0020,000D\) StudyInstanceUID"):
            read_image(ds)

    def test_absurd_dimensions_refused_before_decoding(self, td):
        ds = pydicom.dcmread(td("CT_small.dcm"))
        ds.Rows = ds.Columns = 65535
        ds.NumberOfFrames = 1
        with pytest.raises(InvalidDicomError, match="refusing to decode"):
            read_image(ds)


class TestCheckParsable:
    """The node's cheap decode check: VRs and sequences at any depth, values left lazy."""

    @staticmethod
    def _read(data: bytes, implicit: bool = False) -> pydicom.Dataset:
        import io

        from pydicom.filereader import read_dataset

        return read_dataset(io.BytesIO(data), implicit, True)

    @staticmethod
    def _encode(ds: pydicom.Dataset, implicit: bool = False) -> bytes:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, ds)
        return fp.getvalue()

    def _nested(self) -> pydicom.Dataset:
        inner = pydicom.Dataset()
        inner.CodeValue = "121"
        outer = pydicom.Dataset()
        outer.ConceptNameCodeSequence = [inner]
        ds = pydicom.Dataset()
        ds.PatientName = "Doe^Jane"
        ds.ContentSequence = [outer]
        return ds

    @pytest.mark.parametrize("implicit", [False, True])
    def test_good_data_sets_pass(self, td, implicit):
        from medblip_dicom.reading import check_parsable

        check_parsable(self._read(self._encode(self._nested(), implicit), implicit))
        ct = pydicom.dcmread(td("CT_small.dcm"))
        check_parsable(self._read(self._encode(ct)))

    def test_unknown_vr_at_top_level(self):
        from medblip_dicom.reading import check_parsable

        data = self._encode(self._nested()) + b"\x10\x00\x20\x00ZZ\x04\x00abcd"
        with pytest.raises(ValueError, match="unknown VR 'ZZ'"):
            check_parsable(self._read(data))

    def test_unknown_vr_two_sequences_deep(self):
        from medblip_dicom.reading import check_parsable

        data = bytearray(self._encode(self._nested()))
        at = data.index(b"\x08\x00\x00\x01SH")  # (0008,0100) CodeValue inside the inner item
        data[at + 4:at + 6] = b"QQ"
        ds = self._read(bytes(data))
        with pytest.raises(ValueError, match="unknown VR 'QQ'"):
            check_parsable(ds)

    def test_values_are_not_all_converted(self, td):
        from medblip_dicom.reading import check_parsable

        ds = self._read(self._encode(pydicom.dcmread(td("CT_small.dcm"))))
        check_parsable(ds)
        raw = [tag for tag in ds.keys() if type(ds.get_item(tag)).__name__ == "RawDataElement"]
        assert len(raw) > 0.9 * len(ds)  # the check left them lazy: that is what makes it cheap
