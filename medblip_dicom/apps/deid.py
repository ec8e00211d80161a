"""``medblip deid IN OUT --key-file KEY``: de-identify DICOM (and a training manifest) for moving off-site.

- ``IN`` a folder (or file) of DICOM: ``OUT/images/<pseudonymous SOPInstanceUID>.dcm``;
- ``IN`` a ``.jsonl``/``.csv`` manifest (``image``, ``caption``; ``medblip review export`` writes
  one): ``OUT/<name>.jsonl`` with its images under ``OUT/images/``, captions cleaned of the
  images' identifying header values; ``medblip train --data OUT/<name>.jsonl`` reads it. A
  ``<name>.rejected.jsonl`` beside it is done too;
- always ``OUT/datacard.json``: counts, refusals, profile, options, libraries.

``--option`` names a PS3.15 Annex E option (repeatable); ``--mask-recipe`` a deid recipe whose
``%filter`` regions black out burned-in text; ``--new-key FILE`` makes a key and stops. Exit 0
when everything was written, 1 when some inputs were refused or unreadable (the card says which
reasons), 2 for a bad flag, key or recipe, or a missing package.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_verbosity, packages_present, say_error

if TYPE_CHECKING:
    from medblip_dicom.deid import Deidentifier

EXAMPLES = """\
examples:
  medblip deid --new-key /secure/site.key
  medblip deid /data/export/feedback.jsonl /data/offsite --key-file /secure/site.key \\
      --option retain-modified-dates --option clean-descriptors
  medblip deid /data/dicom /data/offsite-dicom --key-file /secure/site.key --mask-recipe us-mask.dicom
  medblip train --data /data/offsite/feedback.jsonl --base-model runs/roco1/best --out runs/site1

The key stays at the site: the same key gives the same pseudonyms in every run (studies and series
stay together across exports); without it nobody can link a pseudonym to a patient.
"""


def option_names() -> str:
    from medblip_dicom.deid.profile import OPTIONS

    return ", ".join(OPTIONS)


def add_deid_flags(parser: argparse.ArgumentParser) -> None:
    """The flags ``medblip deid`` and ``medblip review export --deidentify`` share."""
    parser.add_argument("--key-file", metavar="KEY", help="the secret key of the pseudonyms (medblip deid --new-key "
                        "makes one); required")
    parser.add_argument("--option", action="append", default=[], metavar="NAME",
                        help=f"a PS3.15 Annex E option, repeatable: {option_names()}")
    parser.add_argument("--mask-recipe", default=None, metavar="FILE",
                        help="a deid recipe whose %%filter regions black out burned-in text (images where text is "
                        "likely are refused without one)")


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("deid", help="de-identify DICOM and a training manifest (PS3.15 Annex E, keyed pseudonyms)",
                            description="De-identify a folder of DICOM or a training manifest for moving off-site: "
                            "DICOM PS3.15 Annex E Basic Profile with the options named, through deid; keyed "
                            "pseudonyms; captions cleaned; burned-in text refused or masked; a data card.",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", metavar="IN", help="a folder or file of DICOM, or a .jsonl/.csv manifest")
    parser.add_argument("out", nargs="?", metavar="OUT", help="the output folder")
    parser.add_argument("--new-key", metavar="FILE", default=None, help="write a new random key to FILE and stop")
    add_deid_flags(parser)
    add_verbosity(parser)
    parser.set_defaults(func=run, quick_exit=True)


def make_deidentifier(command: str, args: argparse.Namespace) -> Deidentifier | None:
    """The Deidentifier the flags ask for, or None after saying why (one line)."""
    if not packages_present(command, "deid"):
        return None
    from medblip_dicom.deid import Deidentifier, Pseudonyms, read_key
    from medblip_dicom.errors import MedblipError

    if not args.key_file:
        say_error(command, "give --key-file KEY (medblip deid --new-key KEY makes one, to be kept at the site)")
        return None
    try:
        return Deidentifier(Pseudonyms(read_key(args.key_file)), args.option, mask_recipe=args.mask_recipe)
    except MedblipError as exc:
        say_error(command, exc)
        return None


def summary(card: dict) -> str:
    """The data card's counts in one line."""
    counts = card["counts"]
    parts = [f"{counts['images_written']} image(s) written"]
    if card["manifests"]:
        parts.append(f"{sum(card['by_status'].values())} row(s) in {', '.join(card['manifests'])}")
    if counts["captions_changed"]:
        parts.append(f"{counts['captions_changed']} row(s) with identifying text removed")
    if counts["refused_burned_in_text"]:
        parts.append(f"{counts['refused_burned_in_text']} refused for burned-in text")
    if counts["unreadable"]:
        parts.append(f"{counts['unreadable']} unreadable")
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.new_key:
        from medblip_dicom.deid.keys import KeyFileError, new_key

        try:
            path = new_key(args.new_key)
        except KeyFileError as exc:
            say_error("deid", exc)
            return EXIT_USAGE
        print(f"new key in {path} (mode 600): keep it at the site, never with the data")
        return EXIT_OK
    if not args.source or not args.out:
        say_error("deid", "give IN and OUT (or --new-key FILE)")
        return EXIT_USAGE
    from pathlib import Path

    if not Path(args.source).exists():
        say_error("deid", f"{args.source}: no such file or folder")
        return EXIT_USAGE
    deidentifier = make_deidentifier("deid", args)
    if deidentifier is None:
        return EXIT_USAGE
    from medblip_dicom.deid import deidentify

    try:
        card = deidentify(args.source, args.out, deidentifier)
    except OSError as exc:
        say_error("deid", f"cannot write {args.out}: {exc.strerror or exc}")
        return EXIT_FAILED
    print(f"{summary(card)} -> {args.out} (data card: {Path(args.out) / 'datacard.json'})", file=sys.stdout)
    counts = card["counts"]
    return EXIT_FAILED if counts["refused_burned_in_text"] or counts["unreadable"] else EXIT_OK
