"""Fuzz targets for the inputs an outsider controls: no input may end in a traceback, a hang or a 500.

- the STOW-RS multipart parser and its Content-Type (random bodies, mutated valid bodies, any chunking);
- the DICOM reader and the pixel path (byte mutations of real files: flips, inserts, deletes,
  truncations, corrupted length fields), with the memory a read may take bounded;
- the service's TOML configuration (documents of the right shape with random values, random bytes);
- the review station's JSON API (random bodies, UIDs, query strings, content types, tokens).

Each target states what the only allowed outcomes are and checks them on every generated input.
By default (CI) every target runs a fixed, derandomized set of examples taking a few seconds.
``MEDBLIP_FUZZ_SECONDS=N`` turns every target into an N-second run from the seed
``MEDBLIP_FUZZ_SEED`` that counts the inputs tried and the failures found instead of stopping at the
first, and writes them (with the first failing input) under ``MEDBLIP_FUZZ_OUT``: ``bench/fuzz.py``
drives that mode and prints the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import re
import signal
import string
import time
import tracemalloc
import traceback
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement

from medblip_dicom.errors import MedblipError
from medblip_dicom.integrations.config import ServiceConfig, load_config
from medblip_dicom.integrations.config_checks import ConfigError
from medblip_dicom.integrations.dicomweb.multipart import (
    MAX_HEADER_BYTES, MAX_PADDING_BYTES, MAX_PARTS, BodyTooLarge, MultipartError, MultipartParser, UnsupportedMediaType, stow_boundary,
)
from medblip_dicom.pixels import dataset_to_image
from medblip_dicom.reading import read_image
from medblip_dicom.selection import Rule

from tests.review.conftest import api_token

# ---------------------------------------------------------------------------------------------
# The harness: CI settings, or a timed run that counts (bench/fuzz.py)

FUZZ_SECONDS = float(os.environ.get("MEDBLIP_FUZZ_SECONDS") or 0)
FUZZ_SEED = int(os.environ.get("MEDBLIP_FUZZ_SEED") or 0)
FUZZ_OUT = Path(os.environ.get("MEDBLIP_FUZZ_OUT") or "fuzz-findings")
#: No single input may take longer than this (a hang); generous for a loaded 2-core machine.
HANG_S = 20.0


class _TimeUp(BaseException):
    """Ends a timed run: not an Exception, so hypothesis does not take it for a finding."""


@dataclasses.dataclass
class _Findings:
    """What a timed run of one target saw: inputs tried, failing inputs, kinds of failure."""

    target: str
    tried: int = 0
    failures: int = 0
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    ends_at: float = 0.0

    def record(self, exc: BaseException, inputs: dict[str, Any]) -> None:
        self.failures += 1
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        kind = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}" if frame else type(exc).__name__
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if self.failures == 1:
            folder = FUZZ_OUT / self.target
            folder.mkdir(parents=True, exist_ok=True)
            for name, value in inputs.items():
                if isinstance(value, (bytes, bytearray)):
                    (folder / f"{name}.bin").write_bytes(value)
            (folder / "input.txt").write_text("\n".join(f"{k} = {v!r}" for k, v in inputs.items()), encoding="utf-8")
            (folder / "traceback.txt").write_text("".join(traceback.format_exception(exc)), encoding="utf-8")

    def save(self) -> None:
        FUZZ_OUT.mkdir(parents=True, exist_ok=True)
        (FUZZ_OUT / f"{self.target}.json").write_text(json.dumps(
            {"target": self.target, "tried": self.tried, "failures": self.failures, "kinds": self.kinds,
             "seed": FUZZ_SEED, "seconds": FUZZ_SECONDS}, indent=1), encoding="utf-8")


def fuzz_target(ci_examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Apply the CI settings (`ci_examples` derandomized examples), or turn the test into a timed,
    counting run under ``MEDBLIP_FUZZ_SECONDS``. Goes above ``@given``."""
    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        quiet = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                 HealthCheck.filter_too_much, HealthCheck.large_base_example]
        if not FUZZ_SECONDS:
            return settings(max_examples=ci_examples, deadline=None, derandomize=True, database=None,
                            suppress_health_check=quiet, print_blob=True)(test)
        findings = _Findings(test.__name__.removeprefix("test_"))
        inner = test.hypothesis.inner_test  # type: ignore[attr-defined]

        @functools.wraps(inner)
        def counting(*args: Any, **kwargs: Any) -> None:
            if time.monotonic() > findings.ends_at:
                raise _TimeUp()
            findings.tried += 1
            try:
                inner(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a finding: count it and go on
                findings.record(exc, {k: v for k, v in kwargs.items() if not hasattr(v, "request")})

        test.hypothesis.inner_test = counting  # type: ignore[attr-defined]
        timed = settings(max_examples=10**9, deadline=None, database=None, phases=[Phase.generate],
                         suppress_health_check=quiet)(seed(FUZZ_SEED)(test))

        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            findings.ends_at = time.monotonic() + FUZZ_SECONDS
            with contextlib.suppress(_TimeUp):
                timed(*args, **kwargs)
            findings.save()
        return run
    return decorate


class Hang(AssertionError):
    """One input took longer than :data:`HANG_S`."""


@contextlib.contextmanager
def bounded_time(what: str, seconds: float = HANG_S) -> Iterator[None]:
    """Fail with :class:`Hang` when the block runs longer than `seconds` (SIGALRM: main thread only)."""
    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"{what} took more than {seconds:.0f} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def mutations(draw: st.DrawFn, data: bytes, fragments: tuple[bytes, ...] = ()) -> bytes:
    """`data` with 1 to 4 byte mutations: flip, insert (random bytes or a syntax fragment), delete,
    duplicate a slice, truncate."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
        if op == "flip" and at < len(out):
            out[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            piece = draw(st.sampled_from(fragments) if fragments and draw(st.booleans()) else st.binary(min_size=1, max_size=16))
            out[at:at] = piece
        elif op == "delete":
            del out[at:at + draw(st.integers(1, 64))]
        elif op == "duplicate":
            out[at:at] = out[at:at + draw(st.integers(1, 256))]
        elif op == "truncate":
            del out[at:]
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Multipart: only parts or the parser's declared errors; limits hold; the chunking changes nothing

BOUNDARY_CHARS = string.ascii_letters + string.digits + "'()+_,-./:=? "
_boundaries = st.text(BOUNDARY_CHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
_header_lines = st.lists(st.tuples(st.text(string.ascii_letters + "-", min_size=1, max_size=20),
                                   st.text(string.printable.strip("\r\n\x0b\x0c"), max_size=60)), max_size=3)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, bytes, list[bytes] | None]:
    """(boundary, body, the part contents when the body is valid as built)."""
    boundary = draw(_boundaries).encode("ascii")
    if draw(st.integers(0, 9)) == 0:
        return boundary, draw(st.binary(max_size=2048)), None
    near = (b"\r\n", b"--", b"\r\n--", b"\r\n--" + boundary[:-1], b"--" + boundary, b"\r\n\r\n")
    contents = draw(st.lists(st.lists(st.sampled_from(near) | st.binary(max_size=64), max_size=6).map(b"".join),
                             min_size=1, max_size=4))
    preamble = draw(st.binary(max_size=16))
    body = bytearray(preamble)
    within_limits = True
    for content in contents:
        headers = [("Content-Type", "application/dicom")] + draw(_header_lines)
        if draw(st.integers(0, 9)) == 0:  # near the header limit
            headers.append(("X-Long", "y" * draw(st.integers(MAX_HEADER_BYTES - 100, MAX_HEADER_BYTES + 100))))
        padding = draw(st.sampled_from([b"", b" ", b"\t ", b" " * (MAX_PADDING_BYTES + 1)]))  # transport padding
        block = "\r\n".join(f"{k}: {v}" for k, v in headers).encode()
        within_limits &= len(padding) <= MAX_PADDING_BYTES and len(block) <= MAX_HEADER_BYTES
        body += b"\r\n--" + boundary + padding + b"\r\n" + block + b"\r\n\r\n" + content
    body += b"\r\n--" + boundary + b"--" + draw(st.binary(max_size=16))
    if not preamble and draw(st.booleans()):
        del body[:2]  # a body may start with its first delimiter line
    if draw(st.booleans()):
        return boundary, draw(mutations(bytes(body), near + (b"\r\n--" + boundary + b"--",))), None
    valid = within_limits and not any(b"\r\n--" + boundary in c for c in [preamble, *contents])
    return boundary, bytes(body), contents if valid else None


def _chunks(body: bytes, sizes: list[int]) -> Iterator[bytes]:
    at, i = 0, 0
    while at < len(body):
        yield body[at:at + sizes[i % len(sizes)]]
        at += sizes[i % len(sizes)]
        i += 1


def _parse(boundary: bytes, body: bytes, sizes: list[int], limit: int) -> list[tuple[dict[str, str], bytes]] | str:
    """The parts of `body` fed in chunks of `sizes`, or the name of the declared error; checks the
    bounds the parser promises on the way."""
    parser = MultipartParser(boundary, max_body_bytes=limit, spill_bytes=256)
    held = max(MAX_HEADER_BYTES, 1024, len(parser.delimiter))
    try:
        for chunk in _chunks(body, sizes):
            parser.feed(chunk)
            # Memory stays bounded: at most one chunk plus a header block or a delimiter unparsed.
            assert len(parser._buf) <= len(chunk) + held + 4, "the parser holds more than a chunk"
        parts = parser.close()
    except (BodyTooLarge, MultipartError) as exc:
        return type(exc).__name__
    assert len(body) <= limit and 1 <= len(parts) <= MAX_PARTS
    out = []
    for part in parts:
        data = part.read()
        assert part.size == len(data) <= limit
        assert sum(len(k) + len(v) + 1 for k, v in part.headers.items()) <= MAX_HEADER_BYTES, "headers over the limit"
        out.append((part.headers, data))
        part.close()
    return out


@fuzz_target(ci_examples=300)
@given(case=multipart_bodies(), sizes=st.lists(st.integers(1, 64) | st.integers(1, 5000), min_size=1, max_size=8),
       limit=st.none() | st.integers(1, 4096))
def test_multipart_parser(case: tuple[bytes, bytes, list[bytes] | None], sizes: list[int], limit: int | None) -> None:
    boundary, body, contents = case
    limit = limit or 1 << 20
    with bounded_time("parsing one body"):
        whole = _parse(boundary, body, [max(len(body), 1)], limit)
        chunked = _parse(boundary, body, sizes, limit)
    if len(body) > limit:
        assert whole == "BodyTooLarge" and isinstance(chunked, str), "a body over the limit was accepted"
    if isinstance(whole, list) or isinstance(chunked, list):
        assert whole == chunked, "the chunking changed the parts"
    if contents is not None and len(body) <= limit:
        assert isinstance(whole, list) and [data for _, data in whole] == contents, "a valid body lost its parts"


_content_types = st.one_of(
    st.text(max_size=200),
    st.builds(lambda b, t, x: f'multipart/related; type="{t}"; boundary="{b}"{x}', st.text(max_size=80),
              st.sampled_from(["application/dicom", "APPLICATION/DICOM", "image/jpeg", ""]), st.text(max_size=20)),
    st.builds(lambda parts: ";".join(parts), st.lists(st.sampled_from(
        ["multipart/related", " type=application/dicom", 'type="application/dicom"', "boundary=", 'boundary="',
         "boundary=x", '"', "\\", "=", " ", "boundary=" + "y" * 70]) | st.text(max_size=10), max_size=8)),
)


@fuzz_target(ci_examples=1000)
@given(content_type=_content_types)
def test_stow_content_type(content_type: str) -> None:
    with bounded_time("reading one Content-Type"):
        try:
            boundary = stow_boundary(content_type)
        except (UnsupportedMediaType, MultipartError):
            return
    assert 1 <= len(boundary) <= 70 and boundary.decode("ascii")


# ---------------------------------------------------------------------------------------------
# DICOM reader and pixel path: a picture or a MedblipError naming the file; memory bounded

#: A read may not take more Python memory than this at its peak (a mutated length must not make
#: it allocate gigabytes); the pixel path of the largest frame the reader lets through stays below.
MAX_READ_PEAK_BYTES = 1 << 30
_LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _monochrome1_cr() -> bytes:
    """A 128 x 128 cut of pydicom-data's MONOCHROME1 CR (its own header, a real 7 MB file is too slow)."""
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    ds.PixelData = ds.pixel_array[:128, :128].copy().tobytes()
    ds.Rows = ds.Columns = 128
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@functools.cache
def dicom_seeds() -> dict[str, tuple[bytes, tuple[tuple[int, int], ...]]]:
    """Real files: name -> (bytes, (offset, size) of each element's length field)."""
    files = {name: Path(get_testdata_file(name)).read_bytes()
             for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "emri_small.dcm")}
    files["CR_monochrome1.dcm"] = _monochrome1_cr()
    seeds = {}
    for name, data in files.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        fields = []
        for dataset, implicit in ((ds.file_meta, False), (ds, ds.original_encoding[0])):
            for tag in list(dataset.keys()):
                raw = dataset.get_item(tag)
                if isinstance(raw, RawDataElement) and raw.value_tell:
                    size = 4 if implicit or raw.VR in _LONG_LENGTH_VRS else 2
                    fields.append((raw.value_tell - size, size))
        seeds[name] = (data, tuple(fields))
    return seeds


