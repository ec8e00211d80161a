"""``medblip review``: the review station and its accounts, export and statistics.

- ``medblip review [--config FILE] [--host H] [--port P] [--spool DIR]``: serve the web app
  (``serve`` may be named explicitly);
- ``medblip review add-user USER --name "Last^First" --password-stdin``;
- ``medblip review add-token USER`` prints a new API token (its id on stderr);
- ``medblip review list-users`` / ``list-tokens [USER]``: who may review, which tokens exist (ids only);
- ``medblip review set-password USER --password-stdin``, ``disable-user USER``, ``enable-user USER``,
  ``remove-user USER`` and ``revoke-token ID``: a new password, disabling or removing a reviewer ends
  its sessions and API tokens at once; a removed reviewer stays listed, so that its signatures stay
  attributable;
- ``medblip review export --out FILE.jsonl`` (rejected ones in ``FILE.rejected.jsonl``), with
  ``--deidentify --key-file KEY`` de-identified for moving off-site (:mod:`medblip_dicom.apps.deid`);
- ``medblip review stats [--plot FILE.png] [--json]``.

Exit codes as in :mod:`medblip_dicom.apps.common`: 2 for a bad flag, configuration, or a spool
that does not exist; 1 for a runtime error (a port in use).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_verbosity, packages_present, say_error

logger = logging.getLogger(__name__)

EXAMPLES = """\
examples:
  medblip review add-user jdoe --name "Doe^Jane" --password-stdin --config /etc/medblip/medblip.toml
  medblip review --config /etc/medblip/medblip.toml              # https://127.0.0.1:8400 with [review.tls]
  medblip review add-token jdoe --config /etc/medblip/medblip.toml
  medblip review list-tokens jdoe --config /etc/medblip/medblip.toml
  medblip review revoke-token 3f9a1c0b27de --config /etc/medblip/medblip.toml
  medblip review disable-user jdoe --config /etc/medblip/medblip.toml   # ends her sessions and tokens
  medblip review export --out feedback.jsonl --config /etc/medblip/medblip.toml
  medblip review export --out offsite/feedback.jsonl --deidentify --key-file /secure/site.key \
      --option retain-modified-dates --config /etc/medblip/medblip.toml
  medblip train --data feedback.jsonl --base-model runs/roco1/best --out runs/site1
  medblip review stats --plot review.png --config /etc/medblip/medblip.toml

The services put AI reports under review when [review] enabled = true; signed reports and
rejection notes leave through their delivery (the output folder and/or the destination).
"""


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("review", help="the radiologist's review station: sign, edit or reject AI reports",
                            description="The review station: a web app where a radiologist signs, edits or rejects each AI "
                            "report, and its accounts, training export and statistics.", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, None)
    parser.add_argument("--host", default=None, help="address to listen on (default [review] host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default [review] port, 8400)")
    add_verbosity(parser)
    parser.set_defaults(func=serve, service=True)
    commands = parser.add_subparsers(dest="review_command", metavar="ACTION")
    s = commands.add_parser("serve", help="serve the web app (the default)")
    _common(s, argparse.SUPPRESS)
    add_verbosity(s)
    s.add_argument("--host", default=argparse.SUPPRESS)
    s.add_argument("--port", type=int, default=argparse.SUPPRESS)
    s.set_defaults(func=serve, service=True)
    u = commands.add_parser("add-user", help="create a reviewer (or set a new password)")
    u.add_argument("username")
    u.add_argument("--name", required=True, help='the DICOM person name, "Last^First"')
    u.add_argument("--password-stdin", action="store_true", required=True, help="read the password from stdin")
    _common(u, argparse.SUPPRESS)
    add_verbosity(u)
    u.set_defaults(func=add_user, quick_exit=True)
    t = commands.add_parser("add-token", help="print a new API token for a reviewer")
    t.add_argument("username")
    _common(t, argparse.SUPPRESS)
    add_verbosity(t)
    t.set_defaults(func=add_token, quick_exit=True)
    _account_commands(commands)
    e = commands.add_parser("export", help="signed reports as a JSONL manifest for medblip train")
    e.add_argument("--out", required=True, help="FILE.jsonl (rejected reports go to FILE.rejected.jsonl)")
    e.add_argument("--deidentify", action="store_true", help="de-identified copies of the images under images/ beside "
                   "FILE.jsonl, captions cleaned, FILE.datacard.json (PS3.15 Annex E; needs --key-file)")
    from medblip_dicom.apps.deid import add_deid_flags

    add_deid_flags(e)
    _common(e, argparse.SUPPRESS)
    add_verbosity(e)
    e.set_defaults(func=export, quick_exit=True)
    st = commands.add_parser("stats", help="signed unchanged, edited, rejected; word edit distance and BLEU")
    st.add_argument("--plot", default=None, help="also draw the figures into FILE.png (needs the train extra)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(st, argparse.SUPPRESS)
    add_verbosity(st)
    st.set_defaults(func=stats, quick_exit=True)


def _account_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands that list, revoke and re-key reviewers and their API tokens."""
    def add(name: str, help_text: str, func: Any, *, user: bool = True) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text)
        if user:
            parser.add_argument("username")
        _common(parser, argparse.SUPPRESS)
        add_verbosity(parser)
        parser.set_defaults(func=func, quick_exit=True)
        return parser

    add("list-users", "the reviewers: login, name, state, API tokens, last login (never a password hash)",
        list_users, user=False)
    lt = add("list-tokens", "the API tokens (their ids, never the tokens), of one reviewer or all", list_tokens,
             user=False)
    lt.add_argument("username", nargs="?", default=None)
    rt = add("revoke-token", "revoke an API token by its id (as add-token and list-tokens show it)", revoke_token,
             user=False)
    rt.add_argument("token_id", metavar="ID")
    sp = add("set-password", "a new password for a reviewer; ends its sessions and API tokens", set_password)
    sp.add_argument("--password-stdin", action="store_true", required=True, help="read the password from stdin")
    add("disable-user", "stop a reviewer from logging in; ends its sessions and API tokens", disable_user)
    add("enable-user", "let a disabled reviewer log in again (API tokens must be made anew)", enable_user)
    add("remove-user", "remove a reviewer for good: disabled, password erased, sessions and tokens ended; "
        "the name stays listed so that its signatures stay attributable", remove_user)


