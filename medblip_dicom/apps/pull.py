"""``medblip pull --from ARCHIVE --study UID --model M``: caption what an archive already holds.

``--from https://...`` is a DICOMweb server: QIDO-RS finds, WADO-RS retrieves, the SRs go back by
STOW-RS. ``--from dimse://AET@HOST:PORT`` is a DIMSE archive: C-FIND finds, C-GET (or C-MOVE)
retrieves, the SRs go back by C-STORE. Either way the selection rules and the one-caption-per-series
choice run on the query answers first, so only what will be captioned is retrieved where the
archive answers enough; the SRs go back to the archive pulled from (``--to`` for another) and/or
into ``--out``. ``--query KEY=VALUE`` and ``--accession`` caption every study they find. The work
is done by :mod:`medblip_dicom.integrations.pull`; exit codes as ``medblip caption``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_verbosity, packages_present, say_error
from medblip_dicom.apps.options import add_model, add_selection, batch_size_error, select_config

PULL_EXAMPLE = """\
examples:
  medblip pull --from https://pacs/dicom-web --study 1.2.840.1234.5 --model ./my-blip-model
  medblip pull --from https://pacs/dicom-web --study 1.2.840.1234.5 --series 1.2.840.1234.5.6 \\
      --model ./my-blip-model --out reports/ --no-store
  medblip pull --from dimse://PACS@10.0.0.5:104 --accession A123456 --model ./my-blip-model
  medblip pull --from dimse://PACS@10.0.0.5:104 --query ModalitiesInStudy=CR \\
      --query StudyDate=20261101-20261130 --model ./my-blip-model --between 20:00-06:00
  medblip pull --from dimse://PACS@10.0.0.5:104 --study 1.2.3 --retrieve move --listen 11113 \\
      --model ./my-blip-model

Only what will be captioned is retrieved where the archive's answers say enough (a 400-slice CT
costs one instance); SRs are never retrieved. The SRs go back to --to (default: the --from archive)
and/or into --out. A rerun creates nothing new (SR UIDs are stable). DICOMweb credentials come from
--token-file / --token-env or --username with --password-file / --password-env, never the command
line. DIMSE: our AE title is --calling-ae (or [forward] calling_ae_title of --config), DICOM TLS is
[forward.tls] (and [node.tls] for --listen). C-GET is refused -> C-MOVE to --listen or
--move-destination. If the archive stops answering, what was and was not captioned is reported
and the exit status is 1. See docs/deployment/pull.md.
"""


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``medblip pull``."""
    p = sub.add_parser("pull", help="caption studies an archive holds (DICOMweb, or DIMSE C-FIND/C-GET/C-MOVE)",
                       description="Find studies in an archive, retrieve what will be captioned, caption it, "
                                   "store the SRs back.",
                       epilog=PULL_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, metavar="ARCHIVE",
                   help="a DICOMweb root (https://...) or dimse://AET@HOST:PORT")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="StudyInstanceUID of the study to caption")
    which.add_argument("--accession", metavar="NUMBER", help="caption the study (studies) with this AccessionNumber")
    which.add_argument("--query", action="append", metavar="KEY=VALUE",
                       help="study filter (repeatable; PatientID, StudyDate ranges, ModalitiesInStudy, ...): "
                            "caption every study it finds")
    p.add_argument("--series", metavar="UID", help="only this series of --study")
    add_model(p, required=False, note="not needed when a node captions (--move-destination without --listen)")
    p.add_argument("--to", metavar="ARCHIVE", help="store the SRs here (a DICOMweb root, or AET@HOST:PORT for a "
                                                  "dimse:// pull; default: the --from archive)")
    p.add_argument("--no-store", "--no-stow", dest="no_store", action="store_true",
                   help="do not store the SRs in any archive (use with --out)")
    p.add_argument("--out", "-o", type=Path, help="also write the SRs into this folder")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request or DIMSE message (default 30)")
    web = p.add_argument_group("DICOMweb (--from https://...)")
    web.add_argument("--token-file", type=Path, help="bearer token: the first line of this file")
    web.add_argument("--token-env", metavar="NAME", help="bearer token: this environment variable")
    web.add_argument("--username", help="HTTP basic auth user (password from --password-file / --password-env)")
    web.add_argument("--password-file", type=Path)
    web.add_argument("--password-env", metavar="NAME")
    web.add_argument("--ca", type=Path, help="CA bundle to verify the server's certificate (also DICOM TLS)")
    dimse = p.add_argument_group("DIMSE (--from dimse://AET@HOST:PORT)")
    dimse.add_argument("--calling-ae", metavar="AET",
                       help="our AE title (default: [forward] calling_ae_title of --config, else MEDBLIP)")
    dimse.add_argument("--config", type=Path,
                       help="service TOML: [forward] calling_ae_title, [forward.tls] and [node.tls] apply")
    dimse.add_argument("--retrieve", choices=["get", "move"], default="get",
                       help="C-GET (default; C-MOVE when the archive refuses it and a destination is given) or C-MOVE")
    dimse.add_argument("--move-destination", metavar="AET",
                       help="C-MOVE to this AE title: a running medblip node (it captions), or --listen's title")
    dimse.add_argument("--listen", metavar="[HOST:]PORT",
                       help="receive C-MOVE sub-operations here for the pull's duration (binds 127.0.0.1 unless a "
                            "host is given; the archive must know our AE title at this port)")
    dimse.add_argument("--max-concurrent", type=int, default=1, metavar="N", help="retrieves at once (default 1)")
    dimse.add_argument("--between", metavar="HH:MM-HH:MM", help="retrieve only inside this daily window (local time)")
    add_selection(p)
    add_verbosity(p)
    p.set_defaults(func=cmd_pull, quick_exit=True)


