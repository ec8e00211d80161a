"""A FHIR R4 peer for the FHIR sink's tests: a small FastAPI app, in-process. Not a production server.

It holds DiagnosticReports in memory and does what the sink relies on, as FHIR R4's RESTful API
says: a search by ``identifier=SYSTEM|VALUE`` answers a searchset Bundle; ``PUT
DiagnosticReport?identifier=...`` is a conditional update (no match: created, 201; one match:
updated, 200, its version counted; several: 412); ``POST DiagnosticReport`` with ``If-None-Exist`` is
a conditional create (a match: 200 and nothing created). Every body is validated with
``fhir.resources`` (R4B's DiagnosticReport, R4's status value set, every local reference naming a
contained resource, the contained resources' own types) and refused with an OperationOutcome (422)
when it fails. With ``token`` set, a request without ``Authorization: Bearer <token>`` gets 401.
``script(n, method)`` may answer a request itself (an HTTP status, e.g. 503) before the peer does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

R4_STATUS = {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended", "cancelled",
             "entered-in-error", "unknown"}


@dataclass
class Stored:
    id: str
    resource: dict[str, Any]
    versions: list[dict[str, Any]] = field(default_factory=list)


def problems(body: Any) -> list[str]:
    """What makes `body` an invalid DiagnosticReport for this peer (empty: valid)."""
    from fhir.resources.R4B.device import Device
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.practitioner import Practitioner
    from pydantic import ValidationError

    if not isinstance(body, dict) or body.get("resourceType") != "DiagnosticReport":
        return ["not a DiagnosticReport"]
    out = []
    try:
        DiagnosticReport.model_validate(body)
    except ValidationError as exc:
        out += [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    if body.get("status") not in R4_STATUS:
        out.append(f"status {body.get('status')!r} is not in the R4 value set")
    models = {"Device": Device, "Observation": Observation, "Practitioner": Practitioner}
    contained = {c.get("id"): c for c in body.get("contained", [])}
    for item in contained.values():
        if item.get("resourceType") not in models:
            out.append(f"contained {item.get('resourceType')} is not expected")
            continue
        try:
            models[item["resourceType"]].model_validate(item)
        except ValidationError as exc:
            out += [f"contained {item['resourceType']}: {e['msg']}" for e in exc.errors()]
    allowed = {"result": {"Observation"}, "resultsInterpreter": {"Practitioner", "PractitionerRole", "Organization",
                                                                 "CareTeam"},
               "performer": {"Practitioner", "PractitionerRole", "Organization", "CareTeam"}}
    for key, types in allowed.items():
        for ref in body.get(key, []):
            target = contained.get(str(ref.get("reference", "")).lstrip("#"))
            if target is None or target.get("resourceType") not in types:
                out.append(f"{key} {ref.get('reference')!r} is not a contained {' or '.join(sorted(types))}")
    for obs in (c for c in contained.values() if c.get("resourceType") == "Observation"):
        device = obs.get("device", {}).get("reference", "")
        if device and contained.get(device.lstrip("#"), {}).get("resourceType") != "Device":
            out.append("Observation.device does not name a contained Device")
    return out


class FhirPeer:
    """The peer (see the module docstring), served by uvicorn in a thread on 127.0.0.1."""

    def __init__(self, *, token: str | None = None, script: Callable[[int, str], int | None] | None = None) -> None:
        self.token = token
        self.script = script
        self.store: dict[str, Stored] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def matching(self, identifier: str) -> list[Stored]:
        system, _, value = identifier.partition("|")
        with self._lock:
            return [s for s in self.store.values() if any(
                i.get("value") == value and (not system or i.get("system") == system)
                for i in s.resource.get("identifier", []))]

    def app(self) -> Any:
        app = FastAPI()

        def outcome(status: int, text: str) -> JSONResponse:
            return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid" if status == 422 else "processing", "diagnostics": text}]},
                status_code=status, media_type="application/fhir+json")

        @app.middleware("http")
        async def guard(request: Request, call_next: Any) -> Any:
            with self._lock:
                n = len(self.requests) + 1
            status = self.script(n, request.method) if self.script is not None else None
            if status is None and self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                status = 401
            response = outcome(status, "scripted") if status is not None else await call_next(request)
            with self._lock:
                self.requests.append((request.method, request.url.path, response.status_code))
            return response

        @app.get("/fhir/DiagnosticReport")
        def search(identifier: str = "") -> JSONResponse:
            found = self.matching(identifier) if identifier else list(self.store.values())
            return JSONResponse({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                                 "entry": [{"resource": s.resource} for s in found]},
                                media_type="application/fhir+json")

        @app.put("/fhir/DiagnosticReport")
        async def conditional_update(request: Request, identifier: str = "") -> JSONResponse:
            body = await request.json()
            if not identifier:
                return outcome(400, "conditional update needs a search (identifier=)")
            found = self.matching(identifier)
            if len(found) > 1:
                return outcome(412, "several resources match")
            return self._write(body, found[0] if found else None, outcome)

        @app.post("/fhir/DiagnosticReport")
        async def create(request: Request) -> JSONResponse:
            body = await request.json()
            condition = request.headers.get("if-none-exist", "")
            if condition.startswith("identifier="):
                found = self.matching(condition[len("identifier="):])
                if found:
                    return JSONResponse(found[0].resource, status_code=200, media_type="application/fhir+json")
            return self._write(body, None, outcome)

        return app

    def _write(self, body: Any, existing: Stored | None, outcome: Callable[[int, str], Any]) -> Any:
        faults = problems(body)
        if faults:
            return outcome(422, "; ".join(faults)[:500])
        with self._lock:
            if existing is None:
                existing = Stored(str(len(self.store) + 1), {})
                self.store[existing.id] = existing
                status = 201
            else:
                status = 200
            resource = dict(body, id=existing.id, meta={"versionId": str(len(existing.versions) + 1)})
            existing.resource = resource
            existing.versions.append(resource)
        return JSONResponse(resource, status_code=status, media_type="application/fhir+json")

    def __enter__(self) -> FhirPeer:
        import socket

        import uvicorn

        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app(), log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="fhir-peer")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the FHIR peer did not start within 30 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
