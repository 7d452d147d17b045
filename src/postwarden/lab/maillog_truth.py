"""The ground truth of a generated mail log: what pflogsumm 1.1.5 must print for it.

Security: pure bookkeeping over ``Fact`` values that the generator (``maillog``) creates
itself; nothing is read from outside. Client names and addresses are matched with anchored
regular expressions without nested repetition.
Standards: pflogsumm 1.1.5 (Debian 1.1.5-8): its Grand Totals, its syslog name pattern, the
``%rcvdMsg``/``%msgSizes`` bookkeeping and ``gimme_domain``; Postfix syslog_name
(``postfix-<instance>``, ``postfix/<service>/<daemon>``), MULTI_INSTANCE_README.

Theory of operation
-------------------
Every line the generator writes that matters to the totals carries a ``Fact`` (a client=
line, a qmgr size= line, a delivery, a reject...). The facts are fed, in output order, to two
``Counter``s that count exactly as pflogsumm 1.1.5 does (the ``%rcvdMsg``/``%msgSizes``
bookkeeping, per-recipient deliveries, distinct deferred queue ids, the sender domain of
``from=<>`` taken from the client name by pflogsumm's ``gimme_domain``...). They differ only
in which syslog names they see:

- ``generic``: every ``postfix`` and ``postfix-<instance>`` name, the daemon being the last
  path component (``postfix/submissions/smtpd`` is an smtpd). These are the totals a parser
  that understands every syslog_name form must print.
- ``pflogsumm``: what pflogsumm 1.1.5 itself sees. Its name pattern accepts only
  ``postfix[/smtps|/submission]/<daemon>``, so ``postfix/submissions/smtpd`` becomes the
  command ``submissions/smtpd`` (its client= and reject lines are not counted) and
  ``postfix-out/...`` lines are skipped whole.

With ``names="classic"`` no such name is written and both counts are equal. A ``Truth``
holds both, for exactly the lines written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

TOTALS_KEYS = ("received", "delivered", "forwarded", "deferred", "bounced", "rejected",
               "reject_warnings", "held", "discarded", "bytes_received", "bytes_delivered",
               "senders", "sending_hosts", "recipients", "recipient_hosts")


@dataclass(frozen=True)
class Totals:
    """pflogsumm's "Grand Totals", under the keys of ``logs summary --format json``."""

    received: int = 0
    delivered: int = 0
    forwarded: int = 0
    deferred: int = 0
    bounced: int = 0
    rejected: int = 0
    reject_warnings: int = 0
    held: int = 0
    discarded: int = 0
    bytes_received: int = 0
    bytes_delivered: int = 0
    senders: int = 0
    sending_hosts: int = 0
    recipients: int = 0
    recipient_hosts: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Truth:
    """What a generated log must summarise to; ``pflogsumm`` is what pflogsumm 1.1.5 prints."""

    lines: int
    totals: Totals
    deferrals: int
    pflogsumm: Totals
    pflogsumm_deferrals: int

    def as_json(self) -> dict[str, object]:
        return {"lines": self.lines, "totals": self.totals.as_dict(),
                "deferrals": self.deferrals, "pflogsumm": self.pflogsumm.as_dict(),
                "pflogsumm_deferrals": self.pflogsumm_deferrals}


@dataclass(frozen=True, slots=True)
class Fact:
    """What one line means to the totals. ``kind``: client pickup size delivery reject
    cleanup forget; ``value``: client, sender, recipient or action; ``detail``: status."""

    kind: str
    qid: str = ""
    value: str = ""
    number: int = 0
    detail: str = ""


# -- counting as pflogsumm does ------------------------------------------------------------

_PFLOGSUMM_NAME = re.compile(r"postfix(?:/(?:smtps|submission))?/([^\[:]*)")
_IPV4_CLIENT = re.compile(r"([^\[]*)\[((?:\d{1,3}\.){3}\d{1,3})\]")
_SLASH_CLIENT = re.compile(r"([^/]*)/([0-9a-f.:]+)", re.IGNORECASE)
_ANY_CLIENT = re.compile(r"([^\[(/]*)[\[(/]([^\])]+)[\])]:?\d*$")
_REGISTERED = re.compile(r"(.*)\.([^.]+)\.([^.]{3}|[^.]{2,3}\.[^.]{2})$")


def pflogsumm_command(name: str) -> str | None:
    """The command pflogsumm 1.1.5 files a syslog name under; None when it skips the line."""
    match = _PFLOGSUMM_NAME.match(name)
    return match.group(1) if match else None


def generic_command(name: str) -> str | None:
    """The daemon of any ``postfix[-instance]/.../daemon`` name; None for other programs."""
    if not name.startswith("postfix") or "/" not in name:
        return None
    return name.rsplit("/", 1)[1]


