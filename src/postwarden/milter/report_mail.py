"""Where DMARC aggregate reports go: the rua destinations, their consent, the mail, sendmail.

Security: report destinations come from DNS records anyone can publish: only ``mailto:``
URIs with a plain address are used, at most ``MAX_DESTINATIONS`` per report, and a
destination outside the policy domain's organization needs the receiving side's consent in
DNS (RFC 9990 section 4) before it gets anything. Reports are submitted with
``sendmail -i -f FROM -- RCPT...`` as an argument list, never through a shell; the ``--``
keeps an address from being read as an option.
Standards: RFC 9990 sections 3.3 (the mail) and 4 (external destination verification);
RFC 7489 6.4 (the ``!size`` suffix); RFC 6713 (application/gzip).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from urllib.parse import unquote

from postwarden.errors import clip
from postwarden.milter.reports import Report, ReportError, a_label
from postwarden.policy.model import Resolver

MAX_DESTINATIONS = 5      # rua URIs used per report
SENDMAIL_TIMEOUT = 120.0
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~][A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{0,63}\Z")


# -- destinations ------------------------------------------------------------------------

@dataclass(frozen=True)
class Destination:
    """A ``mailto:`` report destination."""

    address: str
    host: str                   # the address's domain (A-labels, lower-case)


@dataclass(frozen=True)
class Destinations:
    """Where a report may go, and why other URIs were left out."""

    usable: tuple[Destination, ...]
    ignored: tuple[str, ...]    # one line each
    temporary: bool = False     # a DNS failure: try again later


def mailto_destinations(rua: Iterable[str]) -> Destinations:
    """The ``mailto:`` URIs of a record's rua list, in order, at most ``MAX_DESTINATIONS``."""
    usable: list[Destination] = []
    ignored: list[str] = []
    for uri in (part.strip() for part in rua):
        if not uri:
            continue
        uri = uri.partition("!")[0]   # RFC 7489 6.4: a "!size" limit; unused here
        scheme, colon, rest = uri.partition(":")
        if not colon or scheme.lower() != "mailto":
            ignored.append(f"{clip(uri)}: not a mailto: URI")
            continue
        destination = _mailbox(unquote(rest.partition("?")[0]))
        if destination is None:
            ignored.append(f"{clip(uri)}: not a plain address")
        elif len(usable) >= MAX_DESTINATIONS:
            ignored.append(f"{clip(uri)}: more than {MAX_DESTINATIONS} destinations")
        elif destination not in usable:
            usable.append(destination)
    return Destinations(tuple(usable), tuple(ignored))


def _mailbox(address: str) -> Destination | None:
    local, at, domain = address.strip().rpartition("@")
    host = a_label(domain) if at else None
    if host is None or not _LOCAL.match(local) or ".." in local:
        return None
    return Destination(f"{local}@{host}", host)


def organizational_domain(name: str) -> str:
    """The registrable domain of ``name`` by the Public Suffix List (itself if none).

    XXX: RFC 9990 section 4 compares RFC 9989 organizational domains, which the tree walk
    finds with DNS queries; the PSL answer is the same for ordinary registered domains and
    costs no queries. A difference only means one more (harmless) consent lookup, or one
    fewer for two domains the PSL calls one organization.
    """
    from postwarden.milter.dmarc import psl

    found = psl().privatesuffix(name.lower())
    return found if isinstance(found, str) else name.lower()


async def verify(policy_domain: str, destinations: Destinations,
                 resolver: Resolver) -> Destinations:
    """RFC 9990 section 4: keep destinations inside the policy domain's organization, and
    outside ones whose host publishes ``<policy-domain>._report._dmarc.<host>``."""
    usable: list[Destination] = []
    ignored = list(destinations.ignored)
    temporary = False
    own = organizational_domain(policy_domain)
    for destination in destinations.usable:
        if organizational_domain(destination.host) == own:
            usable.append(destination)
            continue
        allowed, why, again = await _consent(policy_domain, destination, resolver)
        usable.extend(d for d in allowed if d not in usable)
        temporary = temporary or again
        if why:
            ignored.append(f"{destination.address}: {why}")
    return Destinations(tuple(usable[:MAX_DESTINATIONS]), tuple(ignored), temporary)


async def _consent(policy_domain: str, destination: Destination,
                   resolver: Resolver) -> tuple[tuple[Destination, ...], str, bool]:
    name = f"{policy_domain}._report._dmarc.{destination.host}"
    if len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        return (), f"{name}: longer than DNS allows, consent cannot be checked", False
    answer = await resolver.query(name, "TXT")
    if answer.rcode not in ("NOERROR", "NXDOMAIN"):
        return (), f"{name}: DNS {answer.rcode}; try again later", True
    from postwarden.milter.dmarc import parse_record

    records = [r for r in map(parse_record, answer.records) if r is not None]
    if not records:
        return (), f"no v=DMARC1 record at {name}: the destination has not agreed", False
    override = next((r.rua for r in records if r.rua), ())
    if not override:
        return (destination,), "", False
    replaced = mailto_destinations(override).usable
    if not replaced or any(d.host != destination.host for d in replaced):
        # RFC 9990 section 4: an override to another host cancels both.
        return (), f"{name}: its rua names another host; no report goes to either", False
    return replaced, "", False


# -- mail --------------------------------------------------------------------------------

def message(report: Report, attachment: bytes, recipients: Sequence[str], *,
            now: float) -> bytes:
    """The report mail (RFC 9990 3.3): From the report email, the RFC's Subject, the
    gzipped report attached as application/gzip under its file name."""
    mail = EmailMessage()
    mail["From"] = formataddr((report.org_name, report.email))
    mail["To"] = ", ".join(recipients)
    mail["Subject"] = report.subject
    mail["Date"] = formatdate(now, usegmt=True)
    mail["Message-ID"] = f"<{report.report_id}@{report.receiver}>"
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(
        f"DMARC aggregate report for {report.policy_domain} from {report.receiver}.\n"
        f"Period: {_utc(report.begin)} to {_utc(report.end)} (UTC).\n"
        f"Messages: {report.messages}; records: {len(report.rows)}.\n"
        f"Report-ID: {report.report_id}\n")
    mail.add_attachment(attachment, maintype="application", subtype="gzip",
                        filename=report.filename)
    return mail.as_bytes()


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def submit(sendmail: str, sender: str, recipients: Sequence[str], mail: bytes, *,
           timeout: float = SENDMAIL_TIMEOUT) -> None:
    """Hand one message to the local MTA: ``sendmail -i -f SENDER -- RECIPIENT...``."""
    for address in (sender, *recipients):
        if _mailbox(address) is None:
            raise ReportError(f"{clip(address)!r}: not a plain address")
    argv = [sendmail, "-i", "-f", sender, "--", *recipients]
    try:
        done = subprocess.run(argv, input=mail, capture_output=True, timeout=timeout,
                              check=False)
    except OSError as exc:
        raise ReportError(f"{sendmail}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise ReportError(f"{sendmail}: no answer in {timeout:g} s") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ReportError(f"{sendmail} exited with status {done.returncode}"
                          + (f": {clip(said[-1], 200)}" if said else ""))
