"""DMARC aggregate reports: recorded evaluations in, one checked XML report per policy domain out.

Security: evaluations hold what remote senders chose (From, MAIL FROM and DKIM d=/s=
domains), so every string is cut to a bounded length when recorded and stripped of
characters XML cannot carry when written; a policy domain becomes part of a file name only
after it passed a strict domain-name check (no "/", no ".."). Where reports go, and how
they are mailed, is report_mail.py.
Standards: RFC 9990 (format, namespace ``urn:ietf:params:xml:ns:dmarc-2.0``, Report-ID,
file name, Subject, external destination verification); RFC 7489 appendix C and section
7.2.1.1 (the older format, on request); RFC 8601 2.7.1/2.7.2 (result words); RFC 6713
(application/gzip); RFC 1952 (gzip).

Theory of operation
-------------------
1. The milter records one ``Evaluation`` per message (``Evaluation.from_result``) in an
   ``EvaluationStore`` (report_store.py). Only domains are kept, never full addresses.
2. ``build_reports`` takes the evaluations of one reporting period (by default the previous
   UTC day, ``[begin, end)``) and groups them by policy domain: one report each (RFC 9990
   3.1: one policy domain and one policy configuration per report; the record of the last
   evaluation in the period is the one published).
3. Within a report, identical rows are counted: a row is the source address, the
   disposition, the aligned DKIM and SPF verdicts with any override reasons, the
   identifiers and the uninterpreted DKIM and SPF results.
4. ``Report.xml`` writes the format asked for and ``validate`` checks it against the
   schema shipped in ``schemas/`` (written for postwarden from the RFCs' element tables);
   a report that does not validate is never written or sent.
5. The Report-ID is a digest of the receiver, the policy domain, the period, the format and
   this host's name: the same report built twice has the same ID and file name (RFC 9990
   3.3: a re-sent report keeps its name), while two hosts with stores of their own do not
   collide. It is letters and digits only, so it also serves as the file name's unique-id.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import ipaddress
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Protocol

from lxml import etree

from postwarden import __version__
from postwarden.errors import PostwardenError, clip

log = logging.getLogger(__name__)

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"
RFC9990 = "rfc9990"
RFC7489 = "rfc7489"
FORMATS = (RFC9990, RFC7489)
SCHEMAS = {RFC9990: "dmarc-2.0.xsd", RFC7489: "rfc7489.xsd"}
DAY = 86400
MAX_SIGNATURES = 100      # RFC 9990 3.1.2: at most 100 DKIM signatures per row
MAX_TEXT = 255            # longest domain or selector kept
POLICIES = ("none", "quarantine", "reject")
DISCOVERY = ("treewalk", "psl")
RESULTS = ("pass", "fail", "none", "temperror", "permerror")
DKIM_RESULTS = frozenset({"none", "pass", "fail", "policy", "neutral", "temperror",
                          "permerror"})
SPF_RESULTS = frozenset({"none", "neutral", "pass", "fail", "softfail", "policy",
                         "temperror", "permerror"})

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~][A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{0,63}\Z")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class ReportError(PostwardenError):
    """A report cannot be built, checked or submitted."""


# -- what the milter records ------------------------------------------------------------

class _Outcome(Protocol):
    """What ``from_result`` reads of ``milter.dmarc.AuthOutcome``."""

    @property
    def domain(self) -> str: ...
    @property
    def result(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def scope(self) -> str: ...


class _Record(Protocol):
    @property
    def raw(self) -> str: ...


class _Result(Protocol):
    """What ``from_result`` reads of ``milter.dmarc.DmarcResult``."""

    @property
    def result(self) -> str: ...
    @property
    def from_domain(self) -> str: ...
    @property
    def policy_domain(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def disposition(self) -> str: ...
    @property
    def spf_aligned(self) -> bool: ...
    @property
    def dkim_aligned(self) -> bool: ...
    @property
    def record(self) -> _Record | None: ...
    @property
    def discovery(self) -> str: ...
    @property
    def testing(self) -> bool: ...


@dataclass(frozen=True)
class Evaluation:
    """One recorded DMARC evaluation (one message). Domains only, never addresses."""

    time: float
    source_ip: str
    header_from: str
    envelope_from: str      # "" for the null reverse-path
    envelope_to: str
    policy_domain: str      # "" when no DMARC record applied
    record: str             # the raw DMARC record text, "" if none
    disposition: str        # what was applied: none | quarantine | reject
    dkim_aligned: bool      # an aligned DKIM pass
    spf_aligned: bool       # an aligned SPF pass
    dkim: tuple[tuple[str, str, str], ...] = ()   # (domain, selector, result) per signature
    spf: tuple[str, str, str] | None = None        # (domain, scope, result)
    policy: str = ""        # the p / sp / np value that applied
    requested: str = ""     # what that policy asked for, after t=y and pct
    discovery: str = ""     # how the record was found: treewalk | psl
    testing: bool = False   # the record's t=y made the requested disposition milder
    result: str = ""        # the DMARC result: pass | fail | none | temperror | permerror

    @classmethod
    def from_result(cls, result: _Result, *, time: float, source_ip: str,
                    envelope_from: str, envelope_to: str, applied: str,
                    spf: _Outcome | None, dkim: Sequence[_Outcome]) -> Evaluation:
        return cls(
            time=float(time), source_ip=_address_text(source_ip),
            header_from=domain_of(result.from_domain),
            envelope_from=domain_of(envelope_from), envelope_to=domain_of(envelope_to),
            policy_domain=domain_of(result.policy_domain),
            record=result.record.raw[:2048] if result.record is not None else "",
            disposition=applied if applied in POLICIES else "none",
            dkim_aligned=bool(result.dkim_aligned), spf_aligned=bool(result.spf_aligned),
            dkim=tuple((domain_of(s.domain), s.selector.strip()[:MAX_TEXT], s.result.lower())
                       for s in dkim[:MAX_SIGNATURES]),
            spf=None if spf is None else (domain_of(spf.domain), spf.scope or "mfrom",
                                          spf.result.lower()),
            policy=result.policy if result.policy in POLICIES else "",
            requested=result.disposition if result.disposition in POLICIES else "",
            discovery=result.discovery if result.discovery in DISCOVERY else "",
            testing=bool(result.testing),
            result=result.result if result.result in RESULTS else "")

    def to_json(self) -> str:
        return json.dumps([self.time, self.source_ip, self.header_from, self.envelope_from,
                           self.envelope_to, self.policy_domain, self.record,
                           self.disposition, self.dkim_aligned, self.spf_aligned,
                           [list(s) for s in self.dkim],
                           list(self.spf) if self.spf else None, self.policy,
                           self.requested, self.discovery, self.testing, self.result],
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Evaluation:
        """The evaluation ``to_json`` wrote; ValueError for anything else."""
        try:
            (time, ip, header_from, envelope_from, envelope_to, policy_domain, record,
             disposition, dkim_aligned, spf_aligned, dkim, spf, policy, requested,
             discovery, testing, result) = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a recorded evaluation: {exc}") from None
        strings = (ip, header_from, envelope_from, envelope_to, policy_domain, record,
                   disposition, policy, requested, discovery, result)
        flags = (dkim_aligned, spf_aligned, testing)
        if (not isinstance(time, int | float) or not all(isinstance(s, str) for s in strings)
                or not all(isinstance(flag, bool) for flag in flags)):
            raise ValueError("not a recorded evaluation: bad field types")
        return cls(float(time), ip, header_from, envelope_from, envelope_to, policy_domain,
                   record, disposition, dkim_aligned, spf_aligned,
                   tuple(_triple(s) for s in _list(dkim)),
                   None if spf is None else _triple(spf), policy, requested, discovery,
                   testing, result)


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError("not a recorded evaluation: bad result list")
    return value


def _triple(value: object) -> tuple[str, str, str]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, str) for v in value)):
        raise ValueError("not a recorded evaluation: bad result")
    return value[0], value[1], value[2]


def domain_of(text: str) -> str:
    """The domain of an address or domain, lower-case, without brackets or a final dot."""
    domain = text.strip().strip("<>").rpartition("@")[2].rstrip(".").lower()
    return domain[:MAX_TEXT]


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _address_text(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip().removeprefix("IPv6:")))
    except ValueError:
        return clip(text, 45)


class EvaluationStore(Protocol):
    """Where evaluations are recorded (report_store.py has the SQLite and Redis ones)."""

    async def add(self, evaluation: Evaluation) -> None:
        ...

    async def between(self, start: float, end: float) -> list[Evaluation]:
        """The evaluations with ``start <= time < end``, oldest first."""
        ...

    async def expire(self, before: float, batch: int = 1000) -> int:
        """Delete at most ``batch`` evaluations older than ``before``; how many went."""
        ...

    async def close(self) -> None:
        ...


async def open_evaluation_store(url: str) -> EvaluationStore:
    """``sqlite:///abs/path.db`` or ``redis://host:port/db``: see report_store.py."""
    from postwarden.milter import report_store
    return await report_store.open_evaluation_store(url)