def client_domain(client: str) -> str:
    """pflogsumm's gimme_domain: ``mail.example.com[192.0.2.1]`` -> ``example.com``, an
    unknown client -> its address; names it cannot shorten are kept as they are."""
    match = (_IPV4_CLIENT.match(client) or _SLASH_CLIENT.match(client)
             or _ANY_CLIENT.match(client))
    domain, address = (match.group(1), match.group(2)) if match else ("", "")
    if domain in ("", "unknown"):
        return address
    shorter = _REGISTERED.match(domain)
    return f"{shorter.group(2)}.{shorter.group(3)}".lower() if shorter else domain


def _fold(address: str) -> str:
    """Lower-case from the first ``@`` on, as pflogsumm does without ``-i``."""
    at = address.find("@")
    return address if at < 0 else address[:at] + address[at:].lower()


class Counter:
    """pflogsumm 1.1.5's Grand Totals bookkeeping over facts (theory of operation)."""

    def __init__(self, command: Callable[[str], str | None]) -> None:
        self._command = command
        self._counts = dict.fromkeys(("received", "delivered", "forwarded", "deferred",
                                      "deferrals", "bounced", "rejected", "reject_warnings",
                                      "held", "discarded", "bytes_received",
                                      "bytes_delivered"), 0)
        self._received: dict[str, str] = {}  # qid -> client domain or "pickup"
        self._sizes: dict[str, int] = {}
        self._deferred: set[str] = set()
        self._senders: set[str] = set()
        self._sending_hosts: set[str] = set()
        self._recipients: set[str] = set()
        self._recipient_hosts: set[str] = set()

    def feed(self, name: str, fact: Fact) -> None:
        if fact.kind == "forget":  # the generator knows this queue id never recurs
            self._received.pop(fact.qid, None)
            self._sizes.pop(fact.qid, None)
            self._deferred.discard(fact.qid)
            return
        command = self._command(name)
        if command is None:
            return
        counts = self._counts
        if fact.kind == "client" and command in ("smtpd", "postscreen"):
            counts["received"] += 1
            self._received[fact.qid] = client_domain(fact.value)
        elif fact.kind == "pickup" and command == "pickup":
            counts["received"] += 1
            self._received[fact.qid] = "pickup"
        elif ((fact.kind == "reject" and command in ("smtpd", "postscreen"))
              or (fact.kind == "cleanup" and command == "cleanup")):
            counts[_ACTION_TOTAL[fact.value]] += 1
        elif command in ("smtpd", "postscreen", "master", "cleanup"):
            return
        elif fact.kind == "size":
            self._size(fact)
        elif fact.kind == "delivery":
            self._delivery(fact)

    def _size(self, fact: Fact) -> None:
        if fact.qid in self._sizes:
            return
        self._sizes[fact.qid] = fact.number
        whence = self._received.pop(fact.qid, None)
        if whence is None:
            return  # a bounce notice or forwarded copy: sized, never received
        sender = _fold(fact.value) if fact.value else "from=<>"
        local, at, domain = sender.partition("@")
        if not (local and at and domain):
            domain = sender if whence == "pickup" else whence
        self._senders.add(sender)
        self._sending_hosts.add(domain)
        self._counts["bytes_received"] += fact.number

    def _delivery(self, fact: Fact) -> None:
        counts = self._counts
        if fact.detail == "sent":
            if fact.number:  # "forwarded as"
                counts["forwarded"] += 1
                return
            recipient = _fold(fact.value)
            local, at, domain = recipient.partition("@")
            counts["delivered"] += 1
            self._recipients.add(recipient)
            self._recipient_hosts.add(domain if local and at else recipient)
            counts["bytes_delivered"] += self._sizes.get(fact.qid, 0)
        elif fact.detail == "deferred":
            counts["deferrals"] += 1
            if fact.qid not in self._deferred:
                self._deferred.add(fact.qid)
                counts["deferred"] += 1
        elif fact.detail == "bounced":
            counts["bounced"] += 1

    @property
    def deferrals(self) -> int:
        return self._counts["deferrals"]

    def totals(self) -> Totals:
        counts = {key: value for key, value in self._counts.items() if key != "deferrals"}
        return Totals(**counts, senders=len(self._senders),
                      sending_hosts=len(self._sending_hosts),
                      recipients=len(self._recipients),
                      recipient_hosts=len(self._recipient_hosts))


_ACTION_TOTAL = {"reject": "rejected", "milter-reject": "rejected",
                 "reject_warning": "reject_warnings", "warning": "reject_warnings",
                 "hold": "held", "milter-hold": "held", "discard": "discarded",
                 "milter-discard": "discarded"}
