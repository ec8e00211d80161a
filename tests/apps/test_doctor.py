"""``medblip doctor --config`` says whether the configured DICOMweb server answers."""

from __future__ import annotations

from tests.support.fake_stow import Answer, fake_stow
from tests.support.env import free_port
from tests.support.services import write_toml

from medblip_dicom.apps.main import main


def _config(tmp_path, url, **dicomweb):
    return write_toml(tmp_path / "medblip.toml", {"node": {"port": free_port()},
                                                  "forward": {"dicomweb_url": url, "dicomweb": dicomweb}})


def test_doctor_reports_a_dicomweb_server_that_answers_and_one_that_does_not(tmp_path, orthanc_factory, capsys):
    pacs = orthanc_factory(dicomweb=True)
    pacs.start()
    main(["doctor", "--config", str(_config(tmp_path, pacs.dicomweb_url))])
    text = capsys.readouterr().out
    assert "[dicomweb]" in text and f"  ok  {pacs.dicomweb_url} answered QIDO-RS" in text

    gone = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert main(["doctor", "--config", str(_config(tmp_path, gone))]) == 1
    text = capsys.readouterr().out
    assert f"FAIL  {gone} no answer (ConnectionError)" in text and "-> check the URL" in text


def test_doctor_names_a_refused_token_and_an_unreadable_token_file(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("wrong\n")
    with fake_stow(lambda n, uids: Answer(401)) as (url, requests):
        assert main(["doctor", "--config", str(_config(tmp_path, url, token_file=str(token)))]) == 1
        assert f"FAIL  {url} refused our credentials (HTTP 401)" in capsys.readouterr().out
    assert requests[0].headers["Authorization"] == "Bearer wrong" and requests[0].path.endswith("/studies?limit=1")
    assert main(["doctor", "--config", str(_config(tmp_path, "http://127.0.0.1:9/dicom-web",
                                                 token_file=str(tmp_path / "missing")))]) == 1
    assert "cannot read" in capsys.readouterr().out


def test_another_virtual_environments_pynetdicom_apps_are_not_taken_for_dcmtk(tmp_path, monkeypatch):
    """pynetdicom installs ``storescu`` & co. into every environment it is installed in; a shell with
    another project's environment active must not hand those to the tests or to doctor as dcmtk's."""
    import os

    from medblip_dicom.systemtools import find_system_tool

    other = tmp_path / "other-venv"
    (other / "bin").mkdir(parents=True)
    (other / "pyvenv.cfg").write_text("home = /usr/bin\n")
    fake = other / "bin" / "storescu"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    plain = tmp_path / "tools"
    plain.mkdir()
    real = plain / "storescu"
    real.write_text("#!/bin/sh\nexit 0\n")
    real.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(other / "bin"), str(plain)]))
    assert find_system_tool("storescu") == str(real)
    monkeypatch.setenv("PATH", str(other / "bin"))
    assert find_system_tool("storescu") is None