# -- tag lists and published policy ------------------------------------------------------

@dataclass(frozen=True)
class Published:
    """The policy_published of a report: the record's values, defaults filled in."""

    domain: str
    p: str
    sp: str
    np: str
    adkim: str
    aspf: str
    fo: str
    testing: str
    pct: int
    rua: tuple[str, ...] = ()
    discovery: str = ""
    problems: tuple[str, ...] = ()    # what was wrong with the record (report "error")

    @classmethod
    def of(cls, domain: str, text: str, discovery: str = "") -> Published:
        """From the raw record text, read as the milter reads it (``dmarc.parse_record``)."""
        from postwarden.milter.dmarc import parse_record

        record = parse_record(text)
        if record is None:
            return cls(domain, "none", "none", "none", "r", "r", "0", "n", 100,
                       problems=("no DMARC record",))
        sp = record.sp or record.p
        return cls(domain=domain, p=record.p, sp=sp, np=record.np or sp,
                   adkim=record.adkim, aspf=record.aspf, fo=record.fo,
                   testing="y" if record.t else "n",
                   pct=100 if record.pct is None else record.pct, rua=record.rua,
                   discovery=discovery if discovery in DISCOVERY else "",
                   problems=record.problems)


# -- reports ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """What one counted record of a report says (everything but the count)."""

    source_ip: str
    disposition: str
    dkim: str                       # aligned DKIM: pass | fail
    spf: str                        # aligned SPF: pass | fail
    reasons: tuple[tuple[str, str], ...]   # (type, comment) policy override reasons
    header_from: str
    envelope_from: str
    envelope_to: str
    dkim_results: tuple[tuple[str, str, str], ...]
    spf_result: tuple[str, str, str] | None


