"""DMARC evaluation per RFC 9989: the record, policy discovery by DNS tree walk, alignment.

Security: the From domain, the SPF and DKIM identifiers and every DNS answer are untrusted.
Domains are normalised (A-labels, lower case, label syntax) before any query, so nothing odd
reaches the resolver. DNS work is bounded three ways: a tree walk makes at most 8 queries
(RFC 9989 4.10, names of more than 8 labels jump to 7 labels), at most ``MAX_IDENTIFIERS``
authenticated identifiers are walked for relaxed alignment, and the whole evaluation runs
within ``settings.budget`` seconds (then the result is temperror). Record parsing never
raises: a malformed tag is dropped in favour of its default, as RFC 9989 5.4 says. The
Public Suffix List is parsed once per process (authheaders re-parses it per lookup, which
costs about 50 ms a message).
Standards: RFC 9989 3.2 (alignment), 4.7 (record format), 4.8 (formal definition), 4.10
(DNS tree walk), 4.10.1 (policy discovery), 4.10.2 (organizational domain selection), 5.3
(mail receiver actions), A.4 (domain existence, with RFC 8020), A.5 (``pct`` -> ``t``);
RFC 7489 6.6.4 (``pct`` sampling, for records that still carry it); RFC 8601 2.7.1 (result
words).

Theory of operation
-------------------
``evaluate`` takes the author domain (RFC5322.From), the SPF outcome of the MAIL FROM
identity and the outcome of every DKIM signature. It walks the DNS from the author domain
(all names of the walk are asked at once, so a walk costs one round trip; answers past the
point where the walk stops are ignored, errors included). The record applied is the one at
the author domain, else the one at its organizational domain, else the PSD record
(``psd=y``) that ended the walk. At the author domain ``p`` applies; below it ``sp`` for an
existing author domain and ``np`` for one that does not exist (NXDOMAIN for A, AAAA and MX;
asked only when ``np`` would change the answer). Strict alignment is string equality;
relaxed alignment compares organizational domains, found by further tree walks that share
one per-evaluation cache (an identifier outside the author's organizational domain cannot
align, so it costs no query). DMARC passes when any SPF (``mfrom`` scope only, or
``helo`` for a null reverse-path) or DKIM ``pass`` identifier aligns. A failing message
gets the policy's disposition, one step milder for ``t=y`` or when RFC 7489 ``pct``
sampling leaves it out. A DNS error that decides the outcome gives temperror: a record
could not be read, or no identifier aligned while one could not be checked.

The Public Suffix List (``psl_fallback``, on by default) is a fallback, never the first
answer: a DNS failure at a name the PSL calls a public suffix (or above) does not make the
result temperror, because it can only hide a PSD record, not the organizational domain (so
an outage of ``_dmarc.com`` does not defer all mail); the walk stops there and the result
says ``discovery="psl"``. A walk that finds no record at all also tries ``_dmarc`` at the
PSL's organizational domain when the walk skipped that name, and an identifier walk that
finds nothing takes the PSL's organizational domain.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from postwarden.errors import ConfigError, clip
from postwarden.milter.signing import normalize_domain
from postwarden.policy.model import DnsAnswer, Resolver

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

__all__ = ["MAX_WALK_QUERIES", "AuthOutcome", "DmarcPolicyRecord", "DmarcResult",
           "DmarcSettings", "evaluate", "is_dmarc", "organizational_domain", "parse_record",
           "psl", "walk_names"]

log = logging.getLogger(__name__)

MAX_WALK_QUERIES = 8     # RFC 9989 4.10: a tree walk asks at most eight names
MAX_IDENTIFIERS = 8      # authenticated identifiers walked for relaxed alignment
MAX_RECORD = 2048        # characters of one TXT record looked at
POLICIES = ("none", "quarantine", "reject")
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_TAG = re.compile(r"[A-Za-z]+\Z")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+\Z")


@dataclass(frozen=True)
class AuthOutcome:
    """One authenticated identifier: an SPF identity or a DKIM signature."""

    domain: str          # SPF: MAIL FROM domain (or HELO name when scope == "helo"); DKIM: d=
    result: str          # RFC 8601 word: pass fail softfail neutral none temperror permerror policy
    selector: str = ""   # DKIM s=
    scope: str = ""      # SPF: "mfrom" or "helo"


@dataclass(frozen=True)
class DmarcPolicyRecord:
    """A parsed ``_dmarc`` TXT record (RFC 9989 4.7), defaults filled in.

    ``usable`` is False for a record DMARC must not be applied with (RFC 9989 4.10.1: a
    bad ``p``, ``sp`` or ``np`` and no valid ``rua``); ``problems`` says what was dropped.
    """

    p: str = "none"
    sp: str = ""                 # "" = not given (p applies)
    np: str = ""                 # "" = not given (sp, then p applies)
    adkim: str = "r"
    aspf: str = "r"
    pct: int | None = None       # RFC 7489 only
    t: bool = False              # RFC 9989 testing
    psd: str = "u"
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    raw: str = ""
    usable: bool = True
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class DmarcSettings:
    """The ``[dmarc]`` section of postwarden.toml."""

    enabled: bool = True
    psl_fallback: bool = True        # use publicsuffixlist when the tree walk finds nothing
    on_reject: str = "reject"        # p=reject failures: reject | quarantine | report
    on_quarantine: str = "quarantine"  # p=quarantine failures: quarantine | header | report
    record: bool = True              # record every evaluation for aggregate reports
    report_org_name: str = ""        # aggregate reports: <org_name>
    report_email: str = ""           # aggregate reports: <email>, the From of report mail
    budget: float = 5.0              # seconds for all DNS of one evaluation

    def __post_init__(self) -> None:
        if self.on_reject not in ("reject", "quarantine", "report"):
            raise ValueError("on_reject: must be one of reject, quarantine, report")
        if self.on_quarantine not in ("quarantine", "header", "report"):
            raise ValueError("on_quarantine: must be one of quarantine, header, report")
        if not 0 < self.budget <= 120:
            raise ValueError("budget: must be more than 0 and at most 120 seconds")
        if self.report_email and not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+",
                                                  self.report_email):
            raise ValueError(f"report_email: {clip(self.report_email)!r} is not an address")
        if any(c in self.report_org_name for c in "\r\n"):
            raise ValueError("report_org_name: must be one line")

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], path: Path | str) -> DmarcSettings:
        """Build from the ``[dmarc]`` table; ``ConfigError`` naming the file and key."""
        return _parse_settings(table, Path(path))


@dataclass(frozen=True)
class DmarcResult:
    """The DMARC verdict of one message."""

    result: str            # "pass" | "fail" | "none" | "temperror" | "permerror"
    from_domain: str       # RFC5322.From domain
    policy_domain: str     # the domain whose record applied ("" when none)
    org_domain: str
    policy: str            # the p / sp / np value that applies ("" when no record)
    disposition: str       # none | quarantine | reject (after t=y and pct)
    spf_aligned: bool
    dkim_aligned: bool
    record: DmarcPolicyRecord | None
    reason: str            # one human line
    discovery: str = "treewalk"   # RFC 9990 discovery_method: "treewalk" | "psl"
    testing: bool = False         # the record's t=y made the disposition milder


# -- the record ----------------------------------------------------------------------------

def _tags(text: str) -> list[tuple[str, str | None]]:
    """``name=value`` pairs in order (value None for a part without ``=``)."""
    pairs: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        part = part.strip(" \t")
        if part:
            name, eq, value = part.partition("=")
            pairs.append((name.strip(" \t"), value.strip(" \t") if eq else None))
    return pairs


def is_dmarc(text: str) -> bool:
    """Whether a TXT record starts with the ``v=DMARC1`` tag (RFC 9989 4.7, ``v``)."""
    pairs = _tags(text[:MAX_RECORD])
    return bool(pairs) and pairs[0][0].lower() == "v" and pairs[0][1] == "DMARC1"


def _uris(value: str) -> tuple[tuple[str, ...], bool]:
    """The valid URIs of a ``rua``/``ruf`` list (obsolete ``!size`` dropped) and whether
    any entry was invalid."""
    found: list[str] = []
    bad = False
    for item in value.split(","):
        item = item.strip(" \t")
        uri = re.sub(r"![0-9]+[kmgtKMGT]?\Z", "", item)
        if _URI.match(uri):
            found.append(uri)
        elif item:
            bad = True
    return tuple(found), bad


def _fo(value: str) -> str | None:
    parts = value.split(":")
    if not parts or any(p.strip() not in ("0", "1", "d", "s") for p in parts):
        return None
    words = [p.strip() for p in parts]
    if ("0" in words and "1" in words) or len(set(words)) != len(words):
        return None
    return ":".join(words)


def parse_record(text: str) -> DmarcPolicyRecord | None:
    """A DMARC record, or None when ``text`` does not start with ``v=DMARC1``.

    Unknown tags are ignored; a malformed known tag is dropped for its default and named
    in ``problems``; RFC 7489's ``rf`` and ``ri`` are ignored, ``pct`` is kept.
    """
    raw = text[:MAX_RECORD]
    if not is_dmarc(raw):
        return None
    values: dict[str, str] = {}
    problems: list[str] = []
    for name, value in _tags(raw)[1:]:
        key = name.lower()
        if value is None or not _TAG.match(name):
            problems.append(f"malformed tag {clip(name)!r} ignored")
        elif key in values:
            problems.append(f"repeated tag {key} ignored")
        else:
            values[key] = value
    record: dict[str, Any] = {"raw": raw}
    bad_policy = False
    for key in ("p", "sp", "np"):
        if key in values:
            word = values[key].lower()
            if word in POLICIES:
                record[key] = word
            else:
                bad_policy = True
                problems.append(f"invalid {key}={clip(values[key])}")
    for key in ("adkim", "aspf"):
        if key in values:
            if values[key].lower() in ("r", "s"):
                record[key] = values[key].lower()
            else:
                problems.append(f"invalid {key}={clip(values[key])}; r used")
    if "t" in values:
        if values["t"].lower() in ("y", "n"):
            record["t"] = values["t"].lower() == "y"
        else:
            problems.append(f"invalid t={clip(values['t'])}; n used")
    if "psd" in values:
        if values["psd"].lower() in ("y", "n", "u"):
            record["psd"] = values["psd"].lower()
        else:
            problems.append(f"invalid psd={clip(values['psd'])}; u used")
    if "pct" in values:
        if values["pct"].isdigit() and int(values["pct"]) <= 100:
            record["pct"] = int(values["pct"])
        else:
            problems.append(f"invalid pct={clip(values['pct'])}; ignored")
    for key in ("rua", "ruf"):
        if key in values:
            uris, bad = _uris(values[key])
            record[key] = uris
            if bad:
                problems.append(f"invalid URI in {key} dropped")
    if "fo" in values:
        fo = _fo(values["fo"])
        if fo is None:
            problems.append(f"invalid fo={clip(values['fo'])}; 0 used")
        else:
            record["fo"] = fo
    if bad_policy:
        # RFC 9989 4.10.1: with a valid rua the record acts as p=none, else no DMARC.
        for key in ("p", "sp", "np"):
            record.pop(key, None)
        record["usable"] = bool(record.get("rua"))
        problems.append("treated as p=none (valid rua)" if record["usable"]
                        else "no DMARC processing (no valid rua)")
    record["problems"] = tuple(problems)
    return DmarcPolicyRecord(**record)


# -- the public suffix list: loaded once per process ------------------------------------

_PSL: PublicSuffixList | None = None


def psl() -> PublicSuffixList:
    """The bundled Public Suffix List, parsed on first use and kept (about 60 ms once)."""
    global _PSL  # one parsed list per process, on purpose
    if _PSL is None:
        from publicsuffixlist import PublicSuffixList
        _PSL = PublicSuffixList()
    return _PSL


def _psl_org(domain: str) -> str | None:
    found = psl().privatesuffix(domain)
    return found if isinstance(found, str) else None


# -- the DNS tree walk ---------------------------------------------------------------------

def walk_names(start: str) -> tuple[str, ...]:
    """The names a tree walk from ``start`` asks about, in order (RFC 9989 4.10 steps 3-7)."""
    labels = start.split(".")
    names = [start]
    # Step 4: from eight labels on, jump straight to the last seven.
    labels = labels[-(MAX_WALK_QUERIES - 1):] if len(labels) >= MAX_WALK_QUERIES else labels[1:]
    while labels:
        names.append(".".join(labels))
        labels = labels[1:]
    return tuple(names)


def _one_below(start: str, ancestor: str) -> str:
    """The name one label below ``ancestor`` on the way to ``start``."""
    wanted = ancestor.count(".") + 2
    return ".".join(start.split(".")[-wanted:])


def organizational_domain(start: str,
                          found: Sequence[tuple[str, DmarcPolicyRecord]]) -> str | None:
    """RFC 9989 4.10.2 selection over the records a walk from ``start`` found (longest name
    first); None when it found none."""
    if not found:
        return None
    name, record = found[-1]
    if record.psd == "n":
        return name
    if record.psd == "y" and name != start:
        return _one_below(start, name)
    return name


@dataclass
class _Lookup:
    record: DmarcPolicyRecord | None = None
    error: str = ""
    note: str = ""


@dataclass
class _Walk:
    start: str
    found: list[tuple[str, DmarcPolicyRecord]] = field(default_factory=list)
    error: str = ""
    psl: bool = False        # a DNS failure above the PSL boundary was passed over


class _Walker:
    """Tree walks sharing one cache of ``_dmarc`` answers for one evaluation."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.cache: dict[str, asyncio.Task[_Lookup]] = {}

    async def _ask(self, name: str) -> _Lookup:
        answer = await self.resolver.query(f"_dmarc.{name}", "TXT")
        if answer.rcode not in ("NOERROR", "NXDOMAIN"):
            return _Lookup(error=f"_dmarc.{name}: DNS {answer.rcode}")
        texts = [t for t in answer.records if is_dmarc(t)]
        if len(texts) > 1:
            # RFC 9989 4.10 step 2: several DMARC records at one name are all discarded.
            return _Lookup(note=f"_dmarc.{name} has {len(texts)} DMARC records; all ignored")
        return _Lookup(record=parse_record(texts[0]) if texts else None)

    def close(self) -> None:
        """Cancel lookups nobody waits for any more (a walk that stopped early, a budget
        that ran out)."""
        for task in self.cache.values():
            if not task.done():
                task.cancel()

    def lookup(self, name: str) -> asyncio.Task[_Lookup]:
        task = self.cache.get(name)
        if task is None:
            task = asyncio.ensure_future(self._ask(name))
            self.cache[name] = task
        return task

    async def walk(self, start: str, use_psl: bool) -> _Walk:
        names = walk_names(start)
        tasks = [self.lookup(n) for n in names]  # all at once: one round trip
        walk = _Walk(start)
        for name, task in zip(names, tasks, strict=True):
            answer = await task
            if answer.error:
                if use_psl and _above_org(start, name):
                    # The PSL says this name is a public suffix or above: a failure here
                    # cannot hide the organizational domain (only a PSD record).
                    walk.psl = True
                    log.info("dmarc: %s; PSL fallback for %s", answer.error, start)
                else:
                    walk.error = answer.error
                break
            if answer.note:
                log.info("dmarc: %s", answer.note)
            if answer.record is not None:
                walk.found.append((name, answer.record))
                if answer.record.psd in ("y", "n"):
                    break
        return walk

    async def org(self, start: str, use_psl: bool) -> tuple[str | None, str]:
        """The organizational domain of ``start`` (None with a reason on a DNS error)."""
        walk = await self.walk(start, use_psl)
        if walk.error:
            return None, walk.error
        org = organizational_domain(start, walk.found)
        if org is None:
            org = (_psl_org(start) if use_psl else None) or start
        return org, ""


