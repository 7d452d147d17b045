"""The SPF check of the policy service: HELO and MAIL FROM through RFC 7208, as actions.

Security: the request (HELO name, sender, client address) and every DNS answer are
untrusted. DNS work per request is bounded by ``spf_eval`` (RFC 7208 limits and
``lookup_time`` for the whole request). Text that reaches a reply or a header (explanations
from DNS, the HELO name, the sender) is cut to printable US-ASCII of bounded length, and
header values that are not plain atoms are quoted, so no client can inject a line break
into the policy reply or a header field. The per-``instance`` memory is bounded.
Standards: RFC 7208 2.3-2.4 (HELO and MAIL FROM identities), 8 (results), 9.1
(Received-SPF); RFC 8601 (Authentication-Results); RFC 7372 (5.7.23, 5.7.24);
SMTPD_POLICY_README (``instance``, access(5) actions); policyd-spf.conf(5) defaults.

Theory of operation
-------------------
As policyd-spf does: the HELO name is checked first (identity ``postmaster@HELO``), and a
HELO result that the ``helo_reject`` policy rejects ends the request with 550 5.7.23. Then
the MAIL FROM identity is checked (for the null sender the HELO result stands for it, RFC
7208 2.4) and ``mail_from_reject`` decides. PermError and TempError only add the header
unless ``permerror_reject`` (550 5.7.24) or ``temperror_defer`` (DEFER_IF_PERMIT 4.7.24)
says otherwise. The results of one message (``instance``) are kept, so later recipients
neither query DNS again nor get a second header; rejections repeat. The MAIL FROM outcome
(the HELO outcome for a null sender) goes into ``findings.spf`` for greylisting. Local
clients (``skip_networks``) and SASL-authenticated clients are not checked at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections import OrderedDict
from dataclasses import dataclass

from postwarden.policy.model import (
    Findings,
    IPAddress,
    PolicyRequest,
    Resolver,
    SpfOutcome,
    SpfResult,
    Verdict,
)
from postwarden.policy.spf_eval import (
    DEFAULT_EXPLANATION,
    SpfAnswer,
    check_host,
    check_identity,
    normalise_ip,
)

__all__ = ["SpfAnswer", "SpfCheck", "SpfSettings", "check_host", "check_identity",
           "evaluate"]

log = logging.getLogger(__name__)

MAX_TEXT = 200        # characters of any untrusted text in a reply or header
MAX_INSTANCES = 4096  # messages whose results are remembered

# policyd-spf.conf(5): which results each HELO_reject / Mail_From_reject value rejects.
REJECT_POLICIES: dict[str, frozenset[SpfResult]] = {
    "Fail": frozenset({SpfResult.FAIL}),
    "Softfail": frozenset({SpfResult.FAIL, SpfResult.SOFTFAIL}),
    "SPF_Not_Pass": frozenset({SpfResult.FAIL, SpfResult.SOFTFAIL, SpfResult.NEUTRAL,
                               SpfResult.PERMERROR}),
    "Null": frozenset({SpfResult.FAIL}),  # HELO only: only when the sender is null
    "False": frozenset(),
    "No_Check": frozenset(),
}
HEADER_TYPES = ("SPF", "AR", "None")


@dataclass(frozen=True)
class SpfSettings:
    """The ``[spf]`` settings; defaults are policyd-spf's (policyd-spf.conf(5)).

    ``reason_message`` and ``reason_url`` may use ``{rejectdefer}``, ``{spf}``, ``{url}``
    and ``{scope}``, ``{identity}``, ``{ip}``, ``{receiver}`` (plain replacement).
    Empty ``authserv_id`` and ``receiver`` mean this host's name.
    """

    enabled: bool = True
    helo_reject: str = "Fail"
    mail_from_reject: str = "Fail"
    permerror_reject: bool = False
    temperror_defer: bool = False
    header_type: str = "SPF"
    authserv_id: str = ""
    receiver: str = ""
    lookup_time: float = 20.0
    void_limit: int = 2
    nameserver: str = ""                     # HOST[:PORT]; "" = /etc/resolv.conf
    skip_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    reason_message: str = "Message {rejectdefer} due to: {spf}. Please see {url}"
    reason_url: str = "https://www.open-spf.org/Why?s={scope};id={identity};ip={ip};r={receiver}"

    def __post_init__(self) -> None:
        if self.helo_reject not in REJECT_POLICIES:
            raise ValueError(f"helo_reject: must be one of {', '.join(REJECT_POLICIES)}")
        if self.mail_from_reject not in REJECT_POLICIES or self.mail_from_reject == "Null":
            raise ValueError("mail_from_reject: must be one of "
                             + ", ".join(p for p in REJECT_POLICIES if p != "Null"))
        if self.header_type not in HEADER_TYPES:
            raise ValueError(f"header_type: must be one of {', '.join(HEADER_TYPES)}")
        if not 0 < self.lookup_time <= 300:
            raise ValueError("lookup_time: must be more than 0 and at most 300 seconds")
        if not 0 <= self.void_limit <= 100:
            raise ValueError("void_limit: must be between 0 and 100")
        for network in self.skip_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"skip_networks: {network!r} is not a network") from None


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """Printable US-ASCII only, one line, at most ``limit`` characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@:\[\]-]+\Z")


