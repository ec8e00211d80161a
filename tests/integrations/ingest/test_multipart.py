"""The streaming multipart/related parser: the same parts whatever the chunking, and its refusals."""

from __future__ import annotations

import pytest

from medblip_dicom.integrations.ingest.stow.multipart import (
    BodyTooLarge, MultipartError, MultipartParser, UnsupportedMediaType, stow_boundary,
)

PARTS = [b"first\r\n--not-the-boundary\r\n", b"", b"\r\n--b0undar" * 50 + b"\r\n\r\n-"]  # near-delimiters
BODY = (b"preamble to ignore\r\n"
        + b"".join(b"--b0undary \t\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in PARTS)
        + b"--b0undary--\r\nepilogue to ignore")


def _parse(body: bytes, step: int, limit: int = 1 << 20) -> list[bytes]:
    parser = MultipartParser(b"b0undary", max_body_bytes=limit)
    for i in range(0, len(body), step):
        parser.feed(body[i:i + step])
    parts = parser.close()
    assert all(p.media_type == "application/dicom" for p in parts)
    return [p.read() for p in parts]


@pytest.mark.parametrize("step", [1, 2, 7, 13, 64, 4096, len(BODY)])
def test_the_same_parts_whatever_the_chunking(step):
    assert _parse(BODY, step) == PARTS


def test_a_part_may_spill_to_a_temporary_file():
    big = bytes(range(256)) * 200
    parser = MultipartParser(b"b", max_body_bytes=1 << 20, spill_bytes=1024)
    parser.feed(b"--b\r\n\r\n" + big + b"\r\n--b--")
    (part,) = parser.close()
    assert part.headers == {} and part.size == len(big) and part.read() == big and part.body._rolled


@pytest.mark.parametrize("body, words", [
    (BODY[:-40], "truncated"),
    (BODY.replace(b"b0undary", b"other"), "does not contain the boundary"),
    (b"--b0undary\r\nno colon\r\n\r\nx\r\n--b0undary--", "NAME: VALUE"),
    (b"--b0undary--", "holds no part"),
    (b"--b0undary\r\n" + b"X-Long: " + b"y" * 20000, "part headers longer"),
])
def test_malformed_bodies_are_refused(body, words):
    with pytest.raises(MultipartError, match=words):
        _parse(body, 1000)


def test_the_limit_is_enforced_while_feeding():
    parser = MultipartParser(b"b", max_body_bytes=100)
    parser.feed(b"x" * 100)
    with pytest.raises(BodyTooLarge):
        parser.feed(b"y")


def test_the_content_type_names_a_dicom_multipart_and_its_boundary():
    assert stow_boundary('Multipart/Related; type="application/dicom"; boundary="a b:c"') == b"a b:c"
    assert stow_boundary("multipart/related;type=application/dicom;boundary=xyz") == b"xyz"
    for bad in ("application/dicom", "multipart/related; boundary=x",
                'multipart/related; type="image/jpeg"; boundary=x'):
        with pytest.raises(UnsupportedMediaType):
            stow_boundary(bad)
    with pytest.raises(MultipartError, match="no valid boundary"):
        stow_boundary('multipart/related; type="application/dicom"; boundary=' + "x" * 71)
