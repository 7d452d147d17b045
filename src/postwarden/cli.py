"""The ``postwarden`` command line: one subcommand, one handler function.

Security: arguments come from the user; files named by them are read through the
parsers, which bound what they accept. No command here runs a shell.
Standards: exit codes of DESIGN.md (0 clean, 1 findings, 2 usage or input error).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence

from postwarden import __version__
from postwarden.errors import ConfigError, PostwardenError, UsageError
from postwarden.postfix import postconf
from postwarden.postfix.check import SEVERITIES, check
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.expand import ExpansionError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
DEFAULT_CONFIG_DIR = "/etc/postfix"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _config_show(args: argparse.Namespace) -> int:
    """``config show``: print what postconf prints with the same flags."""
    config = PostfixConfig.load(args.config_dir)
    for warning in config.warnings:
        if warning.code != "missing-master" or args.master or args.params:
            _warn(warning.render())
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
        _warn(message)
    if not args.defaults:
        for unused in config.unused():
            _warn(unused.render())
    return EXIT_OK


def _locate(config: PostfixConfig, exc: ExpansionError) -> ConfigError:
    """Name the file and line of the first value that fails to expand like this."""
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


def _spf_check(args: argparse.Namespace) -> int:
    """``spf check``: one RFC 7208 check; the result word, then the explanation."""
    import asyncio
    import ipaddress

    from postwarden import dns
    from postwarden.policy.spf import check_identity, clean

    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        raise UsageError(f"--ip {args.ip!r}: not an IP address") from None
    if not 0 < args.timeout <= 300:
        raise UsageError("--timeout: must be more than 0 and at most 300 seconds")
    if not args.helo and not args.sender:
        raise UsageError("--helo: needed when --sender is empty (postmaster@HELO is checked)")
    resolver = dns.DnsResolver(nameserver=args.nameserver, timeout=args.timeout)
    answer = asyncio.run(check_identity(args.ip, args.sender, args.helo, resolver,
                                        budget_seconds=args.timeout))
    print(f"{answer.result.value} {clean(answer.explanation, 1000)}")
    return EXIT_OK


def _warn(message: str) -> None:
    print(f"postwarden: warning: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="postwarden",
        description="Audit, harden, enforce, probe and watch a Postfix mail server.",
    )
    parser.add_argument("--version", action="version", version=f"postwarden {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    config = commands.add_parser("config", help="read a Postfix configuration as Postfix does")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION",
                                            parser_class=_Parser, required=True)

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
    _add_harden(commands)
    _add_probe(commands)
    _add_policyd(commands)
    _add_spf(commands)
    _add_greylist(commands)
    _add_dkim(commands)
    return parser


def _add_harden(commands: argparse._SubParsersAction[_Parser]) -> None:
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


def _add_policyd(commands: argparse._SubParsersAction[_Parser]) -> None:
    pol = commands.add_parser(
        "policyd", help="run the policy service (greylisting, SPF, rate limits)",
        description="Serve Postfix's check_policy_service on the endpoints of "
                    "postwarden.toml; see docs/policyd.md.")
    pol.add_argument("--config", metavar="FILE",
                     help="settings file (default /etc/postwarden/postwarden.toml; when "
                          "that is missing, built-in defaults)")
    pol.add_argument("--check-config", action="store_true",
                     help="validate the settings, print a one-line summary and exit")
    pol.add_argument("--dry-run", action="store_true",
                     help="decide and log as usual, but answer DUNNO to everything")
    pol.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics over HTTP here")
    pol.add_argument("--listen", action="append", metavar="ENDPOINT",
                     help="unix:PATH or tcp:HOST:PORT, replacing [policyd] listen "
                          "(repeatable)")
    pol.set_defaults(handler=_policyd)


def _policyd(args: argparse.Namespace) -> int:
    """``policyd``: load and check the settings, then bind, drop privileges and serve."""
    import logging
    from pathlib import Path

    from postwarden import settings as config
    from postwarden.policy import server

    loaded = config.override(config.load(Path(args.config) if args.config else None),
                             listen=args.listen, dry_run=args.dry_run)
    metrics = server.parse_hostport(args.metrics) if args.metrics else None
    if args.check_config:
        print(loaded.summary())
        return EXIT_OK
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s: %(message)s")
    return server.run(loaded, metrics)


def _add_spf(commands: argparse._SubParsersAction[_Parser]) -> None:
    spf = commands.add_parser("spf", help="SPF (RFC 7208) tools")
    spf_commands = spf.add_subparsers(dest="spf_command", metavar="ACTION",
                                      parser_class=_Parser, required=True)
    chk = spf_commands.add_parser(
        "check", help="evaluate SPF for a client address, sender and HELO name",
        description="Run RFC 7208 check_host() and print the result word (pass, fail, "
                    "softfail, neutral, none, temperror, permerror), then the "
                    "explanation. An empty --sender checks postmaster@HELO. Exit 0 for "
                    "any SPF result.")
    chk.add_argument("--ip", required=True, metavar="ADDR", help="the client's IP address")
    chk.add_argument("--sender", required=True, metavar="ADDR",
                     help='the MAIL FROM address ("" for the null sender)')
    chk.add_argument("--helo", default="", metavar="NAME", help="the HELO/EHLO name")
    chk.add_argument("--nameserver", metavar="HOST[:PORT]",
                     help="ask this DNS server instead of /etc/resolv.conf's")
    chk.add_argument("--timeout", type=float, default=20.0, metavar="S",
                     help="time budget for the whole check in seconds (default 20)")
    chk.set_defaults(handler=_spf_check)


def _add_greylist(commands: argparse._SubParsersAction[_Parser]) -> None:
    grey = commands.add_parser(
        "greylist", help="inspect and edit the policy service's greylist state",
        description="List, delete and whitelist entries in the store of [store] url "
                    "(SQLite or Redis), while the service runs.")
    actions = grey.add_subparsers(dest="greylist_command", metavar="ACTION",
                                  parser_class=_Parser, required=True)
    for name, text in (("list", "print triplets (first/last seen, state) and the "
                                "auto-whitelist"),
                       ("delete", "delete triplets by key, client network or sender"),
                       ("whitelist", "add a client address to the auto-whitelist")):
        sub = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("--config", metavar="FILE",
                         help="settings file (default /etc/postwarden/postwarden.toml)")
        sub.add_argument("--store", metavar="URL", help="store URL instead of [store] url")
        sub.set_defaults(handler=_greylist)
        if name == "list":
            sub.add_argument("--format", choices=("text", "json"), default="text")
        elif name == "delete":
            sub.add_argument("key", nargs="?", metavar="KEY", help="NET/SENDER/RECIPIENT")
            sub.add_argument("--client", metavar="NET",
                             help="a client address or network (its /24 or /64), or an "
                                  "SPF-validated domain")
            sub.add_argument("--sender", metavar="ADDR", help="a sender address")
        else:
            sub.add_argument("client", metavar="CLIENT_IP")


def _greylist(args: argparse.Namespace) -> int:
    """``greylist list|delete|whitelist`` on the service's store."""
    import asyncio
    import ipaddress
    import time
    from pathlib import Path

    from postwarden import settings as config
    from postwarden.policy.greylist import normalize_sender
    from postwarden.policy.store import open_store

    settings = config.load(Path(args.config) if args.config else None)
    loaded = settings.greylist
    now = int(time.time())
    command = args.greylist_command
    client = sender = None
    address = ""
    if command == "delete":
        if args.key is None and args.client is None and args.sender is None:
            raise UsageError("greylist delete: give KEY, --client or --sender")
        if args.client is not None:
            try:
                net = ipaddress.ip_network(args.client, strict=False)
                bits = min(net.prefixlen, 24 if net.version == 4 else 64)
                client = str(net.supernet(new_prefix=bits).network_address)
            except ValueError:
                client = args.client.lower()
        sender = normalize_sender(args.sender).lower() if args.sender is not None else None
    elif command == "whitelist":
        try:
            address = str(ipaddress.ip_address(args.client))
        except ValueError:
            raise UsageError(f"greylist whitelist: not an IP address: {args.client!r}") from None

    async def work() -> int:
        store = open_store(args.store or settings.store.url)
        try:
            if command == "list":
                triplets = await store.list_triplets(now)
                clients = await store.list_awl(now)
                _greylist_print(triplets, clients, loaded.delay, args.format)
                return EXIT_OK
            if command == "delete":
                gone = await store.delete_triplets(key=args.key, client=client,
                                                   sender=sender)
                print(f"deleted {gone} triplet{'s' if gone != 1 else ''}")
                return EXIT_OK if gone else EXIT_FINDINGS
            count = await store.awl_set(address, now, max(1, loaded.auto_whitelist_clients),
                                        loaded.max_age)
            print(f"whitelisted {address} (count {count})")
            return EXIT_OK
        finally:
            await store.close()
    return asyncio.run(work())