def _value(text: str) -> str:
    """A header key-value-pair value: bare when it is a plain token, else quoted."""
    text = clean(text)
    if _ATOM.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    return clean(text).replace("(", "[").replace(")", "]").replace("\\", "/")


def _outcome(answer: SpfAnswer, identity: str) -> SpfOutcome:
    return SpfOutcome(answer.result, identity, answer.domain, answer.explanation)


async def evaluate(request: PolicyRequest, resolver: Resolver, settings: SpfSettings,
                   *, receiver: str = "unknown") -> tuple[SpfOutcome | None,
                                                          SpfOutcome | None]:
    """The HELO outcome and the MAIL FROM outcome (None: not checked).

    The HELO identity is checked unless ``helo_reject`` is No_Check or the HELO name is
    empty or an address literal; MAIL FROM unless ``mail_from_reject`` is No_Check or the
    sender is null (then the HELO outcome is the one that counts). Both together run
    within ``settings.lookup_time``.
    """
    ip = request.client_ip
    if ip is None:
        return None, None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.lookup_time
    helo = request.helo_name
    helo_outcome = None
    if settings.helo_reject != "No_Check" and helo and not helo.startswith("["):
        answer = await check_host(ip, helo, f"postmaster@{helo}", helo, resolver,
                                  budget_seconds=settings.lookup_time, receiver=receiver,
                                  void_limit=settings.void_limit,
                                  default_explanation=DEFAULT_EXPLANATION)
        helo_outcome = _outcome(answer, "helo")
    mail_outcome = None
    if request.sender and settings.mail_from_reject != "No_Check":
        left = max(deadline - loop.time(), 0.001)
        answer = await check_identity(ip, request.sender, helo, resolver,
                                      budget_seconds=left, receiver=receiver,
                                      void_limit=settings.void_limit,
                                      default_explanation=DEFAULT_EXPLANATION)
        mail_outcome = _outcome(answer, "mailfrom")
    return helo_outcome, mail_outcome


@dataclass(frozen=True)
class _Decision:
    """What one message got: the two outcomes and the reply (a reject, or a header)."""

    helo: SpfOutcome | None
    mail: SpfOutcome | None
    action: str
    final: bool


