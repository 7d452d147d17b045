"""Detectors: typed log events in, findings (ban, alert or log) out, in bounded memory.

Security: every key (client address, user name) comes from a log line an attacker can fill
with fresh values, so every table here is capped at ``max_keys`` entries and forgets the
least recently used key first; each key keeps at most ``threshold`` timestamps. A flood of
distinct addresses therefore costs bounded memory and time per line, never more.
Standards: Postfix smtpd(8) and postscreen(8) log lines (through ``postwarden.logs.events``);
the Dovecot login and auth lines; fail2ban's findtime/maxretry semantics for the counting
detectors (``threshold`` events within ``window`` seconds).

Theory of operation
-------------------
1. A detector sees only the event classes it names in ``handles`` (a dispatch table built
   once), and returns at most one ``Finding`` per event. It is pure apart from its own
   counters: time comes from the events, never from a clock, so a log replayed gives the
   same findings as the same log followed live.
2. ``Window`` is a sliding window per key: a deque of at most ``threshold`` timestamps.
   When the deque is full and its oldest entry is inside the window, the threshold is
   reached; the deque is then emptied, so one burst gives one finding and the next needs a
   full threshold again.
3. Dovecot logs one ``*-login`` line per session with the number of failed attempts (a
   ``SaslFailure`` with ``attempts``), and its auth process another line per attempt
   (``AuthBackendFailure``, only with ``auth_verbose``). Only the first is counted, once per
   attempt, so a failure is never counted twice (fail2ban's dovecot filter counts both).
   Postfix's own SASL failures come from smtpd, one line per failed AUTH command.
4. "Connection lost to authentication server" is the server's failure, not the client's,
   so it does not count against a client on its own. But Dovecot's auth penalty (2, 4, 8,
   up to 15 s before answering an address that keeps failing) outlasts Postfix's wait, so
   a brute forcer's later attempts are logged exactly so: found against a real Postfix
   and Dovecot. Such a line therefore counts for a client that already failed within the
   window (fail2ban's postfix filter drops these lines, and with them the attack).
5. ``bulk_sender`` keeps, per SASL user, the count of messages in the current window and
   an exponentially weighted average of past windows (the baseline). A window whose count
   reaches both ``threshold`` and ``factor`` times the baseline is a finding: an account
   that usually sends 5 messages an hour and suddenly sends 500 has most likely been
   stolen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from postwarden.logs.events import (
    Event,
    LoginSuccess,
    PolicyDecision,
    Postscreen,
    ProtocolAbuse,
    RateLimit,
    Reject,
    SaslFailure,
    SaslSuccess,
    TlsFailure,
)
from postwarden.logs.watch_settings import Rule, WatchSettings

SERVER_SIDE_FAILURES = ("connection lost to authentication server",)
POSTSCREEN_OFFENCES = ("PREGREET", "HANGUP", "COMMAND", "NON-SMTP", "BARE NEWLINE", "DNSBL",
                       "DENYLISTED", "BLACKLISTED")
RATELIMIT_PASS = frozenset({"DUNNO", "OK", "PREPEND"})
BASELINE_WEIGHT = 0.3   # how much one closed window moves the bulk-sender baseline


@dataclass(frozen=True)
class Finding:
    """What a detector concluded: act on ``client`` (an address; "" when about an account)."""

    detector: str
    subject: str          # the key counted: a client address or a user name
    client: str
    username: str
    count: int
    window: int
    action: str           # ban | alert | log
    detail: str
    time: float


class Window:
    """``threshold`` hits within ``window`` seconds, per key, for at most ``max_keys`` keys."""

    def __init__(self, threshold: int, window: float, max_keys: int) -> None:
        self.threshold, self.window, self.max_keys = threshold, window, max_keys
        self._keys: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def hit(self, key: str, when: float, times: int = 1) -> bool:
        """Record ``times`` hits; true when the threshold is reached (and reset the key)."""
        hits = self._keys.pop(key, None)
        if hits is None:
            hits = deque(maxlen=self.threshold)
            if len(self._keys) >= self.max_keys:
                del self._keys[next(iter(self._keys))]  # least recently used
        self._keys[key] = hits
        for _ in range(min(times, self.threshold)):
            hits.append(when)
        if len(hits) == self.threshold and hits[0] > when - self.window:
            hits.clear()
            return True
        return False

    def recent(self, key: str, when: float) -> bool:
        """Whether the key has a hit within the window before ``when``."""
        hits = self._keys.get(key)
        return hits is not None and len(hits) > 0 and hits[-1] > when - self.window

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)


class Distinct:
    """``threshold`` distinct values within ``window`` seconds, per key, bounded."""

    def __init__(self, threshold: int, window: float, max_keys: int) -> None:
        self.threshold, self.window, self.max_keys = threshold, window, max_keys
        self._keys: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def hit(self, key: str, value: str, when: float) -> tuple[str, ...] | None:
        """The distinct values when the threshold is reached (and reset the key)."""
        seen = self._keys.pop(key, None)
        if seen is None:
            seen = {}
            if len(self._keys) >= self.max_keys:
                del self._keys[next(iter(self._keys))]
        self._keys[key] = seen
        seen.pop(value, None)
        seen[value] = when
        while seen and next(iter(seen.values())) <= when - self.window:
            del seen[next(iter(seen))]
        if len(seen) > self.threshold:  # keep it bounded even with a huge window
            del seen[next(iter(seen))]
        if len(seen) >= self.threshold:
            values = tuple(seen)
            seen.clear()
            return values
        return None


class Detector:
    """Base: a name, its rule, the event classes it reads."""

    name = ""
    handles: tuple[type[Event], ...] = ()

    def __init__(self, rule: Rule, max_keys: int) -> None:
        self.rule = rule
        self.max_keys = max_keys

    def feed(self, event: Event) -> Finding | None:
        raise NotImplementedError

    def finding(self, event: Event, subject: str, *, client: str = "", username: str = "",
                count: int = 0, detail: str = "") -> Finding:
        return Finding(self.name, subject, client, username, count or self.rule.threshold,
                       self.rule.window, self.rule.action, detail, event.time)

    def size(self) -> int:
        return 0


class _PerClient(Detector):
    """Counts events per client address."""

    def __init__(self, rule: Rule, max_keys: int) -> None:
        super().__init__(rule, max_keys)
        self.window = Window(rule.threshold, rule.window, max_keys)

    def count(self, event: Event, client: str, detail: str, times: int = 1) -> Finding | None:
        if client and self.window.hit(client, event.time, times):
            return self.finding(event, client, client=client, detail=detail)
        return None

    def size(self) -> int:
        return len(self.window)


def _counts(failure: SaslFailure) -> bool:
    return not failure.reason.lower().startswith(SERVER_SIDE_FAILURES)


class SaslClient(_PerClient):
    """Failed logins from one client address (Postfix SASL and Dovecot logins)."""

    name = "sasl_client"
    handles = (SaslFailure,)

    def feed(self, event: Event) -> Finding | None:
        assert isinstance(event, SaslFailure)
        if not _counts(event) and not self.window.recent(event.client, event.time):
            return None
        return self.count(event, event.client,
                          f"{self.rule.threshold} failed logins in {self.rule.window}s "
                          f"(last user {event.username or '?'}, {event.source})",
                          max(1, event.attempts))


class SaslAccount(Detector):
    """Failed logins on one account, from anywhere (a distributed guess at one password)."""

    name = "sasl_account"
    handles = (SaslFailure,)

    def __init__(self, rule: Rule, max_keys: int) -> None:
        super().__init__(rule, max_keys)
        self.window = Window(rule.threshold, rule.window, max_keys)

    def feed(self, event: Event) -> Finding | None:
        assert isinstance(event, SaslFailure)
        user = event.username.lower()
        if user and _counts(event) and self.window.hit(user, event.time,
                                                       max(1, event.attempts)):
            return self.finding(event, user, username=user,
                                detail=f"{self.rule.threshold} failed logins for this account "
                                       f"in {self.rule.window}s")
        return None

    def size(self) -> int:
        return len(self.window)


class AccountClients(Detector):
    """Many client addresses on one account: failures (a botnet) or logins (a shared or
    stolen password)."""

    name = "account_clients"
    handles = (SaslFailure, SaslSuccess, LoginSuccess)

    def __init__(self, rule: Rule, max_keys: int) -> None:
        super().__init__(rule, max_keys)
        self.distinct = Distinct(rule.threshold, rule.window, max_keys)

    def feed(self, event: Event) -> Finding | None:
        assert isinstance(event, SaslFailure | SaslSuccess | LoginSuccess)
        user, client = event.username.lower(), event.client
        if not user or not client:
            return None
        clients = self.distinct.hit(user, client, event.time)
        if clients is None:
            return None
        shown = ", ".join(clients[:5]) + (", ..." if len(clients) > 5 else "")
        return self.finding(event, user, username=user, count=len(clients),
                            detail=f"{len(clients)} client addresses in {self.rule.window}s: "
                                   f"{shown}")

    def size(self) -> int:
        return len(self.distinct)


class RelayProbe(_PerClient):
    """``Relay access denied`` rejects per client (open-relay scanners)."""

    name = "relay_probe"
    handles = (Reject,)

    def feed(self, event: Event) -> Finding | None:
        assert isinstance(event, Reject)
        if event.warning or "relay access denied" not in event.restriction.lower():
            return None
        return self.count(event, event.client,
                          f"{self.rule.threshold} relay attempts in {self.rule.window}s "
                          f"(last to {event.recipient or '?'})")


class PostscreenOffender(_PerClient):
    """postscreen test failures (PREGREET, pipelining, non-SMTP, DNSBL ...) and smtpd's
    protocol abuse lines, per client."""

    name = "postscreen"
    handles = (Postscreen, ProtocolAbuse)

    def feed(self, event: Event) -> Finding | None:
        assert isinstance(event, Postscreen | ProtocolAbuse)
        kind = event.kind.upper()
        if isinstance(event, Postscreen) and not kind.startswith(POSTSCREEN_OFFENCES):
            return None
        return self.count(event, event.client,
                          f"{self.rule.threshold} protocol offences in {self.rule.window}s "
                          f"(last {kind})")


class RateLimitHits(_PerClient):
    """Rate limits hit: postwarden policyd's ratelimit decisions and Postfix anvil's."""

    name = "ratelimit"
    handles = (PolicyDecision, RateLimit)

    def feed(self, event: Event) -> Finding | None:
        if isinstance(event, RateLimit):
            return self.count(event, event.client,
                              f"{self.rule.threshold} rate limit hits in {self.rule.window}s "
                              f"(last {event.kind} {event.count})")
        assert isinstance(event, PolicyDecision)
        word = event.action.split(None, 1)[0].upper() if event.action.strip() else "DUNNO"
        if event.check != "ratelimit" or word in RATELIMIT_PASS:
            return None
        key = event.client or event.username or event.sender
        if not key:
            return None
        if not self.window.hit(key, event.time):
            return None
        return self.finding(event, key, client=event.client, username=event.username,
                            detail=f"{self.rule.threshold} rate limit refusals in "
                                   f"{self.rule.window}s ({event.detail or word})")


class TlsFailures(_PerClient):
    """TLS handshake failures per client (scanners, broken or downgrade-probing clients)."""

    name = "tls_failure"
    handles = (TlsFailure,)

    def feed(self, event: Event) -> Finding | None:
        assert isinstance(event, TlsFailure)
        if event.direction != "in":
            return None
        return self.count(event, event.client,
                          f"{self.rule.threshold} TLS handshake failures in "
                          f"{self.rule.window}s (last: {event.reason[:80]})")


class _Usage:
    __slots__ = ("alerted", "baseline", "count", "start", "windows")

    def __init__(self, start: float) -> None:
        self.start, self.count, self.baseline = start, 0, 0.0
        self.windows, self.alerted = 0, False


class BulkSender(Detector):
    """A SASL account sending far more than its own baseline (stolen credentials)."""

    name = "bulk_sender"
    handles = (SaslSuccess,)

    def __init__(self, rule: Rule, max_keys: int) -> None:
        super().__init__(rule, max_keys)
        self._users: dict[str, _Usage] = {}

    def _roll(self, usage: _Usage, now: float) -> None:
        """Close the windows that ended before ``now``, folding them into the baseline."""
        closed = int((now - usage.start) // self.rule.window)
        if closed <= 0:
            return
        average = usage.count if usage.windows == 0 else (
            BASELINE_WEIGHT * usage.count + (1 - BASELINE_WEIGHT) * usage.baseline)
        usage.baseline = average * (1 - BASELINE_WEIGHT) ** min(closed - 1, 64)
        usage.windows += closed
        usage.start += closed * self.rule.window
        usage.count, usage.alerted = 0, False

    def feed(self, event: Event) -> Finding | None:
        assert isinstance(event, SaslSuccess)
        user = event.username.lower()
        if not user:
            return None
        usage = self._users.pop(user, None)
        if usage is None:
            usage = _Usage(event.time)
            if len(self._users) >= self.max_keys:
                del self._users[next(iter(self._users))]
        self._users[user] = usage
        self._roll(usage, event.time)
        usage.count += 1
        limit = max(self.rule.threshold, self.rule.factor * usage.baseline)
        if usage.alerted or usage.count < limit:
            return None
        usage.alerted = True
        return self.finding(event, user, username=user, client=event.client,
                            count=usage.count,
                            detail=f"{usage.count} messages in {self.rule.window}s, baseline "
                                   f"{usage.baseline:.1f} per window")

    def size(self) -> int:
        return len(self._users)


DETECTOR_CLASSES: tuple[type[Detector], ...] = (
    SaslClient, SaslAccount, AccountClients, RelayProbe, PostscreenOffender, RateLimitHits,
    BulkSender, TlsFailures)


class Detectors:
    """Every enabled detector, dispatched by event class."""

    def __init__(self, settings: WatchSettings) -> None:
        self.max_keys = settings.max_keys
        self.detectors = [cls(settings.rule(cls.name), settings.max_keys)
                          for cls in DETECTOR_CLASSES if settings.rule(cls.name).enabled]
        self._dispatch: dict[type[Event], list[Callable[[Event], Finding | None]]] = {}
        self._route()

    def _route(self) -> None:
        self._dispatch.clear()
        for detector in self.detectors:
            for kind in detector.handles:
                self._dispatch.setdefault(kind, []).append(detector.feed)

    def retune(self, settings: WatchSettings) -> list[str]:
        """New settings (a reload): a detector whose threshold and window stay keeps its
        counts and takes the new rule (action, factor); one whose threshold or window
        changed, or that is newly enabled, starts counting afresh; a disabled one goes.
        A new ``max_keys`` starts every detector afresh. The names started afresh."""
        running = {d.name: d for d in self.detectors}
        kept_keys = settings.max_keys == self.max_keys
        self.max_keys = settings.max_keys
        fresh: list[str] = []
        detectors: list[Detector] = []
        for cls in DETECTOR_CLASSES:
            rule = settings.rule(cls.name)
            if not rule.enabled:
                continue
            old = running.get(cls.name)
            if (old is not None and kept_keys
                    and (old.rule.threshold, old.rule.window) == (rule.threshold, rule.window)):
                old.rule = rule
                detectors.append(old)
                continue
            detectors.append(cls(rule, settings.max_keys))
            fresh.append(cls.name)
        self.detectors = detectors
        self._route()
        return fresh

    def feed(self, event: Event) -> list[Finding]:
        handlers = self._dispatch.get(type(event))
        if not handlers:
            return []
        if isinstance(event, PolicyDecision) and event.component == "watch":
            return []  # our own ban lines, read back from the log
        found = [handler(event) for handler in handlers]
        return [f for f in found if f is not None]

    def sizes(self) -> dict[str, int]:
        return {d.name: d.size() for d in self.detectors}


def run(detectors: Detectors, events: Iterable[Event]) -> list[Finding]:
    """Every finding of a sequence of events (tests, replays)."""
    return [f for e in events for f in detectors.feed(e)]