@dataclass(frozen=True)
class Report:
    """One aggregate report: one policy domain, one period, one format."""

    format: str
    org_name: str
    email: str
    receiver: str               # the reporting domain (of ``email``)
    report_id: str
    begin: int
    end: int                    # the last second of the period (inclusive)
    published: Published
    rows: tuple[tuple[Row, int], ...]

    @property
    def policy_domain(self) -> str:
        return self.published.domain

    @property
    def messages(self) -> int:
        return sum(count for _, count in self.rows)

    @property
    def filename(self) -> str:
        """RFC 9990 3.3 / RFC 7489 7.2.1.1: receiver!policy-domain!begin!end!unique-id."""
        return (f"{self.receiver}!{self.policy_domain}!{self.begin}!{self.end}!"
                f"{self.report_id}.xml.gz")

    @property
    def subject(self) -> str:
        return (f"Report Domain: {self.policy_domain} Submitter: {self.receiver} "
                f"Report-ID: <{self.report_id}>")

    def xml(self) -> bytes:
        return _render(self)

    def gzipped(self) -> bytes:
        """The XML, checked against its schema, gzipped reproducibly (no time, no name)."""
        data = self.xml()
        validate(data, self.format)
        return gzip.compress(data, compresslevel=9, mtime=0)


def previous_day(now: float) -> tuple[int, int]:
    """The previous UTC day as ``[begin, end)``."""
    today = int(now) // DAY * DAY
    return today - DAY, today


