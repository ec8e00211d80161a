"""STOW-RS sink: send reports to a DICOMweb archive and classify its answers like C-STORE's.

:class:`StowClient` is a :class:`~.base.Sink` (``destination`` and ``send(paths) -> list[StoreOutcome]``),
so delivery treats it like every other destination. It
uses ``dicomweb-client`` (the Imaging Data Commons client) with its own retries off: delivery's
backoff is the one retry policy.

- No answer (refused, reset, timeout, TLS failure), a 5xx, 408 or 429: the destination is
  unavailable (:class:`StowUnavailable`, with the server's ``Retry-After`` when it sent one); the
  reports wait and are tried again.
- Another 4xx (400, 401, 403, 409, 413, 415 ...): every instance of the request is refused
  permanently with the HTTP status and the server's FailureReason where it gave one.
- 200 / 202: each instance is delivered when listed in ReferencedSOPSequence; listed in
  FailedSOPSequence, its FailureReason is classified as the C-STORE status of that number
  (0xA7xx out of resources is transient, 0xC000 cannot understand is permanent, ...).

The reports of one study go in one request (``POST {url}/studies/{StudyInstanceUID}``).
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medblip_dicom.integrations.config.dicomweb import ForwardDicomwebConfig
from medblip_dicom.integrations.delivery.sinks.base import DestinationUnavailable, StoreOutcome
from medblip_dicom.integrations.delivery.sinks.dicom import status_meaning

logger = logging.getLogger(__name__)

#: HTTP statuses meaning "not now": request timeout, too many requests, and every 5xx.
_TRANSIENT_HTTP = {408, 429}


class StowUnavailable(DestinationUnavailable):
    """The STOW-RS server did not take the request for now; `retry_after_s` is its Retry-After, if any."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _failure_reasons(body: Any) -> dict[str, int]:
    """{SOPInstanceUID: FailureReason} of a STOW-RS response Dataset (empty when it has none)."""
    out: dict[str, int] = {}
    for item in getattr(body, "FailedSOPSequence", None) or []:
        uid = str(item.get("ReferencedSOPInstanceUID", "") or "")
        reason = item.get("FailureReason")
        out[uid] = int(reason) if reason is not None else 0x0110
    return out


def _referenced(body: Any) -> set[str]:
    return {str(item.get("ReferencedSOPInstanceUID", "") or "")
            for item in getattr(body, "ReferencedSOPSequence", None) or []}


def _json_body(response: Any) -> Any:
    """The response's DICOM JSON body as a Dataset, or None."""
    import pydicom

    try:
        kind = response.headers.get("Content-Type", "").split(";")[0].strip()
        if kind in ("application/dicom+json", "application/json") and response.content:
            return pydicom.Dataset.from_json(response.content.decode("utf-8"))
    except Exception:  # noqa: BLE001 - an unreadable error body only loses the detail
        return None
    return None


