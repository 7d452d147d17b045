"""Prometheus metrics of the milter: counters per outcome, and a tiny HTTP endpoint.

Security: the endpoint answers anyone who reaches its socket (bind it to loopback or a
management network); it reads at most ``scrape.MAX_HTTP`` bytes of request head within
``scrape.HTTP_TIMEOUT`` seconds, answers and closes. It shows counts only: no addresses, domains
or names, so label values come from fixed sets (result words, actions), never from mail.
Standards: Prometheus text exposition format 0.0.4; RFC 9112 (just enough HTTP/1.1 for a
scrape).

Theory of operation
-------------------
Each process keeps its own ``MilterCounters`` (only the event loop's thread writes them).
XXX: with ``[milter] workers`` above 1 every worker serves the metrics socket it inherited,
so a scrape sees the counters of whichever worker accepted it; each answer carries a
``worker`` label so that series do not mix, and the totals are their sum. Shared-memory
counters would be the way out.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from dataclasses import dataclass, field

from postwarden import scrape

# Seconds from end of message to the reply: signing takes about a millisecond, DNS more.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0)
RESULT_WORDS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror",
                          "permerror", "policy"})


def _word(text: str) -> str:
    """A label value from a fixed set (anything else is "other")."""
    return text if text in RESULT_WORDS else "other"


@dataclass
class MilterCounters:
    """What the metrics endpoint shows."""

    worker: int = 0
    messages: Counter[str] = field(default_factory=Counter)     # by action taken
    signatures: Counter[str] = field(default_factory=Counter)   # made, by algorithm
    dkim: Counter[str] = field(default_factory=Counter)         # verified, by result
    spf: Counter[str] = field(default_factory=Counter)
    dmarc: Counter[tuple[str, str]] = field(default_factory=Counter)  # (result, applied)
    errors: Counter[str] = field(default_factory=Counter)
    forged_removed: int = 0
    connections: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    seconds_sum: float = 0.0
    seconds_count: int = 0

    def observe(self, seconds: float) -> None:
        self.seconds_sum += seconds
        self.seconds_count += 1
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1

    def prometheus(self) -> str:
        """The counters in the Prometheus text exposition format."""
        p, w = "postwarden_milter", f'worker="{self.worker}"'
        out: list[str] = []

        def family(name: str, kind: str, text: str, rows: list[tuple[str, int | float]]
                   ) -> None:
            out.extend([f"# HELP {p}_{name} {text}", f"# TYPE {p}_{name} {kind}"])
            out.extend(f"{p}_{name}{{{w}{labels}}} {value}" for labels, value in rows)

        family("messages_total", "counter", "Messages by what the milter did.",
               [(f',action="{a}"', n) for a, n in sorted(self.messages.items())])
        family("signatures_total", "counter", "DKIM signatures made, by algorithm.",
               [(f',algorithm="{a}"', n) for a, n in sorted(self.signatures.items())])
        family("dkim_results_total", "counter", "DKIM signatures verified, by result.",
               [(f',result="{r}"', n) for r, n in sorted(self.dkim.items())])
        family("spf_results_total", "counter", "SPF results used, by result.",
               [(f',result="{r}"', n) for r, n in sorted(self.spf.items())])
        family("dmarc_results_total", "counter",
               "DMARC evaluations, by result and by the disposition applied.",
               [(f',result="{r}",applied="{a}"', n)
                for (r, a), n in sorted(self.dmarc.items())])
        family("errors_total", "counter", "Messages given the fail-safe or left unchecked, "
               "by kind.", [(f',kind="{k}"', n) for k, n in sorted(self.errors.items())])
        family("forged_authentication_results_removed_total", "counter",
               "Incoming Authentication-Results fields that claimed our authserv-id.",
               [("", self.forged_removed)])
        family("connections", "gauge", "Open MTA connections.", [("", self.connections)])
        out += [f"# HELP {p}_message_seconds Time from end of message to the reply.",
                f"# TYPE {p}_message_seconds histogram"]
        out += [f'{p}_message_seconds_bucket{{{w},le="{b}"}} {n}'
                for b, n in zip(BUCKETS, self.buckets, strict=True)]
        out += [f'{p}_message_seconds_bucket{{{w},le="+Inf"}} {self.seconds_count}',
                f"{p}_message_seconds_sum{{{w}}} {self.seconds_sum:.6f}",
                f"{p}_message_seconds_count{{{w}}} {self.seconds_count}"]
        return "\n".join(out) + "\n"

    def dkim_result(self, word: str) -> None:
        self.dkim[_word(word)] += 1

    def spf_result(self, word: str) -> None:
        self.spf[_word(word)] += 1

    def dmarc_result(self, word: str, applied: str) -> None:
        self.dmarc[(_word(word), applied if applied in ("none", "quarantine", "reject")
                    else "other")] += 1


async def start_metrics(sock: socket.socket, counters: MilterCounters) -> asyncio.Server:
    """Serve ``counters`` on the bound TCP socket ``sock`` (GET /metrics)."""
    return await scrape.serve(sock, counters.prometheus)
