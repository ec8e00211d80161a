"""Operations: /metrics agree with the spool, /healthz and /readyz say what is wrong, the audit trail
records transfers and security events (to a file and a syslog collector), JSON logs, no patient data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from xml.etree import ElementTree as ET

import pydicom
from prometheus_client.parser import text_string_to_metric_families

from medblip_dicom.integrations.spool import JobState
from tests.support.dicom import reissued
from tests.support.env import free_port, run_tool, wait_for
from tests.support.privacy import PATIENT_ID, PATIENT_NAME, assert_no_patient_data
from tests.support.services import make_config

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with _opener.open(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(port, "/metrics")
    assert status == 200
    text = body.decode()
    assert_no_patient_data(text, "/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def patient_files(td, folder: Path, names: list[str]) -> list[Path]:
    return [reissued(td, name, folder, PatientName=PATIENT_NAME, PatientID=PATIENT_ID) for name in names]


def audit_messages(path: Path) -> list[ET.Element]:
    return [ET.fromstring(line) for line in path.read_text().splitlines()]


def event(message: ET.Element) -> tuple[str, str]:
    ident = message.find("EventIdentification")
    return ident.find("EventID").get("csd_code"), ident.get("EventActionCode")


class SyslogReceiver(threading.Thread):
    """A TCP syslog collector on 127.0.0.1 that reads octet-counted RFC 5424 frames."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="test-syslog")
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.frames: list[str] = []

    def run(self) -> None:
        conn, _ = self.server.accept()
        buffer = b""
        with conn:
            while chunk := conn.recv(65536):
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.frames.append(rest[:int(length)].decode())
                    buffer = rest[int(length):]

    def close(self) -> None:
        self.server.close()
        self.join(timeout=10)