def _greylist_print(triplets: Sequence[object], clients: Sequence[object], delay: int,
                    fmt: str) -> None:
    import time

    from postwarden.policy.store import AwlEntry, TripletEntry

    def when(seconds: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    rows = [{"key": t.key, "client": t.client, "sender": t.sender, "recipient": t.recipient,
             "first_seen": when(t.first), "last_seen": when(t.last),
             "state": "passed" if t.passed(delay) else "pending"}
            for t in triplets if isinstance(t, TripletEntry)]
    awl = [{"client": a.client, "count": a.count, "last_seen": when(a.last)}
           for a in clients if isinstance(a, AwlEntry)]
    if fmt == "json":
        print(json.dumps({"triplets": rows, "auto_whitelist": awl}, indent=2))
        return
    for row in rows:
        print(f"{row['state']:<8} {row['first_seen']} {row['last_seen']} {row['key']}")
    for entry in awl:
        print(f"awl      {entry['last_seen']} count={entry['count']} {entry['client']}")
    print(f"{len(rows)} triplets, {len(awl)} auto-whitelisted clients")


def _add_dkim(commands: argparse._SubParsersAction[_Parser]) -> None:
    dk = commands.add_parser("dkim", help="DKIM (RFC 6376, RFC 8463) keys, signing, checks")
    actions = dk.add_subparsers(dest="dkim_command", metavar="ACTION", parser_class=_Parser,
                                required=True)
    gen = actions.add_parser(
        "keygen", help="make a DKIM key pair and its DNS TXT record",
        description="Write DIR/SELECTOR.private (PKCS#8 PEM, mode 0600) and DIR/SELECTOR.txt "
                    "(the zone file line), and print the zone line to publish.")
    gen.add_argument("--domain", required=True, metavar="D", help="the signing domain (d=)")
    gen.add_argument("--selector", required=True, metavar="S", help="the selector (s=)")
    gen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa",
                     help="key type (default rsa)")
    gen.add_argument("--bits", type=int, default=2048, metavar="N",
                     help="RSA key size, 2048 to 8192 (default 2048)")
    gen.add_argument("--out", required=True, metavar="DIR", help="directory for the files")
    gen.set_defaults(handler=_dkim_keygen)
    sig = actions.add_parser(
        "sign", help="sign a message and print it with its DKIM-Signature",
        description="Sign MESSAGE (or standard input) with relaxed/relaxed canonicalization, "
                    "oversigning From, To, Subject, Date and the other headers that matter.")
    sig.add_argument("--domain", required=True, metavar="D", help="the signing domain (d=)")
    sig.add_argument("--selector", required=True, metavar="S", help="the selector (s=)")
    sig.add_argument("--key", required=True, metavar="FILE", help="PEM private key")
    sig.add_argument("message", nargs="?", default="-", metavar="MESSAGE",
                     help="message file, or - for standard input (the default)")
    sig.set_defaults(handler=_dkim_sign)
    ver = actions.add_parser(
        "verify", help="verify every DKIM-Signature on a message",
        description="Print one line per signature: the result (pass, fail, neutral, "
                    "temperror, permerror), d=, s= and the reason. Exit 0 when every "
                    "signature passes, 1 otherwise (also when there is none).")
    ver.add_argument("message", nargs="?", default="-", metavar="MESSAGE",
                     help="message file, or - for standard input (the default)")
    ver.add_argument("--nameserver", metavar="HOST[:PORT]",
                     help="ask this DNS server instead of /etc/resolv.conf's")
    ver.add_argument("--timeout", type=float, default=10.0, metavar="S",
                     help="time budget for all key queries in seconds (default 10)")
    ver.set_defaults(handler=_dkim_verify)
    exp = actions.add_parser(
        "explain", help="say why a message would or would not be signed",
        description="Apply the [dkim] section of --config to MESSAGE (or standard input) "
                    "as the milter would, given the milter macros and client address, and "
                    "print 'sign' or 'not signed', then the reasons, one per line. Exit 0 "
                    "either way.")
    exp.add_argument("message", nargs="?", default="-", metavar="MESSAGE",
                     help="message file, or - for standard input (the default)")
    exp.add_argument("--config", default="/etc/postwarden/postwarden.toml", metavar="FILE",
                     help="postwarden.toml to read [dkim] from "
                          "(default /etc/postwarden/postwarden.toml)")
    exp.add_argument("--macro", action="append", default=[], metavar="NAME=VALUE",
                     help="a milter macro, e.g. '{auth_authen}=alice' or "
                          "daemon_name=ORIGINATING (repeatable)")
    exp.add_argument("--client", metavar="ADDR", help="the SMTP client's IP address")
    exp.set_defaults(handler=_dkim_explain)


