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
import tempfile
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
from medblip_dicom.integrations.config.file import ServiceConfig, load_config
from medblip_dicom.integrations.config.checks import ConfigError
from medblip_dicom.integrations.ingest.stow.multipart import (
    MAX_HEADER_BYTES, MAX_PADDING_BYTES, MAX_PARTS, BodyTooLarge, MultipartError, MultipartParser,
    UnsupportedMediaType, stow_boundary,
)
from medblip_dicom.pixels import dataset_to_image
from medblip_dicom.reading import read_image
from medblip_dicom.selection import Rule

from tests.support.review import api_token

# ---------------------------------------------------------------------------------------------
# The harness: CI settings, or a timed run that counts (bench/fuzz.py)

FUZZ_SECONDS = float(os.environ.get("MEDBLIP_FUZZ_SECONDS") or 0)
FUZZ_SEED = int(os.environ.get("MEDBLIP_FUZZ_SEED") or 0)
FUZZ_OUT = Path(os.environ.get("MEDBLIP_FUZZ_OUT") or Path(tempfile.gettempdir()) / "medblip-fuzz")
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
        name = test.__name__.removeprefix("test_")
        if not FUZZ_SECONDS:
            configured = settings(max_examples=ci_examples, deadline=None, derandomize=True, database=None,
                                  suppress_health_check=quiet, print_blob=True)(test)
            configured.fuzz_target = name  # type: ignore[attr-defined] - bench/fuzz.py finds the targets by it
            return configured
        findings = _Findings(name)
        inner = test.hypothesis.inner_test  # type: ignore[attr-defined]

        @functools.wraps(inner)
        def counting(*args: Any, **kwargs: Any) -> None:
            if time.monotonic() > findings.ends_at:
                raise _TimeUp()
            findings.tried += 1
            try:
                inner(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a finding: count it and go on
                generated = (bytes, str, int, float, dict, list, tuple, type(None))  # not the fixtures
                findings.record(exc, {k: v for k, v in kwargs.items() if isinstance(v, generated)})

        test.hypothesis.inner_test = counting  # type: ignore[attr-defined]
        timed = settings(max_examples=10**9, deadline=None, database=None, phases=[Phase.generate],
                         suppress_health_check=quiet)(seed(FUZZ_SEED)(test))

        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            findings.ends_at = time.monotonic() + FUZZ_SECONDS
            with contextlib.suppress(_TimeUp):
                timed(*args, **kwargs)
            findings.save()
        run.fuzz_target = name  # type: ignore[attr-defined]
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


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in `one_in` draws, and False for the simplest examples hypothesis starts with."""
    return draw(st.integers(1, one_in)) == one_in


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
            syntax = fragments and draw(st.booleans())
            out[at:at] = draw(st.sampled_from(fragments) if syntax else st.binary(min_size=1, max_size=16))
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
    if rarely(draw, 10):
        return boundary, draw(st.binary(max_size=2048)), None
    near = (b"\r\n", b"--", b"\r\n--", b"\r\n--" + boundary[:-1], b"--" + boundary, b"\r\n\r\n")
    contents = draw(st.lists(st.lists(st.sampled_from(near) | st.binary(max_size=64), max_size=6).map(b"".join),
                             min_size=1, max_size=4))
    preamble = draw(st.binary(max_size=16))
    body = bytearray(preamble)
    within_limits = True
    for content in contents:
        headers = [("Content-Type", "application/dicom")] + draw(_header_lines)
        if rarely(draw, 10):  # near the header limit
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
    held = max(MAX_HEADER_BYTES, MAX_PADDING_BYTES, len(parser.delimiter))
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


@fuzz_target(ci_examples=400)
@given(case=multipart_bodies(), sizes=st.lists(st.integers(1, 64) | st.integers(1, 5000), min_size=1, max_size=8),
       limit=st.none() | st.integers(1, 4096))
def test_multipart_parser(case: tuple[bytes, bytes, list[bytes] | None], sizes: list[int], limit: int | None) -> None:
    """Any body in any chunking: parts within the limits or a declared error, the same either way;
    a body over the limit refused; a valid body keeps its parts."""
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
    """Any Content-Type: a boundary of 1 to 70 ASCII characters, or a declared refusal."""
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


@fuzz_target(ci_examples=250)
@given(case=mutated_dicom(), from_bytes=st.booleans())
def test_dicom_reader(case: tuple[str, bytes], from_bytes: bool, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A mutated real file, from a path or bytes: an RGB picture of Columns x Rows, or a MedblipError
    naming the source; never more than MAX_READ_PEAK_BYTES at the peak."""
    name, data = case
    path = tmp_path_factory.getbasetemp() / f"fuzzed-{name}"
    path.write_bytes(data)
    source, label = (data, f"<{len(data)} bytes>") if from_bytes else (path, str(path))
    tracemalloc.start()
    try:
        with bounded_time(f"reading {name}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = read_image(source)
            image = dataset_to_image(found.dataset, label=found.label)
        assert image.mode == "RGB" and image.size == (int(found.dataset.Columns), int(found.dataset.Rows))
    except MedblipError as exc:
        assert label in str(exc), f"the error does not name the source: {exc}"
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


def _ct_small_with(**values: Any) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize("make, words", [
    (lambda: _ct_small().replace(b"UI\x14\x001.2.840.10008.1.2.1\x00", b"UI\x14\x001.2.840.10008.3.1.1\x00"),
     "TransferSyntaxUID '1.2.840.10008.3.1.1' is not a transfer syntax"),
    (lambda: _ct_small().replace(b"\x02\x00\x02\x00UI", b"\x02\x00\x02\x00U\x00"), "unknown VR"),
    (lambda: _ct_small().replace(b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00ZZ"), "unknown VR 'ZZ'"),
    (lambda: _ct_small_with(BitsAllocated=[16, 16]), "(0028,0100) BitsAllocated is not one whole number"),
    (lambda: _ct_small_with(SOPClassUID=["1.2.840.10008.5.1.4.1.1.2"] * 2), "(0008,0016) SOPClassUID holds 2 UIDs"),
], ids=["not a transfer syntax", "unknown VR in file meta", "unknown VR", "two BitsAllocated", "two SOP classes"])
def test_the_reader_names_what_the_fuzzer_broke(make: Callable[[], bytes], words: str, tmp_path: Path) -> None:
    """Inputs the reader's fuzz target found: each is refused with a reason naming the file, within
    the memory bound."""
    path = tmp_path / "found.dcm"
    path.write_bytes(make())
    refused, peak = _read_under_tracemalloc(path)
    assert refused is not None and str(path) in str(refused) and words in str(refused)
    assert peak <= MAX_READ_PEAK_BYTES


def test_a_corrupt_length_does_not_allocate_gigabytes(tmp_path: Path) -> None:
    """Pixel Data's length field set to ~4 GiB in a 39 kB file: read within the memory bound."""
    path = tmp_path / "long.dcm"
    path.write_bytes(_with_pixel_data_length(0xFFFFFFF0))
    _, peak = _read_under_tracemalloc(path)
    assert peak <= MAX_READ_PEAK_BYTES, f"reading 39 kB took {peak / 2**20:.0f} MiB at its peak"


def _read_under_tracemalloc(path: Path) -> tuple[MedblipError | None, int]:
    """Read `path` and draw its picture as the worker does: (the error it raised or None, peak bytes)."""
    refused = None
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                found = read_image(path)
                dataset_to_image(found.dataset, label=found.label)
            except MedblipError as exc:
                refused = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return refused, peak


# ---------------------------------------------------------------------------------------------
# TOML configuration: a ConfigError naming the key, or a configuration whose values have their types

def _tables() -> dict[str, dict[str, Any]]:
    """Every section of the file with its keys; a sub-table (``[node.tls]``) as a nested dict."""
    def keys(cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: keys(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else None
                for f in dataclasses.fields(cls)}
    sections = {name: keys(cls) for name, cls in typing.get_type_hints(ServiceConfig).items()}
    sections["select"].pop("rules")
    sections["select"]["rule"] = [{f.name: None for f in dataclasses.fields(Rule)}]  # [[select.rule]]
    return sections


TABLES = _tables()
_plausible = st.sampled_from([  # values some key accepts, so that documents get past the first check
    "", "auto", "cpu", "cuda:1", "127.0.0.1", "::1", "0.0.0.0", "MEDBLIP", "PACS@10.0.0.5:104", "PACS@[::1]:104",
    "http://127.0.0.1:8042/dicom-web", "https://user:pw@pacs/x", "tls://h:6514", "tcp://h:\u00b2", "~/x",
    "~nosuchuser/x", "relative/dir", "/abs/dir", "representative", "each", "caption", "skip", "CT",
    "1.2.840.10008.5.1.4.1.1.2", "(", "*.tmp", "float16"])
_scalars = (st.integers(-5, 70000) | st.integers() | st.integers(10**18, 10**400) | st.floats() | st.booleans()
            | st.text(max_size=30) | _plausible | st.datetimes() | st.dates() | st.times())
_names = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_names, inner, max_size=3),
                       max_leaves=8)


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document of the right shape: known sections (rarely an unknown one) holding known keys
    (rarely unknown ones), sub-tables where the file has them, values of random types."""
    def table(keys: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key in draw(st.lists(st.sampled_from(sorted(keys)), max_size=4, unique=True)):
            shape = keys[key]
            if isinstance(shape, dict) and draw(st.booleans()):
                out[key] = table(shape)
            elif isinstance(shape, list) and draw(st.booleans()):
                out[key] = [table(shape[0]) for _ in range(draw(st.integers(0, 2)))]
            else:
                out[key] = draw(_values)
        if rarely(draw, 10):
            out[draw(st.text(string.ascii_lowercase, min_size=1, max_size=8))] = draw(_values)
        return out
    document = {name: table(TABLES[name]) for name in draw(st.lists(st.sampled_from(sorted(TABLES)), max_size=4,
                                                                  unique=True))}
    if rarely(draw, 10):
        document[draw(st.text(string.ascii_lowercase, min_size=1, max_size=8))] = {}
    return document


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    """`value` as a TOML inline value (tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + "".join(c if c >= " " and c not in '"\\\x7f' else f"\\u{ord(c):04x}" for c in value) + '"'
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # inf, -inf, 1e+16: TOML spells them so too
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _conforms(value: Any, hint: Any) -> bool:
    """True when `value` is of the type `hint` names (unions, tuple[X, ...], dataclasses, int as float)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_conforms(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint) and all(_conforms(getattr(value, name), h)
                                               for name, h in typing.get_type_hints(hint).items())
    return isinstance(value, hint)


def _check_config_outcome(path: Path, document: dict[str, Any] | None) -> None:
    """Load `path`: a ConfigError that names the file and a table (and, for a known section, one of
    its keys), or a configuration whose every value has its declared type."""
    with bounded_time("loading one configuration file"):
        try:
            config = load_config(path)
        except ConfigError as exc:
            message = str(exc)
            assert str(path) in message, f"the error does not name the file: {message}"
            if document is not None:
                assert "not valid TOML" not in message, f"the test wrote invalid TOML: {message}"
                section = re.search(r"\[\[?([a-z0-9_.]+)\]?\]|unknown section", message)
                assert section, f"the error names no table: {message}"
                name = (section.group(1) or "").split(".")[0]
                if name in TABLES:
                    keys = set(document.get(name, {})) | set(TABLES[name]) | {"cert/key"}
                    keys |= {k for sub in document.get(name, {}).values() if isinstance(sub, dict) for k in sub}
                    assert any(re.search(rf"\b{re.escape(k)}\b", message) for k in keys), f"no key named: {message}"
            return
    assert _conforms(config, ServiceConfig), f"a value does not have its type: {config}"


@fuzz_target(ci_examples=300)
@given(document=config_documents())
def test_config_documents(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    """A document of the right shape with random values: see :func:`_check_config_outcome`."""
    path = tmp_path_factory.getbasetemp() / "fuzzed-config.toml"
    path.write_text("\n".join(f"[{_toml_key(name)}]\n" + "".join(f"{_toml_key(k)} = {_toml_value(v)}\n"
                                                              for k, v in table.items())
                              for name, table in document.items()), encoding="utf-8")
    _check_config_outcome(path, document)


_VALID_CONFIG = b"""[model]
path = "model"
[watch]
inbox = "inbox"
ignore = ["*.tmp", ".*"]
[node]
ae_title = "MEDBLIP"
port = 11112
allowed_calling_aets = ["PACS"]
[forward]
destination = "PACS@127.0.0.1:104"
[select]
per_series = "each"
[[select.rule]]
action = "skip"
modality = ["SR"]
[audit]
syslog = "tcp://127.0.0.1:6514"
"""


@fuzz_target(ci_examples=600)
@given(data=st.binary(max_size=300) | mutations(_VALID_CONFIG, (b"[", b"]", b"[[", b'"', b"=", b"\n", b"\\u", b"\xff",
                                                                 b"\x00", b"~", b"1e999", b"99999999999999999999")))
def test_config_bytes(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Random bytes and mutations of a valid file: a ConfigError naming the file, or a configuration."""
    path = tmp_path_factory.getbasetemp() / "fuzzed-config-bytes.toml"
    path.write_bytes(data)
    _check_config_outcome(path, None)


@pytest.mark.parametrize("text, words", [
    ("[worker]\nmax_wait_s = 1" + "0" * 400, "[worker] max_wait_s: must be a finite number"),
    ("[select]\nseries_quiet_s = 1" + "0" * 400, "[select] series_quiet_s: must be a number >= 0"),
    ('[watch]\ninbox = "~nosuchuser-medblip/in"', "[watch] inbox: '~nosuchuser-medblip/in'"),
    ('[audit]\nsyslog = "tcp://collector:\u00b2"', "[audit] syslog:"),
    ('[node]\ntls = "cert.pem"', "[node.tls] must be a table"),
    ("[node]\nkeep_inputs = 1979-05-27", "[node] keep_inputs: must be true or false"),
    ("[forward]\ndestination = {host = \"pacs\"}", "[forward] destination: must be AET@HOST:PORT"),
    ("[forward]\ndicomweb = [1]", "[forward.dicomweb] must be a table"),
    ("[model]\npath = [\"a\"]", "[model] path: must be a model folder"),
    ('[model]\ndevice = "cpu\\n"', "[model] device:"),
    ("[spool]\ndir = 5", "[spool] dir: must be a path"),
    ("[node]\nallowed_calling_aets = 3", "[node] allowed_calling_aets: must be a list of texts"),
    ('[output]\ndir = "out\\u0000put"', "[output] dir:"),
], ids=["huge number", "huge quiet time", "unknown user", "superscript port", "table as text", "date as bool",
        "table as destination", "array as table", "list as path", "device with newline", "number as path",
        "number as list", "NUL in path"])
def test_the_config_names_what_the_fuzzer_broke(text: str, words: str, tmp_path: Path) -> None:
    """Documents the configuration's fuzz targets found: each is a ConfigError naming the key."""
    path = tmp_path / "medblip.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(path) in str(refused.value) and words in str(refused.value)


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "medblip.toml"
    path.write_bytes(b'[model]\npath = "mod\xe8le"\n')  # Latin-1, as an editor may save it
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# Review API: never a 500, never a traceback, whatever the body, path, query or content type

_any_text = st.text(st.characters(codec=None) | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=40)
_long_text = st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "\U0001f600", "\x00", "\\", "\u2028"]),
                       st.sampled_from([2000, 2001, 20000, 20001, 200_000]))
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.integers(10**30, 10**60) | st.floats()
                     | _any_text | _long_text,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text, inner, max_size=4),
                     max_leaves=10)
