"""The weights digest is computed once per set of weight files, and again whenever one changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from medblip_dicom import captioner as captioner_module
from medblip_dicom import digestcache
from medblip_dicom.captioner import Captioner


@pytest.fixture
def model(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDBLIP_CACHE_DIR", str(tmp_path / "cache"))
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture
def hashed(monkeypatch) -> list[int]:
    """Counts the real digest computations."""
    calls: list[int] = []
    real = captioner_module.weights_digest

    def counting(net):  # noqa: ANN001, ANN202
        calls.append(1)
        return real(net)

    monkeypatch.setattr(captioner_module, "weights_digest", counting)
    return calls


def load(path: Path) -> str:
    return Captioner.load(path, device="cpu", dtype="float32").identity.weights_sha256


def test_second_load_takes_the_digest_from_the_cache(model, hashed, tmp_path):
    first = load(model)
    assert len(hashed) == 1 and list((tmp_path / "cache" / "digests").glob("*.json"))
    assert load(model) == first
    assert len(hashed) == 1


def test_touching_or_rewriting_the_weights_invalidates_it(model, hashed):
    first = load(model)
    weights = model / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load(model) == first and len(hashed) == 2  # same bytes, same digest, but computed again

    # Same size, other bytes (one weight flipped in the data area), mtime put back: still noticed.
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    st = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load(model) != first and len(hashed) == 3


def test_a_copy_elsewhere_has_its_own_entry(model, hashed, tmp_path):
    first = load(model)
    other = Path(shutil.copytree(model, tmp_path / "copy"))
    assert load(other) == first and len(hashed) == 2  # another path: not trusted from the cache


def test_an_unwritable_cache_only_costs_time(model, hashed, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MEDBLIP_CACHE_DIR", str(blocker))
    assert load(model) == load(model) and len(hashed) == 2


def test_a_corrupt_entry_is_ignored(model, hashed):
    first = load(model)
    (entry,) = digestcache.cache_dir().glob("*.json")
    entry.write_text('{"weights_sha256": "not a digest"}')
    assert load(model) == first and len(hashed) == 2


def test_no_weights_no_fingerprint(tmp_path):
    assert digestcache.fingerprint(tmp_path) is None
    assert digestcache.fingerprint(tmp_path / "missing") is None