def _dkim_read(name: str) -> bytes:
    """A message from a file or standard input, at most 64 MiB."""
    limit = 64 * 1024 * 1024
    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(name, "rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{name}: {exc.strerror}") from None
    if len(data) > limit:
        raise UsageError(f"{name}: message larger than 64 MiB")
    return data


def _dkim_keygen(args: argparse.Namespace) -> int:
    """``dkim keygen``: a key pair, the private half 0600, the TXT record printed."""
    from pathlib import Path

    from postwarden.milter import dkim, keys

    for label, value in (("--domain", args.domain), ("--selector", args.selector)):
        if not dkim.is_domain_name(value):
            raise UsageError(f"{label} {value!r}: not a domain name")
    out = Path(args.out)
    if not out.is_dir():
        raise UsageError(f"--out {args.out}: not a directory")
    private = out / f"{args.selector}.private"
    if private.exists():
        raise UsageError(f"{private}: exists; move it away first")
    key = keys.generate(args.type, args.bits)
    line = keys.zone_line(args.domain, args.selector, keys.dns_record(key.public_key()))
    keys.write_private(private, key)
    (out / f"{args.selector}.txt").write_text(line + "\n", encoding="ascii")
    print(line)
    return EXIT_OK


def _dkim_sign(args: argparse.Namespace) -> int:
    """``dkim sign``: the message with a DKIM-Signature prepended, on standard output."""
    from pathlib import Path

    from postwarden.milter import dkim, keys

    key = keys.load_private(Path(args.key))
    message = _dkim_read(args.message)
    header = dkim.sign(message, domain=args.domain, selector=args.selector, key=key)
    sys.stdout.flush()
    sys.stdout.buffer.write(header + message)
    sys.stdout.buffer.flush()
    return EXIT_OK


