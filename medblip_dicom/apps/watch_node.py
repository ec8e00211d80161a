"""The service subcommands of ``medblip``: ``watch``, ``node`` and ``status`` (of their spool).

Thin handlers over :mod:`medblip_dicom.integrations`: each reads the configuration, checks that the
packages it needs import (before any model is loaded) and runs a
:class:`~medblip_dicom.integrations.service.assembly.Service`. Nothing heavy is imported at module level.
Exit codes as in :mod:`medblip_dicom.apps.common`: a configuration that cannot work (or a model
that does not load) is 2; a runtime error such as a port in use or a full disk is 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_verbosity, packages_present, say_error
from medblip_dicom.apps.options import add_model

WATCH_EXAMPLE = """\
examples:
  medblip watch /data/inbox --model ./my-blip-model --out /data/sr-out
  medblip watch /mnt/share/inbox --model ./my-blip-model --out /data/sr-out --poll --spool /var/lib/medblip/spool
  medblip watch /data/inbox --config /etc/medblip/medblip.toml --forward PACS@10.0.0.5:104
  medblip watch /data/inbox --model ./my-blip-model --out /data/sr-out --once

Files dropped into INBOX (nested folders too) are taken once their size and modification time
settle, captioned, and their SRs written to --out and/or sent to --forward. Each input then moves
to INBOX/done/ or INBOX/failed/ (with NAME.reason.txt). Names such as .DS_Store, hidden files and
*.tmp / *.part are ignored. Stop with Ctrl-C or SIGTERM: work in progress resumes at the next start.
"""

NODE_EXAMPLE = """\
examples:
  medblip node --ae-title MEDBLIP --port 11112 --model ./my-blip-model --out /data/sr-out
  medblip node --ae-title MEDBLIP --port 11112 --model ./my-blip-model --forward PACS@10.0.0.5:104
  medblip node --config /etc/medblip/medblip.toml --host 0.0.0.0 --allow CT01 --allow PACS
  medblip node --model ./my-blip-model --out /data/sr-out --dicomweb-port 8042 --forward-dicomweb https://pacs/dicom-web

