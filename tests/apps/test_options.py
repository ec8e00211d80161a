"""The flags caption, batch, pull and the services share: one spelling, one meaning, one set of checks."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from medblip_dicom.apps.main import build_parser
from medblip_dicom.apps.options import iter_inputs, select_config

#: Each command with the arguments it needs besides the flags under test.
COMMANDS = {
    "caption": ["caption", "a.dcm", "--model", "m"],
    "batch": ["batch", "a.dcm", "--out", "o", "--model", "m"],
    "pull": ["pull", "--from", "https://pacs/dicom-web", "--study", "1.2.3", "--model", "m"],
    "watch": ["watch", "inbox"],
    "node": ["node"],
}
MODEL = ["--model", "m", "--device", "cpu", "--dtype", "bfloat16", "--batch-size", "4"]
GENERATION = ["--num-beams", "1", "--max-new-tokens", "9", "--min-new-tokens", "2", "--no-repeat-ngram-size", "0"]
SELECTION = ["--per-series", "each", "--select", "rules.toml"]


def _subparser(name: str) -> argparse.ArgumentParser:
    (action,) = [a for a in build_parser()._actions if a.dest == "command"]
    return action.choices[name]


def _flags(name: str) -> dict[str, argparse.Action]:
    return {o: a for a in _subparser(name)._actions for o in a.option_strings}


@pytest.mark.parametrize("group, argv, commands, expected", [
    ("model", MODEL, ("caption", "batch", "pull", "watch", "node"),
     {"model": "m", "device": "cpu", "dtype": "bfloat16", "batch_size": 4}),
    ("generation", GENERATION, ("caption", "batch"),
     {"num_beams": 1, "max_new_tokens": 9, "min_new_tokens": 2, "no_repeat_ngram_size": 0}),
    ("selection", SELECTION, ("caption", "batch", "pull"), {"per_series": "each", "select": Path("rules.toml")}),
    ("frame", ["--frame", "2"], ("caption", "batch"), {"frame": 2}),
])
def test_the_commands_accept_the_same_spellings_with_the_same_meaning(group, argv, commands, expected):
    parser = build_parser()
    for command in commands:
        args = vars(parser.parse_args([*COMMANDS[command], *argv]))
        assert {k: args[k] for k in expected} == expected, (group, command)


def test_a_shared_flag_is_declared_alike_wherever_it_appears():
    """Type, choices, metavar and short spelling are the same in every command; the help too, except that the
    services name the configuration key a flag overrides and batch says where its model must be readable."""
    seen: dict[str, tuple[str, argparse.Action]] = {}
    shared = {o for part in (MODEL, GENERATION, SELECTION) for o in part if o.startswith("--")} | {"--frame"}
    for command in COMMANDS:
        for flag, action in _flags(command).items():
            if flag not in shared:
                continue
            first = seen.setdefault(flag, (command, action))[1]
            assert (action.option_strings, action.type, action.metavar, action.nargs) == \
                (first.option_strings, first.type, first.metavar, first.nargs), (flag, command)
            assert list(action.choices or ()) == list(first.choices or ()), (flag, command)
            assert action.help.startswith(first.help.split(" (")[0].split(";")[0]), (flag, command, action.help)
    assert shared <= set(seen)


def test_the_services_leave_unset_model_flags_to_the_configuration_file():
    for command in ("watch", "node"):
        args = build_parser().parse_args(COMMANDS[command])
        assert (args.model, args.device, args.dtype, args.batch_size) == (None, None, None, None)
        helps = {flag: action.help for flag, action in _flags(command).items()}
        assert "([model] path)" in helps["--model"] and "([worker] batch_size)" in helps["--batch-size"]


def test_the_generation_defaults_are_the_librarys_and_the_services():
    from medblip_dicom.generation import GenerationSettings
    from medblip_dicom.integrations.config.file import ModelConfig

    args = build_parser().parse_args(COMMANDS["caption"])
    cli = {k: getattr(args, k) for k in ("num_beams", "max_new_tokens", "min_new_tokens", "no_repeat_ngram_size")}
    library, services = GenerationSettings(), ModelConfig().generation
    assert cli == {k: getattr(library, k) for k in cli} == {k: getattr(services, k) for k in cli}


@pytest.mark.parametrize("argv, message", [
    (["--num-beams", "0"], "num_beams must be >= 1"),
    (["--min-new-tokens", "70"], "min_new_tokens must be between 0 and max_new_tokens"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_caption_refuses_generation_and_batch_values_that_cannot_work(argv, message, capsys, tmp_path):
    from medblip_dicom.apps.main import main

    source = tmp_path / "a.dcm"
    source.write_bytes(b"not read: the flags are checked first")
    assert main(["caption", str(source), "--model", str(tmp_path / "no-model"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medblip caption: ") and message in err and err.count("\n") == 0, err


def test_select_config_reads_the_file_and_per_series_wins(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[select]\nper_series = "representative"\n[[select.rule]]\naction = "skip"\nmodality = ["PR"]\n')
    config = select_config(argparse.Namespace(select=rules, per_series="each"))
    assert config.per_series == "each" and len(config.rules) == 1
    assert select_config(argparse.Namespace(select=rules, per_series=None)).per_series == "representative"
    assert select_config(argparse.Namespace(select=None, per_series=None)).rules == ()


@pytest.mark.parametrize("text, message", [
    ("[select\n", "is not valid TOML"),
    ('[select]\nper_series = "all"\n', "per_series"),
])
def test_a_select_file_that_cannot_work_is_named(tmp_path, text, message):
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    with pytest.raises(ValueError) as info:
        select_config(argparse.Namespace(select=rules, per_series=None))
    assert str(rules) in str(info.value) and message in str(info.value)


def test_inputs_walk_folders_sorted_skip_hidden_and_mark_named_files(tmp_path):
    (tmp_path / "study" / "b").mkdir(parents=True)
    (tmp_path / "study" / ".cache").mkdir()
    for name in ("study/b/2.dcm", "study/b/1.dcm", "study/a.dcm", "study/.DS_Store", "study/.cache/x.dcm"):
        (tmp_path / name).write_bytes(b"")
    named = str(tmp_path / "elsewhere.dcm")
    found = list(iter_inputs([str(tmp_path / "study"), named]))
    assert found == [(str(tmp_path / "study" / "a.dcm"), False), (str(tmp_path / "study" / "b" / "1.dcm"), False),
                     (str(tmp_path / "study" / "b" / "2.dcm"), False), (named, True)]