_uids = st.one_of(st.sampled_from(["AI_0", "AI_1"]), st.from_regex(r"\A[0-9]{1,20}(\.[0-9]{1,20}){0,6}\Z"),
                  st.text(max_size=80), st.sampled_from(["..", "%2e%2e", "1" * 65, "1.2.", "0.0", "1..2", " 1.2"]))


_texts = _any_text | _long_text | st.sampled_from(["", " ", "\x00", "\r\n", "\u2029", "\ud800", "\\", "<script>"])
_OPERATIONS = {"worklist": ("GET", "/api/worklist"), "report": ("GET", "/api/reports/{uid}"),
               "sign": ("POST", "/api/reports/{uid}/sign"), "reject": ("POST", "/api/reports/{uid}/reject")}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


@st.composite
def api_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request to the API: mostly well-formed (a real report, a token, JSON) with one part or
    more random (method, path, UID, query, body, content type, credentials)."""
    operation = draw(st.sampled_from(sorted(_OPERATIONS) + ["other"]))
    method, route = _OPERATIONS.get(operation, ("GET", draw(st.sampled_from(["/api/{uid}", "/api/reports/{uid}/{uid}",
                                                                             "/api/reports", "/api/"]))))
    if rarely(draw, 6):
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    predecessors = st.none() | st.just("AI_SELF") | _uids
    fields = {"sign": {"text": _texts, "predecessor": predecessors}, "reject": {"reason": _texts}}.get(operation, {})
    body_kind = draw(st.sampled_from(["fields", "fields", "fields", "extra", "json", "deep", "bytes"]))
    if body_kind in ("fields", "extra"):
        body_value = {k: draw(_json if rarely(draw, 5) else v) for k, v in fields.items()}
        if body_kind == "extra" or not body_value:
            body_value[draw(_any_text)] = draw(_json)
        body = _json_bytes(body_value)
    elif body_kind == "json":
        body = _json_bytes(draw(_json))
    elif body_kind == "deep":
        depth = draw(st.integers(1, 100_000))
        body = b"[" * depth + b"]" * depth
    else:
        body = draw(st.binary(max_size=200))
    return {
        "method": method, "route": route,
        "uid": draw(_uids if rarely(draw, 4) else st.sampled_from(["AI_0", "AI_1"])),
        "query": draw(st.dictionaries(st.sampled_from(["modality", "date", "model", "state"]) | _any_text,
                                      _any_text | st.sampled_from(["CT", "signed", "rejected", "20040119"]),
                                      max_size=3)),
        "body": body,
        "content_type": draw(st.sampled_from(
            ["application/json; charset=latin-1", "text/plain", "application/x-www-form-urlencoded",
             "multipart/form-data; boundary=x", "", "application/json\x00"])
            | st.text(string.printable.strip("\r\n\x0b\x0c"), max_size=40)
            if rarely(draw, 4) else st.just("application/json")),
        "auth": draw(st.sampled_from(["none", "Bearer ", "Bearer x", "Bearer " + "x" * 5000, "Basic YWxpY2U6YWxpY2U=",
                                      "bearer\ttoken"]) if rarely(draw, 6) else st.just("token")),
    }


@fuzz_target(ci_examples=200)
@given(request=api_requests())
def test_review_api(request: dict[str, Any], client: Any) -> None:
    """Any request to the API: an answer below 500 without a traceback in it."""
    from urllib.parse import quote

    from fastapi.testclient import TestClient

    station = getattr(client, "fuzz_station", None)
    if station is None:  # the app answers as it would a browser: a server error is a 500, not an exception here
        station = TestClient(client.app, base_url="http://127.0.0.1", raise_server_exceptions=False)
        client.fuzz_station = station
        client.fuzz_token = api_token(client)
    uids = {"AI_0": client.rs.ai_uids[0], "AI_1": client.rs.ai_uids[1]}  # placeholders: the real reports
    uid = uids.get(request["uid"], request["uid"])
    body = request["body"].replace(b'"AI_SELF"', json.dumps(uid).encode())
    path = request["route"].replace("{uid}", quote(uid.encode("utf-8", "surrogatepass"), safe=""))
    headers = {"Content-Type": request["content_type"]} if request["content_type"] else {}
    headers.update(client.fuzz_token if request["auth"] == "token" else
                   {} if request["auth"] == "none" else {"Authorization": request["auth"]})
    query = {k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass")
             for k, v in request["query"].items()}
    with bounded_time(f"{request['method']} {request['route']}", 60):
        answer = station.request(request["method"], path, params=query, headers=headers,
                                 content=body if request["method"] in ("POST", "PUT") else None)
    assert answer.status_code < 500, f"{request['method']} {path} answered {answer.status_code}: {answer.text[:300]}"
    assert "Traceback" not in answer.text and 'File "' not in answer.text, "a traceback in the answer"


def test_signing_after_an_unknown_version_is_not_a_500(client: Any) -> None:
    """The review API fuzz target's finding: a sign naming a predecessor the report never had."""
    from fastapi.testclient import TestClient

    station = TestClient(client.app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    answer = station.post(f"/api/reports/{client.rs.ai_uids[0]}/sign", headers=api_token(client),
                          json={"text": "No acute findings.", "predecessor": "1.2.3"})
    assert answer.status_code == 409, f"answered {answer.status_code}: {answer.text[:200]}"
    assert "not this report's current version" in answer.text