A Storage SCP (and C-ECHO): send studies to it with C-STORE, e.g.
  dcmsend 127.0.0.1 11112 -aec MEDBLIP study/*.dcm
Each instance is written to the spool before the node answers success; it is captioned in the
background and the SR goes to --out and/or --forward (AET@HOST:PORT). It listens on 127.0.0.1
unless --host or [node] host says otherwise. With --dicomweb-port it also takes STOW-RS
(POST http://127.0.0.1:P/dicom-web/studies; tokens and the body limit in [dicomweb], TLS in [dicomweb.tls]).
Stop with Ctrl-C or SIGTERM.
"""

STATUS_EXAMPLE = """\
examples:
  medblip status --spool /var/lib/medblip/spool
  medblip status --spool /var/lib/medblip/spool --json

Prints the queue depth (received, processing, reported), done (delivered, skipped), failed, and the
oldest pending job with its last delivery error. Reads the journal only; safe while services run.
"""


class _OldSecondaryCaptureFlag(argparse.Action):
    """``--picture``, the old spelling of ``--secondary-capture``: still accepted, with a warning naming the new one."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, "secondary_capture", nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        # said on stderr at once: logging is set up only after the flags are parsed
        print(f"{parser.prog}: --picture is now --secondary-capture; the old flag is still read, "
              "write --secondary-capture instead", file=sys.stderr)
        setattr(namespace, self.dest, True)


def _add_common(parser: argparse.ArgumentParser) -> None:
    """The flags ``watch`` and ``node`` share: each overrides its key of the configuration file."""
    add_model(parser, required=False, from_config=True)
    parser.add_argument("--out", "-o", type=Path, default=None, help="folder for the SR files ([output] dir)")
    parser.add_argument("--forward", default=None, metavar="AET@HOST:PORT",
                        help="send each SR to this Storage SCP, e.g. a PACS ([forward] destination)")
    parser.add_argument("--forward-dicomweb", default=None, metavar="URL",
                        help="send each SR by STOW-RS to this DICOMweb root, e.g. https://pacs/dicom-web "
                        "([forward] dicomweb_url; credentials only in [forward.dicomweb], never as a flag)")
    parser.add_argument("--config", "-c", type=Path, default=None, help="TOML configuration file")
    parser.add_argument("--spool", type=Path, default=None,
                        help="spool folder on a local disk ([spool] dir; default $XDG_STATE_HOME/medblip/spool, "
                        "i.e. ~/.local/state/medblip/spool)")
    parser.add_argument("--secondary-capture", action="store_true", default=None,
                        help="also write a Secondary Capture: the image with its caption beneath, for viewers "
                        "that do not show SR ([output] secondary_capture)")
    parser.add_argument("--picture", action=_OldSecondaryCaptureFlag, help=argparse.SUPPRESS)  # the old spelling
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve /metrics, /healthz and /readyz on this port ([metrics] port; 127.0.0.1 "
                        "unless [metrics] host says otherwise)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="json: one JSON object per log line (time, level, logger, job, UIDs)")
    add_verbosity(parser)


def add_commands(subparsers: Any) -> None:
    """Register ``watch``, ``node`` and ``status`` on the ``medblip`` subparsers."""
    watch = subparsers.add_parser(
        "watch", help="watch a folder: caption every DICOM file dropped into it",
        description="Watch INBOX and caption every DICOM file dropped into it.",
        epilog=WATCH_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("inbox", nargs="?", type=Path, default=None, metavar="INBOX",
                       help="the folder to watch ([watch] inbox)")
    watch.add_argument("--once", action="store_true", help="process what is in INBOX now, then exit")
    watch.add_argument("--poll", action="store_true", default=None,
                       help="poll instead of file system events (network shares)")
    _add_common(watch)
    watch.set_defaults(func=cmd_watch, service=True)

    node = subparsers.add_parser(
        "node", help="run a DICOM node (Storage SCP) that captions what it receives",
        description="Run a DICOM Storage SCP that captions every image it receives.",
        epilog=NODE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    node.add_argument("--ae-title", default=None, help="the node's AE title ([node] ae_title, default MEDBLIP)")
    node.add_argument("--port", type=int, default=None, help="port to listen on ([node] port, default 11112)")
    node.add_argument("--host", default=None, help="address to bind ([node] host, default 127.0.0.1)")
    node.add_argument("--allow", action="append", default=None, metavar="AET",
                      help="allow this calling AE title (repeatable; default: any)")
    node.add_argument("--dicomweb-port", type=int, default=None, metavar="P",
                      help="also take STOW-RS on this port: POST /dicom-web/studies ([dicomweb] port; host, tokens "
                      "and the body limit in [dicomweb], TLS in [dicomweb.tls])")
    _add_common(node)
    node.set_defaults(func=cmd_node, service=True)

    status = subparsers.add_parser(
        "status", help="show a spool's queue depth, done, failed and oldest pending job",
        description="Show what a spool holds.",
        epilog=STATUS_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--spool", type=Path, default=None,
                        help="the spool folder (default $XDG_STATE_HOME/medblip/spool, i.e. ~/.local/state/medblip/spool)")
    status.add_argument("--config", "-c", type=Path, default=None, help="take the spool folder from this file")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status, quick_exit=True)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {
        "model": {"path": args.model, "prompt": args.prompt, "device": args.device, "dtype": args.dtype},
        "worker": {"batch_size": args.batch_size},
        "spool": {"dir": args.spool},
        "output": {"dir": args.out, "secondary_capture": args.secondary_capture},
        "forward": {"destination": args.forward, "dicomweb_url": args.forward_dicomweb},
        "metrics": {"port": args.metrics_port},
    }


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (only in the main thread; elsewhere the caller stops)."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _cannot_start() -> tuple[type[BaseException], ...]:
    """Errors meaning the service cannot run as configured (exit 2), not that it failed at work (exit 1)."""
    from medblip_dicom.errors import MissingDependencyError, ModelLoadError
    from medblip_dicom.integrations.config.file import ConfigError
    from medblip_dicom.integrations.service.worker_process import WorkerStartError

    return (ConfigError, ModelLoadError, MissingDependencyError, WorkerStartError)


def _load(name: str, args: argparse.Namespace, extra: dict[str, dict[str, Any]]) -> Any:
    """The configuration from --config and the flags; None (after saying why) when it cannot work."""
    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.config.file import load_config

    overrides = _overrides(args)
    overrides.update(extra)
    try:
        return load_config(args.config, overrides)
    except MedblipError as exc:
        say_error(name, exc)
        return None


def _run_service(name: str, config: Any, *, watch: bool, node: bool, stop: threading.Event | None = None) -> int:
    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.service.assembly import Service

    try:
        service = Service(config, watch=watch, node=node)
    except MedblipError as exc:
        say_error(name, exc)
        return EXIT_USAGE
    stop = stop or threading.Event()
    with _stop_on_signals(stop):
        try:
            service.run(stop)
        except _cannot_start() as exc:
            say_error(name, exc)
            return EXIT_USAGE
        except (MedblipError, OSError) as exc:
            say_error(name, exc)
            return EXIT_FAILED
    if service.error is not None:
        say_error(name, f"stopped on an error: {type(service.error).__name__}: {service.error}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """Run ``medblip watch``."""
    if not packages_present("watch", modules=("watchdog",)):
        return EXIT_USAGE
    config = _load("watch", args, {"watch": {"inbox": args.inbox, "poll": args.poll}})
    if config is None:
        return EXIT_USAGE
    if config.watch.inbox is None:
        say_error("watch", "give the INBOX folder (or [watch] inbox in --config)")
        return EXIT_USAGE
    if not args.once:
        return _run_service("watch", config, watch=True, node=False)

    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.service.assembly import Service

    if not config.watch.inbox.is_dir():
        say_error("watch", f"{config.watch.inbox} is not a folder")
        return EXIT_USAGE
    try:
        result = Service(config, watch=True).run_once()
    except _cannot_start() as exc:
        say_error("watch", exc)
        return EXIT_USAGE
    except (MedblipError, OSError) as exc:
        say_error("watch", exc)
        return EXIT_FAILED
    print(f"took {result.taken} file(s): {result.delivered} delivered, {result.skipped} skipped, "
          f"{result.failed} failed, {result.waiting} still waiting in the spool", file=sys.stderr)
    return EXIT_FAILED if result.failed or result.waiting else EXIT_OK


def cmd_node(args: argparse.Namespace) -> int:
    """Run ``medblip node``."""
    if not packages_present("node", modules=("pynetdicom",)):
        return EXIT_USAGE
    config = _load("node", args, {"node": {"ae_title": args.ae_title, "port": args.port, "host": args.host,
                                           "allowed_calling_aets": args.allow},
                                  "dicomweb": {"port": args.dicomweb_port}})
    if config is None:
        return EXIT_USAGE
    return _run_service("node", config, watch=False, node=True)


def cmd_status(args: argparse.Namespace) -> int:
    """Run ``medblip status``: exit 2 when the folder given is not a spool."""
    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.config.file import load_config
    from medblip_dicom.integrations.spool import open_readonly_summary
    from medblip_dicom.integrations.ops.status import format_json, format_summary

    try:
        spool = args.spool or load_config(args.config).spool.dir
        summary = open_readonly_summary(spool)
    except MedblipError as exc:
        say_error("status", exc)
        return EXIT_USAGE
    print(format_json(str(spool), summary) if args.json else format_summary(str(spool), summary))
    return EXIT_OK
