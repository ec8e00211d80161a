"""The JSON API beside the pages (``Authorization: Bearer TOKEN``), for a site's reporting system.

``GET /api/worklist``, ``GET /api/reports/{sr_uid}``, ``POST /api/reports/{sr_uid}/sign``
(``{"text": ..., "predecessor": optional UID}``) and ``POST /api/reports/{sr_uid}/reject``
(``{"reason": ...}``). Answers: 401 without a valid token, 404 for an unknown report, 409 when
someone else decided first (the message says who), 422 for a bad request; bodies are validated,
and a text or reason holding a character DICOM text cannot hold (a control character, a line
separator) is a 422 whose ``detail`` names the character (``U+XXXX``) and its position.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from medblip_dicom.errors import MedblipError
from medblip_dicom.integrations.review.security import UID_PATTERN, ApiUser
from medblip_dicom.integrations.review.signing import rejection_reason, signed_text
from medblip_dicom.integrations.review.store import PENDING, ReviewConflict, ReviewError, ReviewNotFound, Signature

router = APIRouter(prefix="/api")
Uid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64)]


class SignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=20000)
    predecessor: str | None = Field(default=None, pattern=UID_PATTERN, max_length=64)


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


def _item_json(store: Any, item: dict[str, Any]) -> dict[str, Any]:
    name, patient_id = store.patient(item)
    keys = ("ai_uid", "study_uid", "source_uid", "modality", "study_date", "model_name", "model_version", "caption",
            "state", "current_uid", "reason", "decided_by", "created_at", "decided_at")
    return {**{k: item[k] for k in keys}, "patient_name": name, "patient_id": patient_id}


def _signature_json(s: Signature) -> dict[str, Any]:
    return {"uid": s.uid, "predecessor_uid": s.predecessor_uid, "reviewer": s.username, "text": s.text,
            "edited": s.edited, "signed_at": s.signed_at, "created": s.created}


@router.get("/worklist")
def worklist(request: Request, user: ApiUser,
             modality: Annotated[str, Query(pattern=r"^[A-Za-z]{0,16}$")] = "",
             date: Annotated[str, Query(pattern=r"^([0-9]{8})?$")] = "",
             model: Annotated[str, Query(max_length=64)] = "",
             state: Annotated[str, Query(pattern=r"^(pending|signed|rejected)$")] = PENDING) -> dict[str, Any]:
    store = request.app.state.review.store
    items = store.worklist(state=state, modality=modality, date=date, model=model)
    return {"counts": store.counts(), "items": [_item_json(store, i) for i in items]}


@router.get("/reports/{sr_uid}")
def report(request: Request, user: ApiUser, sr_uid: Uid) -> dict[str, Any]:
    store = request.app.state.review.store
    try:
        item = store.item(sr_uid)
    except ReviewNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    store.db.audit(user.username, "view", sr_uid, "api")
    return {**_item_json(store, item), "signatures": [_signature_json(s) for s in store.signatures(sr_uid)]}


@router.post("/reports/{sr_uid}/sign")
def sign(request: Request, user: ApiUser, sr_uid: Uid, body: SignBody) -> JSONResponse:
    context = request.app.state.review
    try:
        text = signed_text(body.text)  # the DICOM text rule: a refused character is a 422 naming it
        signature = context.store.sign(sr_uid, context.reviewer(user.username, user.person_name), text,
                                       predecessor=body.predecessor)
    except ReviewNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ReviewConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except (ReviewError, MedblipError) as exc:
        raise HTTPException(422, str(exc)) from None
    return JSONResponse(_signature_json(signature), status_code=201 if signature.created else 200)


@router.post("/reports/{sr_uid}/reject")
def reject(request: Request, user: ApiUser, sr_uid: Uid, body: RejectBody) -> dict[str, Any]:
    context = request.app.state.review
    try:
        reason = rejection_reason(body.reason)
        note = context.store.reject(sr_uid, context.reviewer(user.username, user.person_name), reason)
    except ReviewNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ReviewConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except (ReviewError, MedblipError) as exc:
        raise HTTPException(422, str(exc)) from None
    return {"ai_uid": sr_uid, "state": "rejected", "rejection_note_uid": note}
