"""The log generator's options and its world: domains, people, client addresses, queue ids.

Security: every value comes from the caller's seeded ``random.Random``; nothing is read from
outside. Addresses are documentation or benchmarking ranges (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24, 198.18.0.0/15, 2001:db8::/32) and names end in reserved or made-up domains.
Options are checked when built (``ValueError`` naming the option).
Standards: RFC 5737 and RFC 3849 (documentation addresses), RFC 2544 (198.18.0.0/15), RFC
2606 and RFC 6761 (reserved names); Postfix queue ids, short (hex microseconds and inode)
and long (``enable_long_queue_ids``: base-52 time, ``z``, inode), as in
postfix/src/global/mail_queue.h.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FORMATS = ("bsd", "postlog", "rfc3339", "short-iso", "journal-json")
NAME_SETS = ("all", "classic")
QUEUE_ID_STYLES = ("short", "long")
# 2026-03-05 00:00:00 UTC: a fixed start keeps the output independent of the clock.
DEFAULT_START = 1772668800.0
BASE52 = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"


@dataclass(frozen=True)
class Options:
    """What to generate; each field is also a ``python -m postwarden.lab.maillog`` flag
    except ``start``, ``hostname`` and ``ipv6_share``."""

    lines: int = 100_000
    format: str = "bsd"
    seed: int = 1
    start: float = DEFAULT_START
    utc_offset: int = 60  # minutes east of UTC, for local timestamps
    queue_ids: str = "short"
    names: str = "all"
    hostname: str = "mx1"
    ipv6_share: float = 0.1
    population: int = 0  # > 0: draw remote addresses and client IPs from pools this big

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.names not in NAME_SETS:
            raise ValueError(f"names must be one of {', '.join(NAME_SETS)}")
        if self.queue_ids not in QUEUE_ID_STYLES:
            raise ValueError(f"queue_ids must be one of {', '.join(QUEUE_ID_STYLES)}")
        if self.lines < 0 or self.population < 0 or not -1440 < self.utc_offset < 1440:
            raise ValueError("lines and population must be >= 0, utc_offset within a day")


LOCAL_DOMAINS = ("example.org", "example.com", "mail.example.org")
WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "gamma", "harbor", "iris",
         "juniper", "kilo", "lumen", "maple", "nova", "onyx", "pine", "quartz", "river",
         "sierra", "tango", "umber", "vale", "willow", "xenon", "yarrow", "zephyr")
TLDS = ("test", "example", "invalid", "co.test", "de", "net.example", "org")
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
          "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor",
          "walter", "info", "sales", "support", "noreply", "news", "billing")


class World:
    """Deterministic pools of domains, people, clients and queue ids."""

    def __init__(self, rng: random.Random, options: Options) -> None:
        self.rng = rng
        self.options = options
        self.remote_domains = [f"{rng.choice(WORDS)}{n}.{rng.choice(TLDS)}" for n in range(1500)]
        self.local_users = [f"{p}{n}" if n else p for p in PEOPLE for n in range(4)]
        self._inode = 0x10000
        self._pid = 1000
        self.pids = {name: self.next_pid() for name in ("qmgr", "pickup", "postscreen",
                                                        "anvil", "tlsproxy", "dnsblog")}
        # A fixed population keeps the distinct addresses from growing with the log, so
        # that a memory measurement sees the parser's own growth only.
        self._addresses = [self._fresh_address() for _ in range(options.population)]
        self._ips = [self._fresh_ip() for _ in range(options.population)]

    def next_pid(self) -> int:
        self._pid = self._pid + 1 + self.rng.randrange(7)
        if self._pid > 4_000_000:
            self._pid = 1000
        return self._pid

    def queue_id(self, when: float) -> str:
        self._inode += 1 + self.rng.randrange(3)
        usec = int((when % 1) * 1e6)
        if self.options.queue_ids == "short":
            return f"{usec & 0xFFFFF:05X}{self._inode:X}"
        return (_base(int(when), BASE52, 6) + _base(usec, BASE52, 4) + "z"
                + _base(self._inode, BASE52[:51], 1))

    def remote_domain(self) -> str:
        # A few busy domains and a long tail, as real traffic has.
        pool = self.remote_domains
        return pool[min(int(self.rng.paretovariate(1.1)) - 1, len(pool) - 1)
                    if self.rng.random() < 0.6 else self.rng.randrange(len(pool))]

    def remote_address(self) -> str:
        return self.rng.choice(self._addresses) if self._addresses else self._fresh_address()

    def _fresh_address(self) -> str:
        rng = self.rng
        roll = rng.random()
        local = rng.choice(PEOPLE)
        if roll < 0.01:
            local = f'"{local} {rng.choice(PEOPLE)}"'
        elif roll < 0.015:
            local = f'"{local},{rng.randrange(10)}"'
        elif roll < 0.04:
            local = local.capitalize()
        elif roll < 0.5:
            local = f"{local}{rng.randrange(200)}"
        domain = self.remote_domain()
        if rng.random() < 0.02:
            domain = domain.upper()
        return f"{local}@{domain}"

    def local_address(self) -> str:
        user = self.rng.choice(self.local_users)
        domain = self.rng.choice(LOCAL_DOMAINS)
        if self.rng.random() < 0.02:
            domain = domain.capitalize()
        return f"{user}@{domain}"

    def ip(self) -> str:
        return self.rng.choice(self._ips) if self._ips else self._fresh_ip()

    def _fresh_ip(self) -> str:
        rng = self.rng
        if rng.random() < self.options.ipv6_share:
            net, subnet = rng.randrange(65536), rng.randrange(65536)
            return f"2001:db8:{net:x}:{subnet:x}::{rng.randrange(1, 4096):x}"
        roll = rng.random()
        if roll < 0.1:
            return f"{rng.choice(('192.0.2', '198.51.100', '203.0.113'))}.{rng.randrange(1, 255)}"
        return f"198.{rng.randrange(18, 20)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def client(self) -> tuple[str, str]:
        """(client text as smtpd logs it, address)."""
        address = self.ip()
        if self.rng.random() < 0.35:
            return f"unknown[{address}]", address
        name = f"{self.rng.choice(('mail', 'mx', 'smtp', 'out'))}{self.rng.randrange(20)}"
        return f"{name}.{self.remote_domain()}[{address}]", address


def _base(value: int, alphabet: str, width: int) -> str:
    digits = []
    while value:
        value, digit = divmod(value, len(alphabet))
        digits.append(alphabet[digit])
    return "".join(reversed(digits)).rjust(width, alphabet[0])
