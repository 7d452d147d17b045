"""``dmarc report``: DMARC aggregate reports from the evaluations the milter recorded.

Security: report destinations come from DNS records anyone can publish; only ``mailto:``
URIs are used, external ones only with the destination's consent in DNS (RFC 9990 section
4), and reports are handed to ``sendmail`` as an argument list with ``--`` before the
recipients, never through a shell. Files are written whole (temp, fsync, rename) under a
name whose parts were checked to be domain names and digits.
Standards: RFC 9990 (format, delivery); RFC 7489 appendix C (``--format rfc7489``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from postwarden.cli.common import EXIT_FINDINGS, EXIT_OK, Parser, Subparsers
from postwarden.errors import PostwardenError, UsageError

if TYPE_CHECKING:
    from postwarden.milter.reports import Evaluation, Report
    from postwarden.policy.model import Resolver

DEFAULT_SENDMAIL = "/usr/sbin/sendmail"
DEFAULT_KEEP_DAYS = 31


def add(commands: Subparsers) -> None:
    dm = commands.add_parser("dmarc", help="DMARC aggregate reports (RFC 9990)")
    actions = dm.add_subparsers(dest="dmarc_command", metavar="ACTION", parser_class=Parser,
                                required=True)
    rep = actions.add_parser(
        "report", help="build aggregate reports from the recorded evaluations",
        description="Build one aggregate report per DMARC policy domain from the "
                    "evaluations the milter recorded in the reporting period (default: "
                    "the previous UTC day), check each against the schema, and write them "
                    "to --out DIR or mail them to the record's rua mailto: addresses "
                    "through the local sendmail. Exit 0 when every report was written or "
                    "sent, 1 when one could not be, 2 for bad input. See "
                    "docs/dmarc-reports.md.")
    rep.add_argument("--config", metavar="FILE",
                     help="settings file for [dmarc] report_org_name/report_email and the "
                          "store ([milter] store, else [store] url); default "
                          "/etc/postwarden/postwarden.toml")
    rep.add_argument("--store", metavar="URL",
                     help="evaluation store: sqlite:///PATH or redis://HOST:PORT/DB")
    rep.add_argument("--since", metavar="T", help="start of the period: seconds since the "
                     "epoch or ISO 8601 (UTC unless given), e.g. 2026-11-29")
    rep.add_argument("--until", metavar="T", help="end of the period (not included)")
    rep.add_argument("--org-name", metavar="N", help="the reporting organization's name")
    rep.add_argument("--email", metavar="E", help="the reporting contact address; also the "
                     "From and envelope sender of report mail")
    rep.add_argument("--format", choices=("rfc9990", "rfc7489"), default="rfc9990",
                     help="report format (default rfc9990; rfc7489 is the older one)")
    where = rep.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="DIR", help="write the .xml.gz files here")
    where.add_argument("--send", action="store_true",
                       help="mail each report to its rua mailto: destinations")
    rep.add_argument("--sendmail", default=DEFAULT_SENDMAIL, metavar="PATH",
                     help=f"the sendmail program (default {DEFAULT_SENDMAIL})")
    rep.add_argument("--nameserver", metavar="HOST[:PORT]",
                     help="DNS server for the external destination check (--send)")
    rep.add_argument("--keep", type=int, default=DEFAULT_KEEP_DAYS, metavar="DAYS",
                     help=f"afterwards delete evaluations older than DAYS days (default "
                          f"{DEFAULT_KEEP_DAYS}; 0 keeps everything)")
    rep.add_argument("--dry-run", action="store_true",
                     help="build and check the reports and say what would happen; write, "
                          "send and delete nothing")
    rep.set_defaults(handler=_report)


def _period(args: argparse.Namespace, now: float) -> tuple[int, int]:
    from postwarden.milter.reports import DAY, parse_time, previous_day

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise UsageError(f"--since/--until: {exc}") from None
    if since is None and until is None:
        return previous_day(now)
    if since is None:
        assert until is not None
        since = until - DAY
    if until is None:
        until = since + DAY
    if until <= since:
        raise UsageError("--until must be after --since")
    return since, until


def _report(args: argparse.Namespace) -> int:
    """``dmarc report``: build, check, then write or send one report per policy domain."""
    import asyncio

    from postwarden import settings as config
    from postwarden.milter import reports

    loaded = config.load(Path(args.config) if args.config else None)
    org_name = args.org_name or loaded.dmarc.report_org_name
    email = args.email or loaded.dmarc.report_email
    if not org_name or not email:
        raise UsageError("give --org-name and --email (or [dmarc] report_org_name and "
                         "report_email in the settings)")
    if args.keep < 0:
        raise UsageError("--keep: must be 0 or more days")
    out = Path(args.out) if args.out else None
    if out is not None and not out.is_dir():
        raise UsageError(f"--out {args.out}: not a directory")
    now = time.time()
    begin, end = _period(args, now)
    url = args.store or loaded.milter.store or loaded.store.url
    resolver = None
    if args.send:
        from postwarden.dns import DnsResolver
        resolver = DnsResolver(nameserver=args.nameserver)
    found = asyncio.run(_evaluations(url, begin, end))
    built = reports.build_reports(found, begin=begin, end=end, org_name=org_name,
                                  email=email, format=args.format, node=_node())
    if not built:
        print(f"no DMARC evaluations with a policy domain from {begin} to {end}")
    done = asyncio.run(_deliver(built, out, resolver, args, now))
    if args.keep and not args.dry_run:
        asyncio.run(_expire(url, now - args.keep * reports.DAY))
    return EXIT_OK if done else EXIT_FINDINGS


async def _deliver(built: list[Report], out: Path | None, resolver: Resolver | None,
                   args: argparse.Namespace, now: float) -> bool:
    """Write or send every report; False when any one could not be."""
    done = True
    for report in built:
        try:
            if out is not None:
                _write(report, out, dry_run=args.dry_run)
            else:
                assert resolver is not None
                done = await _send(report, resolver, args, now) and done
        except PostwardenError as exc:
            print(f"{report.policy_domain}: not done: {exc}")
            done = False
    return done


def _node() -> str:
    import os
    return os.uname().nodename


async def _evaluations(url: str, begin: int, end: int) -> list[Evaluation]:
    from postwarden.milter.reports import open_evaluation_store

    store = await open_evaluation_store(url)
    try:
        return await store.between(begin, end)
    finally:
        await store.close()


async def _expire(url: str, before: float) -> None:
    from postwarden.milter.reports import open_evaluation_store

    store = await open_evaluation_store(url)
    try:
        while await store.expire(before, 1000) >= 1000:
            pass
    finally:
        await store.close()


def _summary(report: Report) -> str:
    return f"{report.messages} message(s), {len(report.rows)} record(s)"


def _write(report: Report, out: Path, *, dry_run: bool) -> None:
    from postwarden.postfix.maincf import write_atomic

    data = report.gzipped()
    path = out / report.filename
    if dry_run:
        print(f"would write {path} ({_summary(report)})")
        return
    try:
        write_atomic(path, data, mode=0o640)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    print(f"wrote {path} ({_summary(report)})")


async def _send(report: Report, resolver: Resolver, args: argparse.Namespace,
                now: float) -> bool:
    """Mail one report to its verified rua destinations; False when it had to be left."""
    import asyncio

    from postwarden.milter import report_mail

    data = report.gzipped()
    domain = report.policy_domain
    wanted = report_mail.mailto_destinations(report.published.rua)
    checked = await report_mail.verify(domain, wanted, resolver)
    for line in checked.ignored:
        print(f"{domain}: ignored {line}")
    if not checked.usable:
        print(f"{domain}: not sent: no usable rua mailto: destination")
        return not checked.temporary
    recipients = [d.address for d in checked.usable]
    mail = report_mail.message(report, data, recipients, now=now)
    if args.dry_run:
        print(f"would send {report.filename} to {', '.join(recipients)} "
              f"({_summary(report)})")
        return not checked.temporary
    await asyncio.to_thread(report_mail.submit, args.sendmail, report.email, recipients, mail)
    print(f"sent {report.filename} to {', '.join(recipients)} ({_summary(report)})")
    return not checked.temporary
