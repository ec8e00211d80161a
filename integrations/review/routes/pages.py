"""The review station's pages: login, the worklist, one report with its image, sign and reject.

Every page route declares :data:`~medblip_dicom.integrations.review.deps.PageSession` (no session:
a redirect to /login), every form POST checks the session's CSRF token, and UIDs, filters, texts
and the answers to a refused decision follow the same rules as the API (:mod:`.rules`): a reason
is required to reject, here as there. After a decision the reviewer goes on to the next report
waiting; a refused one shows the report again with the sentence that says why (and what was typed,
so nothing is retyped).

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
from medblip_dicom.integrations.review.deps import CurrentStation, PageSession, Station
from medblip_dicom.integrations.review.render import presets_for, render_png
from medblip_dicom.integrations.review.routes import rules
from medblip_dicom.integrations.review.routes.rules import Filters, OptionalUid, Refused, Uid
from medblip_dicom.integrations.review.security import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Session, check_csrf

router = APIRouter()
STATIC = FilePath(__file__).parent.parent / "templates"
#: The messages a URL may ask a page to show (``?message=KEY`` / ``?done=KEY``), by key.
MESSAGES = {"signed": "signed", "already-signed": "already signed", "rejected": "rejected"}
MessageKey = Annotated[str, Query(max_length=32)]
#: Said in place of the image when its source file is gone (the decision itself never needs it).
NO_SOURCE = {
    False: "The source image is not kept after the first decision ([review] keep_sources = false), so it "
           "cannot be shown here; the report and its signed versions are unaffected.",
    True: "The source image cannot be shown: its file is missing from the review folder.",
}
Csrf = Annotated[str, Form(max_length=200)]


def _message(key: str) -> str:
    """The text of a message key; nothing for a key not in :data:`MESSAGES`."""
    return MESSAGES.get(key, "")


def _render(request: Request, current: Station, name: str, status_code: int = 200, **context: object) -> HTMLResponse:
    return current.templates.TemplateResponse(request, name, context, status_code=status_code)


def _cookie(response: Response, current: Station, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", secure=current.secure_cookies,
                        max_age=max_age, path="/")


@router.get("/static/{name}", include_in_schema=False)
def static(name: Annotated[str, Path(pattern=r"^review\.(js|css)$")]) -> Response:
    """The page's script (keyboard shortcuts) and style sheet."""
    media = "text/javascript" if name.endswith(".js") else "text/css"
    return Response((STATIC / name).read_text(encoding="utf-8"), media_type=media)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, current: CurrentStation) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _render(request, current, "login.html", csrf=token)
    _cookie(response, current, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.post("/login")
def login(request: Request, current: CurrentStation, username: Annotated[str, Form(max_length=64)],
          password: Annotated[str, Form(max_length=1024)], csrf: Csrf = "") -> Response:
    check_csrf(request.cookies.get(LOGIN_CSRF_COOKIE), csrf)
    try:
        user = current.accounts.authenticate(username, password, request.client.host if request.client else None)
    except (Throttled, Busy) as exc:  # refused before the password was checked
        response = _render(request, current, "login.html", 429 if isinstance(exc, Throttled) else 503, csrf=csrf,
                           message=str(exc))
        response.headers["Retry-After"] = str(int(exc.retry_after_s) + 1)
        return response
    if user is None:
        return _render(request, current, "login.html", 401, csrf=csrf, message="wrong login name or password")
    session_id, _ = current.sessions.create(user)
    response = RedirectResponse("/", status_code=303)
    _cookie(response, current, SESSION_COOKIE, session_id)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, current: CurrentStation, session: PageSession, csrf: Csrf = "") -> Response:
    check_csrf(session.csrf, csrf)
    current.sessions.end(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
def worklist(request: Request, current: CurrentStation, session: PageSession, filters: Filters,
             done: MessageKey = "") -> HTMLResponse:
    store = current.store
    items = store.worklist(state=filters.state, modality=filters.modality, date=filters.date, model=filters.model)
    rows = [{**item, "patient": store.patient(item)} for item in items]
    return _render(request, current, "worklist.html", user=session.user, csrf=session.csrf, rows=rows,
                   counts=store.counts(), modality=filters.modality, date=filters.date, model=filters.model,
                   state=filters.state, done=_message(done))


@router.get("/reports/{sr_uid}", response_class=HTMLResponse)
def report(request: Request, current: CurrentStation, session: PageSession, sr_uid: Uid,
           message: MessageKey = "") -> HTMLResponse:
    return _report_page(request, current, session, sr_uid, _message(message))


def _report_page(request: Request, current: Station, session: Session, sr_uid: str, message: str = "",
                 status_code: int = 200, typed: str | None = None, reason: str = "") -> HTMLResponse:
    """The report page; `typed` (a refused text) goes back into the editor and `reason` (a refused
    reason) into its field, so nothing is retyped."""
    store = current.store
    item = rules.find(current, sr_uid)
    store.db.audit(session.user.username, "view", sr_uid)
    signatures = store.signatures(sr_uid)
    current_version = signatures[-1] if signatures else None
    source_kept = store.item_files(item)[0].is_file()
    return _render(request, current, "report.html", status_code, user=session.user, csrf=session.csrf, item=item,
                   patient=store.patient(item), windows=presets_for(item["modality"]), signatures=signatures,
                   text=typed if typed is not None else current_version.text if current_version else item["caption"],
                   version=(item["current_uid"] if item["state"] == "signed" else None) or sr_uid, message=message,
                   no_image=None if source_kept else NO_SOURCE[store.keep_sources], reason=reason)


@router.get("/reports/{sr_uid}/image.png")
def image(current: CurrentStation, session: PageSession, sr_uid: Uid,
          window: Annotated[str, Query(pattern=r"^[a-z]{1,16}$")] = "file") -> Response:
    item = rules.find(current, sr_uid)
    source = current.store.item_files(item)[0]
    if not source.is_file():
        raise HTTPException(404, NO_SOURCE[current.store.keep_sources])
    try:
        png = render_png(source, window)
    except (ValueError, MedblipError, OSError) as exc:
        raise HTTPException(404 if isinstance(exc, OSError) else 422, f"cannot show the image: {exc}") from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def _next(current: Station, sr_uid: str, done: str) -> Response:
    """On to the newest report still waiting (the worklist when none is left); `done` is a key of
    :data:`MESSAGES`."""
    waiting = [i for i in current.store.worklist(limit=2) if i["ai_uid"] != sr_uid]
    target = f"/reports/{waiting[0]['ai_uid']}?message={done}" if waiting else f"/?done={done}"
    return RedirectResponse(target, status_code=303)


@router.post("/reports/{sr_uid}/sign")
def sign(request: Request, current: CurrentStation, session: PageSession, sr_uid: Uid, csrf: Csrf = "",
         text: Annotated[str, Form()] = "", action: Annotated[str, Form()] = "edited",
         version: Annotated[OptionalUid, Form()] = "") -> Response:
    check_csrf(session.csrf, csrf)
    as_is = action == "as-is"
    try:
        signature = rules.sign(current, session.user, sr_uid, None if as_is else text, predecessor=version)
    except Refused as exc:
        if exc.status_code == 404:
            raise
        return _report_page(request, current, session, sr_uid, str(exc.detail), exc.status_code,
                            typed=None if as_is or exc.status_code == 409 else text)
    return _next(current, sr_uid, "signed" if signature.created else "already-signed")


@router.post("/reports/{sr_uid}/reject")
def reject(request: Request, current: CurrentStation, session: PageSession, sr_uid: Uid, csrf: Csrf = "",
           reason: Annotated[str, Form()] = "") -> Response:
    check_csrf(session.csrf, csrf)
    try:
        rules.reject(current, session.user, sr_uid, reason)
    except Refused as exc:
        if exc.status_code == 404:
            raise
        return _report_page(request, current, session, sr_uid, str(exc.detail), exc.status_code, reason=reason)
    return _next(current, sr_uid, "rejected")
