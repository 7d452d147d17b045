"""Greylisting with postgrey 1.37's semantics, plus SPF-aware keys and bypasses.

Security: every attribute comes from an SMTP client through smtpd and is bounded by the
policy codec; whitelist regexes see at most 512 characters (see ``whitelist``). State
lives in the injected ``Store``; an outage there raises ``StoreError`` for the service's
fail-safe answer. The per-process memory (the last instances given a header) is bounded.
Standards: postgrey 1.37 ``smtpd_access_policy`` (policy-anchors 2.1); RFC 6647
(email greylisting: retry behaviour, keying); SMTPD_POLICY_README (attributes); access(5)
(``DEFER_IF_PERMIT``, ``PREPEND``).

Theory of operation
-------------------
Only requests at ``protocol_state=RCPT`` are greylisted. In order, as postgrey does
(steps 1 to 14 of its algorithm), with postwarden's additions marked +:

1. ``client_address``, ``client_name``, ``recipient`` and ``sender`` must all be present
   (an empty sender, the null sender, is present); otherwise nothing to say.
2. + A SASL-authenticated client (``sasl_username`` set) is never greylisted; nor a
   client in ``exempt_networks`` (default loopback), since a policy request does not say
   whether the client is in Postfix's ``mynetworks``.
3. Client whitelist (name and address), then recipient whitelist. A client's network,
   exemption and client-whitelist match are worked out once per client (the last 4,096
   remembered), since smtpd asks once per recipient.
4. + When SPF passed for the sender's own domain and ``key_by_spf_domain`` is ``skip``,
   the mail is not greylisted.
5. Auto-whitelist: a client address (the full address, as postgrey) with at least
   ``auto_whitelist_clients`` passes is let through; its counter moves at most once an
   hour, which also keeps it from expiring. Steps 5 to 7 are one store call
   (``store.greylist``): one atomic step and one commit on SQLite.
6. The triplet: the client's network (/24 IPv4, /64 IPv6) -- + or, when SPF passed for
   the sender's domain and ``key_by_spf_domain`` is ``domain``, that domain, so a
   sender's whole pool of outbound addresses counts as one client --, the normalised
   sender (BATV ``prvs=`` tag removed, ``+extension`` removed, digit words made ``#``),
   and the recipient, lower-cased.
7. The store records the attempt atomically (``store.greylist_step``); ``delay`` minus
   the time since first seen is what is left. The first pass counts for the
   auto-whitelist.
8. Time left: ``<action> <text>`` with ``%s`` (seconds left) and ``%r`` (recipient domain)
   replaced once each; when the request carries ``etrn_domain`` (every Postfix since 2.3
   sends it) and the text starts with no digit, ``4.2.0 `` is put in front, postgrey's
   workaround for an Exchange bug. So the client sees ``450 4.2.0 <rcpt>: Recipient
   address rejected: Greylisted, see https://postgrey.schweikert.ch/help/example.org.html``.
9. The first pass after a deferral: ``PREPEND X-Greylist: delayed <N> seconds by
   postwarden-<version> at <host>; <date>`` once per ``instance`` (one header per message
   however many recipients); otherwise ``DUNNO``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from typing import NamedTuple

from postwarden import __version__
from postwarden.policy.model import (
    Clock,
    Findings,
    PolicyRequest,
    SpfResult,
    Verdict,
    parse_address,
)
from postwarden.policy.store import GreylistTiming, Store, Triplet
from postwarden.policy.whitelist import ClientWhitelist, RecipientWhitelist

log = logging.getLogger(__name__)

DEFAULT_TEXT = "Greylisted, see https://postgrey.schweikert.ch/help/%r.html"
DEFAULT_HEADER = "X-Greylist: delayed %t seconds by postwarden-%v at %h; %d"
SPF_MODES = ("domain", "skip", "off")
INSTANCES_KEPT = 10
CLIENTS_CACHED = 4096  # client addresses whose network and exemption are remembered
REQUIRED = frozenset(("client_address", "client_name", "recipient", "sender"))
_DIGIT_WORD = re.compile(r"\b\d+\b", re.ASCII)
_BATV_TAG = re.compile(r"[0-9a-z]{10}")


class _ClientFacts(NamedTuple):
    text: str        # the address as ipaddress writes it: the auto-whitelist key
    network: str     # its /24 or /64 (the configured prefix lengths)
    exempt: bool     # in exempt_networks


@dataclass(frozen=True)
class GreylistSettings:
    """``[greylist]``; durations in seconds. The defaults are postgrey 1.37's."""

    enabled: bool = True
    delay: int = 300
    retry_window: int = 2 * 86400
    max_age: int = 35 * 86400
    auto_whitelist_clients: int = 5          # 0 turns the auto-whitelist off
    ipv4_cidr: int = 24
    ipv6_cidr: int = 64
    action: str = "DEFER_IF_PERMIT"
    text: str = DEFAULT_TEXT
    header: str = DEFAULT_HEADER             # "" adds no X-Greylist header
    hostname: str = ""                       # "" = this host's name
    key_by_spf_domain: str = "domain"        # "domain", "skip" or "off"
    exempt_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    whitelist_clients: tuple[str, ...] = ()  # file paths, postgrey's format
    whitelist_recipients: tuple[str, ...] = ()

    @property
    def timing(self) -> GreylistTiming:
        return GreylistTiming(self.delay, self.retry_window, self.max_age)


def normalize_sender(sender: str) -> str:
    """postgrey's sender substitutions: BATV, ``+extension``, digit words -> ``#``."""
    user, at, domain = sender.partition("@")
    if not at:
        return sender
    if user.startswith("prvs="):
        parts = user.split("=")
        if len(parts) == 3:
            # BATV is prvs=tag=local, but some write prvs=local=tag: keep the non-tag.
            tag1 = _BATV_TAG.match(parts[1]) is not None
            tag2 = _BATV_TAG.match(parts[2]) is not None
            user = parts[1] if tag2 and not tag1 else parts[2]
    user = user.split("+", 1)[0]
    user = _DIGIT_WORD.sub("#", user)
    return f"{user}@{domain}"


