"""``medblip pull --from URL --study UID --model M``: caption a study held by a DICOMweb server.

QIDO-RS finds the instances, WADO-RS retrieves them, the pipeline captions them (selection rules
apply) and the SRs go back by STOW-RS (``--to``, default the server pulled from) and/or into
``--out``. ``--query KEY=VALUE`` captions every study a query finds. The work is done by
:mod:`medblip_dicom.integrations.pull.dicomweb`; exit codes as ``medblip caption``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_verbosity, packages_present, say_error
from medblip_dicom.apps.options import add_model, add_selection, batch_size_error, select_config

PULL_EXAMPLE = """\
examples:
  medblip pull --from https://pacs/dicom-web --study 1.2.840.1234.5 --model ./my-blip-model
  medblip pull --from https://pacs/dicom-web --study 1.2.840.1234.5 --series 1.2.840.1234.5.6 \\
      --model ./my-blip-model --out reports/ --no-stow
  medblip pull --from https://pacs/dicom-web --query ModalitiesInStudy=CR \\
      --query StudyDate=20261101-20261130 --model ./my-blip-model --token-file ~/.pacs-token

Instances are retrieved whole (WADO-RS, application/dicom); SR instances are not pulled. The SRs
go by STOW-RS to --to (default: the --from server) and/or into --out. A rerun creates nothing new
(SR UIDs are stable). Credentials are read from --token-file / --token-env or --username with
--password-file / --password-env, never given on the command line. If the server stops answering,
what was and was not captioned is reported and the exit status is 1.
"""


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``medblip pull``."""
    p = sub.add_parser("pull", help="caption a study from a DICOMweb server (QIDO-RS, WADO-RS, STOW-RS)",
                       description="Pull studies with QIDO-RS and WADO-RS, caption them, store the SRs by STOW-RS.",
                       epilog=PULL_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, metavar="URL", help="DICOMweb root to pull from")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="StudyInstanceUID of the study to caption")
    which.add_argument("--query", action="append", metavar="KEY=VALUE",
                       help="QIDO-RS study filter (repeatable): caption every study it finds")
    p.add_argument("--series", metavar="UID", help="only this series of --study")
    add_model(p)
    p.add_argument("--to", metavar="URL", help="STOW-RS the SRs here (default: the --from server)")
    p.add_argument("--no-stow", action="store_true", help="do not STOW the SRs anywhere (use with --out)")
    p.add_argument("--out", "-o", type=Path, help="also write the SRs into this folder")
    p.add_argument("--token-file", type=Path, help="bearer token: the first line of this file")
    p.add_argument("--token-env", metavar="NAME", help="bearer token: this environment variable")
    p.add_argument("--username", help="HTTP basic auth user (password from --password-file / --password-env)")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--password-env", metavar="NAME")
    p.add_argument("--ca", type=Path, help="CA bundle to verify the server's certificate")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)")
    add_selection(p)
    add_verbosity(p)
    p.set_defaults(func=cmd_pull, quick_exit=True)


def cmd_pull(args: argparse.Namespace) -> int:
    """Run ``medblip pull``."""
    if not packages_present("pull", extra="dicomweb", modules=("dicomweb_client", "requests")):
        return EXIT_USAGE
    from functools import partial

    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.config.dicomweb import ForwardDicomwebConfig, check_url
    from medblip_dicom.integrations.pull.dicomweb import Puller, ServerUnavailable, parse_query
    from medblip_dicom.integrations.delivery.sinks.dicomweb import StowClient

    if args.series and not args.study:
        say_error("pull", "--series needs --study")
        return EXIT_USAGE
    if args.no_stow and args.out is None:
        say_error("pull", "--no-stow without --out: the SRs would go nowhere")
        return EXIT_USAGE
    if (problem := batch_size_error(args)) is not None:
        say_error("pull", problem)
        return EXIT_USAGE
    try:
        for flag, url in (("--from", args.source), ("--to", args.to)):
            if url is not None:
                check_url("pull", flag, url)
        settings = ForwardDicomwebConfig(
            username=args.username or "", password_file=args.password_file, password_env=args.password_env or "",
            token_file=args.token_file, token_env=args.token_env or "", ca=args.ca, timeout_s=args.timeout)
        settings.token(), settings.password()  # a missing file or variable: said now, not mid-study
        query = parse_query(args.query) if args.query else None
        select = select_config(args)
    except (MedblipError, ValueError, OSError) as exc:
        say_error("pull", exc)
        return EXIT_USAGE

    from medblip_dicom.api import caption_dicoms, load_captioner

    try:
        captioner = load_captioner(args.model, device=args.device, dtype=args.dtype)
    except MedblipError as exc:
        say_error("pull", exc)
        return EXIT_USAGE
    to = None if args.no_stow else StowClient(args.to or args.source, settings)
    caption = partial(caption_dicoms, model=captioner, output_dir=args.out, batch_size=args.batch_size,
                      select=select)
    return _run(args, Puller(args.source, settings, caption=caption, to=to), query, ServerUnavailable)


def _run(args: argparse.Namespace, puller, query, unavailable: type[Exception]) -> int:  # noqa: ANN001
    from tqdm import tqdm

    try:
        studies = puller.find_studies(query) if query is not None else [args.study]
    except (unavailable, ValueError) as exc:
        say_error("pull", exc)
        return EXIT_FAILED
    if not studies:
        print(f"the query found no study on {puller.url}", file=sys.stderr)
        return EXIT_OK
    complete = True
    totals = {"captioned": 0, "skipped": 0, "failed": 0, "stored": 0, "not retrieved": 0, "not stored": 0}
    progress = tqdm(studies, unit="study", disable=args.quiet or len(studies) < 2 or None, file=sys.stderr)
    for index, study in enumerate(progress):
        try:
            result = puller.pull(study, args.series)
        except (unavailable, ValueError) as exc:
            progress.write(f"study {study}: {exc}; nothing captioned", file=sys.stderr)
            complete = False
            if isinstance(exc, unavailable):
                break
            continue
        complete &= result.complete
        for key, values in (("captioned", result.captioned), ("skipped", result.skipped), ("failed", result.failed),
                            ("stored", result.stored), ("not retrieved", result.not_retrieved),
                            ("not stored", result.not_stored)):
            totals[key] += len(values)
        for sop in result.captioned:
            print(f"{study}\t{sop}\tcaptioned", flush=True)
        for sop, why in result.failed:
            progress.write(f"FAILED {sop}: {why}", file=sys.stderr)
        for sop in result.not_retrieved:
            progress.write(f"NOT CAPTIONED {sop}: not retrieved ({result.server_error})", file=sys.stderr)
        for sr, why in result.not_stored:
            progress.write(f"NOT STORED SR {sr}: {why}", file=sys.stderr)
        if result.server_error:  # the server went away: the other studies would fail the same way
            if studies[index + 1:]:
                progress.write(f"NOT ATTEMPTED: {len(studies) - index - 1} more study(ies)", file=sys.stderr)
            break
    progress.close()
    print(f"pulled {len(studies)} study(ies) from {puller.url}: " + ", ".join(f"{v} {k}" for k, v in totals.items()),
          file=sys.stderr)
    return EXIT_OK if complete else EXIT_FAILED
