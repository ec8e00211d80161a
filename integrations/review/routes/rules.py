"""What the pages and the API both follow: one UID type, one set of worklist filters, one way to
decide, one mapping of the review's errors to HTTP statuses.

- **UIDs** in paths and bodies are :data:`Uid`: :func:`medblip_dicom.uids.is_dicom_uid` (digits and
  dots, at most 64 characters), so no path traversal or odd character reaches the store; anything
  else is a 422 before a route runs.
- **Texts**: the signed text and the rejection reason follow
  :func:`~medblip_dicom.integrations.review.signing.signed_text` and
  :func:`~medblip_dicom.integrations.review.signing.rejection_reason` wherever they come from (the
  store applies them to every caller): both required, both within their length, both through the
  DICOM text rule.
- **Decisions**: :func:`sign` and :func:`reject` are what a page's form and an API call do; each
  raises :class:`Refused` with the status :data:`STATUSES` gives its error: 404 unknown report,
  409 someone decided first (or a file it needs is gone), 422 a request that cannot be done as
  given (its sentence says why). The API answers a :class:`Refused` as ``{"detail": ...}``; a page
  shows the sentence on the report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query
from pydantic import AfterValidator

from medblip_dicom.errors import MedblipError
from medblip_dicom.uids import UID_MAX_LENGTH, is_dicom_uid

from medblip_dicom.integrations.review.accounts import User
from medblip_dicom.integrations.review.deps import Station
from medblip_dicom.integrations.review.store import (
    PENDING, STATES, ReviewConflict, ReviewError, ReviewNotFound, Signature,
)


def _uid(value: str) -> str:
    if not is_dicom_uid(value):
        raise ValueError(f"not a DICOM UID (digits and dots, at most {UID_MAX_LENGTH} characters)")
    return value


#: A DICOM UID in a path or a body (a 422 naming the field otherwise).
Uid = Annotated[str, AfterValidator(_uid)]


def _optional_uid(value: str) -> str:
    return _uid(value) if value else value


#: A UID or nothing (a form's hidden field that may be empty).
OptionalUid = Annotated[str, AfterValidator(_optional_uid)]


@dataclass(frozen=True)
class WorklistFilter:
    """Which reports a worklist shows: by modality, study date (YYYYMMDD), model name or version, state."""

    modality: str = ""
    date: str = ""
    model: str = ""
    state: str = PENDING


def worklist_filter(modality: Annotated[str, Query(pattern=r"^[A-Za-z]{0,16}$")] = "",
                    date: Annotated[str, Query(pattern=r"^([0-9]{8})?$")] = "",
                    model: Annotated[str, Query(max_length=64)] = "",
                    state: Annotated[str, Query(pattern=rf"^({'|'.join(STATES)})$")] = PENDING) -> WorklistFilter:
    """The worklist's query parameters, checked (a 422 naming the parameter otherwise)."""
    return WorklistFilter(modality, date, model, state)


Filters = Annotated[WorklistFilter, Depends(worklist_filter)]


class Refused(HTTPException):
    """A decision or a look-up the station refuses: the status and the sentence that says why."""


#: The review's errors and their HTTP statuses, most specific first.
STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (ReviewNotFound, 404),
    (ReviewConflict, 409),  # decided meanwhile, or a file the action needs is gone (ReviewUnavailable)
    (ReviewError, 422),
    (MedblipError, 422),  # a text the DICOM text rule refuses, a report that cannot be built
)


def status_of(exc: Exception) -> int:
    """The HTTP status of one of the review's errors (:data:`STATUSES`)."""
    return next(status for kind, status in STATUSES if isinstance(exc, kind))


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """Turn the review's errors raised inside into :class:`Refused` with their status and message."""
    try:
        yield
    except tuple(kind for kind, _ in STATUSES) as exc:
        raise Refused(status_of(exc), str(exc)) from None


def find(current: Station, ai_uid: str) -> dict[str, Any]:
    """The report under review `ai_uid` (Refused 404 when there is none)."""
    with refusals():
        return current.store.item(ai_uid)


def sign(current: Station, user: User, ai_uid: str, text: str | None, *, predecessor: str | None = None) -> Signature:
    """`user` signs `text` for `ai_uid` (None: the AI caption as it is); `predecessor` is the version
    the reviewer saw (None: the AI report). Refused as :data:`STATUSES` says."""
    with refusals():
        if text is None:
            text = current.store.item(ai_uid)["caption"]
        return current.store.sign(ai_uid, current.reviewer(user), text, predecessor=predecessor or None)


def reject(current: Station, user: User, ai_uid: str, reason: str) -> str | None:
    """`user` rejects `ai_uid` for `reason` (required); returns the rejection note's UID, if one is
    sent. Refused as :data:`STATUSES` says."""
    with refusals():
        return current.store.reject(ai_uid, current.reviewer(user), reason)
