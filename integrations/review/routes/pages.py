"""The review station's pages: login, the worklist, one report with its image, sign and reject.

Every page route declares :data:`~.security.PageSession` (no session: a redirect to /login), every
form POST checks the session's CSRF token, and every UID in a path must match
:data:`~.security.UID_PATTERN`. After a decision the reviewer goes on to the next report waiting.

A page shows only its own messages: ``?message=`` and ``?done=`` carry a key of :data:`MESSAGES`,
never text (an unknown key shows nothing), so a link cannot put someone's words on a trusted page.
"""

from __future__ import annotations

import secrets
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from medblip_dicom.errors import MedblipError
from medblip_dicom.integrations.review.accounts import Busy, Throttled
from medblip_dicom.integrations.review.render import presets_for, render_png
from medblip_dicom.integrations.review.security import (
    LOGIN_CSRF_COOKIE, SESSION_COOKIE, UID_PATTERN, PageSession, check_csrf,
)
from medblip_dicom.integrations.review.signing import rejection_reason, signed_text
from medblip_dicom.integrations.review.store import PENDING, ReviewConflict, ReviewError, ReviewNotFound

router = APIRouter()
Uid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64)]
STATIC = FilePath(__file__).with_name("templates")
#: The messages a URL may ask a page to show (``?message=KEY`` / ``?done=KEY``), by key.
MESSAGES = {"signed": "signed", "already-signed": "already signed", "rejected": "rejected"}
MessageKey = Annotated[str, Query(max_length=32)]


def _message(key: str) -> str:
    """The text of a message key; nothing for a key not in :data:`MESSAGES`."""
    return MESSAGES.get(key, "")


def _render(request: Request, name: str, status_code: int = 200, **context: object) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(request, name, context, status_code=status_code)


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", secure=request.app.state.review.secure_cookies,
                        max_age=max_age, path="/")