@st.composite
def mutated_dicom(draw: st.DrawFn) -> tuple[str, bytes]:
    """(seed name, its bytes with byte mutations and corrupted length fields)."""
    name = draw(st.sampled_from(sorted(dicom_seeds())))
    data, fields = dicom_seeds()[name]
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):  # corrupt length fields (before the other mutations shift them)
        at, size = draw(st.sampled_from(fields))
        old = int.from_bytes(out[at:at + size], "little")
        value = draw(st.sampled_from([0, 1, old + 1, old * 2, old * 256, len(data), 2**31 - 1, 2**31, 2**32 - 2,
                                      2**32 - 1]) | st.integers(0, 2**32 - 1)) % (1 << (8 * size))
        out[at:at + size] = value.to_bytes(size, "little")
    if draw(st.booleans()):
        return name, bytes(out)
    return name, draw(mutations(bytes(out), (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xfe\xff\x00\xe0",
                                             b"\xfe\xff\xdd\xe0", b"OB\x00\x00", b"SQ\x00\x00", b"UN\x00\x00")))


@fuzz_target(ci_examples=150)
@given(case=mutated_dicom())
def test_dicom_reader(case: tuple[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> None:
    name, data = case
    path = tmp_path_factory.getbasetemp() / f"fuzzed-{name}"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with bounded_time(f"reading {name}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = read_image(path)
            image = dataset_to_image(found.dataset, label=found.label)
        assert image.mode == "RGB" and image.size == (int(found.dataset.Columns), int(found.dataset.Rows))
    except MedblipError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= MAX_READ_PEAK_BYTES, f"reading {len(data)} bytes took {peak / 2**20:.0f} MiB at its peak"


def _ct_small() -> bytes:
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def _with_pixel_data_length(length: int) -> bytes:
    data = bytearray(_ct_small())
    at = pydicom.dcmread(io.BytesIO(data)).get_item(0x7FE00010).value_tell - 4
    data[at:at + 4] = length.to_bytes(4, "little")
    return bytes(data)


def _with_two_bits_allocated() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BitsAllocated = [16, 16]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize("make, words", [
    (lambda: _ct_small().replace(b"UI\x14\x001.2.840.10008.1.2.1\x00", b"UI\x14\x001.2.840.10008.3.1.1\x00"),
     "TransferSyntaxUID '1.2.840.10008.3.1.1' is not a transfer syntax"),
    (lambda: _ct_small().replace(b"\x02\x00\x02\x00UI", b"\x02\x00\x02\x00U\x00"), "unknown VR"),
    (lambda: _ct_small().replace(b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00ZZ"), "unknown VR 'ZZ'"),
    (_with_two_bits_allocated, "(0028,0100) BitsAllocated is not one whole number"),
], ids=["not a transfer syntax", "unknown VR in file meta", "unknown VR", "two BitsAllocated"])
def test_the_reader_names_what_the_fuzzer_broke(make: Callable[[], bytes], words: str, tmp_path: Path) -> None:
    """Inputs the reader's fuzz target found: each is refused with a reason naming the file, within
    the memory bound."""
    path = tmp_path / "found.dcm"
    path.write_bytes(make())
    tracemalloc.start()
    try:
        with pytest.raises(MedblipError) as refused, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = read_image(path)
            dataset_to_image(found.dataset, label=found.label)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(refused.value) and words in str(refused.value)
    assert peak <= MAX_READ_PEAK_BYTES


def test_a_corrupt_length_does_not_allocate_gigabytes(tmp_path: Path) -> None:
    """Pixel Data's length field set to ~4 GiB in a 39 kB file: read within the memory bound."""
    path = tmp_path / "long.dcm"
    path.write_bytes(_with_pixel_data_length(0xFFFFFFF0))
    tracemalloc.start()
    try:
        with contextlib.suppress(MedblipError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = read_image(path)
            dataset_to_image(found.dataset, label=found.label)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= MAX_READ_PEAK_BYTES, f"reading 39 kB took {peak / 2**20:.0f} MiB at its peak"