class SpfCheck:
    """``policy.model.Check`` for SPF (see the module docstring)."""

    name = "spf"

    def __init__(self, settings: SpfSettings, resolver: Resolver, *,
                 hostname: str | None = None) -> None:
        self.settings = settings
        self.resolver = resolver
        host = hostname or socket.gethostname()
        self.receiver = settings.receiver or host
        self.authserv_id = settings.authserv_id or host
        self.skip = tuple(ipaddress.ip_network(n, strict=False)
                          for n in settings.skip_networks)
        self._instances: OrderedDict[str, _Decision] = OrderedDict()

    def skipped(self, request: PolicyRequest) -> str | None:
        """Why this client is not checked, or None."""
        if request.sasl_username:
            return "SASL-authenticated"
        ip = request.client_ip
        if ip is None:
            return "no client address"
        address = normalise_ip(ip)
        if any(address.version == n.version and address in n for n in self.skip):
            return "client in skip_networks"
        return None

    async def check(self, request: PolicyRequest, findings: Findings) -> Verdict | None:
        if not self.settings.enabled:
            return None
        why = self.skipped(request)
        if why is not None:
            log.debug("spf: client=%s skipped=%r", request.client_address, why)
            return None
        # smtpd's instance names one message; the client and sender make a collision
        # between smtpd processes harmless.
        key = (f"{request.instance}|{request.client_address}|{request.sender}"
               if request.instance else "")
        known = self._instances.get(key) if key else None
        if known is None:
            helo, mail = await evaluate(request, self.resolver, self.settings,
                                        receiver=self.receiver)
            known = self.decide(request, helo, mail)
            if key:
                self._instances[key] = known
                while len(self._instances) > MAX_INSTANCES:
                    self._instances.popitem(last=False)
            action = known.action
        else:
            # Same message, next recipient: a rejection repeats, a header is not added twice.
            action = known.action if known.final else "DUNNO"
        findings.spf = known.mail or known.helo
        outcome = findings.spf
        log.info("spf: client=%s helo=%s mailfrom=%s action=%s", request.client_address,
                 known.helo.result.value if known.helo else "-",
                 known.mail.result.value if known.mail else "-",
                 action.split(" ", 1)[0])
        reason = f"{outcome.identity}={outcome.result.value}" if outcome else ""
        return Verdict(action, self.name, reason)

    def decide(self, request: PolicyRequest, helo: SpfOutcome | None,
               mail: SpfOutcome | None) -> _Decision:
        settings = self.settings
        if helo is not None and helo.result in REJECT_POLICIES[settings.helo_reject] and (
                settings.helo_reject != "Null" or not request.sender):
            return _Decision(helo, None, self.reply(request, helo, "550 5.7.23"), True)
        counted = mail or helo
        if counted is None:
            return _Decision(helo, mail, "DUNNO", False)
        if mail is not None and mail.result in REJECT_POLICIES[settings.mail_from_reject]:
            return _Decision(helo, mail, self.reply(request, mail, "550 5.7.23"), True)
        if counted.result is SpfResult.PERMERROR and settings.permerror_reject:
            return _Decision(helo, mail, self.reply(request, counted, "550 5.7.24"), True)
        if counted.result is SpfResult.TEMPERROR and settings.temperror_defer:
            return _Decision(helo, mail, self.reply(request, counted,
                                                    "DEFER_IF_PERMIT 4.7.24"), True)
        header = self.header(request, counted)
        return _Decision(helo, mail, f"PREPEND {header}" if header else "DUNNO", False)

    def reply(self, request: PolicyRequest, outcome: SpfOutcome, code: str) -> str:
        if outcome.result is SpfResult.FAIL:
            spf = outcome.explanation
        else:
            spf = f"SPF {outcome.result.value} - {outcome.explanation}"
        identity = (request.sender if outcome.identity == "mailfrom"
                    else f"postmaster@{request.helo_name}")
        url = self.settings.reason_url
        for name, value in (("{scope}", outcome.identity), ("{identity}", identity),
                            ("{ip}", request.client_address), ("{receiver}", self.receiver)):
            url = url.replace(name, value)
        text = self.settings.reason_message
        for name, value in (("{rejectdefer}", "deferred" if code.startswith("DEFER")
                             else "rejected"), ("{spf}", spf), ("{url}", url)):
            text = text.replace(name, value)
        return f"{code} {clean(text, 400)}"

    def header(self, request: PolicyRequest, outcome: SpfOutcome) -> str | None:
        """Received-SPF (RFC 7208 9.1) or Authentication-Results (RFC 8601), or None."""
        if self.settings.header_type == "None":
            return None
        if self.settings.header_type == "AR":
            prop = "smtp.mailfrom" if outcome.identity == "mailfrom" else "smtp.helo"
            return (f"Authentication-Results: {_value(self.authserv_id)}; "
                    f"spf={outcome.result.value} ({_comment(outcome.explanation)}) "
                    f"{prop}={_value(outcome.domain)}")
        sender = request.sender or f"postmaster@{request.helo_name}"
        word = outcome.result.value.capitalize().replace("error", "Error")
        return (f"Received-SPF: {word} ({_comment(outcome.explanation)}) "
                f"identity={outcome.identity}; client-ip={_ip_text(request.client_ip)}; "
                f"helo={_value(request.helo_name)}; envelope-from={_value(sender)}; "
                f"receiver={_value(self.receiver)}")


def _ip_text(ip: IPAddress | None) -> str:
    return str(normalise_ip(ip)) if ip is not None else "unknown"