def _query(args: argparse.Namespace) -> dict[str, str] | None:
    """The study filter of --query / --accession (None with --study)."""
    from medblip_dicom.integrations.pull.dicomweb import parse_query

    if args.accession is not None:
        return {"AccessionNumber": args.accession}
    return parse_query(args.query) if args.query else None


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.series and not args.study:
        return "--series needs --study"
    if args.no_store and args.out is None:
        return "--no-store without --out: the SRs would go nowhere"
    return batch_size_error(args)


def cmd_pull(args: argparse.Namespace) -> int:
    """Run ``medblip pull``."""
    from medblip_dicom.integrations.pull.dimse_link import is_dimse_url

    if (problem := _usage_problem(args)) is not None:
        say_error("pull", problem)
        return EXIT_USAGE
    if is_dimse_url(args.source):
        return _cmd_dimse(args)
    if not packages_present("pull", extra="dicomweb", modules=("dicomweb_client", "requests")):
        return EXIT_USAGE
    from functools import partial

    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.config.dicomweb import ForwardDicomwebConfig, check_url
    from medblip_dicom.integrations.delivery.sinks.dicomweb import StowClient
    from medblip_dicom.integrations.pull.dicomweb import Puller, ServerUnavailable

    try:
        for flag, url in (("--from", args.source), ("--to", args.to)):
            if url is not None:
                check_url("pull", flag, url)
        settings = ForwardDicomwebConfig(
            username=args.username or "", password_file=args.password_file, password_env=args.password_env or "",
            token_file=args.token_file, token_env=args.token_env or "", ca=args.ca, timeout_s=args.timeout)
        settings.token(), settings.password()  # a missing file or variable: said now, not mid-study
        query = _query(args)
        select = select_config(args)
        if args.model is None:
            raise ValueError("--model is required")
    except (MedblipError, ValueError, OSError) as exc:
        say_error("pull", exc)
        return EXIT_USAGE
    captioner = _load(args)
    if captioner is None:
        return EXIT_USAGE
    from medblip_dicom.api import caption_dicoms

    to = None if args.no_store else StowClient(args.to or args.source, settings)
    caption = partial(caption_dicoms, model=captioner, output_dir=args.out, batch_size=args.batch_size,
                      select=select)
    with _instance_bar(args) as bar:
        puller = Puller(args.source, settings, caption=caption, to=to, select=select, on_instance=lambda _: bar(1))
        return _run(args, puller, query, (ServerUnavailable,))


def _load(args: argparse.Namespace):  # noqa: ANN202 - a Captioner, imported lazily
    from medblip_dicom.api import load_captioner
    from medblip_dicom.errors import MedblipError

    try:
        return load_captioner(args.model, device=args.device, dtype=args.dtype, prompt=args.prompt)
    except MedblipError as exc:
        say_error("pull", exc)
        return None


