"""The TOML configuration: the documented reference parses, mistakes are refused with the key named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medblip_dicom.integrations.config.file import ConfigError, Destination, load_config

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "deployment" / "configuration.md"


def reference_toml() -> str:
    """The one TOML block of the documentation's configuration reference page."""
    (block,) = re.findall(r"```toml\n(.*?)```", REFERENCE.read_text(), flags=re.S)
    return block


def test_reference_sample_config_is_valid(tmp_path):
    path = tmp_path / "medblip.toml"
    path.write_text(reference_toml())
    config = load_config(path)
    assert config.node.ae_title == "MEDBLIP" and config.node.host == "127.0.0.1"
    assert config.node.allowed_calling_aets == ("CT01", "PACS")
    assert config.node.tls.enabled and config.node.tls.client_ca == Path("/etc/medblip/clients-ca.pem")
    assert config.forward.destination == Destination("PACS", "10.0.0.5", 104)
    assert config.spool.max_bytes == 20_000_000_000
    assert config.watch.is_ignored(".DS_Store") and config.watch.is_ignored("scan.part")
    assert not config.watch.is_ignored("IM0001.dcm") and not config.watch.is_ignored("IM0001")


def test_defaults_are_safe():
    config = load_config(None)
    assert config.node.host == "127.0.0.1"  # loopback unless told otherwise
    assert not config.node.tls.enabled and config.node.allowed_calling_aets == ()
    assert config.output.secondary_capture is False and config.output.study_quiet_s == 0
    assert not config.has_sink


def test_flags_override_the_file_and_relative_paths_follow_the_file(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "m.toml"
    path.write_text('[node]\nport = 104\nae_title = "FROMFILE"\n[spool]\ndir = "spool"\n')
    config = load_config(path, {"node": {"port": 11112, "ae_title": None}})
    assert config.node.port == 11112 and config.node.ae_title == "FROMFILE"
    assert config.spool.dir == tmp_path / "conf" / "spool"


@pytest.mark.parametrize("text, key", [
    ('[node]\nae_tittle = "X"\n', "unknown key 'ae_tittle'"),
    ('[nodes]\n', "unknown section [nodes]"),
    ('[node]\nae_title = "A\\\\B"\n', "[node] ae_title"),
    ('[node]\nport = 70000\n', "[node] port"),
    ('[node]\nmax_pdu = 100\n', "[node] max_pdu"),
    ('[node.tls]\ncert = "a.pem"\n', "[node.tls] cert/key"),
    ('[forward]\ndestination = "PACS@host"\n', "[forward] destination"),
    ('[forward]\nretry_initial_s = 10\nretry_max_s = 1\n', "[forward] retry_max_s"),
    ('[worker]\nbatch_size = 0\n', "[worker] batch_size"),
    ('[model]\ndtype = "int8"\n', "[model] dtype"),
    ('[output]\nsecondary_capture = "yes"\n', "[output] secondary_capture"),
    ('[watch]\nignore = "*.tmp"\n', "[watch] ignore"),
    ('[select]\nper_series = "all"\n', "[select] per_series"),
    ('[[select.rule]]\naction = "skip"\nmodalty = ["CT"]\n', "unknown key 'modalty'"),
    ('[[select.rule]]\naction = "skip"\nseries_description = "(chest"\n', "series_description"),
    ('not toml at all [', "not valid TOML"),
])
def test_mistakes_are_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value) and str(path) in str(info.value)


def test_destination_parsing():
    assert Destination.parse("ORTHANC@127.0.0.1:4242") == Destination("ORTHANC", "127.0.0.1", 4242)
    assert Destination.parse("PACS@[::1]:104") == Destination("PACS", "::1", 104)
    assert str(Destination("PACS", "::1", 104)) == "PACS@[::1]:104"
    with pytest.raises(ConfigError):
        Destination.parse("PACS@host:0")


def _documented() -> dict[tuple[str, str], bool]:
    """Every (section, key) of the documented reference block, and whether its line is marked "example"."""
    found: dict[tuple[str, str], bool] = {}
    section = ""
    for line in reference_toml().splitlines():
        if line.startswith("[["):  # an array of tables ([[select.rule]]): an example, tested on its own
            section = ""
            continue
        head = re.match(r"^\[([a-z0-9.]+)\]", line)
        if head:
            section = head.group(1)
            continue
        entry = re.match(r"^([a-z_]+)\s*=", line)
        if entry and section:
            comment = line.split("#", 1)[1].strip() if "#" in line else ""
            found[(section, entry.group(1))] = comment.startswith("example")
    return found


def test_the_reference_documents_every_key_and_its_default(tmp_path):
    """The documented block is the one reference: complete, and where a value is not marked as an example
    it is the default the code uses."""
    from dataclasses import fields, is_dataclass

    from medblip_dicom.integrations.config.file import _SECTIONS, ServiceConfig

    code: dict[tuple[str, str], object] = {}
    defaults = ServiceConfig()
    for name, cls in _SECTIONS.items():
        for f in fields(cls):
            if (name, f.name) == ("select", "rules"):  # documented as [[select.rule]] tables
                continue
            value = getattr(getattr(defaults, name), f.name)
            if is_dataclass(value):  # a sub-table such as [node.tls]
                for sub in fields(value):
                    code[(f"{name}.{f.name}", sub.name)] = getattr(value, sub.name)
            else:
                code[(name, f.name)] = value
    documented = _documented()
    assert set(documented) == set(code), ("missing from the reference: ", sorted(set(code) - set(documented)),
                                          "not in the code: ", sorted(set(documented) - set(code)))
    path = tmp_path / "reference.toml"
    path.write_text(reference_toml())
    parsed = load_config(path)
    for (section, key), example in documented.items():
        if example:
            continue
        top, _, sub = section.partition(".")
        holder = getattr(getattr(parsed, top), sub) if sub else getattr(parsed, top)
        assert getattr(holder, key) == code[(section, key)], f"[{section}] {key}: the reference says "\
            f"{getattr(holder, key)!r}, the default is {code[(section, key)]!r}"


def test_the_reference_example_rule_parses_and_skips_presentation_states(tmp_path):
    from medblip_dicom.selection import InstanceFacts, decide

    path = tmp_path / "reference.toml"
    path.write_text(reference_toml())
    select = load_config(path).select
    assert select.per_series == "representative" and len(select.rules) == 1
    assert not decide(InstanceFacts("1.2", modality="PR"), select).caption
    assert decide(InstanceFacts("1.3", modality="CT"), select).caption