@router.get("/static/{name}", include_in_schema=False)
def static(name: Annotated[str, Path(pattern=r"^review\.(js|css)$")]) -> Response:
    """The page's script (keyboard shortcuts) and style sheet."""
    media = "text/javascript" if name.endswith(".js") else "text/css"
    return Response((STATIC / name).read_text(encoding="utf-8"), media_type=media)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _render(request, "login.html", csrf=token)
    _cookie(response, request, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.post("/login")
def login(request: Request, username: Annotated[str, Form(max_length=64)],
          password: Annotated[str, Form(max_length=1024)], csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    check_csrf(request.cookies.get(LOGIN_CSRF_COOKIE), csrf)
    context = request.app.state.review
    try:
        user = context.accounts.authenticate(username, password, request.client.host if request.client else None)
    except (Throttled, Busy) as exc:  # refused before the password was checked
        response = _render(request, "login.html", 429 if isinstance(exc, Throttled) else 503, csrf=csrf,
                           message=str(exc))
        response.headers["Retry-After"] = str(int(exc.retry_after_s) + 1)
        return response
    if user is None:
        return _render(request, "login.html", 401, csrf=csrf, message="wrong login name or password")
    session_id, _ = context.sessions.create(user)
    response = RedirectResponse("/", status_code=303)
    _cookie(response, request, SESSION_COOKIE, session_id)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, session: PageSession, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    check_csrf(session.csrf, csrf)
    request.app.state.review.sessions.end(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
def worklist(request: Request, session: PageSession,
             modality: Annotated[str, Query(pattern=r"^[A-Za-z]{0,16}$")] = "",
             date: Annotated[str, Query(pattern=r"^([0-9]{8})?$")] = "",
             model: Annotated[str, Query(max_length=64)] = "",
             state: Annotated[str, Query(pattern=r"^(pending|signed|rejected)$")] = PENDING,
             done: MessageKey = "") -> HTMLResponse:
    store = request.app.state.review.store
    items = store.worklist(state=state, modality=modality, date=date, model=model)
    rows = [{**item, "patient": store.patient(item)} for item in items]
    return _render(request, "worklist.html", user=session.user, csrf=session.csrf, rows=rows, counts=store.counts(),
                   modality=modality, date=date, model=model, state=state, done=_message(done))


@router.get("/reports/{sr_uid}", response_class=HTMLResponse)
def report(request: Request, session: PageSession, sr_uid: Uid,
           message: MessageKey = "") -> HTMLResponse:
    return _report_page(request, session, sr_uid, _message(message))


def _report_page(request: Request, session: PageSession, sr_uid: str, message: str = "",
                 status_code: int = 200, typed: str | None = None) -> HTMLResponse:
    """The report page; `typed` (a refused text) goes back into the editor so nothing is retyped."""
    store = request.app.state.review.store
    try:
        item = store.item(sr_uid)
    except ReviewNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    store.db.audit(session.user.username, "view", sr_uid)
    signatures = store.signatures(sr_uid)
    current = signatures[-1] if signatures else None
    return _render(request, "report.html", status_code, user=session.user, csrf=session.csrf, item=item,
                   patient=store.patient(item), windows=presets_for(item["modality"]), signatures=signatures,
                   text=typed if typed is not None else current.text if current else item["caption"],
                   version=(item["current_uid"] if item["state"] == "signed" else None) or sr_uid, message=message)


@router.get("/reports/{sr_uid}/image.png")
def image(request: Request, session: PageSession, sr_uid: Uid,
          window: Annotated[str, Query(pattern=r"^[a-z]{1,16}$")] = "file") -> Response:
    store = request.app.state.review.store
    try:
        item = store.item(sr_uid)
        source = store.item_files(item)[0]
        png = render_png(source, window)
    except ReviewNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except (ValueError, MedblipError, OSError) as exc:
        raise HTTPException(404 if isinstance(exc, OSError) else 422, f"cannot show the image: {exc}") from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def _next(request: Request, sr_uid: str, done: str) -> Response:
    """On to the newest report still waiting (the worklist when none is left); `done` is a key of
    :data:`MESSAGES`."""
    waiting = [i for i in request.app.state.review.store.worklist(limit=2) if i["ai_uid"] != sr_uid]
    target = f"/reports/{waiting[0]['ai_uid']}?message={done}" if waiting else f"/?done={done}"
    return RedirectResponse(target, status_code=303)


@router.post("/reports/{sr_uid}/sign")
def sign(request: Request, session: PageSession, sr_uid: Uid, csrf: Annotated[str, Form(max_length=200)] = "",
         text: Annotated[str, Form(max_length=20000)] = "", action: Annotated[str, Form()] = "edited",
         version: Annotated[str, Form(pattern=UID_PATTERN, max_length=64)] = "") -> Response:
    check_csrf(session.csrf, csrf)
    context = request.app.state.review
    try:
        item = context.store.item(sr_uid)
        # The DICOM text rule: a character DICOM text cannot hold is a form error naming its position.
        final = signed_text(item["caption"] if action == "as-is" else text)
        signature = context.store.sign(sr_uid, context.reviewer(session.user.username, session.user.person_name),
                                       final, predecessor=version or None)
    except ReviewNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ReviewConflict as exc:
        return _report_page(request, session, sr_uid, str(exc), 409)
    except (ReviewError, MedblipError) as exc:
        return _report_page(request, session, sr_uid, str(exc), 422, typed=text if action != "as-is" else None)
    return _next(request, sr_uid, "signed" if signature.created else "already-signed")


@router.post("/reports/{sr_uid}/reject")
def reject(request: Request, session: PageSession, sr_uid: Uid, csrf: Annotated[str, Form(max_length=200)] = "",
           reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    check_csrf(session.csrf, csrf)
    context = request.app.state.review
    try:
        context.store.reject(sr_uid, context.reviewer(session.user.username, session.user.person_name),
                             rejection_reason(reason))
    except ReviewNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ReviewConflict as exc:
        return _report_page(request, session, sr_uid, str(exc), 409)
    except (ReviewError, MedblipError) as exc:
        return _report_page(request, session, sr_uid, str(exc), 422)
    return _next(request, sr_uid, "rejected")
