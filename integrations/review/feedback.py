"""What the reviews teach: the training export and the review statistics.

:func:`export` writes one JSON line per signed report in the manifest format ``medblip train --data
FILE.jsonl`` reads as it is (``image``: the kept source DICOM, ``caption``: the final text), plus
what a data scientist needs to slice it (AI caption, edited or not, model, modality, a
pseudonymous reviewer id, the time); rejected reports go to ``FILE.rejected.jsonl``. Reviewer ids
are ``r-`` + 12 hex digits of an HMAC over the login name with a secret salt kept in the spool, so
they are stable per site but do not name anyone. The manifest itself names no patient, but its
images are the kept DICOM files as they arrived; with a
:class:`~medblip_dicom.deid.Deidentifier` (``medblip review export --deidentify``) the images are
de-identified copies under ``images/`` beside the manifest instead, the captions, AI captions and
reasons are cleaned of each image's identifying header values, and ``FILE.datacard.json`` says
what was done (docs/deidentification.md).

:func:`review_stats` counts reviewed, signed unchanged, edited and rejected reports and averages
the word edit distance between AI and final text, by model version and modality; BLEU is passed in
(``medblip review stats`` uses the project's BLEU from training), so this module needs no training
code. :func:`plot_stats` draws the table (matplotlib, the train extra).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medblip_dicom.fileio import atomic_write_bytes

from medblip_dicom.integrations.review.store import REJECTED, SIGNED, ReviewStore


def pseudonym(store: ReviewStore, username: str) -> str:
    """A stable, non-identifying reviewer id for this spool."""
    salt = store.db.meta("reviewer_salt", lambda: secrets.token_hex(32))
    return "r-" + hmac.new(salt.encode(), username.encode(), hashlib.sha256).hexdigest()[:12]


def _iso(seconds: float | None) -> str:
    return dt.datetime.fromtimestamp(seconds or 0, dt.timezone.utc).isoformat(timespec="seconds")


def export(store: ReviewStore, out: str | os.PathLike[str], *, deidentifier: Any = None) -> dict[str, int]:
    """Write the signed reports to `out` and the rejected ones beside it; returns the counts
    (``signed``, ``rejected``, ``missing``: signed reports whose source is no longer kept; with a
    `deidentifier`, also ``refused``: images left out for burned-in text or unreadable, and
    ``captions_changed``: rows whose text held an identifying value)."""
    out = Path(out)
    signed_rows, rejected_rows, missing = [], [], 0
    for item in store.worklist(state=SIGNED, limit=10**9)[::-1]:
        source = store.item_files(item)[0]
        if not source.is_file():
            missing += 1
            continue
        current = store.signatures(item["ai_uid"])[-1]
        signed_rows.append({
            "id": item["ai_uid"], "image": str(source.resolve()), "caption": current.text,
            "ai_caption": item["caption"], "edited": current.text != " ".join(item["caption"].split()),
            "model_name": item["model_name"], "model_version": item["model_version"], "modality": item["modality"],
            "reviewer": pseudonym(store, current.username), "signed_at": _iso(current.signed_at),
            "sr_uid": current.uid,
        })
    for item in store.worklist(state=REJECTED, limit=10**9)[::-1]:
        source = store.item_files(item)[0]
        rejected_rows.append({
            "id": item["ai_uid"], "image": str(source.resolve()) if source.is_file() else "",
            "ai_caption": item["caption"], "reason": item["reason"], "model_name": item["model_name"],
            "model_version": item["model_version"], "modality": item["modality"],
            "reviewer": pseudonym(store, item["decided_by"]), "rejected_at": _iso(item["decided_at"]),
        })
    extra: dict[str, int] = {}
    if deidentifier is not None:
        signed_rows, rejected_rows, extra = _deidentified(deidentifier, out, signed_rows, rejected_rows)
    atomic_write_bytes(out, _jsonl(signed_rows))
    atomic_write_bytes(rejected_path(out), _jsonl(rejected_rows))
    store.db.audit(None, "export", str(out.name), f"{len(signed_rows)} signed, {len(rejected_rows)} rejected"
                   + (f", de-identified, {extra['refused']} refused" if deidentifier is not None else ""))
    return {"signed": len(signed_rows), "rejected": len(rejected_rows), "missing": missing, **extra}


def datacard_path(out: Path) -> Path:
    """``FILE.jsonl`` -> ``FILE.datacard.json``."""
    return out.with_name(f"{out.stem}.datacard.json")


def _deidentified(deidentifier: Any, out: Path, signed: list[dict[str, Any]], rejected: list[dict[str, Any]]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """The rows through :class:`medblip_dicom.deid.ExportWriter` (images under ``images/`` beside
    `out`), the data card written; rejected reports without a kept source are left out."""
    from medblip_dicom.deid.manifest import ExportWriter

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = ExportWriter(deidentifier, out.parent)
    signed = writer.rows(signed, "signed", out.parent)
    rejected = writer.rows([r for r in rejected if r["image"]], "rejected", out.parent)
    writer.write_card(datacard_path(out), [out.name, rejected_path(out).name])
    card = writer.card([])
    return signed, rejected, {"refused": card["counts"]["refused_burned_in_text"] + card["counts"]["unreadable"],
                              "captions_changed": card["counts"]["captions_changed"]}


def rejected_path(out: Path) -> Path:
    """``FILE.jsonl`` -> ``FILE.rejected.jsonl``."""
    return out.with_name(f"{out.stem}.rejected{out.suffix or '.jsonl'}")


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between the word sequences of `a` and `b` (insertions, deletions, substitutions)."""
    x, y = a.lower().split(), b.lower().split()
    previous = list(range(len(y) + 1))
    for i, word in enumerate(x, 1):
        current = [i]
        for j, other in enumerate(y, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class StatsRow:
    """One group of the statistics (``model_version``/``modality`` are "all" in the total row)."""

    model_version: str
    modality: str
    reviewed: int
    signed_unchanged: int
    edited: int
    rejected: int
    mean_word_edit_distance: float
    bleu: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def review_stats(store: ReviewStore, bleu: Callable[[Sequence[str], Sequence[str]], float] | None = None
                 ) -> list[StatsRow]:
    """Rows by (model version, modality), then the total; BLEU of AI text against the final text
    (the final text as the reference) when `bleu(references, hypotheses)` is given."""
    groups: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for state in (SIGNED, REJECTED):
        for item in store.worklist(state=state, limit=10**9):
            final = store.signatures(item["ai_uid"])[-1].text if state == SIGNED else None
            for key in ((item["model_version"], item["modality"]), ("all", "all")):
                groups.setdefault(key, []).append((item["caption"], final))
    rows = []
    for (version, modality), pairs in sorted(groups.items(), key=lambda kv: kv[0] == ("all", "all")):
        signed = [(ai, final) for ai, final in pairs if final is not None]
        unchanged = sum(1 for ai, final in signed if " ".join(ai.split()) == final)
        distance = sum(word_edit_distance(ai, final) for ai, final in signed) / len(signed) if signed else 0.0
        score = bleu([f for _, f in signed], [a for a, _ in signed]) if bleu is not None and signed else None
        rows.append(StatsRow(version, modality, len(pairs), unchanged, len(signed) - unchanged,
                             len(pairs) - len(signed), round(distance, 3), None if score is None else round(score, 4)))
    return rows


def format_table(rows: Sequence[StatsRow]) -> str:
    """The statistics as a text table."""
    head = ("model version", "modality", "reviewed", "unchanged", "edited", "rejected", "word edits", "BLEU")
    body = [(r.model_version, r.modality, str(r.reviewed), str(r.signed_unchanged), str(r.edited), str(r.rejected),
             f"{r.mean_word_edit_distance:.2f}", "-" if r.bleu is None else f"{r.bleu:.3f}") for r in rows]
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in (head, *body))


def plot_stats(rows: Sequence[StatsRow], path: str | os.PathLike[str]) -> Path:
    """Stacked bars (unchanged / edited / rejected) and the mean word edit distance per group (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [r for r in rows if r.model_version != "all"] or list(rows)
    labels = [f"{r.model_version}\n{r.modality}" for r in groups]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(groups) + 3), 4.0))
    unchanged = [r.signed_unchanged for r in groups]
    edited = [r.edited for r in groups]
    left.bar(labels, unchanged, label="signed unchanged")
    left.bar(labels, edited, bottom=unchanged, label="edited")
    left.bar(labels, [r.rejected for r in groups], bottom=[u + e for u, e in zip(unchanged, edited)], label="rejected")
    left.set(title="Reviewed AI reports", ylabel="reports")
    left.legend(fontsize=8)
    right.bar(labels, [r.mean_word_edit_distance for r in groups], color="tab:gray")
    right.set(title="Mean word edit distance (AI -> final)", ylabel="words")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
