"""``[node] listeners``: several node processes share the port; nothing acknowledged is lost
(integrations/service/listeners.py), and a listener that dies stops the service with its reason."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.support.checks import check_exactly_one_sr_each, check_output_folder
from tests.support.env import free_port, wait_for
from tests.support.inputs import make_good_files
from tests.support.journal import pending
from tests.support.sender import SendLedger, SenderGroup
from tests.support.services import descendants, service_config

LISTENERS_LINE = re.compile(r"more listener process\(es\) on port (\d+): ([\d, ]+)")


def _listener_pids(log: str) -> list[int]:
    match = LISTENERS_LINE.search(log)
    assert match, log[-2000:]
    return [int(p) for p in match.group(2).split(",")]


@pytest.mark.slow
def test_three_listener_processes_share_the_port_and_every_instance_gets_one_sr(
        tmp_path: Path, tiny_model_dir, services, weights_sha256) -> None:
    files = make_good_files(tmp_path / "staging", 48, studies=4)
    out, port = tmp_path / "out", free_port()
    config = service_config(tmp_path, tiny_model_dir, output={"dir": out}, node={"port": port, "listeners": 3})
    service = services("node", config)
    service.start()
    service.wait_ready("listening on")
    wait_for(lambda: LISTENERS_LINE.search(service.log_text()), 60, "the listener processes to start")
    children = _listener_pids(service.log_text())
    assert len(children) == 2 and set(children) <= set(descendants(service.pid))
    ledger = SendLedger()
    sender = SenderGroup(port, ledger, streams=4, per_association=3)  # 16 associations over 4 streams
    sender.start()
    try:
        sender.add(files)
        wait_for(lambda: len(ledger.confirmed) == len(files), 120, "every instance acknowledged", interval_s=0.1)
        wait_for(lambda: pending(tmp_path / "spool") == 0, 180, "every job finished", interval_s=0.2)
    finally:
        sender.close()
    assert sender.error is None, sender.error
    assert service.stop() == 0, service.log_text()[-3000:]
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")], "a listener outlived the service"
    lost, duplicates = check_exactly_one_sr_each(check_output_folder(out), ledger.confirmed, weights_sha256)
    assert (lost, duplicates) == (0, 0)
    # Each listener says how many it stored when it stops: the kernel spread the associations.
    stored = [int(n) for n in re.findall(r"node MEDBLIP stopped \((\d+) stored", service.log_text())]
    assert len(stored) == 3 and sum(stored) == len(files), stored
    assert sum(1 for n in stored if n) >= 2, stored


@pytest.mark.slow
def test_a_listener_process_that_dies_stops_the_service_with_an_error(tmp_path: Path, tiny_model_dir, services) -> None:
    config = service_config(tmp_path, tiny_model_dir, output={"dir": tmp_path / "out"},
                            node={"port": free_port(), "listeners": 2})
    service = services("node", config)
    service.start()
    service.wait_ready("listening on")
    wait_for(lambda: LISTENERS_LINE.search(service.log_text()), 60, "the listener process to start")
    (child,) = _listener_pids(service.log_text())
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: not service.alive(), 60, "the service to stop")
    assert service.proc is not None and service.proc.returncode != 0
    assert f"listener process {child} exited with code -9" in service.log_text()


def test_listeners_need_the_worker_in_its_own_process(tmp_path: Path) -> None:
    from medblip_dicom.integrations.config.file import ConfigError
    from medblip_dicom.integrations.service.assembly import Service
    from tests.support.services import make_config

    config = make_config(tmp_path, output={"dir": str(tmp_path / "out")}, node={"listeners": 2},
                         worker={"separate_process": False})
    with pytest.raises(ConfigError, match="listeners"):
        Service(config, node=True)
