"""Where retrieved instances land: a C-STORE handler that writes each instance a pull asked for into
that study's temporary folder, and the presentation contexts a C-GET proposes for them.

The handler is the same for C-GET (storage sub-operations on our own association) and C-MOVE (the
archive's association to the pull's listener, :mod:`.dimse_listen`). It takes only instances it
expects, whose data set carries the SOPInstanceUID the request names; anything else is refused
(0x0124 not authorized, 0xA900 does not match), so nobody can slip an instance into a pull. Files are
written under a temporary name and renamed, so a folder never holds half an instance.

A requestor may propose at most 128 presentation contexts (PS3.8). :func:`storage_contexts` gives
each storage SOP class one context for the uncompressed syntaxes, then, while room is left, one per
compressed syntax we decode (most common first), so the archive can send what it holds unchanged.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

#: At most this many presentation contexts in one association request (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
#: Compressed syntaxes in the order they get contexts when room runs short: the common ones first.
COMPRESSED_ORDER = ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90",
                    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5",
                    "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.81")
#: Image storage SOP classes by Modality: what a C-GET proposes when the archive did not answer
#: SOPClassUID. Secondary Capture is added for every modality.
MODALITY_CLASSES = {
    "CT": ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"),
    "MR": ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"),
    "CR": ("1.2.840.10008.5.1.4.1.1.1",),
    "DX": ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1"),
    "MG": ("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1"),
    "IO": ("1.2.840.10008.5.1.4.1.1.1.3", "1.2.840.10008.5.1.4.1.1.1.3.1"),
    "US": ("1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1"),
    "XA": ("1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.1.1"),
    "RF": ("1.2.840.10008.5.1.4.1.1.12.2", "1.2.840.10008.5.1.4.1.1.12.2.1"),
    "NM": ("1.2.840.10008.5.1.4.1.1.20",),
    "PT": ("1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.130"),
    "RTIMAGE": ("1.2.840.10008.5.1.4.1.1.481.1",),
}
SECONDARY_CAPTURE = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                     "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4")

STATUS_SUCCESS = 0x0000
STATUS_NOT_REQUESTED = 0x0124
STATUS_DOES_NOT_MATCH = 0xA900
STATUS_OUT_OF_RESOURCES = 0xA700


def compressed_syntaxes() -> list[str]:
    """The compressed transfer syntaxes the installed decoders read, the common ones first."""
    from medblip_dicom.integrations.ingest.node import accepted_transfer_syntaxes

    decodable = [str(u) for u in accepted_transfer_syntaxes() if u.is_compressed]
    return [u for u in COMPRESSED_ORDER if u in decodable] + [u for u in decodable if u not in COMPRESSED_ORDER]


def classes_for(instances: Iterable[tuple[str, str]]) -> list[str]:
    """The storage SOP classes to propose for ``(SOPClassUID, Modality)`` pairs: the class where the
    archive answered it, else the usual ones of the Modality (every image class we know when even
    that is missing) plus Secondary Capture."""
    out: list[str] = []
    for sop_class, modality in instances:
        if sop_class:
            out.append(sop_class)
        elif modality.upper() in MODALITY_CLASSES:
            out += [*MODALITY_CLASSES[modality.upper()], *SECONDARY_CAPTURE]
        else:
            out += [*(c for group in MODALITY_CLASSES.values() for c in group), *SECONDARY_CAPTURE]
    return list(dict.fromkeys(out))


def storage_contexts(sop_classes: Sequence[str], compressed: Sequence[str] | None = None,
                     limit: int = MAX_CONTEXTS - 1, *, uncompressed: bool = True) -> list[tuple[str, tuple[str, ...]]]:
    """Presentation contexts for receiving `sop_classes`, at most `limit` (the class's uncompressed
    context first for every class unless `uncompressed` is False, then one compressed syntax at a
    time for every class)."""
    compressed = compressed_syntaxes() if compressed is None else compressed
    classes = list(dict.fromkeys(sop_classes))[:limit]
    contexts: list[tuple[str, tuple[str, ...]]] = [(c, UNCOMPRESSED) for c in classes] if uncompressed else []
    for syntax in compressed:
        for c in classes:
            if len(contexts) >= limit:
                return contexts
            contexts.append((c, (syntax,)))
    return contexts


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


class Receiver:
    """Writes expected instances into their study's folder as ``<SOPInstanceUID>.dcm`` (thread-safe:
    several retrieves, and the listener's associations, share one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expected: dict[str, Path] = {}
        self._received: dict[str, Path] = {}

    def expect(self, sop_uids: Iterable[str], folder: Path) -> None:
        """Take these instances into `folder` from now on (nothing of them has arrived yet)."""
        with self._lock:
            for uid in sop_uids:
                self._expected[uid] = folder
                self._received.pop(uid, None)

    def forget(self, sop_uids: Iterable[str]) -> None:
        """Stop expecting these (their retrieve is over: a late copy is refused) and let go of them."""
        with self._lock:
            for uid in sop_uids:
                self._expected.pop(uid, None)
                self._received.pop(uid, None)

    def received(self, sop_uids: Iterable[str]) -> dict[str, Path]:
        """Which of `sop_uids` arrived, and where."""
        with self._lock:
            return {uid: self._received[uid] for uid in sop_uids if uid in self._received}

    def handle_store(self, event: Any) -> int | Dataset:
        """pynetdicom's EVT_C_STORE handler."""
        from medblip_dicom.reading import read_header

        uid = str(event.request.AffectedSOPInstanceUID or "")
        with self._lock:
            folder = self._expected.get(uid)
        if folder is None:
            logger.warning("refused an instance this pull did not ask for (SOPInstanceUID %s) from %s", uid,
                           event.assoc.requestor.ae_title)
            return _status(STATUS_NOT_REQUESTED, "not requested by this retrieve")
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - any decode failure of the peer's data set
            logger.warning("instance %s could not be encoded (%s)", uid, type(exc).__name__)
            return _status(STATUS_DOES_NOT_MATCH, "data set cannot be read")
        header = read_header(bytes(data), ["SOPInstanceUID"])
        if header is None or str(header.get("SOPInstanceUID") or "") != uid:
            logger.warning("instance %s refused: its data set carries another SOPInstanceUID", uid)
            return _status(STATUS_DOES_NOT_MATCH, "SOPInstanceUID differs from the request")
        path = folder / f"{uid}.dcm"
        part = folder / f".{uid}.part"
        try:
            with open(part, "wb") as fh:
                fh.write(data)
            os.replace(part, path)
        except OSError as exc:
            logger.error("instance %s could not be written to the pull's temporary folder: %s", uid, exc)
            part.unlink(missing_ok=True)
            return _status(STATUS_OUT_OF_RESOURCES, "cannot write")
        with self._lock:
            self._received[uid] = path
        return STATUS_SUCCESS
