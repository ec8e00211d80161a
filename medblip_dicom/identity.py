"""Who wrote a caption: the model's name, version, architecture, weights digest and prompt (no torch needed).

Every SR records the identity of the model that wrote it (device observer, equipment attributes),
and report UIDs are derived from its weights digest and, for a model given an instruction, its
prompt: the same weights asked another question are another author. The identity is built when a model is loaded
(:mod:`medblip_dicom.captioner`) and can be built without torch from a provenance file, so that
code which only writes or reads reports does not import the model stack.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medblip_dicom.uids import stable_uid

logger = logging.getLogger(__name__)

#: File written by training beside an exported model; read here for the model's name and version.
PROVENANCE_FILE = "medblip_provenance.json"


@dataclass(frozen=True)
class ModelIdentity:
    """Who wrote a caption: recorded in every SR (device observer, equipment attributes).

    ``weights_sha256`` is a digest of the model's tensors (names, dtypes, shapes and bytes, in
    name order) taken before any dtype conversion, so it identifies the weights whatever the file
    layout. Training records the same digest in its provenance file. ``architecture`` is the class
    that ran (``BlipForConditionalGeneration``, ``PaliGemmaForConditionalGeneration``, ...);
    ``prompt`` is the instruction the model was given, empty for a model that takes none.
    """

    name: str
    version: str
    weights_sha256: str
    source: str
    architecture: str = ""
    prompt: str = ""

    @property
    def content_key(self) -> str:
        """What report and device UIDs derive from: the weights digest, and the prompt when there is one.

        Without a prompt it is the weights digest itself, so a model that takes none (BLIP) keeps
        the UIDs it always had.
        """
        if not self.prompt:
            return self.weights_sha256
        return hashlib.sha256(f"{self.weights_sha256}\0prompt\0{self.prompt}".encode()).hexdigest()

    @property
    def device_uid(self) -> str:
        """A UID for the model as a DICOM device observer, stable for the same weights and prompt."""
        return stable_uid("medblip-dicom/device", self.content_key)


def read_provenance(directory: Path | None) -> dict[str, Any]:
    """The provenance record beside a model (empty when there is none or it is unreadable)."""
    if directory is None or not (directory / PROVENANCE_FILE).is_file():
        return {}
    try:
        data = json.loads((directory / PROVENANCE_FILE).read_text())
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", directory / PROVENANCE_FILE, exc)
        return {}
    return data if isinstance(data, dict) else {}


def model_identity(source: str, directory: Path | None, digest: str, commit_hash: str | None = None, *,
                   architecture: str = "", prompt: str = "") -> ModelIdentity:
    """The identity of a model loaded from `source` (a directory, or a hub id with `commit_hash`).

    Name: the provenance's ``model_name``, else the directory's name, else the hub id. Version:
    the provenance's ``model_version``, else the hub commit, else ``sha256-<first 12 hex digits>``.
    """
    provenance = read_provenance(directory)
    name = str(provenance.get("model_name") or (directory.resolve().name if directory else source))
    version = str(provenance.get("model_version") or commit_hash or f"sha256-{digest[:12]}")
    return ModelIdentity(name=name, version=version, weights_sha256=digest, source=source,
                         architecture=architecture, prompt=prompt)
