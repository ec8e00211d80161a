"""One set of configuration checks: every section refuses the same mistake with the same sentence;
every TLS setting is a ``.tls`` sub-table; a file of an earlier release keeps working."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest

from medblip_dicom.integrations.config.checks import ConfigError
from medblip_dicom.integrations.config.file import load_config

CONFIG = Path(__file__).resolve().parents[3] / "integrations" / "config"


def _refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "medblip.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("table, key", [
    ("worker", "separate_process"), ("output", "secondary_capture"), ("watch", "poll"), ("node", "keep_inputs"),
    ("audit", "enabled"), ("review", "enabled"), ("review", "hold_until_signed"), ("forward.dicomweb", "verify"),
])
def test_a_switch_that_is_not_true_or_false_is_refused_alike_in_every_section(tmp_path, table, key):
    assert f"[{table}] {key}: must be true or false, got 1" in _refused(tmp_path, f"[{table}]\n{key} = 1\n")


@pytest.mark.parametrize("table", ["node", "metrics", "review", "dicomweb"])
def test_every_listener_checks_its_address_and_port_alike(tmp_path, table):
    assert f"[{table}] host: must be an address to bind to, got ''" in _refused(tmp_path, f'[{table}]\nhost = ""\n')
    assert re.search(rf"\[{table}\] port: must be .*1\.\.65535, got 70000",
                     _refused(tmp_path, f"[{table}]\nport = 70000\n"))
    assert re.search(rf"\[{table}\] port: must be .*1\.\.65535, got '8080'",
                     _refused(tmp_path, f'[{table}]\nport = "8080"\n'))


@pytest.mark.parametrize("table", ["node.tls", "dicomweb.tls", "review.tls", "forward.tls"])
def test_every_tls_sub_table_wants_a_certificate_and_its_key_together(tmp_path, table):
    message = _refused(tmp_path, f'[{table}]\ncert = "c.pem"\n')
    assert f"[{table}] cert/key: set both" in message and "or neither" in message
    assert f"[{table}] unknown key 'certificate'" in _refused(tmp_path, f'[{table}]\ncertificate = "c.pem"\n')


def test_the_listeners_tls_sub_tables_have_one_shape(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "medblip.toml"
    path.write_text("".join(f'[{t}.tls]\ncert = "{t}.pem"\nkey = "{t}.key"\n' for t in ("node", "dicomweb", "review")))
    config = load_config(path)
    for section in (config.node, config.dicomweb, config.review):
        tls = section.tls
        assert tls.enabled and tls.cert.parent == tmp_path / "conf" and tls.key.name.endswith(".key")
    assert not load_config(None).dicomweb.tls.enabled


@pytest.mark.parametrize("text, table, key", [
    ('[forward.dicomweb]\npassword_file = "p"\npassword_env = "P"\nusername = "u"\n', "forward.dicomweb",
     "password_file"),
    ('[forward.dicomweb]\ntoken_file = "t"\ntoken_env = "T"\n', "forward.dicomweb", "token_file"),
    ('[forward.dicomweb]\nusername = "u"\n', "forward.dicomweb", "username"),
    ('[forward.dicomweb]\nusername = "u"\npassword_env = "P"\ntoken_env = "T"\n', "forward.dicomweb", "token_file"),
])
def test_settings_that_go_together_or_exclude_each_other_are_named(tmp_path, text, table, key):
    message = _refused(tmp_path, text)
    assert f"[{table}] {key}: set " in message and ("not both" in message or "or neither" in message), message


def _message_texts(module: Path) -> list[str]:
    """The string literals of a module's code (f-strings included), docstrings left out."""
    tree = ast.parse(module.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_section_writes_a_shared_check_again():
    """The sentences of the shared checks live in checks.py; a section calls the check instead."""
    shared = ("must be true or false", "must be an address to bind to", "or neither", "not both", "1..65535",
              "unknown key")
    modules = [m for m in sorted(CONFIG.glob("*.py")) if m.name != "checks.py"]
    assert {"file.py", "tls.py", "dicomweb.py", "review.py", "ops.py"} <= {m.name for m in modules}
    for module in modules:
        for text in _message_texts(module):
            for sentence in shared:
                assert sentence not in text, f"{module.name} writes {sentence!r} itself: call the check in checks.py"


# ---------------------------------------------------------------------------------------------
# Renamed keys: the old spelling is read under the new name, with one warning naming the new key


@pytest.mark.parametrize("old, new, check", [
    ("[output]\npicture = true\n", "[output] secondary_capture", lambda c: c.output.secondary_capture is True),
    ('[dicomweb]\ncert = "tls/stow.pem"\nkey = "tls/stow.key"\n', "[dicomweb.tls] cert",
     lambda c: c.dicomweb.tls.enabled and c.dicomweb.tls.key.name == "stow.key"),
])
def test_a_file_of_an_earlier_release_keeps_working_and_names_the_new_key(tmp_path, caplog, old, new, check):
    path = tmp_path / "medblip.toml"
    path.write_text(old)
    with caplog.at_level(logging.WARNING, logger="medblip_dicom.integrations.config"):
        config = load_config(path)
    assert check(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(str(path) in w for w in warnings)
    assert any(f"is now {new}" in w and f"write {new} instead" in w for w in warnings), warnings


def test_an_old_relative_certificate_path_is_still_relative_to_the_file(tmp_path):
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "medblip.toml"
    path.write_text('[dicomweb]\nport = 8042\ncert = "stow.pem"\nkey = "stow.key"\n')
    tls = load_config(path).dicomweb.tls
    assert (tls.cert, tls.key) == (tmp_path / "etc" / "stow.pem", tmp_path / "etc" / "stow.key")


@pytest.mark.parametrize("text, old, new", [
    ("[output]\npicture = true\nsecondary_capture = false\n", "[output] picture", "[output] secondary_capture"),
    ('[dicomweb]\ncert = "a.pem"\nkey = "a.key"\n[dicomweb.tls]\ncert = "b.pem"\n', "[dicomweb] cert",
     "[dicomweb.tls] cert"),
])
def test_a_file_with_both_spellings_is_refused_naming_the_one_to_keep(tmp_path, text, old, new):
    assert f"{old} and {new} are one setting: keep {new} only" in _refused(tmp_path, text)


def test_a_flag_with_the_new_name_overrides_a_file_with_the_old_one(tmp_path):
    path = tmp_path / "medblip.toml"
    path.write_text("[output]\npicture = true\n")
    assert load_config(path, {"output": {"secondary_capture": False}}).output.secondary_capture is False


def test_the_old_flag_still_works_and_says_the_new_one(capsys):
    from medblip_dicom.apps.main import build_parser
    from medblip_dicom.apps.watch_node import _overrides

    args = build_parser().parse_args(["watch", "inbox", "--picture"])
    assert "--picture is now --secondary-capture" in capsys.readouterr().err
    assert load_config(None, _overrides(args)).output.secondary_capture is True
    assert build_parser().parse_args(["node"]).secondary_capture is None  # unset: the file decides
