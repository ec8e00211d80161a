"""Whether a DICOMweb server answers (for ``medblip doctor``): one QIDO-RS request, ``GET
{url}/studies?limit=1``, with the configured auth, TLS and timeout."""

from __future__ import annotations

import time

from medblip_dicom.integrations.config.dicomweb import ForwardDicomwebConfig
from medblip_dicom.integrations.delivery.sinks.dicomweb import StowClient


def probe(url: str, settings: ForwardDicomwebConfig | None = None) -> tuple[bool, str]:
    """``(answers, words)``: True when the server answered the query with 2xx (or 204)."""
    import requests

    client = StowClient(url, settings)
    started = time.perf_counter()
    try:
        session = client.client()._session  # noqa: SLF001 - dicomweb-client keeps its session private
        response = session.get(f"{client.url}/studies", params={"limit": "1"}, timeout=client.settings.timeout_s,
                               headers={"Accept": "application/dicom+json"})
    except requests.exceptions.SSLError as exc:
        return False, f"TLS failed ({str(exc)[:120]})"
    except (requests.ConnectionError, requests.Timeout) as exc:
        return False, f"no answer ({type(exc).__name__})"
    ms = 1000 * (time.perf_counter() - started)
    if response.ok:
        return True, f"answered QIDO-RS in {ms:.0f} ms (HTTP {response.status_code})"
    if response.status_code in (401, 403):
        return False, f"refused our credentials (HTTP {response.status_code})"
    return False, f"answered HTTP {response.status_code} {response.reason or ''}".rstrip()
