"""``dkim keygen|sign|verify|explain``: DKIM keys and messages from the command line.

Security: private keys are written 0600 and never printed; messages are read bounded.
Standards: RFC 6376, RFC 8463, RFC 8301.
"""

from __future__ import annotations

import argparse
import sys

from postwarden.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    Parser,
    Subparsers,
)
from postwarden.errors import ConfigError, UsageError


def add(commands: Subparsers) -> None:
    dk = commands.add_parser("dkim", help="DKIM (RFC 6376, RFC 8463) keys, signing, checks")
    actions = dk.add_subparsers(dest="dkim_command", metavar="ACTION", parser_class=Parser,
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