def parse_time(text: str) -> int:
    """Seconds since the epoch, or an ISO 8601 date or time (UTC unless it says otherwise)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{clip(text)!r}: not a time (want seconds since the epoch or "
                         "ISO 8601, e.g. 2026-11-29 or 2026-11-29T06:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def build_reports(evaluations: Iterable[Evaluation], *, begin: int, end: int,
                  org_name: str, email: str, format: str = RFC9990,
                  node: str = "") -> list[Report]:
    """One report per policy domain for the evaluations in ``[begin, end)``, by domain.

    Evaluations without a policy domain, or whose policy domain is not a valid domain name,
    are left out (the latter with a warning).
    """
    if format not in FORMATS:
        raise ReportError(f"unknown report format {format!r} (use {' or '.join(FORMATS)})")
    if end <= begin:
        raise ReportError("the reporting period is empty: --until must be after --since")
    receiver = _receiver(email)
    groups: dict[str, list[Evaluation]] = {}
    no_address = 0
    for evaluation in evaluations:
        if not (begin <= evaluation.time < end and evaluation.policy_domain):
            continue
        if not _is_address(evaluation.source_ip):
            no_address += 1   # local submission: no SMTP client to report
            continue
        groups.setdefault(evaluation.policy_domain.lower(), []).append(evaluation)
    if no_address:
        log.warning("dmarc report: %d evaluation(s) without a client IP address left out",
                    no_address)
    reports = []
    for domain, group in sorted(groups.items()):
        name = a_label(domain)
        if name is None:
            log.warning("dmarc report: policy_domain=%s skipped: not a domain name",
                        clip(domain))
            continue
        latest = max(group, key=lambda e: e.time)
        published = Published.of(name, latest.record, latest.discovery)
        counted = Counter(_row(e, format, published) for e in group)
        rows = tuple(sorted(counted.items(), key=lambda item: (item[0].source_ip,
                                                               repr(item[0]))))
        key = "!".join((receiver, name, str(begin), str(end - 1), format, node))
        report_id = hashlib.sha256(key.encode()).hexdigest()[:32]
        reports.append(Report(format, org_name, email, receiver, report_id, begin, end - 1,
                              published, rows))
    return reports


def _receiver(email: str) -> str:
    local, at, domain = email.rpartition("@")
    receiver = a_label(domain) if at and _LOCAL.match(local) else None
    if receiver is None:
        raise ReportError(f"report email {clip(email)!r}: not a plain address "
                          "(local@domain)")
    return receiver


def a_label(domain: str) -> str | None:
    """The domain as lower-case A-labels, or None when it is not a valid domain name."""
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return name if len(name) <= 253 and _DOMAIN.match(name) else None


def _row(evaluation: Evaluation, format: str, published: Published) -> Row:
    passed = evaluation.dkim_aligned or evaluation.spf_aligned
    policy = evaluation.policy or published.p
    if passed:
        # RFC 9990: "pass" is a DMARC pass under a policy that would have acted.
        enforcing = format == RFC9990 and policy != "none"
        disposition = "pass" if enforcing else "none"
    else:
        disposition = evaluation.disposition if evaluation.disposition in POLICIES else "none"
    return Row(
        source_ip=evaluation.source_ip, disposition=disposition,
        dkim="pass" if evaluation.dkim_aligned else "fail",
        spf="pass" if evaluation.spf_aligned else "fail",
        reasons=() if passed else _reasons(evaluation, format, published, policy),
        header_from=evaluation.header_from, envelope_from=evaluation.envelope_from,
        envelope_to=evaluation.envelope_to,
        dkim_results=_signatures(evaluation),
        spf_result=_spf(evaluation, format))


def _reasons(evaluation: Evaluation, format: str, published: Published,
             policy: str) -> tuple[tuple[str, str], ...]:
    """Why a failing message did not get what the published policy says (RFC 9990 3.1.1.7)."""
    requested = evaluation.requested or policy
    applied = evaluation.disposition
    reasons: list[tuple[str, str]] = []
    if requested != policy:
        if evaluation.result in ("temperror", "permerror"):
            reasons.append(("other", f"DMARC {evaluation.result}: the policy was not applied"))
        elif evaluation.testing or published.testing == "y":
            reasons.append(("policy_test_mode", "") if format == RFC9990
                           else ("other", "the record asks for testing (t=y)"))
        elif published.pct < 100:
            reasons.append(("sampled_out", "") if format == RFC7489
                           else ("other", f"sampled out by pct={published.pct}"))
        else:
            reasons.append(("other", f"{requested} was asked for instead of {policy}"))
    if applied != requested:
        reasons.append(("local_policy", f"the receiver applied {applied} "
                                        f"instead of {requested}"))
    return tuple(reasons)


def _signatures(evaluation: Evaluation) -> tuple[tuple[str, str, str], ...]:
    """RFC 9990 3.1.2's order: aligned passes (strict, then relaxed), other passes, the rest."""
    header_from = evaluation.header_from

    def rank(item: tuple[int, tuple[str, str, str]]) -> tuple[int, int, int, int]:
        index, (domain, _, result) = item
        related = header_from.endswith("." + domain) or domain.endswith("." + header_from)
        return (result != "pass", domain != header_from, not related, index)

    ordered = sorted(enumerate(evaluation.dkim), key=rank)
    return tuple((d, s, r if r in DKIM_RESULTS else "permerror")
                 for _, (d, s, r) in ordered[:MAX_SIGNATURES])


