"""The FHIR R4 sink (``[fhir]``): each report to a FHIR server as a DiagnosticReport (:mod:`.fhirreport`).

Each version of a report updates **one** resource on the server, found by the identifier every
version shares (the AI report's UID): ``PUT {url}/DiagnosticReport?identifier=SYSTEM|VALUE``, FHIR's
conditional update, which creates the resource when none has the identifier and updates it when one
does. Sending the same document again (a retry, a restart) therefore creates nothing. Before it, one
``GET`` with the same search reads what the server holds: a report already further along (final,
amended, cancelled) is never sent back to preliminary by a late AI report, which then counts as
delivered.

Answers: 200 or 201 delivered; 5xx, 408, 429, no answer, a refused connection or TLS failure: the
server is unavailable for now (:class:`FhirUnavailable`, with its Retry-After); another 4xx (400,
401, 403, 404, 409, 412 several resources match, 422 a resource the server refuses) refuses the
report for good, with the status and the first OperationOutcome diagnostics. A resource that does
not validate (``fhir.resources``) is refused before anything is sent. Files that are not one of our
documents (a Secondary Capture, a PDF) have no resource: delivered without a request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medblip_dicom.errors import ReportError
from medblip_dicom.report_view import read_document

from medblip_dicom.integrations.config.fhir import FhirConfig
from medblip_dicom.integrations.delivery.sinks.base import DestinationUnavailable, StoreOutcome
from medblip_dicom.integrations.delivery.sinks.dicomweb import parse_retry_after
from medblip_dicom.integrations.delivery.sinks.fhirreport import (
    PROGRESS, FhirBuildError, build_resource, report_identifier,
)

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_TRANSIENT_HTTP = {408, 429}


class FhirUnavailable(DestinationUnavailable):
    """The FHIR server did not take the request now (no answer, 5xx, 408, 429)."""


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FhirSink:
    """Creates or updates one DiagnosticReport per report on one FHIR server (``[fhir] url``)."""

    kind = "fhir"
    protocol = "FHIR REST"

    def __init__(self, config: FhirConfig) -> None:
        self.config = config
        self.url = config.url
        self.destination = config.url
        self._session: Any = None

    def session(self) -> Any:
        """The HTTP session (built once: the token read from its file or variable, TLS verification)."""
        if self._session is None:
            import requests

            session = requests.Session()
            session.trust_env = False  # no proxy or CA bundle from the environment overrides the settings
            token = self.config.token()
            if token is not None:
                session.headers["Authorization"] = f"Bearer {token}"
            session.headers["Accept"] = FHIR_JSON
            session.verify = str(self.config.ca) if self.config.ca is not None else self.config.verify
            self._session = session
        return self._session

    def send(self, paths: Sequence[Path]) -> list[StoreOutcome]:
        """One outcome per file, in order (see the module docstring)."""
        import pydicom

        out: list[StoreOutcome] = []
        answered = False
        for i, path in enumerate(paths):
            try:
                doc = read_document(pydicom.dcmread(path, stop_before_pixels=True), label=path.name)
            except ReportError:
                out.append(StoreOutcome(path, None, True, False, "not a report: no FHIR resource"))
                continue
            except Exception as exc:  # noqa: BLE001 - our own file unreadable: nothing to send, ever
                out.append(StoreOutcome(path, None, False, True, f"cannot read the report ({type(exc).__name__})"))
                continue
            try:
                resource = build_resource(doc, patient_system=self.config.patient_system)
                out.append(self._put(path, doc, resource))
                answered = True
            except FhirBuildError as exc:
                out.append(StoreOutcome(path, None, False, True, str(exc)))
            except _Refused as exc:
                out.append(StoreOutcome(path, None, False, True, exc.message))
                answered = True
            except FhirUnavailable as exc:
                if not answered:
                    raise
                out += [StoreOutcome(p, None, False, False, str(exc)) for p in paths[i:]]
                break
        return out

    def _put(self, path: Path, doc: Any, resource: dict[str, Any]) -> StoreOutcome:
        system, value = report_identifier(doc)
        search = {"identifier": f"{system}|{value}"}
        found = self._request("GET", "DiagnosticReport", params=search)
        held = [e.get("resource", {}) for e in (found.json().get("entry") or [])] if found.content else []
        if len(held) == 1 and PROGRESS.get(held[0].get("status"), -1) > PROGRESS[resource["status"]]:
            logger.info("FHIR server %s holds report %s as %s already; %s (%s) not sent", self.url, doc.first_uid,
                        held[0].get("status"), doc.sop_instance_uid, resource["status"])
            return StoreOutcome(path, None, True, False, f"the server holds a later version ({held[0].get('status')})")
        answer = self._request("PUT", "DiagnosticReport", params=search, json=resource)
        logger.info("FHIR server %s %s DiagnosticReport for %s (%s)", self.url,
                    "created" if answer.status_code == 201 else "updated", doc.sop_instance_uid, resource["status"])
        return StoreOutcome(path, None, True, False, f"HTTP {answer.status_code}")

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        url = f"{self.url}/{path}"
        headers = {"Content-Type": FHIR_JSON} if "json" in kwargs else {}
        try:
            answer = self.session().request(method, url, timeout=self.config.timeout_s, headers=headers, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise FhirUnavailable(f"FHIR server {self.url}: TLS failed ({_short(exc)})") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise FhirUnavailable(f"FHIR server {self.url} cannot be reached ({_short(exc)})") from None
        code = answer.status_code
        if code >= 500 or code in _TRANSIENT_HTTP:
            after = parse_retry_after(answer.headers.get("Retry-After"))
            raise FhirUnavailable(f"FHIR server {self.url} answered HTTP {code} {answer.reason or ''}".rstrip(), after)
        if code >= 300:
            raise _Refused(f"HTTP {code} {answer.reason or ''}".rstrip() + _diagnostics(answer))
        return answer


def _diagnostics(answer: Any) -> str:
    """The first issue's diagnostics of an OperationOutcome body, shortened (empty when there is none)."""
    try:
        issues = answer.json().get("issue") or []
    except ValueError:
        return ""
    text = str(issues[0].get("diagnostics") or issues[0].get("code") or "") if issues else ""
    return f": {_short(text)}" if text else ""


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) < 200 else text[:197] + "..."
