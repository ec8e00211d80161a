"""The review state: AI reports waiting for a reviewer, signatures, rejections (tables in :mod:`.db`).

Files, under ``SPOOL/review/``::

    items/<AI SR UID>/source.dcm   the source instance: the page's image and the training export
                                   (removed after the first decision with keep_sources = false)
    items/<AI SR UID>/ai.dcm       the AI report as it was delivered (or held), kept for good
    signed/<SR UID>.dcm            every signed report (the first and each amendment)
    signed/<PDF UID>.dcm           with ``[output] pdf``, the Encapsulated PDF of each (:mod:`.pdf`)
    notes/<KOS UID>.dcm            IOCM rejection notes

**Signing** is one transaction of the spool's journal: the signed report's file is written
atomically (temporary file, fsync, rename) and then, in the same transaction, its row, the item's
new state, the audit row and a delivery job (``origin = "review"``, state ``reported``) are
committed. A process killed before the commit leaves a complete file without a row, which
:meth:`ReviewStore.recover` removes (and which signing the same text again would replace: its UID
is the same); after the commit, the whole signature stands. Two reviewers at once: the write lock
serialises them and the unique predecessor column lets each document have one successor only, so
the second gets :class:`ReviewConflict` naming who signed first. A signed version is built from the
AI report alone (the source's header is the one it recorded), so amendments need neither the
source nor the previous version's file; a missing AI report makes signing a
:class:`ReviewUnavailable` (409) that names the file.

**Several processes on one spool** (stations, the services' intake, scripts) are safe: recovery
runs under the same write lock that a signature holds from its file to its commit, so a station
starting while another signs never removes that signature's file, nor a temporary file of a live
process.

**Delivery** of signed reports and rejection notes is the services' delivery loop (the same sinks
as every report): the job row waits in ``reported`` until a watch or node service on this spool
runs; ``medblip status`` counts it meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from medblip_dicom.fileio import atomic_write_bytes, fsync_dir, remove_stale_temp_files
from medblip_dicom.report_view import COMPREHENSIVE_SR, CaptionReport

from medblip_dicom.integrations.review.db import ReviewDatabase
from medblip_dicom.integrations.review.pdf import check_pdf_support, write_signed_pdf
from medblip_dicom.integrations.spool.rows import SpoolError
from medblip_dicom.integrations.review.signing import (
    Reviewer, build_rejection_note, build_signed_report, caption_text, document_name, encode, rejection_reason,
    signed_series_uid, signed_text, source_header,
)

logger = logging.getLogger(__name__)

PENDING, SIGNED, REJECTED = "pending", "signed", "rejected"
STATES = (PENDING, SIGNED, REJECTED)
#: Temporary names of :func:`~medblip_dicom.fileio.atomic_write_bytes` (``.tmp-<pid>-...``): left to
#: :func:`~medblip_dicom.fileio.remove_stale_temp_files`, which keeps those of live processes.
_TEMP_NAME = re.compile(r"^\.tmp-\d+-")


class ReviewError(Exception):
    """A review action that cannot be done as asked (the message says why, for the reviewer)."""


class ReviewNotFound(ReviewError):
    """No report under review has this UID."""


class ReviewConflict(ReviewError):
    """Someone else decided on this report meanwhile (or it is in a state that forbids the action)."""


class ReviewUnavailable(ReviewConflict):
    """A file the action needs is gone from the review folder: nobody can do it until it is put back
    (a conflict with the spool's state, answered 409 like the others; the message says which file)."""


@dataclass(frozen=True)
class Signature:
    """One signed report: its UID, file and what it says; ``created`` False when it already existed."""

    uid: str
    ai_uid: str
    predecessor_uid: str
    username: str
    text: str
    edited: bool
    signed_at: float
    path: Path
    created: bool = True


class ReviewStore:
    """The review tables and files of one spool (thread-safe; several processes may share it)."""

    def __init__(self, spool_dir: str | os.PathLike[str], *, organization: str = "", keep_sources: bool = True,
                 send_rejection_note: bool = False, pdf: bool = False) -> None:
        if pdf:
            check_pdf_support()
        self.db = ReviewDatabase(Path(spool_dir))
        self.root = self.db.root
        self.organization = organization
        self.keep_sources = keep_sources
        self.send_rejection_note = send_rejection_note
        self.pdf = pdf
        for sub in ("items", "signed", "notes"):
            (self.root / "review" / sub).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.db.close()

    # -- items ------------------------------------------------------------------------------------

    def add_item(self, job_id: int | None, source: Path, ai_report: Path) -> str | None:
        """Put an AI report under review (keeping its source); idempotent. Returns the AI SR's UID,
        or None when the report is not one of ours."""
        sr = pydicom.dcmread(ai_report, stop_before_pixels=True)
        try:
            ai = CaptionReport.from_dataset(sr, label=str(ai_report))
        except Exception as exc:  # noqa: BLE001 - a picture or foreign file: nothing to review
            logger.debug("not reviewing %s: %s", ai_report.name, exc)
            return None
        if ai.verified:
            return None
        uid = ai.sop_instance_uid
        if self.db.rows("SELECT 1 FROM review_items WHERE ai_uid=?", (uid,)):
            return uid
        folder = self.root / "review" / "items" / document_name(sr)[:-4]
        folder.mkdir(parents=True, exist_ok=True)
        _link_or_copy(source, folder / "source.dcm")
        _link_or_copy(ai_report, folder / "ai.dcm")
        src = pydicom.dcmread(folder / "source.dcm", stop_before_pixels=True)
        with self.db.write() as db:
            db.execute("INSERT OR IGNORE INTO review_items (ai_uid, job_id, study_uid, source_uid, modality, study_date, "
                       "model_name, model_version, caption, folder, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (uid, job_id, ai.study_instance_uid, ai.source_sop_instance_uid, str(src.get("Modality", "")),
                        str(src.get("StudyDate", "")), ai.model_name, ai.model_version, ai.caption,
                        os.path.relpath(folder, self.root), time.time()))
        logger.info("job %s: AI report %s is under review", job_id, uid)
        return uid

    def item(self, ai_uid: str) -> dict[str, Any]:
        rows = self.db.rows("SELECT * FROM review_items WHERE ai_uid=?", (ai_uid,))
        if not rows:
            raise ReviewNotFound(f"no report under review has the UID {ai_uid}")
        return dict(rows[0])

    def item_files(self, item: dict[str, Any]) -> tuple[Path, Path]:
        """(source, AI report) of an item."""
        folder = self.root / item["folder"]
        return folder / "source.dcm", folder / "ai.dcm"

    def patient(self, item: dict[str, Any]) -> tuple[str, str]:
        """(name, ID) of an item's patient, read from its AI report, for the pages only (never logged)."""
        try:
            ds = pydicom.dcmread(self.item_files(item)[1], stop_before_pixels=True,
                                 specific_tags=["PatientName", "PatientID"])
        except (OSError, pydicom.errors.InvalidDicomError):
            return "", ""
        return str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))

    def worklist(self, *, state: str = PENDING, modality: str = "", date: str = "", model: str = "",
                 limit: int = 500) -> list[dict[str, Any]]:
        """Items in `state`, newest first; filters: modality, study date (YYYYMMDD), model name or version."""
        clauses, args = ["state=?"], [state]
        if modality:
            clauses.append("modality=?")
            args.append(modality.upper())
        if date:
            clauses.append("study_date=?")
            args.append(date)
        if model:
            clauses.append("(model_name=? OR model_version=?)")
            args.extend([model, model])
        sql = f"SELECT * FROM review_items WHERE {' AND '.join(clauses)} ORDER BY created_at DESC, ai_uid LIMIT ?"
        return [dict(r) for r in self.db.rows(sql, [*args, limit])]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for row in self.db.rows("SELECT state, COUNT(*) FROM review_items GROUP BY state"):
            out[str(row[0])] = int(row[1])
        return out

    def signatures(self, ai_uid: str) -> list[Signature]:
        """Every signed version of one report, first to last."""
        rows = self.db.rows("SELECT * FROM review_signed WHERE ai_uid=? ORDER BY signed_at, rowid", (ai_uid,))
        return [self._signature(dict(r)) for r in rows]

    def _signature(self, row: dict[str, Any], created: bool = True) -> Signature:
        return Signature(row["uid"], row["ai_uid"], row["predecessor_uid"], row["username"], row["text"],
                         bool(row["edited"]), float(row["signed_at"]), self.root / row["file"], created)

    # -- decisions -----------------------------------------------------------------------------------

    def sign(self, ai_uid: str, reviewer: Reviewer, text: str, *, predecessor: str | None = None) -> Signature:
        """Sign `text` for the AI report `ai_uid` (see the module docstring).

        `predecessor` is the version the reviewer saw (the AI report's UID by default): if another
        reviewer signed meanwhile, :class:`ReviewConflict` says who. The same text as the current
        version returns that version (``created`` False). Raises ReviewNotFound, ReviewConflict, or
        TextError for a text :func:`~.signing.signed_text` refuses (checked first: empty, too long, a
        character DICOM text cannot hold).
        """
        text = signed_text(text)
        with self.db.write() as db:
            item = self._locked_item(db, ai_uid)
            if item["state"] == REJECTED:
                raise ReviewConflict(f"this report was rejected by {item['decided_by']}; it cannot be signed")
            current = db.execute("SELECT * FROM review_signed WHERE uid=?", (item["current_uid"],)).fetchone() \
                if item["current_uid"] else None
            if current is not None and current["text"] == text:
                return self._signature(dict(current), created=False)
            seen = predecessor or ai_uid
            head = item["current_uid"] or ai_uid
            if seen != head and current is None:
                raise ReviewConflict(f"the version given as predecessor ({seen}) is not this report's current version "
                                     "(nobody has signed it yet); reload it and sign again")
            if seen != head:
                raise ReviewConflict(f"{current['username']} signed this report meanwhile "
                                     f"({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(current['signed_at']))}); "
                                     "reload it to see the signed text, and sign again to amend it")
            ai_sr = self._ai_report(item, "amended" if current is not None else "signed")
            previous = self._predecessor(dict(current), ai_sr) if current is not None else ai_sr
            sr = build_signed_report(ai_sr, previous, source_header(ai_sr), reviewer, text)
            rel = f"review/signed/{document_name(sr)}"
            data = encode(sr)
            atomic_write_bytes(self.root / rel, data)
            source = self.item_files(dict(item))[0]
            files = [rel] + (write_signed_pdf(self.root, sr, ai_sr, source) if self.pdf else [])
            _before_commit()
            edited = text != caption_text(item["caption"])
            now = time.time()
            try:
                db.execute("INSERT INTO review_signed (uid, ai_uid, predecessor_uid, username, text, edited, signed_at, "
                           "file) VALUES (?,?,?,?,?,?,?,?)",
                           (str(sr.SOPInstanceUID), ai_uid, head, reviewer.username, text, int(edited), now, rel))
            except sqlite3.IntegrityError:
                raise ReviewConflict("another reviewer signed this report at the same moment; reload it") from None
            job_id = self._enqueue(db, sr, files, data, now)
            db.execute("UPDATE review_signed SET job_id=? WHERE uid=?", (job_id, str(sr.SOPInstanceUID)))
            db.execute("UPDATE review_items SET state=?, current_uid=?, decided_by=?, decided_at=? WHERE ai_uid=?",
                       (SIGNED, str(sr.SOPInstanceUID), reviewer.username, now, ai_uid))
            self.db.audit(reviewer.username, "amend" if current is not None else "sign", ai_uid,
                          f"signed {sr.SOPInstanceUID} ({'edited' if edited else 'unchanged'}), delivery job {job_id}", db)
            row = db.execute("SELECT * FROM review_signed WHERE uid=?", (str(sr.SOPInstanceUID),)).fetchone()
        self._after_decision(item)
        return self._signature(dict(row))

    def reject(self, ai_uid: str, reviewer: Reviewer, reason: str) -> str | None:
        """Reject the AI report with `reason`; with ``send_rejection_note`` an IOCM note is enqueued.
        Returns the note's UID (or None). Raises TextError for a reason :func:`~.signing.rejection_reason`
        refuses (checked first: a reason is required), ReviewNotFound, ReviewConflict (already decided)."""
        reason = rejection_reason(reason)
        with self.db.write() as db:
            item = self._locked_item(db, ai_uid)
            if item["state"] != PENDING:
                raise ReviewConflict(f"this report was already {item['state']} by {item['decided_by']}")
            note_uid = None
            now = time.time()
            if self.send_rejection_note:
                ko = build_rejection_note(pydicom.dcmread(self.item_files(item)[1]), reviewer, reason)
                rel = f"review/notes/{document_name(ko)}"
                data = encode(ko)
                atomic_write_bytes(self.root / rel, data)
                self._enqueue(db, ko, [rel], data, now)
                note_uid = str(ko.SOPInstanceUID)
            db.execute("UPDATE review_items SET state=?, reason=?, decided_by=?, decided_at=?, current_uid=? "
                       "WHERE ai_uid=?", (REJECTED, reason, reviewer.username, now, note_uid, ai_uid))
            self.db.audit(reviewer.username, "reject", ai_uid, f"rejection note {note_uid}" if note_uid else None, db)
        self._after_decision(item)
        return note_uid

    def _ai_report(self, item: Any, verb: str) -> Dataset:
        """The item's AI report as kept under review (everything a signed version needs: the text it
        verifies, the model, and the source's header); ReviewUnavailable when it is gone."""
        path = self.item_files(dict(item))[1]
        try:
            return pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            logger.error("review item %s: its AI report %s cannot be read (%s)", item["ai_uid"],
                         os.path.relpath(path, self.root), type(exc).__name__)
            raise ReviewUnavailable(
                f"the review copy of the AI report ({os.path.relpath(path, self.root)} in the spool) is missing or "
                f"unreadable, so this report cannot be {verb}; copy the delivered AI report ({item['ai_uid']}.dcm) "
                "back to that path and try again") from None

    def _predecessor(self, current: dict[str, Any], ai_sr: Dataset) -> Dataset:
        """The signed version an amendment follows: its file, or, when that file is gone or unreadable,
        the four UIDs the amendment references it by (its row and the AI report hold them)."""
        try:
            return pydicom.dcmread(self.root / current["file"], stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            logger.warning("signed report %s: its file %s cannot be read (%s); the amendment references it by UID",
                           current["uid"], current["file"], type(exc).__name__)
        reference = Dataset()
        reference.SOPClassUID = COMPREHENSIVE_SR
        reference.SOPInstanceUID = current["uid"]
        reference.StudyInstanceUID = ai_sr.StudyInstanceUID
        reference.SeriesInstanceUID = signed_series_uid(str(ai_sr.SeriesInstanceUID))
        return reference

    def _locked_item(self, db: sqlite3.Connection, ai_uid: str) -> sqlite3.Row:
        item = db.execute("SELECT * FROM review_items WHERE ai_uid=?", (ai_uid,)).fetchone()
        if item is None:
            raise ReviewNotFound(f"no report under review has the UID {ai_uid}")
        return item

    def _enqueue(self, db: sqlite3.Connection, ds: Dataset, files: list[str], data: bytes, now: float) -> int:
        """A delivery job for the documents the review wrote (`ds` first, its bytes `data`): ``reported``
        at once, so the services' delivery loop sends them through the same sinks as every report."""
        rel = files[0]
        name = Path(rel).name
        link = f"inputs/review-{name}"
        _link_or_copy(self.root / rel, self.root / link)
        cur = db.execute(
            "INSERT INTO jobs (origin, name, input_file, state, sop_instance_uid, sop_class_uid, study_instance_uid, "
            "series_instance_uid, content_sha256, size, received_at, updated_at, reported_at, reports, "
            "sr_sop_instance_uid, selected) VALUES ('review', ?, ?, 'reported', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            (name, link, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.StudyInstanceUID),
             str(ds.SeriesInstanceUID), hashlib.sha256(data).hexdigest(), len(data), now, now, now,
             json.dumps(files), str(ds.SOPInstanceUID)))
        return int(cur.lastrowid)

    def _after_decision(self, item: Any) -> None:
        if not self.keep_sources:
            with contextlib.suppress(OSError):
                self.item_files(dict(item))[0].unlink()

    # -- recovery -------------------------------------------------------------------------------------

    def recover(self) -> int:
        """Remove the signed reports and notes that a process killed mid-sign wrote without committing them.

        Safe while other stations or processes sign on the same spool: it runs inside one write
        transaction of the journal, and a signature holds that lock from before its file is written
        until its row is committed, so every file seen here is either committed (kept) or left by a
        transaction that ended without its row (removed). A temporary file is removed only when the
        process that wrote it is gone. Returns how many files went; raises SpoolError (one sentence)
        when the journal stays locked by another process longer than its busy timeout, or a file
        cannot be removed.
        """
        removed = 0
        try:
            with self.db.write() as db:
                known = {r[0] for r in db.execute("SELECT file FROM review_signed")}
                for (reports,) in db.execute("SELECT reports FROM jobs WHERE origin='review'"):
                    known.update(json.loads(reports or "[]"))  # the signed reports' PDFs
                known |= {f"review/notes/{r[0]}.dcm" for r in db.execute(
                    "SELECT current_uid FROM review_items WHERE state=? AND current_uid IS NOT NULL", (REJECTED,))}
                for sub in ("signed", "notes"):
                    folder = self.root / "review" / sub
                    removed += remove_stale_temp_files(folder)
                    for path in folder.iterdir():
                        if _TEMP_NAME.match(path.name) or f"review/{sub}/{path.name}" in known:
                            continue
                        path.unlink(missing_ok=True)
                        removed += 1
        except (sqlite3.Error, OSError) as exc:
            held = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
            raise SpoolError(
                f"{self.db.path if held else self.root / 'review'}: cannot look for signed reports an interrupted "
                f"signature left ({type(exc).__name__}: {exc}); " + (
                    f"another process (a service, a station, a script) held the journal for more than "
                    f"{self.db.BUSY_TIMEOUT_S:g} s: start again when it has finished" if held else
                    "check that the spool's folder is readable and writable by this user")) from None
        if removed:
            logger.warning("removed %d uncommitted signed report(s) left by an interrupted signature", removed)
        return removed


def _before_commit() -> None:
    """Between the signed file and its commit (tests make a process die here)."""


def _link_or_copy(src: Path, target: Path) -> None:
    """A hard link (no second copy of the bytes), else an atomic copy; an existing target is kept."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, target)
        fsync_dir(target.parent)
    except OSError:
        from medblip_dicom.fileio import atomic_copy

        atomic_copy(src, target)