def _spf(evaluation: Evaluation, format: str) -> tuple[str, str, str] | None:
    spf = evaluation.spf
    if format == RFC9990:
        # Only the MAIL FROM identity counts in DMARC; a HELO result is not reported.
        if spf is None or spf[1] not in ("mfrom", ""):
            return None
        return spf[0], "mfrom", spf[2] if spf[2] in SPF_RESULTS else "permerror"
    if spf is None:  # RFC 7489 wants at least one SPF result
        return evaluation.envelope_from or evaluation.header_from, "mfrom", "none"
    result = spf[2] if spf[2] in SPF_RESULTS else "permerror"
    return (spf[0], spf[1] if spf[1] in ("helo", "mfrom") else "mfrom",
            "neutral" if result == "policy" else result)


# -- XML -----------------------------------------------------------------------------------

def _xml_text(text: str) -> str:
    return _NOT_XML.sub("?", text)


class _Writer:
    def __init__(self, namespace: str | None) -> None:
        self.namespace = namespace

    def root(self, tag: str) -> etree._Element:
        if self.namespace is None:
            return etree.Element(tag)
        # The report namespace is the default one, as in RFC 9990's examples.
        nsmap = {None: self.namespace}
        return etree.Element(f"{{{self.namespace}}}{tag}",
                             nsmap=nsmap)  # type: ignore[arg-type]  # stubs: no None prefix

    def add(self, parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
        name = tag if self.namespace is None else f"{{{self.namespace}}}{tag}"
        element = etree.SubElement(parent, name)
        if text is not None:
            element.text = _xml_text(text)
        return element


def _render(report: Report) -> bytes:
    new = report.format == RFC9990
    w = _Writer(NAMESPACE if new else None)
    root = w.root("feedback")
    w.add(root, "version", "1.0")
    meta = w.add(root, "report_metadata")
    w.add(meta, "org_name", report.org_name)
    w.add(meta, "email", report.email)
    w.add(meta, "report_id", report.report_id)
    period = w.add(meta, "date_range")
    w.add(period, "begin", str(report.begin))
    w.add(period, "end", str(report.end))
    problems = [f"DMARC record: {problem}" for problem in report.published.problems]
    for problem in ["; ".join(problems)] if new and problems else problems:
        w.add(meta, "error", problem)   # RFC 9990: at most one error element
    if new:
        w.add(meta, "generator", f"postwarden {__version__}")
    _render_published(w, w.add(root, "policy_published"), report.published, new)
    for row, count in report.rows:
        _render_record(w, w.add(root, "record"), row, count, new)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8",
                                pretty_print=True))


