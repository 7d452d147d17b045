"""Run the probe: find a vantage, run the chosen checks one after another, time it all.

Security: talks only to the one host and port given; each check is one bounded
conversation, and the whole run has a deadline (``RUN_BUDGET``) after which the checks not
yet run are reported ``not-testable``.
Standards: see ``checks`` and ``vantage``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from postwarden.errors import PostwardenError, UsageError
from postwarden.probe import abuse, tlschecks  # noqa: F401 - they register their checks
from postwarden.probe.checks import CHECKS, Check, ProbeContext
from postwarden.probe.client import SmtpClient
from postwarden.probe.model import CheckResult, Verdict
from postwarden.probe.vantage import VantageReport, find_outside

RUN_BUDGET = 60.0  # seconds for the whole probe
# Run last, in this order: once a rate limit fires, the server refuses the prober's
# address for a while, and every check after it would see only that.
LAST = ("PRB-RATE-MESSAGES", "PRB-RATE-CONNECTIONS")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 25
SUBMISSIONS_PORT = 465
DEFAULT_ALSO = ((587, "submission"), (SUBMISSIONS_PORT, "submissions"))


@dataclass(frozen=True)
class ProbeReport:
    target: str
    greeting: str
    vantage: str
    results: tuple[CheckResult, ...]
    seconds: float


def parse_target(text: str | None) -> tuple[str, int]:
    """HOST, HOST:PORT or [IPv6]:PORT (default 127.0.0.1:25)."""
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or str(DEFAULT_PORT)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, str(DEFAULT_PORT)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"probe: {text!r}: expected HOST[:PORT]")
    return host, int(port_text)


def select(only: list[str] | None, skip: list[str] | None) -> list[Check]:
    ids = {c.id for c in CHECKS}
    for name in [*(only or []), *(skip or [])]:
        if name not in ids:
            raise UsageError(f"probe: unknown check {name!r} (see probe --list)")
    chosen = [c for c in CHECKS if (not only or c.id in only) and c.id not in (skip or [])]
    return sorted(chosen, key=lambda c: LAST.index(c.id) + 1 if c.id in LAST else 0)


async def run(host: str, port: int, *, source: str | None = None, timeout: float = 10.0,
              only: list[str] | None = None, skip: list[str] | None = None,
              submission: bool | None = None,
              also: Sequence[tuple[int, str]] | None = None) -> ProbeReport:
    """Probe host:port. ``submission`` judges the port as a submission port (True), as an
    MX port (False), or by its number (None: 587 and 465 are submission). ``also`` names
    more ports of the server for the relay test, as (port, "submission") (STARTTLS) or
    (port, "submissions") (implicit TLS); by default, with port 25: 587 and 465."""
    chosen = select(only, skip)
    started = time.monotonic()
    try:
        async with SmtpClient(host, port, source=source, timeout=timeout) as first:
            greeting = str(first.banner)
    except (PostwardenError, OSError) as exc:
        raise PostwardenError(f"probe: cannot talk SMTP to {host}:{port}: {exc}") from None
    words = greeting.split()
    ctx = ProbeContext(host, port, timeout, VantageReport(None),
                       server_name=words[1] if len(words) > 1 else host)
    if submission is not None:
        ctx.submission_ports = frozenset({port}) if submission else frozenset()
    if also is None:
        also = DEFAULT_ALSO if port == DEFAULT_PORT else ()
    ctx.other_ports = tuple(p for p, _ in also if p != port)
    ctx.submission_ports |= {p for p, _ in also}
    ctx.implicit_tls_ports = frozenset(
        {p for p, kind in also if kind == "submissions"}
        | ({port} if port == SUBMISSIONS_PORT and submission is not False else set()))
    ctx.vantage = await find_outside(host, port, source, timeout=timeout)
    results: list[CheckResult] = []
    for check in chosen:
        left = RUN_BUDGET - (time.monotonic() - started)
        if left <= 0:
            results.append(check.result(Verdict.NOT_TESTABLE, "the probe ran out of time",
                                        (), port))
            continue
        try:
            async with asyncio.timeout(left):
                results.append(await check.run(ctx))
        except (PostwardenError, OSError, TimeoutError) as exc:
            results.append(check.result(Verdict.NOT_TESTABLE, f"the check could not run: "
                                        f"{exc or type(exc).__name__}", (), port))
    vantage = (str(ctx.vantage.outside) if ctx.vantage.outside
               else f"none outside ({ctx.vantage.reason})")
    return ProbeReport(f"{host}:{port}", greeting, vantage, tuple(results),
                       time.monotonic() - started)
