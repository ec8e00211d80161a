"""The inputs of a batch job: manifests (``.csv``, ``.jsonl``, ``.parquet`` with a ``path``
column) and earlier results tables for ``--resume``.

A manifest is how an archive of millions of files is handed to Ray: listed once (``find``, a PACS
export's index, a bucket listing) instead of having every worker walk folders. Its paths must be
readable by every Ray worker (a shared file system, or a local path on a one-machine run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")


class ManifestError(ValueError):
    """A manifest or results table that cannot be used; the message names the file."""


def is_manifest(path: str | os.PathLike[str]) -> bool:
    """True for a file whose name ends in one of :data:`MANIFEST_SUFFIXES` (never a folder)."""
    p = Path(path)
    return p.suffix.lower() in MANIFEST_SUFFIXES and not p.is_dir()


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a ``.csv``, ``.jsonl`` or ``.parquet`` table; a :class:`ManifestError` says what is wrong."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ManifestError(f"{p}: not a manifest or results table (the name must end in .csv, .jsonl or .parquet)")
    try:
        if suffix == ".csv":
            return pd.read_csv(p, dtype=str, keep_default_na=False)
        if suffix == ".jsonl":
            return pd.read_json(p, lines=True, dtype=False)
        return pd.read_parquet(p)
    except FileNotFoundError:
        raise ManifestError(f"{p}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for a damaged file
        raise ManifestError(f"{p}: cannot be read as {suffix[1:]} ({type(exc).__name__}: {str(exc)[:200]})") from None


def read_manifest(path: str | os.PathLike[str]) -> list[str]:
    """The paths a manifest lists, in its order; relative paths are taken relative to the manifest."""
    table = read_table(path)
    if "path" not in table.columns:
        raise ManifestError(f"{path}: has no 'path' column (columns: {', '.join(map(str, table.columns)) or 'none'})")
    base = Path(path).parent
    out = []
    for row, value in enumerate(table["path"].tolist(), start=1):
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(f"{path}: row {row} has an empty path")
        value = value.strip()
        out.append(value if "://" in value or os.path.isabs(value) else os.fspath(base / value))
    return out


def done_paths(results: str | os.PathLike[str]) -> pd.DataFrame:
    """The rows of an earlier results table (``--resume``), one per path (the last one wins)."""
    table = read_table(results)
    if "path" not in table.columns or "status" not in table.columns:
        raise ManifestError(f"{results}: not a medblip batch results table (it needs 'path' and 'status' columns)")
    return table.drop_duplicates("path", keep="last")