def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", "-c", default=default, help="the services' TOML file ([review], [spool])")
    parser.add_argument("--spool", default=default, help="the spool folder (default [spool] dir)")


def _settings(args: argparse.Namespace) -> Any:
    from medblip_dicom.integrations.config.file import load_config

    return load_config(getattr(args, "config", None), {
        "spool": {"dir": getattr(args, "spool", None)},
        "review": {"host": getattr(args, "host", None), "port": getattr(args, "port", None)},
    })


def _open(command: str, args: argparse.Namespace) -> tuple[Any, Any] | None:
    """(config, ReviewStore), or None after saying why (a bad configuration or spool)."""
    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.review.store import ReviewStore

    try:
        config = _settings(args)
        r = config.review
        return config, ReviewStore(config.spool.dir, organization=r.organization, keep_sources=r.keep_sources,
                                   send_rejection_note=r.send_rejection_note, pdf=config.output.pdf)
    except MedblipError as exc:
        say_error(command, exc)
        return None


def serve(args: argparse.Namespace) -> int:
    """Serve the review station until SIGINT / SIGTERM."""
    if not packages_present("review", "review"):
        return EXIT_USAGE
    opened = _open("review", args)
    if opened is None:
        return EXIT_USAGE
    config, store = opened
    from medblip_dicom.errors import MedblipError
    from medblip_dicom.integrations.review.app import create_app, serve as run_server

    r = config.review
    try:
        if not r.enabled:
            logger.warning("[review] enabled is false in %s: the services (watch, node) do not put AI reports under "
                           "review, so this station's worklist gets nothing new (%d report(s) waiting now); set "
                           "[review] enabled = true in the services' configuration",
                           getattr(args, "config", None) or "the configuration", store.counts().get("pending", 0))
        store.recover()  # a journal held by another process too long: one line, exit 1
        app = create_app(store, organization=r.organization, secure_cookies=r.tls.enabled,
                         session_idle_s=r.session_idle_s, max_login_failures=r.max_login_failures)
        run_server(app, host=r.host, port=r.port, cert=r.tls.cert, key=r.tls.key)
    except MedblipError as exc:
        say_error("review", exc)
        return EXIT_FAILED
    except (OSError, SystemExit) as exc:
        say_error("review", f"cannot serve on {r.host}:{r.port}: {exc}")
        return EXIT_FAILED
    finally:
        store.close()
    return EXIT_OK


def add_user(args: argparse.Namespace) -> int:
    if not packages_present("review add-user", "review"):
        return EXIT_USAGE
    opened = _open("review add-user", args)
    if opened is None:
        return EXIT_USAGE
    from medblip_dicom.integrations.review.accounts import AccountError, Accounts

    _, store = opened
    password = sys.stdin.readline().rstrip("\r\n")
    try:
        user = Accounts(store.db).add_user(args.username, args.name, password)
    except AccountError as exc:
        say_error("review add-user", exc)
        return EXIT_USAGE
    print(f"reviewer {user.username} ({user.person_name}) saved")
    return EXIT_OK


def add_token(args: argparse.Namespace) -> int:
    opened = _open("review add-token", args)
    if opened is None:
        return EXIT_USAGE
    from medblip_dicom.integrations.review.accounts import AccountError, Accounts, token_id

    _, store = opened
    try:
        token = Accounts(store.db).add_token(args.username)
    except AccountError as exc:
        say_error("review add-token", exc)
        return EXIT_USAGE
    print(token)
    print(f"token id {token_id(token)} (medblip review revoke-token {token_id(token)} revokes it); the token "
          "is shown only this once", file=sys.stderr)
    return EXIT_OK


