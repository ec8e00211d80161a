"""The node's STOW-RS endpoint: instances go durably into the spool and through the same worker;
every bad input (no token, wrong type, too large, malformed) gets its status and reason, and nothing of it is stored."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from tests.support.dicom import reissued
from tests.support.env import free_port, wait_for
from tests.support.services import make_certificates, make_config

from medblip_dicom.integrations.config.file import ConfigError, load_config
from medblip_dicom.integrations.spool import JobState

BOUNDARY = "medblip-test-boundary"
DICOM_MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(*parts: bytes, boundary: str = BOUNDARY, close: bool = True, kind: str = "application/dicom") -> bytes:
    out = b""
    for data in parts:
        out += f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def failures(response) -> list[tuple[str, int]]:
    """(SOPInstanceUID or "" when the part had none that could be read, FailureReason), in order."""
    body = pydicom.Dataset.from_json(response.json())
    return [(str(i.get("ReferencedSOPInstanceUID", "")), int(i.FailureReason))
            for i in body.get("FailedSOPSequence", [])]


def stored(response) -> list[str]:
    body = pydicom.Dataset.from_json(response.json())
    return [str(i.ReferencedSOPInstanceUID) for i in body.get("ReferencedSOPSequence", [])]


@pytest.fixture
def node(tmp_path, run_service):
    """Start a node service with its STOW-RS endpoint; returns (service, base URL)."""
    def start(**dicomweb):
        port = free_port()
        config = make_config(tmp_path, node={"port": free_port()}, output={"dir": str(tmp_path / "out")},
                             dicomweb={"port": port, **dicomweb})
        service = run_service(config, node=True)
        scheme = "https" if dicomweb.get("tls") else "http"
        return service, f"{scheme}://127.0.0.1:{port}/dicom-web"
    return start


def _files(td, folder: Path, n: int, **attrs) -> list[Path]:
    names = ["CT_small.dcm", "MR_small.dcm"]
    return [reissued(td, names[i % 2], folder, **attrs) for i in range(n)]


def test_dicomweb_client_stores_a_study_and_each_instance_is_captioned(tmp_path, td, node):
    from dicomweb_client.api import DICOMwebClient

    service, url = node()
    study = generate_uid()
    paths = _files(td, tmp_path / "in", 3, StudyInstanceUID=study)
    datasets = [pydicom.dcmread(p) for p in paths]
    client = DICOMwebClient(url)
    answer = client.store_instances(datasets, study_instance_uid=study)
    uids = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    assert sorted(str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence) == uids
    assert "FailedSOPSequence" not in answer
    # Acknowledged means durable: the journal has every one at once, then the worker reports them.
    jobs = {j.sop_instance_uid: j for j in service.spool.jobs()}
    assert sorted(jobs) == uids and {j.origin for j in jobs.values()} == {"dicomweb"}
    wait_for(lambda: all(service.spool.job(j.id).state is JobState.DELIVERED for j in jobs.values()), 60,
             "the SRs of the STOW-RS instances")
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 3
    audit = (tmp_path / "spool" / "audit.xml").read_text()
    assert "received by DICOMweb STOW-RS" in audit and study in audit
    # A second time: duplicates are acknowledged as stored, and nothing new is captioned.
    client.store_instances(datasets)
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 3


def test_some_refused_is_202_with_reasons_none_stored_is_409(tmp_path, td, node):
    service, url = node()
    study = generate_uid()
    good = _files(td, tmp_path / "in", 1, StudyInstanceUID=study)[0]
    other = _files(td, tmp_path / "other", 1, StudyInstanceUID=generate_uid())[0]
    data = good.read_bytes()
    truncated = other.read_bytes()[:-100]  # cut inside its last element
    body = multipart(data, other.read_bytes(), b"this is not DICOM at all" * 10, truncated)
    r = requests.post(f"{url}/studies/{study}", data=body, headers={"Content-Type": DICOM_MULTIPART}, timeout=30)
    assert r.status_code == 202 and r.headers["content-type"].startswith("application/dicom+json")
    other_uid = str(pydicom.dcmread(other, stop_before_pixels=True).SOPInstanceUID)
    assert stored(r) == [str(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID)]
    assert failures(r) == [(other_uid, 0xA900), ("", 0xC210), (other_uid, 0xC210)]
    assert [j.sop_instance_uid for j in service.spool.jobs()] == stored(r)

    r = requests.post(f"{url}/studies/{study}", data=multipart(b"junk", truncated),
                      headers={"Content-Type": DICOM_MULTIPART}, timeout=30)
    assert r.status_code == 409 and [reason for _, reason in failures(r)] == [0xC210, 0xC210]
    assert len(service.spool.jobs()) == 1


@pytest.mark.parametrize("content_type, body, status, words", [
    ("application/dicom", b"x", 415, "not multipart/related"),
    ('multipart/related; type="application/dicom+json"; boundary=b', b"x", 415, "application/dicom+json"),
    ('multipart/related; type="application/dicom"', b"x", 400, "no valid boundary"),
    (DICOM_MULTIPART, "WRONG-BOUNDARY", 400, "does not contain the boundary"),
    (DICOM_MULTIPART, "TRUNCATED", 400, "truncated"),
    (DICOM_MULTIPART, b"--" + BOUNDARY.encode() + b"junk after the boundary\r\n\r\n", 400, "malformed"),
    (DICOM_MULTIPART, b"--" + BOUNDARY.encode() + b"\r\nno colon here\r\n\r\nbody", 400, "NAME: VALUE"),
])
def test_bad_requests_are_refused_and_store_nothing(tmp_path, td, node, content_type, body, status, words):
    service, url = node()
    data = _files(td, tmp_path / "in", 1)[0].read_bytes()
    if body == "WRONG-BOUNDARY":
        body = multipart(data, boundary="another-boundary")
    elif body == "TRUNCATED":
        body = multipart(data, data, close=False)[:-50]
    r = requests.post(f"{url}/studies", data=body, headers={"Content-Type": content_type}, timeout=30)
    assert r.status_code == status and words in r.json()["error"]
    assert service.spool.jobs() == []


def test_an_oversized_body_is_refused_while_it_streams(tmp_path, td, node):
    service, url = node(max_body_bytes=64 * 1024)
    data = _files(td, tmp_path / "in", 1)[0].read_bytes()
    body = multipart(*[data] * 4)  # ~160 kB
    r = requests.post(f"{url}/studies", data=body, headers={"Content-Type": DICOM_MULTIPART}, timeout=30)
    assert r.status_code == 413 and "limit of 65536 bytes" in r.json()["error"]

    sent = []

    def chunks():  # no Content-Length: the limit must hold while reading
        for i in range(0, len(body), 8192):
            sent.append(i)
            yield body[i:i + 8192]
    try:
        r = requests.post(f"{url}/studies", data=chunks(), headers={"Content-Type": DICOM_MULTIPART}, timeout=30)
        assert r.status_code == 413
    except requests.ConnectionError:
        pass  # the server may close the connection before the client finished sending: also a refusal
    assert service.spool.jobs() == []
    small = multipart(data)
    assert requests.post(f"{url}/studies", data=small, headers={"Content-Type": DICOM_MULTIPART},
                         timeout=30).status_code == 200


def test_a_missing_or_wrong_token_is_401_and_the_right_one_stores(tmp_path, td, node):
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\nfirst-token\nsecond-token\n")
    service, url = node(token_file=str(tokens))
    body = multipart(_files(td, tmp_path / "in", 1)[0].read_bytes())
    headers = {"Content-Type": DICOM_MULTIPART}
    for auth in (None, "Bearer wrong", "Basic Zmlyc3QtdG9rZW46", "Bearer "):
        r = requests.post(f"{url}/studies", data=body, timeout=30,
                          headers={**headers, **({"Authorization": auth} if auth else {})})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert service.spool.jobs() == []
    r = requests.post(f"{url}/studies", data=body, headers={**headers, "Authorization": "Bearer second-token"},
                      timeout=30)
    assert r.status_code == 200 and len(service.spool.jobs()) == 1


def test_a_full_spool_answers_out_of_resources(tmp_path, td, run_service):
    port = free_port()
    config = make_config(tmp_path, node={"port": free_port()}, output={"dir": str(tmp_path / "out")},
                         dicomweb={"port": port}, spool={"max_bytes": 1000})
    run_service(config, node=True)
    body = multipart(_files(td, tmp_path / "in", 1)[0].read_bytes())
    r = requests.post(f"http://127.0.0.1:{port}/dicom-web/studies", data=body,
                      headers={"Content-Type": DICOM_MULTIPART}, timeout=30)
    assert r.status_code == 409 and [reason for _, reason in failures(r)] == [0xA700]


def test_with_tls_plain_http_is_not_answered_and_https_is(tmp_path, td, node, tool):
    certs = make_certificates(tmp_path / "certs", tool("openssl"))
    service, url = node(tls={"cert": str(certs["server.pem"]), "key": str(certs["server.key"])})
    body = multipart(_files(td, tmp_path / "in", 1)[0].read_bytes())
    headers = {"Content-Type": DICOM_MULTIPART}
    with pytest.raises(requests.ConnectionError):
        requests.post(url.replace("https://", "http://") + "/studies", data=body, headers=headers, timeout=30)
    assert service.spool.jobs() == []
    r = requests.post(f"{url}/studies", data=body, headers=headers, timeout=30, verify=str(certs["ca.pem"]))
    assert r.status_code == 200 and len(service.spool.jobs()) == 1


def test_the_stow_sink_verifies_tls_with_its_ca_and_sends_its_token(tmp_path, td, node, tool):
    from medblip_dicom.integrations.config.dicomweb import ForwardDicomwebConfig
    from medblip_dicom.integrations.delivery.sinks.dicomweb import StowClient, StowUnavailable

    certs = make_certificates(tmp_path / "certs", tool("openssl"))
    (tmp_path / "token").write_text("the-token\n")
    (tmp_path / "wrong").write_text("not-the-token\n")
    service, url = node(tls={"cert": str(certs["server.pem"]), "key": str(certs["server.key"])},
                        token_file=str(tmp_path / "token"))
    path = _files(td, tmp_path / "in", 1)[0]
    ok = StowClient(url, ForwardDicomwebConfig(token_file=tmp_path / "token", ca=certs["ca.pem"])).send([path])
    assert [o.delivered for o in ok] == [True] and len(service.spool.jobs()) == 1
    refused = StowClient(url, ForwardDicomwebConfig(token_file=tmp_path / "wrong", ca=certs["ca.pem"])).send([path])
    assert not refused[0].delivered and refused[0].permanent and "HTTP 401" in refused[0].message
    with pytest.raises(StowUnavailable, match="TLS failed"):  # the system CAs do not know the test CA
        StowClient(url, ForwardDicomwebConfig(token_file=tmp_path / "token")).send([path])


def test_an_open_endpoint_must_stay_on_loopback():
    with pytest.raises(ConfigError, match=r"\[dicomweb\] token_file: .*0.0.0.0"):
        load_config(None, {"dicomweb": {"port": 8042, "host": "0.0.0.0"}})
    assert load_config(None, {"dicomweb": {"port": 8042, "host": "0.0.0.0", "token_env": "T"}}).dicomweb.enabled


def test_a_certificate_that_does_not_load_is_named_at_start(tmp_path):
    from medblip_dicom.integrations.config.dicomweb import DicomwebConfig
    from medblip_dicom.integrations.ingest.stow.endpoint import StowEndpoint
    from medblip_dicom.integrations.ingest.stow.receiver import StowReceiver
    from medblip_dicom.integrations.spool import Spool

    (tmp_path / "cert.pem").write_text("not a certificate")
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    try:
        tls = {"cert": tmp_path / "cert.pem", "key": tmp_path / "cert.pem"}
        endpoint = StowEndpoint(StowReceiver(spool), DicomwebConfig(port=free_port(), tls=tls))
        with pytest.raises(ConfigError, match=r"\[dicomweb\.tls\] cert/key: cannot load .*cert.pem"):
            endpoint.start()
    finally:
        spool.close()