def _above_org(start: str, name: str) -> bool:
    """Whether ``name`` is above the PSL's organizational domain of ``start`` (a public
    suffix or one of its parents)."""
    org = _psl_org(start)
    return org is not None and name != org and not name.endswith("." + org)


async def _exists(resolver: Resolver, domain: str) -> bool | None:
    """Whether ``domain`` exists (RFC 9989 A.4, RFC 8020): any of A, AAAA, MX answering
    NOERROR means yes, NXDOMAIN means no; None when DNS could not tell."""
    answers: list[DnsAnswer] = await asyncio.gather(
        *(resolver.query(domain, t) for t in ("A", "AAAA", "MX")))
    if any(a.rcode == "NOERROR" for a in answers):
        return True
    if any(a.rcode == "NXDOMAIN" for a in answers):
        return False
    return None


# -- evaluation ----------------------------------------------------------------------------

def _normal(text: str) -> str | None:
    return normalize_domain(text) if text and text.strip() else None


@dataclass
class _Context:
    author: str
    org: str
    relaxed_dkim: bool
    relaxed_spf: bool
    use_psl: bool
    walker: _Walker
    errors: list[str] = field(default_factory=list)
    walked: int = 0


async def _aligned(ctx: _Context, identifier: str, relaxed: bool) -> bool:
    ident = _normal(identifier)
    if ident is None:
        return False
    if ident == ctx.author:
        return True
    if not relaxed:
        return False
    if ident != ctx.org and not ident.endswith("." + ctx.org):
        return False  # its organizational domain is itself or an ancestor: never ctx.org
    if ctx.walked >= MAX_IDENTIFIERS:
        return False   # only the domain owner can make more pass; not worth more DNS
    ctx.walked += 1
    org, error = await ctx.walker.org(ident, ctx.use_psl)
    if error:
        ctx.errors.append(error)
    return org == ctx.org


