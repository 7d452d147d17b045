"""The decision pipeline: checks in order, a time budget, a fail-safe answer, counters.

Security: requests are untrusted but already bounded by the codec. A check that raises or
hangs cannot take the service down or hold a connection past the budget: the request gets
the configured fail-safe action, one log line (with a traceback for internal errors) and a
count. Log lines quote request values escaped and clipped; SASL names, certificate data
and store URLs are never logged here.
Standards: SMTPD_POLICY_README (one action per reply; DUNNO rather than OK for "no
objection"); access(5); Prometheus text exposition format 0.0.4.

Theory of operation
-------------------
``decide`` runs the checks in order with one shared ``Findings``. The first verdict that is
final (not DUNNO or PREPEND) is the answer and later checks do not run; otherwise the first
PREPEND is the answer (a reply carries one action) and the other PREPENDs wait, by
``instance``, for the next request of the same message: the next RCPT, or DATA when the
service is also consulted in smtpd_data_restrictions (as harden wires it), so SPF's
Received-SPF and greylisting's X-Greylist both reach the message. Otherwise DUNNO.
The whole decision runs under a budget (``_Budget``: ``asyncio.timeout``'s logic made
cheaper, one timer serving the decisions that start within 10 ms of each other). A
timeout, or any exception other than ``CancelledError``, gives the fail-safe verdict.
Exceptions are counted by kind: an exception class may carry ``failure_kind = "store"``
or ``"dns"`` (the store and DNS layers' errors do), anything else counts as
``internal``. An SPF temperror that a check turned into an answer also counts as a DNS
error, though the request got its normal answer. In dry-run mode the decision is made,
logged and counted as usual, and the reply is DUNNO.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from postwarden.errors import clip
from postwarden.logbatch import direct_writer
from postwarden.policy.greylist import Greylist
from postwarden.policy.model import (
    Check,
    Clock,
    Findings,
    PolicyRequest,
    Resolver,
    SpfResult,
    Verdict,
)
from postwarden.policy.protocol import encode_reply
from postwarden.policy.ratelimit import RateLimit
from postwarden.policy.spf import SpfCheck
from postwarden.policy.store import Store
from postwarden.policy.whitelist import load_clients, load_recipients
from postwarden.settings import Settings

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # messages whose further headers wait for their next request
# Seconds; a policy decision is expected in well under 5 ms, DNS can take seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
ERROR_KINDS = ("timeout", "internal", "store", "dns", "protocol")


# The line each decision logs. The free text (the reason, the action's text) goes last,
# so the key=value part before it splits on spaces.
_DECISION = ("policyd: client=%s helo=%s sender=<%s> recipient=<%s> state=%s action=%s "
             "check=%s ms=%.1f%s reason=%s")


@functools.lru_cache(maxsize=1024)
def action_word(action: str) -> str:
    """The access(5) keyword of an action, for a bounded metric label."""
    word = action.split(None, 1)[0].upper() if action.strip() else "DUNNO"
    return word if word.replace("_", "").isalnum() and len(word) <= 20 else "OTHER"


@dataclass
class Counters:
    """What the metrics endpoint shows; only the event loop's thread writes it."""

    requests: int = 0
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (check, word)
    errors: Counter[str] = field(default_factory=Counter)
    _within: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    connections: int = 0

    def observe(self, seconds: float) -> None:
        self.latency_sum += seconds
        first = bisect.bisect_left(LATENCY_BUCKETS, seconds)  # the first bound >= seconds
        if first < len(LATENCY_BUCKETS):
            self._within[first] += 1

    @property
    def buckets(self) -> list[int]:
        """Cumulative counts: how many decisions took at most each bound."""
        return list(itertools.accumulate(self._within))

    def prometheus(self) -> str:
        """The counters in the Prometheus text exposition format."""
        p = "postwarden_policyd"
        out = [f"# HELP {p}_requests_total Policy requests decided.",
               f"# TYPE {p}_requests_total counter", f"{p}_requests_total {self.requests}",
               f"# HELP {p}_actions_total Answers by the check that gave them.",
               f"# TYPE {p}_actions_total counter"]
        out += [f'{p}_actions_total{{check="{c}",action="{a}"}} {n}'
                for (c, a), n in sorted(self.actions.items())]
        out += [f"# HELP {p}_errors_total Requests answered with the fail-safe action, and "
                "connections closed for protocol errors, by kind.",
                f"# TYPE {p}_errors_total counter"]
        kinds = sorted(set(ERROR_KINDS) | set(self.errors))
        out += [f'{p}_errors_total{{kind="{k}"}} {self.errors[k]}' for k in kinds]
        for kind in ("store", "dns"):
            out += [f"# TYPE {p}_{kind}_errors_total counter",
                    f"{p}_{kind}_errors_total {self.errors[kind]}"]
        out += [f"# HELP {p}_connections Open client connections.",
                f"# TYPE {p}_connections gauge", f"{p}_connections {self.connections}",
                f"# HELP {p}_decision_seconds Time to decide one request.",
                f"# TYPE {p}_decision_seconds histogram"]
        out += [f'{p}_decision_seconds_bucket{{le="{b}"}} {n}'
                for b, n in zip(LATENCY_BUCKETS, self.buckets, strict=True)]
        out += [f'{p}_decision_seconds_bucket{{le="+Inf"}} {self.requests}',
                f"{p}_decision_seconds_sum {self.latency_sum:.6f}",
                f"{p}_decision_seconds_count {self.requests}"]
        return "\n".join(out) + "\n"