def _cmd_dimse(args: argparse.Namespace) -> int:
    """``medblip pull --from dimse://...``: C-FIND, C-GET / C-MOVE, C-STORE."""
    from functools import partial

    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.config.file import ForwardTLSConfig, NodeTLSConfig, load_config
    from medblip_dicom.integrations.delivery.sinks.dicom import ForwardClient
    from medblip_dicom.integrations.pull.dimse import DimsePuller
    from medblip_dicom.integrations.pull.dimse_link import (
        ArchiveUnavailable, DimseSettings, RetrieveRefused, check_ae, parse_dimse_url,
    )
    from medblip_dicom.integrations.pull.dimse_listen import MoveListener, parse_listen
    from medblip_dicom.integrations.pull.dimse_receive import Receiver
    from medblip_dicom.integrations.pull.window import Window

    try:
        archive = parse_dimse_url(args.source)
        to = parse_dimse_url(args.to, "--to") if args.to else archive
        config = load_config(args.config) if args.config is not None else None
        calling = check_ae("--calling-ae", args.calling_ae or (config.forward.calling_ae_title if config
                                                                else "MEDBLIP"))
        tls = config.forward.tls if config else ForwardTLSConfig()
        if args.ca is not None:
            tls = ForwardTLSConfig(ca=args.ca, cert=tls.cert, key=tls.key)
        settings = DimseSettings(calling_ae_title=calling, tls=tls, timeout_s=args.timeout)
        listen = parse_listen(args.listen) if args.listen else None
        destination = args.move_destination or (calling if listen else "")
        if destination:
            check_ae("--move-destination", destination)
        if args.retrieve == "move" and not destination:
            raise ValueError("--retrieve move needs --listen PORT (our own listener) or --move-destination AET")
        handed_off = bool(destination) and listen is None and args.retrieve == "move"
        if args.max_concurrent < 1:
            raise ValueError("--max-concurrent must be >= 1")
        window = Window.parse(args.between) if args.between else None
        query = _query(args)
        select = select_config(args)
        if args.model is None and not handed_off:
            raise ValueError("--model is required (unless a node captions: --retrieve move --move-destination AET)")
    except (MedblipError, ValueError, OSError) as exc:
        say_error("pull", exc)
        return EXIT_USAGE
    caption = None
    if not handed_off:
        captioner = _load(args)
        if captioner is None:
            return EXIT_USAGE
        from medblip_dicom.api import caption_dicoms

        caption = partial(caption_dicoms, model=captioner, output_dir=args.out, batch_size=args.batch_size,
                          select=select)
    store = None if args.no_store or handed_off else ForwardClient(to, calling_ae_title=calling,
                                                                     timeout_s=args.timeout, tls=tls)
    receiver = Receiver()
    with contextlib.ExitStack() as stack:
        listen_at = ""
        if listen is not None:
            listener = MoveListener(receiver, destination, listen[0], listen[1],
                                    tls=config.node.tls if config else NodeTLSConfig(), timeout_s=args.timeout)
            try:
                stack.enter_context(listener)
            except OSError as exc:
                say_error("pull", f"--listen {args.listen}: cannot listen ({exc.strerror or exc})")
                return EXIT_USAGE
            listen_at = f"{listen[0]}:{listener.port}"
        bar = stack.enter_context(_instance_bar(args))
        puller = DimsePuller(archive, settings, caption=caption, select=select, store_to=store, method=args.retrieve,
                             move_destination=destination, receiver=receiver, listening=listen is not None,
                             listen_at=listen_at, max_concurrent=args.max_concurrent, window=window,
                             progress=bar, tell=lambda text: print(text, file=sys.stderr))
        return _run(args, puller, query, (ArchiveUnavailable, RetrieveRefused))


@contextlib.contextmanager
def _instance_bar(args: argparse.Namespace):  # noqa: ANN202 - a generator context manager
    """A progress bar of instances retrieved (the retrieve threads advance it)."""
    import threading

    from tqdm import tqdm

    lock = threading.Lock()
    bar = tqdm(unit="instance", desc="retrieved", disable=args.quiet or None, file=sys.stderr)

    def advance(count: int) -> None:
        with lock:
            bar.update(count)

    try:
        yield advance
    finally:
        bar.close()


def _run(args: argparse.Namespace, puller, query, fatal: tuple[type[Exception], ...]) -> int:  # noqa: ANN001
    try:
        studies = puller.find_studies(query) if query is not None else [args.study]
    except (*fatal, ValueError) as exc:
        say_error("pull", exc)
        return EXIT_FAILED
    if not studies:
        print(f"the query found no study on {puller.url}", file=sys.stderr)
        return EXIT_OK
    from medblip_dicom.integrations.pull.study import StudyPull

    complete = True
    totals = dict.fromkeys(StudyPull("").counts(), 0)
    for index, (study, result) in enumerate(puller.pull_many(studies, args.series)):
        if isinstance(result, Exception):
            print(f"study {study}: {result}; nothing captioned", file=sys.stderr)
            complete = False
            if isinstance(result, fatal):  # the archive went away or refuses: the others would fail alike
                _not_attempted(len(studies) - index - 1)
                break
            continue
        complete &= result.complete
        for key, value in result.counts().items():
            totals[key] += value
        _say(study, result, getattr(puller, "move_destination", ""))
        if result.server_error:
            _not_attempted(len(studies) - index - 1)
            break
    shown = ", ".join(f"{v} {k}" for k, v in totals.items() if v or k not in ("moved",))
    print(f"pulled {len(studies)} study(ies) from {puller.url}: {shown}", file=sys.stderr)
    return EXIT_OK if complete else EXIT_FAILED


def _not_attempted(count: int) -> None:
    if count > 0:
        print(f"NOT ATTEMPTED: {count} more study(ies)", file=sys.stderr)


def _say(study: str, result, destination: str) -> None:  # noqa: ANN001 - a StudyPull
    """One line per instance that needs one: captioned (stdout), problems (stderr)."""
    for sop in result.captioned:
        print(f"{study}\t{sop}\tcaptioned", flush=True)
    for sop in result.moved:
        print(f"{study}\t{sop}\tmoved to {destination}", flush=True)
    for sop, why in result.warnings:
        print(f"WARNING {sop}: {why}", file=sys.stderr)
    for sop, why in result.failed:
        print(f"FAILED {sop}: {why}", file=sys.stderr)
    for sop in result.not_retrieved:
        print(f"NOT CAPTIONED {sop}: not retrieved ({result.server_error})", file=sys.stderr)
    for sr, why in result.not_stored:
        print(f"NOT STORED SR {sr}: {why}", file=sys.stderr)