def _result(author: str, result: str, reason: str, **values: Any) -> DmarcResult:
    base: dict[str, Any] = {"policy_domain": "", "org_domain": author, "policy": "",
                            "disposition": "none", "spf_aligned": False,
                            "dkim_aligned": False, "record": None}
    base.update(values)
    return DmarcResult(result=result, from_domain=author, reason=reason, **base)


async def _discover(walker: _Walker, author: str, settings: DmarcSettings
                    ) -> tuple[_Walk, str | None, str | None, str]:
    """The walk, the policy domain (None: no record), the org domain, the method."""
    walk = await walker.walk(author, settings.psl_fallback)
    if walk.error:
        return walk, None, None, "treewalk"
    records = dict(walk.found)
    org = organizational_domain(author, walk.found)
    method = "psl" if walk.psl else "treewalk"
    if author in records:
        return walk, author, org, method
    if org is not None:
        if org in records:
            return walk, org, org, method
        # XXX: when psd=y ends a walk that skipped names (RFC 9989 4.10 step 4), the
        # organizational domain one label below was never asked; its record is not
        # fetched (that would be a ninth query) and the PSD record applies.
        psd = next((n for n, r in reversed(walk.found) if r.psd == "y"), None)
        return walk, psd or walk.found[-1][0], org, method
    if settings.psl_fallback:
        guess = _psl_org(author)
        if guess and guess != author:
            lookup = await walker.lookup(guess)
            if lookup.error:
                walk.error = lookup.error
                return walk, None, None, "psl"
            if lookup.record is not None:
                walk.found.append((guess, lookup.record))
                return walk, guess, guess, "psl"
    return walk, None, None, "treewalk"