def _shown(text: str, limit: int = 200) -> str:
    """A request value for a key=value log field: escaped, clipped, without spaces."""
    if _clean(text, limit) and " " not in text:
        return text  # what clip() would return, found without encoding
    return clip(text, limit).replace(" ", "\\x20")


def _free_text(text: str, limit: int = 200) -> str:
    """The free-text end of a log line: escaped and clipped, spaces kept."""
    return text if _clean(text, limit) else clip(text, limit)


def _clean(text: str, limit: int) -> bool:
    """Whether ``clip`` would return the text unchanged: short printable ASCII, no
    backslash."""
    return len(text) <= limit and text.isascii() and text.isprintable() and "\\" not in text


class _Budget:
    """What ``asyncio.timeout`` does for one decision: when its time is up the task is
    cancelled, and ``spent_it`` tells that cancellation (then taken back) from any other,
    which must go on. Its timer is its group's (``_Budgets``)."""

    __slots__ = ("cancelling", "group", "spent", "task")

    def __init__(self, task: asyncio.Task[object], group: set[_Budget]) -> None:
        self.task = task
        self.cancelling = task.cancelling()  # cancellations asked before this one
        self.spent = False
        self.group = group

    def expire(self) -> None:
        self.spent = True
        self.task.cancel()

    def spent_it(self) -> bool:
        """On ``CancelledError``: whether the budget caused it and nothing else asked
        for the task to stop (then the cancellation is withdrawn)."""
        return self.spent and self.task.uncancel() <= self.cancelling

    def cancel(self) -> None:
        self.group.discard(self)


