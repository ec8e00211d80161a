"""SIGKILL the node service while STOW-RS requests are in flight, restart it, and prove that every
instance a STOW-RS response acknowledged is in the spool and gets exactly one SR.

Mirrors the node's crash test (tests/reliability/test_crash.py): the service is a real process
(``medblip node --config``), killed as a process group; a sender thread keeps posting requests of
several instances and resends a request whose answer it did not get (as a modality would).
"""

from __future__ import annotations

import collections
import random
import threading
import time
from pathlib import Path

import pydicom
import requests
from tests.support.checks import check_exactly_one_sr_each, check_output_folder
from tests.support.env import free_port, wait_for
from tests.support.figures import seed
from tests.support.inputs import make_good_files
from tests.support.journal import journal_rows, pending
from tests.support.services import service_config

READY = "STOW-RS endpoint listening"
PER_REQUEST = 6


class StowSender:
    """Posts queued batches to the endpoint until closed; records what each 200/202 acknowledged."""

    def __init__(self, url: str, batches: list[list[tuple[str, Path]]]) -> None:
        self.url = url
        self.queue = collections.deque(batches)
        self.acknowledged: set[str] = set()
        self.in_flight = threading.Event()
        self.requests = self.broken = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stow-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _post(self, batch: list[tuple[str, Path]]) -> requests.Response:
        boundary = "crash-test-boundary"
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body = b"".join(head + p.read_bytes() + b"\r\n" for _, p in batch) + f"--{boundary}--\r\n".encode()
        kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
        return requests.post(self.url, data=body, timeout=30, headers={"Content-Type": kind})

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.queue:
                    self._stop.wait(0.05)
                    continue
                batch = self.queue[0]
                self.in_flight.set()
                try:
                    response = self._post(batch)
                except requests.RequestException:
                    self.broken += 1  # no answer (the service died or is not up yet): send it again later
                    self._stop.wait(0.1)
                    continue
                finally:
                    self.in_flight.clear()
                self.requests += 1
                assert response.status_code == 200, (response.status_code, response.text[:300])
                body = pydicom.Dataset.from_json(response.json())
                self.acknowledged.update(str(i.ReferencedSOPInstanceUID) for i in body.ReferencedSOPSequence)
                self.queue.popleft()
                self._stop.wait(0.05)  # paced, so that every life sees requests come and go
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_sigkill_during_stow_requests_loses_nothing_acknowledged(tmp_path, tiny_model_dir, services,
                                                                 weights_sha256):
    rng = random.Random(seed() + 14)
    kills = 3
    files = make_good_files(tmp_path / "staging", PER_REQUEST * 14, studies=3, rng=rng)
    items = list(files.items())
    batches = [items[i:i + PER_REQUEST] for i in range(0, len(items), PER_REQUEST)]
    out, spool, port = tmp_path / "out", tmp_path / "spool", free_port()
    config = service_config(tmp_path, tiny_model_dir, output={"dir": out}, node={"port": free_port()})
    service = services("node", config, "--dicomweb-port", str(port))  # the flag, not the file
    sender = StowSender(f"http://127.0.0.1:{port}/dicom-web/studies", batches)
    sender.start()
    killed_in_flight = 0
    try:
        for _ in range(kills):
            service.start()
            service.wait_ready(READY)
            base = len(sender.acknowledged)
            wait_for(lambda: len(sender.acknowledged) > base and sender.queue, 120, "a request acknowledged")
            wait_for(sender.in_flight.is_set, 30, "a request in flight", interval_s=0.001)
            time.sleep(rng.uniform(0, 0.02))  # somewhere inside the request
            killed_in_flight += sender.in_flight.is_set()
            service.kill()
            acknowledged = set(sender.acknowledged)
            in_journal = {r["sop_instance_uid"] for r in journal_rows(spool, "sop_instance_uid")}
            lost = sorted(acknowledged - in_journal)
            assert not lost, f"acknowledged but not in the spool: {lost[:3]}"

        service.start()
        service.wait_ready(READY)
        wait_for(lambda: not sender.queue, 180, "every request answered", interval_s=0.1)
        wait_for(lambda: pending(spool) == 0, 240, "every job finished", interval_s=0.2)
        assert service.stop() == 0
    finally:
        sender.close()
    assert sender.error is None, sender.error
    assert sender.acknowledged == set(files)
    assert killed_in_flight >= 1, "no kill hit a request in flight"
    rows = journal_rows(spool)
    delivered = collections.Counter(r["sop_instance_uid"] for r in rows if r["state"] == "delivered")
    assert set(delivered) == set(files) and set(delivered.values()) == {1}
    assert all(r["reason"].startswith("duplicate of job") for r in rows if r["state"] == "skipped")
    check_exactly_one_sr_each(check_output_folder(out), files, weights_sha256)