class StowClient:
    """Sends files to one STOW-RS service (``url`` is its root, e.g. ``https://pacs/dicom-web``)."""

    kind = "dicomweb"
    protocol = "STOW-RS"  # for the audit trail ("sent by STOW-RS")

    def __init__(self, url: str, settings: ForwardDicomwebConfig | None = None) -> None:
        self.url = url.rstrip("/")
        self.settings = settings or ForwardDicomwebConfig()
        self.destination = self.url  # what delivery's logs and metrics name
        self._client: Any = None

    def client(self) -> Any:
        """The ``DICOMwebClient`` (built once: auth read from its file or variable, TLS, timeout)."""
        if self._client is None:
            from dicomweb_client.api import DICOMwebClient

            s = self.settings
            session = _session_class()()
            token, password = s.token(), s.password()
            if token is not None:
                session.headers["Authorization"] = f"Bearer {token}"
            elif s.username and password is not None:
                session.auth = (s.username, password)
            session.verify = str(s.ca) if s.ca is not None else s.verify
            client = DICOMwebClient(self.url, session=session, timeout=s.timeout_s)
            client.set_http_retry_params(retry=False)
            self._client = client
        return self._client

    def send(self, paths: Sequence[Path]) -> list[StoreOutcome]:
        """STOW each study's files in one request; one outcome per file, in order.

        Raises :class:`StowUnavailable` when the server cannot take them now (nothing was sent
        for the studies not yet tried, and a study already sent is sent again: stable SR UIDs).
        """
        import pydicom

        outcomes: dict[Path, StoreOutcome] = {}
        by_study: dict[str, list[tuple[Path, Any]]] = {}
        for path in paths:
            try:
                ds = pydicom.dcmread(path)
            except Exception as exc:  # noqa: BLE001 - our own report unreadable: nothing to send
                outcomes[path] = StoreOutcome(path, None, False, True, f"cannot read the report ({exc})")
                continue
            by_study.setdefault(str(ds.get("StudyInstanceUID", "") or ""), []).append((path, ds))
        for study_uid, items in by_study.items():
            for outcome in self._send_study(study_uid, items):
                outcomes[outcome.path] = outcome
        return [outcomes[path] for path in paths]

    def send_datasets(self, datasets: Sequence[Any]) -> list[StoreOutcome]:
        """:meth:`send` for data sets in memory (``medblip pull``); outcomes name ``<SOPInstanceUID>.dcm``."""
        items = [(Path(f"{ds.SOPInstanceUID}.dcm"), ds) for ds in datasets]
        by_study: dict[str, list[tuple[Path, Any]]] = {}
        for path, ds in items:
            by_study.setdefault(str(ds.get("StudyInstanceUID", "") or ""), []).append((path, ds))
        outcomes = {o.path: o for uid, group in by_study.items() for o in self._send_study(uid, group)}
        return [outcomes[path] for path, _ in items]

    def _send_study(self, study_uid: str, items: list[tuple[Path, Any]]) -> list[StoreOutcome]:
        import requests

        try:
            body = self.client().store_instances([ds for _, ds in items], study_instance_uid=study_uid or None)
        except requests.HTTPError as exc:
            return self._refused(exc.response, items)
        except requests.exceptions.SSLError as exc:
            raise StowUnavailable(f"STOW-RS server {self.url}: TLS failed ({_short(exc)})") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise StowUnavailable(f"STOW-RS server {self.url} cannot be reached ({_short(exc)})") from None
        except ValueError as exc:  # an answer dicomweb-client cannot read
            return [StoreOutcome(p, None, False, False, f"unreadable STOW-RS response ({exc})") for p, _ in items]
        failed, referenced = _failure_reasons(body), _referenced(body)
        out = []
        for path, ds in items:
            uid = str(ds.SOPInstanceUID)
            if uid in failed:
                reason = failed[uid]
                delivered, permanent, words = status_meaning(reason)
                out.append(StoreOutcome(path, reason, False, permanent or delivered,
                                        f"FailureReason {words}"))
            elif uid in referenced or not (failed or referenced):
                out.append(StoreOutcome(path, 0x0000, True, False, "stored"))
            else:
                out.append(StoreOutcome(path, None, False, False, "the STOW-RS response does not list it"))
        return out

    def _refused(self, response: Any, items: list[tuple[Path, Any]]) -> list[StoreOutcome]:
        code = int(response.status_code)
        if code >= 500 or code in _TRANSIENT_HTTP:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            after = f", Retry-After {retry_after:.0f} s" if retry_after is not None else ""
            raise StowUnavailable(f"STOW-RS server {self.url} answered HTTP {code} {response.reason or ''}".rstrip()
                                  + after, retry_after)
        failed = _failure_reasons(_json_body(response))
        out = []
        for path, ds in items:
            reason = failed.get(str(ds.SOPInstanceUID))
            detail = f", FailureReason 0x{reason:04X} {status_meaning(reason)[2].split(' ', 1)[1]}" if reason else ""
            words = f"HTTP {code} {response.reason or ''}".rstrip()
            out.append(StoreOutcome(path, reason, False, True, words + detail))
        return out


def _session_class() -> type:
    """A ``requests.Session`` whose own ``verify`` (our CA bundle, or False) wins over
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, which plain requests lets override a session's setting."""
    import requests

    class Session(requests.Session):
        def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: ANN001, ANN202
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if verify is None:
                settings["verify"] = self.verify
            return settings

    return Session


def _short(exc: BaseException) -> str:
    """The innermost reason of a requests exception, without its long repr chain."""
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."
