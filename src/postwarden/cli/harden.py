"""``harden``: plan, apply, check and roll back a role's profile.

Security: see postwarden.harden; nothing is written without --apply or --rollback.
Standards: the exit codes of DESIGN.md.
"""

from __future__ import annotations

import argparse

from postwarden.cli.common import (
    DEFAULT_CONFIG_DIR,
    EXIT_FINDINGS,
    EXIT_OK,
    Subparsers,
)
from postwarden.errors import UsageError


def add(commands: Subparsers) -> None:
    hard = commands.add_parser(
        "harden", help="apply a role's secure profile to main.cf and master.cf",
        description="Plan the changes that give a configuration the role's profile (the "
                    "audit rules' own fixes) and show them as a diff with the rule ids they "
                    "answer; --apply writes them with a backup, checks them and undoes them "
                    "if the check fails.")
    hard.add_argument("-c", dest="config_dir", default=DEFAULT_CONFIG_DIR, metavar="DIR",
                      help=f"Postfix configuration directory (default {DEFAULT_CONFIG_DIR})")
    hard.add_argument("--role", default="auto",
                      help="comma-separated list of: mx, submission, relay, null-client")
    hard.add_argument("--hostname", help="the server's public host name (myhostname)")
    hard.add_argument("--domain", help="the mail domain (mydomain)")
    hard.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain for smtpd")
    hard.add_argument("--tls-key", metavar="FILE", help="PEM private key for smtpd")
    hard.add_argument("--sasl", choices=("dovecot", "cyrus"),
                      help="SASL backend for the submission services")
    hard.add_argument("--with", dest="extras", action="append", choices=("policy", "milter"),
                      help="wire postwarden's policy service or milter (repeatable)")
    hard.add_argument("--settings", metavar="FILE",
                      help="TOML file with the same keys (hostname, domain, tls-cert, "
                           "tls-key, sasl, with); options given win")
    hard.add_argument("--format", choices=("text", "json"), default="text")
    action = hard.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true",
                        help="write the changes (backup, atomic writes, postfix check; "
                             "restored if the check fails)")
    action.add_argument("--check", action="store_true",
                        help="exit 1 when changes are pending, 0 when none are")
    action.add_argument("--rollback", action="store_true",
                        help="restore the configuration from the latest backup")
    hard.add_argument("--reload", action="store_true",
                      help="with --apply or --rollback: reload a running Postfix afterwards")
    hard.set_defaults(handler=_harden)


def _harden(args: argparse.Namespace) -> int:
    """``harden``: plan the role's profile as a diff; apply, verify, roll back."""
    from pathlib import Path

    from postwarden.audit.model import Role
    from postwarden.audit.roles import parse_roles
    from postwarden.harden import apply as tx
    from postwarden.harden import run, settings

    config_dir = Path(args.config_dir)
    if args.reload and not (args.apply or args.rollback):
        raise UsageError("--reload goes with --apply or --rollback")
    if args.rollback:
        run.writable(config_dir)
        backup = tx.rollback(config_dir, lambda: run.verify(config_dir, set()))
        print(f"restored {config_dir} from {backup.path} (made {backup.created})")
        if args.reload:
            print(run.reload(config_dir))
        return EXIT_OK
    roles = parse_roles(args.role)
    if roles is None:
        raise UsageError("harden needs --role (mx, submission, relay, null-client or a "
                         "comma-separated list): the profile depends on it")
    if Role.NULL_CLIENT in roles and roles & {Role.MX, Role.SUBMISSION}:
        raise UsageError("--role: null-client (no public listener) contradicts mx and "
                         "submission; choose one")
    inputs = settings.build({"hostname": args.hostname, "domain": args.domain,
                             "tls-cert": args.tls_cert, "tls-key": args.tls_key,
                             "sasl": args.sasl, "with": args.extras},
                            Path(args.settings) if args.settings else None)
    if args.apply:
        run.writable(config_dir)
    plan, recovered = run.plan(config_dir, roles, inputs)
    print(run.to_json(plan, recovered) if args.format == "json"
          else run.to_text(plan, recovered))
    if args.check:
        return EXIT_FINDINGS if plan.pending else EXIT_OK
    if args.apply and plan.pending:
        saved = run.apply(plan, config_dir)
        checks = ("postfix check and the configuration check" if run.postfix_installed()
                  else "the configuration check (Postfix is not installed here, so postfix "
                       "check did not run)")
        print(f"applied and verified with {checks}; backup in {saved} "
              f"(undo with: postwarden harden -c {config_dir} --rollback)")
    if args.apply and args.reload:
        print(run.reload(config_dir))
    return EXIT_OK