def _dkim_verify(args: argparse.Namespace) -> int:
    """``dkim verify``: one line per signature; 0 when all pass."""
    import asyncio

    from postwarden import dns
    from postwarden.errors import clip
    from postwarden.milter import dkim

    if not 0 < args.timeout <= 300:
        raise UsageError("--timeout: must be more than 0 and at most 300 seconds")
    message = _dkim_read(args.message)
    resolver = dns.DnsResolver(nameserver=args.nameserver, timeout=args.timeout)
    results = asyncio.run(dkim.verify(message, resolver, budget=args.timeout))
    if not results:
        print("none no DKIM-Signature header field")
        return EXIT_FINDINGS
    for r in results:
        print(f"{r.result.value} d={clip(r.domain, 253)} s={clip(r.selector, 253)} "
              f"{r.reason}")
    passed = all(r.result is dkim.DkimResult.PASS for r in results)
    return EXIT_OK if passed else EXIT_FINDINGS


def _dkim_explain(args: argparse.Namespace) -> int:
    """``dkim explain``: the signing decision for one message, with its reasons."""
    import tomllib
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    from postwarden.milter import signing

    macros: dict[str, str] = {}
    for item in args.macro:
        name, eq, value = item.partition("=")
        name = name.strip().strip("{}")
        if not eq or not name:
            raise UsageError(f"--macro {item!r}: expected NAME=VALUE")
        macros["{" + name + "}" if len(name) > 1 else name] = value
    try:
        with open(args.config, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(args.config, None, exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(args.config, None, f"not valid TOML: {exc}") from None
    settings = signing.SigningSettings.from_toml(data.get("dkim", {}), args.config)
    headers = BytesHeaderParser(policy=compat32).parsebytes(_dkim_read(args.message))
    fields = [str(v) for v in headers.get_all("From", [])]
    domain, found = signing.from_domain(fields)
    decision = signing.decide(settings, from_header_domain=domain, macros=macros,
                              client_address=args.client)
    print("sign" if decision.sign else "not signed")
    for line in (found, *decision.reasons):
        print(line)
    return EXIT_OK


def _add_probe(commands: argparse._SubParsersAction[_Parser]) -> None:
    pro = commands.add_parser(
        "probe", help="test a live server's behaviour over SMTP, from outside",
        description="Talk SMTP to a server as an outside client would and report what it "
                    "accepts that it should refuse; see docs/probe.md.")
    pro.add_argument("target", nargs="?", metavar="HOST[:PORT]",
                     help="the server (default 127.0.0.1:25)")
    pro.add_argument("--source", metavar="ADDR", help="local address to probe from")
    pro.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                     help="for each reply (default 10)")
    pro.add_argument("--format", choices=("text", "json"), default="text")
    pro.add_argument("--fail-on", choices=SEVERITIES, default="high",
                     help="exit 1 when a failed check is at least this severe (default high)")
    pro.add_argument("--only", action="append", metavar="ID", help="run only this check")
    pro.add_argument("--skip", action="append", metavar="ID", help="do not run this check")
    pro.add_argument("--submission", action=argparse.BooleanOptionalAction, default=None,
                     help="judge the port as a submission port (stricter TLS and AUTH); "
                          "default: by number, 587 and 465 are")
    pro.add_argument("--submission-port", type=int, action="append", default=[],
                     metavar="PORT", help="the server's submission port (STARTTLS) for the "
                                          "relay test (default with port 25: 587)")
    pro.add_argument("--submissions-port", type=int, action="append", default=[],
                     metavar="PORT", help="the server's implicit-TLS submission port for "
                                          "the relay test (default with port 25: 465)")
    pro.add_argument("--list", action="store_true", help="list the checks and exit")
    pro.set_defaults(handler=_probe)


def _probe(args: argparse.Namespace) -> int:
    """``probe``: the behavioural checks against a live server."""
    import asyncio

    from postwarden.audit.model import Severity
    from postwarden.probe import report, runner
    from postwarden.probe.model import Verdict

    if args.list:
        for c in runner.select(None, None):
            print(f"{c.id:24} {c.severity.value:8} {c.title}")
        return EXIT_OK
    host, port = runner.parse_target(args.target)
    if not 0 < args.timeout <= 300:
        raise UsageError("probe: --timeout must be more than 0 and at most 300 seconds")
    also = ([(p, "submission") for p in args.submission_port]
            + [(p, "submissions") for p in args.submissions_port]) or None
    result = asyncio.run(runner.run(host, port, source=args.source, timeout=args.timeout,
                                    only=args.only, skip=args.skip,
                                    submission=args.submission, also=also))
    print(report.to_json(result) if args.format == "json" else report.to_text(result))
    threshold = Severity(args.fail_on).rank
    failed = [r for r in result.results
              if r.verdict is Verdict.FAIL and r.severity.rank <= threshold]
    return EXIT_FINDINGS if failed else EXIT_OK


def _tolerate_any_bytes() -> None:
    """Print bytes read from files as they were, even when they are not UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerate_any_bytes()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return int(args.handler(args))
    except PostwardenError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