def test_metrics_agree_with_the_spool_and_the_audit_trail_records_the_transfers(tmp_path, tool, run_service,
                                                                                orthanc_factory, mixed_study):
    syslog = SyslogReceiver()
    syslog.start()
    pacs = orthanc_factory()
    pacs.start()
    metrics_port = free_port()
    config = make_config(tmp_path, node={"port": free_port(), "allowed_calling_aets": ["MODALITY"]},
                         output={"dir": str(tmp_path / "out")}, metrics={"port": metrics_port},
                         forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"},
                         audit={"syslog": f"tcp://127.0.0.1:{syslog.port}"})
    service = run_service(config, node=True)
    study_uid, files = mixed_study  # four instances of one study of the test patient
    key = ("medblip_instances_received_total", (("producer", "dimse"),))
    assert samples(metrics_port).get(key, 0) == 0
    sender = subprocess.Popen([tool("dcmsend"), "127.0.0.1", str(config.node.port), "-aec", "MEDBLIP", "-aet",
                               "MODALITY", *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=dict(os.environ, TCP_NODELAY="1"))
    seen = [0.0]
    while sender.poll() is None or seen[-1] < 4:  # scraped while the instances arrive: never going back
        seen.append(samples(metrics_port).get(key, 0))
        assert seen[-1] >= seen[-2]
    assert sender.wait(60) == 0, sender.stdout.read().decode()
    sender.stdout.close()
    wait_for(lambda: service.spool.count(JobState.DELIVERED) == 4, 60, "four reports delivered")
    after = samples(metrics_port)
    counts = service.spool.summary().counts
    assert after[("medblip_instances_received_total", (("producer", "dimse"),))] == len(service.spool.jobs()) == 4
    assert after[("medblip_jobs_finished_total", (("outcome", "delivered"), ("producer", "dimse")))] == \
        counts["delivered"] == 4
    assert after[("medblip_reports_delivered_total", (("destination", "dicom"),))] == 4
    assert after[("medblip_reports_written_total", ())] == 4 and after[("medblip_captions_total", ())] == 4
    assert after[("medblip_cstore_seconds_count", ())] == 4
    assert after[("medblip_receive_to_report_seconds_count", ())] == 4
    assert after[("medblip_batch_size_sum", ())] == 4
    assert after[("medblip_jobs", (("state", "delivered"),))] == 4
    assert after[("medblip_oldest_pending_seconds", ())] == 0 and after[("medblip_worker_alive", ())] == 1

    # A calling AE not on the allow-list: refused, and a security alert in the audit trail.
    echo = run_tool([tool("echoscu"), "-aet", "INTRUDER", "-aec", "MEDBLIP", "127.0.0.1", str(config.node.port)])
    assert echo.returncode != 0
    audit = Path(config.spool.dir) / "audit.xml"
    wait_for(lambda: "110113" in audit.read_text(), 10, "the security alert")
    messages = audit_messages(audit)
    kinds = [event(m) for m in messages]
    assert kinds[0] == ("110100", "E")  # application start
    received = [m for m in messages if event(m) == ("110104", "C")]
    sent = [m for m in messages if event(m) == ("110104", "R")]
    assert len(received) == 1 and sent  # one association, one study; sent on to Orthanc
    objects = {o.get("ParticipantObjectTypeCode"): o.get("ParticipantObjectID")
               for o in received[0].findall("ParticipantObjectIdentification")}
    assert objects == {"2": study_uid, "1": PATIENT_ID}  # the study and its patient, as the standard intends
    counted = sum(int(c.get("NumberOfInstances")) for c in received[0].iter("SOPClass"))
    assert counted == 4
    assert received[0].find("ActiveParticipant").get("UserID") == "MODALITY"
    alert = next(m for m in messages if event(m)[0] == "110113")
    assert "INTRUDER" in alert.find("ActiveParticipant").get("UserID")
    service.stop()
    assert event(audit_messages(audit)[-1]) == ("110100", "E")  # application stop
    wait_for(lambda: len(syslog.frames) == len(audit_messages(audit)), 20, "every message at the collector")
    syslog.close()
    assert all(" IHE+RFC-3881 - <AuditMessage>" in f and f.startswith("<85>1 ") for f in syslog.frames)
    assert [f.split(" - ", 1)[1] for f in syslog.frames] == audit.read_text().splitlines()


def test_readyz_turns_503_while_the_pacs_is_down_or_the_disk_floor_is_crossed(td, tmp_path, run_service,
                                                                            orthanc_factory, tool):
    pacs = orthanc_factory()
    pacs.start()
    port = free_port()
    config = make_config(tmp_path, node={"port": free_port()}, metrics={"port": port},
                         forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"})
    service = run_service(config, node=True)
    assert get(port, "/readyz")[0] == 200 and get(port, "/healthz")[0] == 200
    assert get(port, "/nowhere")[0] == 404 and get(port, "/metrics", "POST")[0] == 405

    pacs.stop()
    first, second = patient_files(td, tmp_path / "src", ["CT_small.dcm", "MR_small.dcm"])
    assert run_tool([tool("dcmsend"), "127.0.0.1", str(config.node.port), "-aec", "MEDBLIP",
                     str(first)]).returncode == 0
    wait_for(lambda: get(port, "/readyz")[0] == 503, 30, "not ready while the PACS is down")
    body = json.loads(get(port, "/readyz")[1])
    assert body["ok"] is False and "cannot be reached" in body["checks"]["destination"]
    assert body["checks"]["spool_writable"] is True and body["checks"]["disk"] is True
    pacs.start()
    wait_for(lambda: get(port, "/readyz")[0] == 200, 30, "ready again once the PACS is back")

    service.spool.space.min_free_bytes = 2**62  # no disk has that much room
    status, body = get(port, "/readyz")
    assert status == 503 and "below [spool] min_free_bytes" in json.loads(body)["checks"]["disk"]
    service.spool.space.min_free_bytes = 0
    assert get(port, "/readyz")[0] == 200
    assert get(port, "/healthz")[0] == 200
    service.stop()


def test_json_logs_carry_job_numbers_and_uids_and_no_patient_data(td, tmp_path, tiny_model_dir):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (good,) = patient_files(td, inbox, ["CT_small.dcm"])
    (inbox / "junk.dcm").write_bytes(b"nothing DICOM here")
    uid = str(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID)
    proc = subprocess.run([sys.executable, "-m", "medblip_dicom", "watch", str(inbox), "--once", "--model",
                           str(tiny_model_dir), "--out", str(tmp_path / "out"), "--spool", str(tmp_path / "spool"),
                           "--device", "cpu", "--log-format", "json"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert proc.returncode == 1, proc.stderr  # the junk file failed
    assert lines and all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
    reported = [e for e in lines if "reported SR" in e["message"]]
    assert reported and reported[0]["job"] >= 1
    assert any(uid in e.get("uids", []) for e in reported)
    assert_no_patient_data(proc.stderr, "the JSON log")


def test_every_producer_that_feeds_the_spool_is_counted_under_its_own_label(tmp_path, td):
    """Instances from each origin the services write (the node, the watch folder, the STOW-RS
    endpoint, the review station's signed reports) count under their producer, not under ``other``."""
    from medblip_dicom.integrations.ops.metrics import ServiceMetrics
    from medblip_dicom.integrations.spool import Spool

    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    try:
        for origin in ("node", "watch", "dicomweb", "review"):
            spool.add_file(reissued(td, "CT_small.dcm", tmp_path / origin), origin=origin, name=f"{origin}.dcm")
        registry = ServiceMetrics(spool, destinations=("folder",), worker_alive=lambda: True).registry
        received = {s.labels["producer"]: s.value for family in registry.collect() for s in family.samples
                    if s.name == "medblip_instances_received_total"}
    finally:
        spool.close()
    assert received == {"dimse": 1, "watch": 1, "stow": 1, "review": 1}