class _Budgets:
    """The budget timers of one loop's decisions. Every budget has the same length, so
    the decisions that start within one ``tick`` of each other share a timer, which
    fires at most a tick after the budget is over (a tick is 10 ms, or a hundredth of a
    shorter budget) and cancels those still running. A decision costs a set entry, not a
    timer handle in the loop's heap: the heap's comparisons are Python code, and a
    handle per decision was most of the budget's cost. At most ``seconds / tick`` timers
    are pending."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.loop = loop
        self.seconds = seconds
        self.tick = min(0.01, seconds / 100)
        self.groups: dict[int, set[_Budget]] = {}  # by the tick their timer fires at

    def start(self) -> _Budget:
        task = asyncio.current_task(self.loop)
        if task is None:
            raise RuntimeError("a decision runs in a task")
        slot = math.ceil((self.loop.time() + self.seconds) / self.tick)
        group = self.groups.get(slot)
        if group is None:
            group = self.groups[slot] = set()
            self.loop.call_at(slot * self.tick, self._expire, slot)
        budget = _Budget(task, group)
        group.add(budget)
        return budget

    def _expire(self, slot: int) -> None:
        for budget in self.groups.pop(slot, ()):
            budget.expire()


class PolicyService:
    """Decides requests with a list of checks; never raises but ``CancelledError``."""

    def __init__(self, checks: Sequence[Check], *, budget: float,
                 failsafe_action: str = "DUNNO", dry_run: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 counters: Counters | None = None) -> None:
        encode_reply(failsafe_action)  # refuse an unsendable fail-safe now, not per request
        self.checks = tuple(checks)
        self.budget = budget
        self.failsafe = failsafe_action
        self.dry_run = dry_run
        self.clock = clock
        self.counters = counters or Counters()
        self._pending: OrderedDict[str, list[Verdict]] = OrderedDict()
        self._budgets: _Budgets | None = None
        self._write_line: Callable[[str], None] | None = None  # logbatch.direct_writer
        self._writer_due = float("-inf")  # when to ask for it again

    async def decide(self, request: PolicyRequest) -> Verdict:
        started = self.clock()
        running: list[str] = ["-"]
        findings = Findings()
        budgets = self._budgets
        if budgets is None or not budgets.loop.is_running():  # (a service outliving a loop)
            budgets = self._budgets = _Budgets(asyncio.get_running_loop(), self.budget)
        budget = budgets.start()
        try:
            verdict = await self._run(request, findings, running)
            encode_reply(verdict.action)
        except asyncio.CancelledError:
            if not budget.spent_it():
                raise
            self.counters.errors["timeout"] += 1
            verdict = Verdict(self.failsafe, "failsafe",
                              f"budget of {self.budget:g}s spent in check {running[0]}")
        except Exception as exc:
            verdict = self._failed(request, exc, running[0])
        finally:
            budget.cancel()
        elapsed = self.clock() - started
        if findings.spf is not None and findings.spf.result is SpfResult.TEMPERROR:
            self.counters.errors["dns"] += 1  # RFC 7208 2.6.6: a DNS failure, answered
        word = action_word(verdict.action)
        self.counters.requests += 1
        self.counters.actions[verdict.check, word] += 1
        self.counters.observe(elapsed)
        if started >= self._writer_due:
            self._write_line = direct_writer(log, logging.INFO)
            self._writer_due = started + 1.0
        if self._write_line is not None or log.isEnabledFor(logging.INFO):
            self._log(request, verdict, word, elapsed)
        if self.dry_run and verdict.action != "DUNNO":
            return Verdict("DUNNO", verdict.check, f"dry run, would answer {verdict.action}")
        return verdict

    async def _run(self, request: PolicyRequest, findings: Findings,
                   running: list[str]) -> Verdict:
        prepends: list[Verdict] = []
        for check in self.checks:
            running[0] = check.name
            verdict = await check.check(request, findings)
            if verdict is None:
                continue
            if verdict.final:
                return verdict
            if verdict.action.split(None, 1)[0].upper() == "PREPEND":
                prepends.append(verdict)
        running[0] = "-"
        return self._one_prepend(request.instance, prepends)

    def _one_prepend(self, instance: str, prepends: list[Verdict]) -> Verdict:
        """One reply carries one action: the first header now, the others with the next
        requests of the same message (the next RCPT, or DATA)."""
        queue = [*self._pending.pop(instance, []), *prepends] if instance else prepends
        if not queue:
            return Verdict("DUNNO", "none")
        if instance and queue[1:]:
            self._pending[instance] = queue[1:]
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return queue[0]

    def _failed(self, request: PolicyRequest, exc: Exception, check: str) -> Verdict:
        kind = getattr(exc, "failure_kind", "internal")
        kind = kind if kind in ERROR_KINDS else "internal"
        self.counters.errors[kind] += 1
        log.error("policyd: client=%s check=%s error=%s: %s; answering %s",
                  _shown(request.client_address), check, kind, _shown(str(exc)),
                  self.failsafe, exc_info=kind == "internal")
        return Verdict(self.failsafe, "failsafe", f"{kind} error in check {check}")

    def _log(self, request: PolicyRequest, verdict: Verdict, word: str,
             elapsed: float) -> None:
        get = request.attributes.get
        client, helo = get("client_address", ""), get("helo_name", "")
        sender, recipient = get("sender", ""), get("recipient", "")
        state = get("protocol_state", "").upper()
        every = client + helo + sender + recipient + state
        if not (len(client) <= 60 and len(helo) <= 80 and len(sender) <= 200
                and len(recipient) <= 200 and len(state) <= 20
                and _clean(every, len(every)) and " " not in every):
            # (the usual request needs none of this: one test of all five at once)
            client, helo = _shown(client, 60), _shown(helo, 80)
            sender, recipient = _shown(sender), _shown(recipient)
            state = _shown(state, 20)
        args = (client, helo, sender, recipient, state, word, verdict.check, elapsed * 1000,
                " dry_run=yes" if self.dry_run else "",
                _free_text(verdict.reason or verdict.action))
        if self._write_line is not None:
            self._write_line(_DECISION % args)
        else:
            log.info(_DECISION, *args)


class SystemClock:
    def now(self) -> float:
        return time.time()


def build_checks(settings: Settings, store: Store, resolver: Resolver,
                 clock: Clock) -> list[Check]:
    """The enabled checks in their order: rate limits (a flood is refused before it costs
    DNS queries), SPF (its result feeds greylisting), greylisting."""
    checks: list[Check] = []
    if settings.ratelimit.enabled:
        checks.append(RateLimit(settings.ratelimit, store, clock))
    if settings.spf.enabled:
        checks.append(SpfCheck(settings.spf, resolver))
    if settings.greylist.enabled:
        g = settings.greylist
        checks.append(Greylist(g, store, clock, clients=load_clients(g.whitelist_clients),
                               recipients=load_recipients(g.whitelist_recipients)))
    return checks