async def _policy(resolver: Resolver, author: str, policy_domain: str,
                  record: DmarcPolicyRecord) -> tuple[str | None, str]:
    """The p/sp/np that applies (None on a DNS error) and which tag gave it."""
    if policy_domain == author:
        return record.p, "p"
    sp, tag = (record.sp, "sp") if record.sp else (record.p, "p")
    if not record.np or record.np == sp:
        return sp, tag
    exists = await _exists(resolver, author)
    if exists is None:
        return None, "np"
    return (sp, tag) if exists else (record.np, "np")


def _mail_from(spf: AuthOutcome | None, null_sender: bool) -> bool:
    """Whether ``spf`` is about the MAIL FROM identity, the only one DMARC uses (RFC 9989
    2.3.4); for a null reverse-path that identity is postmaster@HELO (RFC 7208 2.4)."""
    if spf is None or spf.result.lower() != "pass":
        return False
    scope = spf.scope.lower()
    return scope in ("mfrom", "mailfrom") or (null_sender and scope == "helo")


async def _evaluate(author: str, spf: AuthOutcome | None, dkim: Sequence[AuthOutcome],
                    walker: _Walker, settings: DmarcSettings,
                    sample: Callable[[], float], null_sender: bool) -> DmarcResult:
    resolver = walker.resolver
    walk, policy_domain, org, method = await _discover(walker, author, settings)
    if walk.error:
        return _result(author, "temperror", f"policy discovery: {walk.error}",
                       discovery=method)
    if policy_domain is None:
        return _result(author, "none", f"no DMARC record for {author} or its parents",
                       discovery=method)
    record = dict(walk.found)[policy_domain]
    org = org or author
    if not record.usable:
        # RFC 9989 4.10.1: no DMARC processing; its IANA result names call this permerror.
        return _result(author, "permerror", f"record at _dmarc.{policy_domain} not applied: "
                       + "; ".join(record.problems), policy_domain=policy_domain,
                       org_domain=org, record=record, discovery=method)
    ctx = _Context(author, org, record.adkim == "r", record.aspf == "r",
                   settings.psl_fallback, walker)
    spf_aligned = (spf is not None and _mail_from(spf, null_sender)
                   and await _aligned(ctx, spf.domain, ctx.relaxed_spf))
    dkim_aligned = False
    for outcome in dkim:
        if outcome.result.lower() == "pass" and await _aligned(ctx, outcome.domain,
                                                               ctx.relaxed_dkim):
            dkim_aligned = True
            break
    policy, tag = await _policy(resolver, author, policy_domain, record)
    common: dict[str, Any] = {"policy_domain": policy_domain, "org_domain": org,
                              "spf_aligned": spf_aligned, "dkim_aligned": dkim_aligned,
                              "record": record, "discovery": method}
    where = f"_dmarc.{policy_domain}"
    if spf_aligned or dkim_aligned:
        how = " and ".join(w for w, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned)) if ok)
        return _result(author, "pass", f"{how} aligned with {author} ({where})",
                       policy=policy or "", **common)
    if ctx.errors:
        return _result(author, "temperror", "alignment could not be checked: "
                       + ctx.errors[0], policy=policy or "", **common)
    if policy is None:
        return _result(author, "temperror", f"existence of {author} (for np) unknown: DNS "
                       "error", **common)
    disposition, note, testing = policy, "", False
    if record.t and policy != "none":
        disposition, note, testing = _MILDER[policy], " (t=y: one step milder)", True
    elif record.pct is not None and record.pct < 100 and policy != "none":
        if sample() * 100 >= record.pct:
            disposition, note = _MILDER[policy], f" (pct={record.pct}: not sampled)"
        else:
            note = f" (pct={record.pct}: sampled)"
    why = "no aligned SPF or DKIM pass"
    return _result(author, "fail", f"{why}; {tag}={policy} at {where}, disposition "
                   f"{disposition}{note}", policy=policy, disposition=disposition,
                   testing=testing, **common)


