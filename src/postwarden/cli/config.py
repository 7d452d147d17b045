"""``config show``, ``config check`` and ``audit``: reading a configuration as Postfix does.

Security: arguments come from the user; files named by them are read through the parsers,
which bound what they accept.
Standards: postconf(1) flags; the report contract of DESIGN.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from postwarden.cli.common import (
    DEFAULT_CONFIG_DIR,
    EXIT_FINDINGS,
    EXIT_OK,
    Parser,
    Subparsers,
    warn,
)
from postwarden.errors import ConfigError
from postwarden.severity import SEVERITIES

if TYPE_CHECKING:
    from postwarden.postfix.config import PostfixConfig
    from postwarden.postfix.expand import ExpansionError


def add(commands: Subparsers) -> None:
    config = commands.add_parser("config", help="read a Postfix configuration as Postfix does")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION",
                                            parser_class=Parser, required=True)

    show = config_commands.add_parser(
        "show", add_help=False, help="print what postconf prints, with the same flags",
        description="Print what `postconf -c DIR` prints with the same flags.")
    show.add_argument("--help", action="help", help="show this help and exit")
    show.add_argument("-c", dest="config_dir", default=DEFAULT_CONFIG_DIR, metavar="DIR",
                      help=f"Postfix configuration directory (default {DEFAULT_CONFIG_DIR})")
    show.add_argument("-n", dest="nondefault", action="store_true",
                      help="only parameters set in main.cf")
    show.add_argument("-x", dest="expand", action="store_true", help="expand $name")
    show.add_argument("-d", dest="defaults", action="store_true", help="default values")
    show.add_argument("-h", dest="hide_name", action="store_true",
                      help="values only, without 'name ='")
    show.add_argument("-f", dest="fold", action="store_true", help="fold long lines")
    mode = show.add_mutually_exclusive_group()
    mode.add_argument("-M", dest="master", action="store_true", help="master.cf entries")
    mode.add_argument("-P", dest="params", action="store_true",
                      help="master.cf -o parameters (service/type/name = value)")
    show.add_argument("names", nargs="*", metavar="NAME",
                      help="parameter names, or service[/type[/parameter]] with -M and -P")
    show.set_defaults(handler=_config_show)

    chk = config_commands.add_parser(
        "check", help="report what postconf warns about, with file:line and fixes")
    chk.add_argument("-c", dest="config_dir", default=DEFAULT_CONFIG_DIR, metavar="DIR",
                     help=f"Postfix configuration directory (default {DEFAULT_CONFIG_DIR})")
    chk.add_argument("--format", choices=("text", "json"), default="text")
    chk.add_argument("--fail-on", choices=SEVERITIES, default="high",
                     help="exit 1 when a finding is at least this severe (default high)")
    chk.set_defaults(handler=_config_check)

    aud = commands.add_parser(
        "audit", help="check a Postfix configuration against the hardening rule catalogue",
        description="Audit main.cf and master.cf (and the files they name) for security "
                    "problems; each finding has a rule id, file:line, evidence and a fix.")
    aud.add_argument("-c", dest="config_dir", default=DEFAULT_CONFIG_DIR, metavar="DIR",
                     help=f"Postfix configuration directory (default {DEFAULT_CONFIG_DIR})")
    aud.add_argument("--role", default="auto",
                     help="auto (infer, the default) or a comma-separated list of: mx, "
                          "submission, relay, null-client")
    aud.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    aud.add_argument("--fail-on", choices=SEVERITIES, default="high",
                     help="exit 1 when a finding is at least this severe (default high)")
    aud.add_argument("--list-rules", action="store_true",
                     help="list the rule catalogue (with --format json: as JSON)")
    aud.set_defaults(handler=_audit)


def _config_show(args: argparse.Namespace) -> int:
    """``config show``: print what postconf prints with the same flags."""
    from postwarden.postfix import postconf
    from postwarden.postfix.config import PostfixConfig
    from postwarden.postfix.expand import ExpansionError

    config = PostfixConfig.load(args.config_dir)
    for warning in config.warnings:
        if warning.code != "missing-master" or args.master or args.params:
            warn(warning.render())
    try:
        if not args.defaults:
            config.compute_host_defaults()
        if args.master:
            out = postconf.show_master(config, args.names, evaluate=args.expand,
                                       fold=args.fold)
        elif args.params:
            out = postconf.show_master_params(config, args.names, evaluate=args.expand,
                                              hide_name=args.hide_name, fold=args.fold)
        else:
            out = postconf.show_main(config, args.names, nondefault=args.nondefault,
                                     evaluate=args.expand, defaults=args.defaults,
                                     hide_name=args.hide_name, fold=args.fold)
    except ExpansionError as exc:
        raise _locate(config, exc) from None
    for line in out.lines:
        print(line)
    for message in out.warnings:
        warn(message)
    if not args.defaults:
        for unused in config.unused():
            warn(unused.render())
    return EXIT_OK


def _locate(config: PostfixConfig, exc: ExpansionError) -> ConfigError:
    """Name the file and line of the first value that fails to expand like this."""
    from postwarden.postfix.expand import ExpansionError

    for definition in config.main:
        try:
            config.expand(definition.value)
        except ExpansionError as found:
            return ConfigError(config.main.path, definition.lineno,
                               f"{definition.name}: {found}")
    for service in config.services:
        for name, value in service.postconf_params().items():
            try:
                config.expand(value, service=service)
            except ExpansionError as found:
                path = config.master.path if config.master else "master.cf"
                return ConfigError(path, service.lineno, f"{service.key}: {name}: {found}")
    return ConfigError(config.main.path, None, str(exc))


def _config_check(args: argparse.Namespace) -> int:
    """``config check``: postconf's warnings and more, each with file:line and a fix."""
    from postwarden.postfix.check import check
    from postwarden.postfix.config import PostfixConfig

    config = PostfixConfig.load(args.config_dir)
    findings = check(config)
    if args.format == "json":
        print(json.dumps({
            "config_directory": args.config_dir,
            "postfix_defaults": config.table.source,
            "findings": [f.to_json() for f in findings],
        }, indent=2))
    else:
        for f in findings:
            print(f"{f.where()}: {f.severity}: {f.id}: {f.title}")
            print(f"    {f.evidence}")
            print(f"    fix: {f.fix}")
        print(f"{len(findings)} finding(s) in {args.config_dir}")
    threshold = SEVERITIES.index(args.fail_on)
    failing = [f for f in findings if SEVERITIES.index(f.severity) <= threshold]
    return EXIT_FINDINGS if failing else EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    """``audit``: the rule catalogue over the effective configuration, as text, JSON or SARIF."""
    from postwarden.audit import report as render
    from postwarden.audit.engine import audit
    from postwarden.audit.model import Severity
    from postwarden.audit.roles import parse_roles
    from postwarden.postfix.config import PostfixConfig

    if args.list_rules:
        print(render.list_rules(args.format))
        return EXIT_OK
    roles = parse_roles(args.role)
    config = PostfixConfig.load(args.config_dir)
    result = audit(config, roles)
    if args.format == "json":
        print(render.to_json(result))
    elif args.format == "sarif":
        print(render.to_sarif(result))
    else:
        print(render.to_text(result, terminal=sys.stdout.isatty()))
    threshold = Severity(args.fail_on).rank
    return EXIT_FINDINGS if any(f.severity.rank <= threshold for f in result.findings) else (
        EXIT_OK)