def _accounts(command: str, args: argparse.Namespace) -> Any:
    """The Accounts of the configured spool, or None after saying why."""
    if not packages_present(f"review {command}", "review"):
        return None
    opened = _open(f"review {command}", args)
    if opened is None:
        return None
    from medblip_dicom.integrations.review.accounts import Accounts

    return Accounts(opened[1].db)


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at)) if at else "never"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows])


def list_users(args: argparse.Namespace) -> int:
    accounts = _accounts("list-users", args)
    if accounts is None:
        return EXIT_USAGE
    users = accounts.list_users()
    print(_table(("login", "name", "state", "tokens", "last login"),
                 [(u.username, u.person_name, u.state, str(u.tokens), _when(u.last_login)) for u in users])
          if users else "no reviewers yet (medblip review add-user adds one)")
    return EXIT_OK


def list_tokens(args: argparse.Namespace) -> int:
    accounts = _accounts("list-tokens", args)
    if accounts is None:
        return EXIT_USAGE
    tokens = accounts.list_tokens(args.username)
    print(_table(("id", "login", "created"), [(t.id, t.username, _when(t.created_at)) for t in tokens])
          if tokens else "no API tokens")
    return EXIT_OK


def _account_action(command: str, args: argparse.Namespace, action: Any) -> int:
    """Run `action(accounts)` (returns the line to print), turning an AccountError into one line and exit 2."""
    from medblip_dicom.integrations.review.accounts import AccountError

    accounts = _accounts(command, args)
    if accounts is None:
        return EXIT_USAGE
    try:
        print(action(accounts))
    except AccountError as exc:
        say_error(f"review {command}", exc)
        return EXIT_USAGE
    return EXIT_OK


def _ended(ended: tuple[int, int]) -> str:
    return f"{ended[0]} session(s) and {ended[1]} API token(s) ended"


def revoke_token(args: argparse.Namespace) -> int:
    def revoke(accounts: Any) -> str:
        token = accounts.revoke_token(args.token_id)
        return f"token {token.id} of {token.username} revoked"

    return _account_action("revoke-token", args, revoke)


def set_password(args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\r\n")
    return _account_action("set-password", args, lambda accounts: f"new password for {args.username}; "
                           + _ended(accounts.set_password(args.username, password)))


def disable_user(args: argparse.Namespace) -> int:
    return _account_action("disable-user", args, lambda accounts: f"reviewer {args.username} disabled; "
                           + _ended(accounts.disable(args.username)))


def enable_user(args: argparse.Namespace) -> int:
    def enable(accounts: Any) -> str:
        accounts.enable(args.username)
        return f"reviewer {args.username} enabled (API tokens: make new ones with medblip review add-token)"

    return _account_action("enable-user", args, enable)


def remove_user(args: argparse.Namespace) -> int:
    return _account_action("remove-user", args, lambda accounts: f"reviewer {args.username} removed (still listed: "
                           "its signatures stay attributed to it); " + _ended(accounts.remove(args.username)))


def export(args: argparse.Namespace) -> int:
    opened = _open("review export", args)
    if opened is None:
        return EXIT_USAGE
    from medblip_dicom.integrations.review.feedback import datacard_path, export as write_export, rejected_path

    _, store = opened
    deidentifier = None
    if args.deidentify:
        from medblip_dicom.apps.deid import make_deidentifier

        deidentifier = make_deidentifier("review export", args)
        if deidentifier is None:
            return EXIT_USAGE
    elif args.key_file or args.option or args.mask_recipe:
        say_error("review export", "--key-file, --option and --mask-recipe apply only with --deidentify")
        return EXIT_USAGE
    try:
        counts = write_export(store, args.out, deidentifier=deidentifier)
    except OSError as exc:
        say_error("review export", f"cannot write {args.out}: {exc}")
        return EXIT_FAILED
    from pathlib import Path

    print(f"{counts['signed']} signed report(s) -> {args.out}; {counts['rejected']} rejected -> "
          f"{rejected_path(Path(args.out))}" + (f"; {counts['missing']} signed without a kept source left out"
                                                 if counts["missing"] else ""))
    if deidentifier is not None:
        print(f"de-identified: {counts['captions_changed']} row(s) with identifying text removed, "
              f"{counts['refused']} image(s) left out (burned-in text or unreadable); data card "
              f"{datacard_path(Path(args.out))}")
    return EXIT_OK


def stats(args: argparse.Namespace) -> int:
    if args.plot and not packages_present("review stats", "train"):
        return EXIT_USAGE
    opened = _open("review stats", args)
    if opened is None:
        return EXIT_USAGE
    from medblip_dicom.integrations.review.feedback import format_table, plot_stats, review_stats

    _, store = opened
    rows = review_stats(store, bleu=_bleu4())
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        print(format_table(rows) if rows else "nothing reviewed yet")
    if args.plot:
        print(f"figure: {plot_stats(rows, args.plot)}")
    return EXIT_OK


def _bleu4() -> Any:
    """Corpus BLEU-4 from training (the project's tokenisation), when nltk is installed."""
    try:
        from medblip_dicom.training.bleu import bleu_scores
    except ImportError:
        return None
    return lambda references, hypotheses: bleu_scores(references, hypotheses)["bleu4"]