async def evaluate(from_domain: str, spf: AuthOutcome | None, dkim: Sequence[AuthOutcome],
                   resolver: Resolver, settings: DmarcSettings, *,
                   sample: Callable[[], float] | None = None,
                   null_sender: bool = False) -> DmarcResult:
    """The DMARC result of one message (see the module docstring). Never raises for DNS
    outcomes or odd input; ``sample`` (default ``random.random``) draws RFC 7489 ``pct``.
    With ``null_sender`` (MAIL FROM:<>) an SPF outcome of scope "helo" is the MAIL FROM
    identity (RFC 7208 2.4) and counts; otherwise only scope "mfrom" does."""
    author = _normal(from_domain)
    if author is None:
        shown = clip(from_domain or "")
        return _result(shown, "permerror", f"From domain {shown!r} is not a domain name")
    walker = _Walker(resolver)
    try:
        async with asyncio.timeout(settings.budget):
            result = await _evaluate(author, spf, dkim, walker, settings,
                                     sample or random.random, null_sender)
    except TimeoutError:
        result = _result(author, "temperror",
                         f"DNS took longer than the budget of {settings.budget:g}s")
    finally:
        walker.close()
    log.debug("dmarc: from=%s result=%s reason=%r", author, result.result, result.reason)
    return result


# -- loading the [dmarc] table -------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "enabled": (bool,), "psl_fallback": (bool,), "on_reject": (str,),
    "on_quarantine": (str,), "record": (bool,), "report_org_name": (str,),
    "report_email": (str,), "budget": (int, float),
}


def _fail(path: Path, key: str, reason: str) -> NoReturn:
    raise ConfigError(path, None, f"{key}: {reason}")


def _parse_settings(table: Mapping[str, Any], path: Path) -> DmarcSettings:
    if not isinstance(table, Mapping):
        _fail(path, "dmarc", "expected a table")
    values: dict[str, Any] = {}
    for name in table:
        if name not in _TYPES:
            _fail(path, f"dmarc.{clip(str(name))}", "unknown key")
        value = table[name]
        wanted = _TYPES[name]
        if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
            _fail(path, f"dmarc.{name}", f"expected {wanted[0].__name__}, got "
                                         f"{type(value).__name__}")
        values[name] = float(value) if isinstance(value, int | float) and name == "budget" \
            else value
    try:
        return DmarcSettings(**values)
    except ValueError as exc:
        name, _, reason = str(exc).partition(": ")
        _fail(path, f"dmarc.{name}", reason)
