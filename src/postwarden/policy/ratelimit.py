"""Rate limits by client address, sender and SASL user, counting messages or recipients.

Security: the keys (addresses, user names) come from SMTP clients through smtpd; they are
lower-cased, cut to ``MAX_KEY`` characters and used only as opaque store keys. IPv6
clients are keyed on their /64 by default, since one host commonly owns a whole /64 and
could otherwise rotate through it to escape the limit.
Standards: SMTPD_POLICY_README (``protocol_state``, ``recipient_count``: the number of
accepted recipients at DATA and END-OF-MESSAGE, 0 before); access(5) (the actions).

Theory of operation
-------------------
A ``RateRule`` names what it keys on (``client_address``, ``sender`` or
``sasl_username``), what it counts (``messages``, one per request, or ``recipients``, the
request's ``recipient_count``), the stage it counts at (``DATA`` by default, when
``recipient_count`` is known; ``END-OF-MESSAGE`` if the policy service is consulted there
instead -- never both, or each message would count twice; ``RCPT`` counts every recipient
request as it comes), the budget (``limit`` per ``window`` seconds), the algorithm
(``token_bucket``: the budget refills continuously, bursts up to ``limit``;
``sliding_window``: the two-counter estimate of the last ``window`` seconds) and the
action when it is exceeded. Several rules may share a key class with different windows
(an hour and a day).

For one request every rule whose key is present (an unauthenticated client has no
``sasl_username``) is charged in one atomic store call, all or nothing: a request that
exceeds any of its limits spends none of its budgets, so a sender who is held back does
not dig himself deeper by retrying (policyd-rate-limit does the same), and two MX hosts
on one Redis spend one budget. The first exceeded rule's action is the answer.

Defaults, aimed at a stolen submission account sending bulk mail: per SASL user 500
recipients an hour (token bucket) and 2,000 a day (sliding window); per client address
(IPv6 /64) 1,000 recipients an hour, loose enough for a busy MX peer. The default action
is ``DEFER_IF_PERMIT 4.7.1 Rate limit exceeded, try again later``: a temporary failure,
so a legitimate burst is delayed rather than lost, and ``_IF_PERMIT`` so that an explicit
REJECT from a later restriction still wins.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from postwarden.policy.model import Clock, Findings, PolicyRequest, Verdict
from postwarden.policy.store import (
    ALGORITHMS,
    SLIDING_WINDOW,
    TOKEN_BUCKET,
    RateCharge,
    Store,
)

log = logging.getLogger(__name__)

KEYS = ("client_address", "sender", "sasl_username")
COUNTS = ("messages", "recipients")
STAGES = ("RCPT", "DATA", "END-OF-MESSAGE")
DEFAULT_ACTION = "DEFER_IF_PERMIT 4.7.1 Rate limit exceeded, try again later"
MAX_KEY = 320


@dataclass(frozen=True)
class RateRule:
    name: str
    key: str                   # one of KEYS
    limit: int
    window: int                # seconds
    count: str = "recipients"  # one of COUNTS
    algorithm: str = TOKEN_BUCKET
    stage: str = "DATA"        # one of STAGES
    action: str = DEFAULT_ACTION

    def __post_init__(self) -> None:
        problems = [
            f"key must be one of {KEYS}" if self.key not in KEYS else "",
            f"count must be one of {COUNTS}" if self.count not in COUNTS else "",
            f"algorithm must be one of {ALGORITHMS}" if self.algorithm not in ALGORITHMS
            else "",
            f"stage must be one of {STAGES}" if self.stage not in STAGES else "",
            "recipients are only known at DATA or END-OF-MESSAGE"
            if self.count == "recipients" and self.stage == "RCPT" else "",
            "limit and window must be positive" if self.limit < 1 or self.window < 1
            else "",
            "name may not contain ':'" if not self.name or ":" in self.name else "",
        ]
        problem = next((text for text in problems if text), "")
        if problem:
            raise ValueError(f"rate rule {self.name!r}: {problem}")


DEFAULT_RULES = (
    RateRule("sasl-hour", "sasl_username", 500, 3600),
    RateRule("sasl-day", "sasl_username", 2000, 86400, algorithm=SLIDING_WINDOW),
    RateRule("client-hour", "client_address", 1000, 3600, algorithm=SLIDING_WINDOW),
)


@dataclass(frozen=True)
class RateLimitSettings:
    """``[ratelimit]``."""

    enabled: bool = True
    rules: tuple[RateRule, ...] = DEFAULT_RULES
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    exempt_networks: tuple[str, ...] = ()


class RateLimit:
    """The rate-limit ``Check``."""

    name = "ratelimit"

    def __init__(self, settings: RateLimitSettings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.exempt = tuple(ipaddress.ip_network(net, strict=False)
                            for net in settings.exempt_networks)

    def key_value(self, rule: RateRule, request: PolicyRequest) -> str:
        """What the rule counts under for this request ("" when the request has none)."""
        if rule.key == "client_address":
            address = request.client_ip
            if address is None:
                return ""
            bits = self.settings.ipv4_prefix if address.version == 4 else \
                self.settings.ipv6_prefix
            net = ipaddress.ip_network(f"{address}/{bits}", strict=False)
            return str(net.network_address) if net.prefixlen == net.max_prefixlen \
                else str(net)
        return request.get(rule.key).lower()[:MAX_KEY]

    async def check(self, request: PolicyRequest, findings: Findings) -> Verdict | None:
        address = request.client_ip
        if address is not None and any(address in net for net in self.exempt):
            return None
        state = request.protocol_state
        rules: list[RateRule] = []
        charges: list[RateCharge] = []
        for rule in self.settings.rules:
            if rule.stage != state:
                continue
            value = self.key_value(rule, request)
            cost = request.recipient_count if rule.count == "recipients" else 1
            if not value or cost < 1:
                continue
            rules.append(rule)
            charges.append(RateCharge(f"{rule.name}:{value}", rule.algorithm, rule.limit,
                                      float(rule.window), cost))
        if not charges:
            return None
        results = await self.store.rate_consume(charges, self.clock.now())
        for rule, charge, result in zip(rules, charges, results, strict=True):
            if not result.allowed:
                return Verdict(rule.action, self.name,
                               f"rule={rule.name} key={charge.key} cost={charge.cost} "
                               f"retry_after={result.retry_after:.0f}s")
        return None
