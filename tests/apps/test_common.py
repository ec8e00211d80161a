"""What every subcommand shares: exit codes, -q / -v, missing packages named before any model loads."""

from __future__ import annotations

import socket
import sys
import tomllib
from pathlib import Path

import pytest

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_USAGE
from medblip_dicom.apps.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ("caption", "train", "evaluate", "watch", "node", "status", "show-sr", "doctor", "quickstart",
               "review", "pull", "batch", "deid")


def _subparsers():
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def test_quiet_and_verbose_mean_the_same_everywhere():
    helps = {}
    for name, sub in _subparsers().items():
        flags = {o: a.help for a in sub._actions for o in a.option_strings if o in ("-q", "--quiet", "-v", "--verbose")}
        if name in ("status", "show-sr", "doctor"):  # print a report and exit: nothing to quieten
            continue
        assert set(flags) == {"-q", "--quiet", "-v", "--verbose"}, name
        helps[name] = (flags["-q"], flags["-v"])
    assert len(set(helps.values())) == 1, helps
    assert set(helps) >= {"caption", "train", "evaluate", "watch", "node", "quickstart"}


def test_every_subcommand_is_registered():
    assert set(_subparsers()) == set(SUBCOMMANDS)


def test_the_services_and_the_api_need_nothing_beyond_the_base_install():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert {"pynetdicom", "watchdog", "pydicom", "highdicom", "transformers"} <= base
    quickstart = project["optional-dependencies"]["quickstart"]
    assert any(d.startswith("medblip-dicom[train]") for d in quickstart)  # quickstart = train + data


def _model_must_not_load(monkeypatch):
    from medblip_dicom.captioner import Captioner

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was loaded before the missing package was reported")

    monkeypatch.setattr(Captioner, "load", classmethod(refuse))


@pytest.mark.parametrize("module, argv, extra", [
    ("accelerate", ["train", "--data", "d", "--base-model", "m", "--out", "o"], "medblip-dicom[train]"),
    ("nltk", ["evaluate", "--model", "m", "--data", "d"], "medblip-dicom[train]"),
    ("data_store", ["quickstart", "--out", "q"], "medblip-dicom[quickstart]"),
])
def test_a_missing_extra_is_one_line_naming_it(module, argv, extra, monkeypatch, capsys, tmp_path):
    _model_must_not_load(monkeypatch)
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and extra in err and "Traceback" not in err, err


@pytest.mark.parametrize("command, module", [("watch", "watchdog"), ("node", "pynetdicom")])
def test_a_service_without_its_package_says_so_before_loading_the_model(command, module, monkeypatch, capsys,
                                                                        tiny_model_dir, tmp_path):
    _model_must_not_load(monkeypatch)
    monkeypatch.setitem(sys.modules, module, None)
    argv = [command, *([str(tmp_path / "inbox")] if command == "watch" else []), "--model", str(tiny_model_dir),
            "--out", str(tmp_path / "out"), "--spool", str(tmp_path / "spool")]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and module in err and "Traceback" not in err, err


def test_a_port_in_use_is_a_runtime_failure_not_a_usage_error(tiny_model_dir, tmp_path, capsys):
    config = tmp_path / "medblip.toml"
    config.write_text('[worker]\nseparate_process = false\n[model]\ndevice = "cpu"\ndtype = "float32"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["node", "--config", str(config), "--port", str(port), "--model", str(tiny_model_dir),
                   "--out", str(tmp_path / "out"), "--spool", str(tmp_path / "spool"), "-q"])
    err = capsys.readouterr().err
    assert rc == EXIT_FAILED, err
    assert "Address already in use" in err or "address already in use" in err.lower()


def test_the_default_spool_is_in_the_state_directory_never_the_working_directory(tmp_path, monkeypatch, capsys):
    from medblip_dicom.integrations.config.file import default_spool_dir, load_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert load_config(None).spool.dir == tmp_path / "state" / "medblip" / "spool"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_spool_dir() == tmp_path / "home" / ".local" / "state" / "medblip" / "spool"
    assert main(["status"]) == EXIT_USAGE  # nothing there yet: one line, nothing created
    assert "medblip/spool is not a spool folder" in capsys.readouterr().err
    assert not (tmp_path / "medblip-spool").exists() and not (tmp_path / "home").exists()
    for command in ("watch", "node", "status"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "~/.local/state/medblip/spool" in " ".join(capsys.readouterr().out.split())
    assert "medblip-spool/" in (ROOT / ".gitignore").read_text().split()
