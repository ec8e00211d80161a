"""The review station as typed dependencies: every route declares what it needs, nothing reads app state.

:class:`Station` holds what the routes share (the store, the accounts, the sessions, the page
templates and two settings); :func:`~.app.create_app` makes one and :func:`attach` puts it on the
app. Routes never read ``request.app.state``: they declare

- :data:`CurrentStation`: the station;
- :data:`PageSession`: a page's live session (none: :class:`LoginRequired`, which the app answers
  with a redirect to ``/login``);
- :data:`ApiUser`: the API's reviewer of a valid ``Authorization: Bearer TOKEN`` (none: 401),

as ``Annotated[..., Depends(...)]`` parameters (the pattern of FastAPI's full-stack template,
``backend/app/api/deps.py``), so no route can forget authentication and a test can replace the
station with ``app.dependency_overrides[station]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.templating import Jinja2Templates

from medblip_dicom.integrations.review.accounts import Accounts, User
from medblip_dicom.integrations.review.security import SESSION_COOKIE, Session, Sessions
from medblip_dicom.integrations.review.signing import Reviewer
from medblip_dicom.integrations.review.store import ReviewStore


class LoginRequired(Exception):
    """Raised by :func:`page_session` without a live session: the app answers with a redirect to /login."""


@dataclass(frozen=True)
class Station:
    """What the routes share: the store, the accounts, the sessions, the page templates, the
    organization signed reports name, and whether cookies are Secure (under TLS)."""

    store: ReviewStore
    accounts: Accounts
    sessions: Sessions
    templates: Jinja2Templates
    organization: str = ""
    secure_cookies: bool = False

    def reviewer(self, user: User) -> Reviewer:
        """`user` as the signer of a document of this station (its organization)."""
        return Reviewer(user.username, user.person_name, self.organization)


def attach(app: FastAPI, station: Station) -> None:
    """Make `station` the one :func:`station` gives to every route of `app`."""
    app.state.review_station = station


def station(request: Request) -> Station:
    """The dependency of every route: the app's :class:`Station` (the only reader of app state)."""
    return request.app.state.review_station  # type: ignore[no-any-return]


CurrentStation = Annotated[Station, Depends(station)]


def page_session(request: Request, current: CurrentStation) -> Session:
    """The dependency of every page: the live session of the request's cookie, else a redirect to /login."""
    session = current.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequired()
    return session


def api_user(request: Request, current: CurrentStation) -> User:
    """The dependency of every API route: the reviewer of a valid bearer token, else 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    user = current.accounts.user_for_token(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if user is None:
        raise HTTPException(status_code=401, detail="a valid API token is needed: Authorization: Bearer TOKEN",
                            headers={"WWW-Authenticate": "Bearer"})
    return user


PageSession = Annotated[Session, Depends(page_session)]
ApiUser = Annotated[User, Depends(api_user)]