def client_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                   settings: GreylistSettings) -> str:
    """The network address of the client at the configured prefix length."""
    width = address.max_prefixlen
    bits = settings.ipv4_cidr if width == 32 else settings.ipv6_cidr
    host_bits = (1 << (width - bits)) - 1
    return str(type(address)(int(address) & ~host_bits))


class Greylist:
    """The greylisting ``Check``."""

    name = "greylist"

    def __init__(self, settings: GreylistSettings, store: Store, clock: Clock, *,
                 clients: ClientWhitelist | None = None,
                 recipients: RecipientWhitelist | None = None) -> None:
        if settings.key_by_spf_domain not in SPF_MODES:
            raise ValueError(f"key_by_spf_domain must be one of {SPF_MODES}")
        self.settings = settings
        self.store = store
        self.clock = clock
        self.clients = clients or ClientWhitelist()
        self.recipients = recipients or RecipientWhitelist()
        self.hostname = settings.hostname or socket.gethostname()
        self.exempt = tuple(ipaddress.ip_network(net, strict=False)
                            for net in settings.exempt_networks)
        self._instances: deque[str] = deque(maxlen=INSTANCES_KEPT)
        self.timing = settings.timing
        # smtpd asks once per RCPT, so a client's facts are worked out once, not per
        # request (ipaddress's arithmetic and formatting cost microseconds each time).
        self._client = functools.lru_cache(maxsize=CLIENTS_CACHED)(self._client_facts)
        self._client_listed = functools.lru_cache(maxsize=CLIENTS_CACHED)(self._listed)

    def _client_facts(self, text: str) -> _ClientFacts | None:
        """What the ``client_address`` text gives: None if it is not an address."""
        address = parse_address(text)
        if address is None:
            return None
        return _ClientFacts(str(address), client_network(address, self.settings),
                            any(address in net for net in self.exempt))

    def _listed(self, name: str, address: str) -> bool:
        """Whether the client whitelist has the client (each entry is tried: cached)."""
        return self.clients.matches(name, parse_address(address))

    def _pass(self, reason: str) -> Verdict:
        return Verdict("DUNNO", self.name, reason)

    async def check(self, request: PolicyRequest, findings: Findings) -> Verdict | None:
        if request.protocol_state != "RCPT":
            return None
        if not request.attributes.keys() >= REQUIRED:
            return None
        client = self._client(request.client_address)
        if client is None:
            return None
        if request.sasl_username:
            return self._pass("sasl-authenticated")
        if client.exempt:
            return self._pass("exempt network")
        if self._client_listed(request.client_name, request.client_address):
            return self._pass("client whitelist")
        if self.recipients.matches(request.recipient):
            return self._pass("recipient whitelist")
        spf_domain = self._spf_domain(request, findings)
        if spf_domain and self.settings.key_by_spf_domain == "skip":
            return self._pass("spf pass")
        now = int(self.clock.now())
        settings = self.settings
        network = (spf_domain if spf_domain and settings.key_by_spf_domain == "domain"
                   else client.network)
        triplet = Triplet(network.lower(), normalize_sender(request.sender).lower(),
                          request.recipient.lower())
        client_key = client.text
        outcome = await self.store.greylist(triplet, client_key, now, self.timing,
                                            settings.auto_whitelist_clients)
        attempt = outcome.attempt
        if attempt is None:
            return self._pass("client AWL")
        if outcome.whitelisted_now:
            log.info("greylist: whitelisted client=%s count=%d", client_key,
                     settings.auto_whitelist_clients)
        waited = now - attempt.first
        left = settings.delay - waited
        if left > 0:
            kind = "new" if attempt.first == now else f"early-retry ({left}s missing)"
            return Verdict(f"{settings.action} {self._text(request, left)}", self.name,
                           f"{kind} key={triplet.key}")
        if (not attempt.passed_before and settings.header
                and self._new_instance(request)):
            return Verdict(f"PREPEND {self._header(waited, now)}", self.name,
                           f"pass delay={waited} key={triplet.key}")
        return self._pass("triplet found")

    def _spf_domain(self, request: PolicyRequest, findings: Findings) -> str:
        """The sender's domain when SPF passed for it (and keying on it is on)."""
        spf = findings.spf
        if self.settings.key_by_spf_domain == "off" or spf is None:
            return ""
        domain = request.sender.rpartition("@")[2].lower()
        if (spf.result is SpfResult.PASS and spf.identity == "mailfrom" and domain
                and spf.domain.lower().rstrip(".") == domain):
            return domain
        return ""

    def _text(self, request: PolicyRequest, left: int) -> str:
        text = self.settings.text
        if "etrn_domain" in request.attributes and not text[:1].isdigit():
            text = "4.2.0 " + text
        text = text.replace("%s", str(left), 1)
        return text.replace("%r", request.recipient.rpartition("@")[2], 1)

    def _header(self, waited: int, now: int) -> str:
        text = self.settings.header.replace("%t", str(waited), 1)
        text = text.replace("%v", __version__, 1).replace("%h", self.hostname, 1)
        return text.replace("%d", formatdate(now, usegmt=True), 1)

    def _new_instance(self, request: PolicyRequest) -> bool:
        """postgrey's ``is_new_instance``: one header per message, last 10 remembered."""
        instance = request.get("instance")
        if "instance" not in request.attributes:
            return True
        if instance in self._instances:
            return False
        self._instances.append(instance)
        return True
