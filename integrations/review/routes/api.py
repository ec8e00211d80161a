"""The JSON API beside the pages (``Authorization: Bearer TOKEN``), for a site's reporting system.

``GET /api/worklist``, ``GET /api/reports/{sr_uid}``, ``POST /api/reports/{sr_uid}/sign``
(``{"text": ..., "predecessor": optional UID}``) and ``POST /api/reports/{sr_uid}/reject``
(``{"reason": ...}``, required). Answers: 401 without a valid token, 404 for an unknown report, 409
when someone else decided first (the message says who), 422 for a bad request; bodies are
validated, and a text or reason holding a character DICOM text cannot hold (a control character, a
line separator) is a 422 whose ``detail`` names the character (``U+XXXX``) and its position. The
rules and the statuses are the pages' too (:mod:`.rules`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from medblip_dicom.integrations.review.deps import ApiUser, CurrentStation
from medblip_dicom.integrations.review.routes import rules
from medblip_dicom.integrations.review.routes.rules import Filters, Uid
from medblip_dicom.integrations.review.store import ReviewStore, Signature

router = APIRouter(prefix="/api")


class SignBody(BaseModel):
    """A signature: the text (empty is refused by the one text rule) and the version the reviewer saw."""

    model_config = ConfigDict(extra="forbid")
    text: str = ""
    predecessor: Uid | None = None


class RejectBody(BaseModel):
    """A rejection: its reason (required by the one text rule: empty or blank is a 422 saying so)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = ""


def _item_json(store: ReviewStore, item: dict[str, Any]) -> dict[str, Any]:
    name, patient_id = store.patient(item)
    keys = ("ai_uid", "study_uid", "source_uid", "modality", "study_date", "model_name", "model_version", "caption",
            "state", "current_uid", "reason", "decided_by", "created_at", "decided_at")
    return {**{k: item[k] for k in keys}, "patient_name": name, "patient_id": patient_id}


def _signature_json(s: Signature) -> dict[str, Any]:
    return {"uid": s.uid, "predecessor_uid": s.predecessor_uid, "reviewer": s.username, "text": s.text,
            "edited": s.edited, "signed_at": s.signed_at, "created": s.created}


@router.get("/worklist")
def worklist(current: CurrentStation, user: ApiUser, filters: Filters) -> dict[str, Any]:
    store = current.store
    items = store.worklist(state=filters.state, modality=filters.modality, date=filters.date, model=filters.model)
    return {"counts": store.counts(), "items": [_item_json(store, i) for i in items]}


@router.get("/reports/{sr_uid}")
def report(current: CurrentStation, user: ApiUser, sr_uid: Uid) -> dict[str, Any]:
    item = rules.find(current, sr_uid)
    current.store.db.audit(user.username, "view", sr_uid, "api")
    return {**_item_json(current.store, item),
            "signatures": [_signature_json(s) for s in current.store.signatures(sr_uid)]}


@router.post("/reports/{sr_uid}/sign")
def sign(current: CurrentStation, user: ApiUser, sr_uid: Uid, body: SignBody) -> JSONResponse:
    signature = rules.sign(current, user, sr_uid, body.text, predecessor=body.predecessor)
    return JSONResponse(_signature_json(signature), status_code=201 if signature.created else 200)


@router.post("/reports/{sr_uid}/reject")
def reject(current: CurrentStation, user: ApiUser, sr_uid: Uid, body: RejectBody) -> dict[str, Any]:
    note = rules.reject(current, user, sr_uid, body.reason)
    return {"ai_uid": sr_uid, "state": "rejected", "rejection_note_uid": note}