def _render_published(w: _Writer, element: etree._Element, published: Published,
                      new: bool) -> None:
    w.add(element, "domain", published.domain)
    if new and published.discovery:
        w.add(element, "discovery_method", published.discovery)
    if not new:
        w.add(element, "adkim", published.adkim)
        w.add(element, "aspf", published.aspf)
    w.add(element, "p", published.p)
    w.add(element, "sp", published.sp)
    if new:
        w.add(element, "np", published.np)
    else:
        w.add(element, "pct", str(published.pct))
    w.add(element, "fo", published.fo)
    if new:
        w.add(element, "adkim", published.adkim)
        w.add(element, "aspf", published.aspf)
        w.add(element, "testing", published.testing)


def _render_record(w: _Writer, record: etree._Element, row: Row, count: int,
                   new: bool) -> None:
    line = w.add(record, "row")
    w.add(line, "source_ip", row.source_ip)
    w.add(line, "count", str(count))
    evaluated = w.add(line, "policy_evaluated")
    w.add(evaluated, "disposition", row.disposition)
    w.add(evaluated, "dkim", row.dkim)
    w.add(evaluated, "spf", row.spf)
    for kind, comment in row.reasons:
        reason = w.add(evaluated, "reason")
        w.add(reason, "type", kind)
        if comment:
            w.add(reason, "comment", comment)
    identifiers = w.add(record, "identifiers")
    if new:  # RFC 9990 3.1.1.9's order; RFC 7489 lists them the other way round
        w.add(identifiers, "header_from", row.header_from)
        w.add(identifiers, "envelope_from", row.envelope_from)
    if row.envelope_to:
        w.add(identifiers, "envelope_to", row.envelope_to)
    if not new:
        w.add(identifiers, "envelope_from", row.envelope_from)
        w.add(identifiers, "header_from", row.header_from)
    results = w.add(record, "auth_results")
    for domain, selector, result in row.dkim_results:
        dkim = w.add(results, "dkim")
        w.add(dkim, "domain", domain)
        if new or selector:
            w.add(dkim, "selector", selector)
        w.add(dkim, "result", result)
    if row.spf_result is not None:
        spf = w.add(results, "spf")
        w.add(spf, "domain", row.spf_result[0])
        w.add(spf, "scope", row.spf_result[1])
        w.add(spf, "result", row.spf_result[2])


@functools.cache
def schema(format: str) -> etree.XMLSchema:
    """The shipped XSD of a report format."""
    data = resources.files("postwarden.milter").joinpath("schemas", SCHEMAS[format])
    return etree.XMLSchema(etree.fromstring(data.read_bytes()))


def validate(xml: bytes, format: str) -> None:
    """Check a report against its schema; ReportError naming the first problem."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        document = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        raise ReportError(f"report is not well-formed XML: {exc}") from None
    try:
        schema(format).assertValid(document)
    except etree.DocumentInvalid as exc:
        raise ReportError(f"report does not match the {format} schema: {exc}") from None
