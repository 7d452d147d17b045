"""The text report of ``logs summary``: pflogsumm's Grand Totals block (same layout, same
units), its traffic tables, and the security section.

Security: keys printed here (addresses, host names, reasons) come from log lines; control
characters are escaped (``shown``) so a hostile HELO or address cannot drive the terminal.
Standards: pflogsumm 1.1.5's report layout (units k and m above 512k and 512m, base 1024).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from postwarden.logs.summary import Summary

MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
               "Dec")
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


def shown(text: str) -> str:
    """Untrusted text, one line, without terminal control characters."""
    return text.translate(_CONTROL)


def units(value: float) -> tuple[int, str]:
    """pflogsumm's integer display: k above 512k, m above 512m (base 1024), truncated."""
    if value > 536870912:
        return int(value / 1048576), "m"
    if value > 524288:
        return int(value / 1024), "k"
    return int(value), " "


def _n(value: float) -> str:
    number, unit = units(value)
    return f"{number:6d}{unit}"


def _title(title: str) -> list[str]:
    return ["", title, "-" * len(title)]


def grand_totals(s: Summary) -> list[str]:
    t = s.totals()
    total = t["delivered"] + t["rejected"] + t["discarded"]
    rej_pct = int(t["rejected"] / total * 100) if total else 0
    dis_pct = int(t["discarded"] / total * 100) if total else 0
    deferrals = ""
    if s.deferrals:
        number, unit = units(s.deferrals)
        deferrals = f"  ({number}{unit} deferrals)"
    return [
        *_title("Grand Totals"), "messages", "",
        f" {_n(t['received'])}  received",
        f" {_n(t['delivered'])}  delivered",
        f" {_n(t['forwarded'])}  forwarded",
        f" {_n(t['deferred'])}  deferred{deferrals}",
        f" {_n(t['bounced'])}  bounced",
        f" {_n(t['rejected'])}  rejected ({rej_pct}%)",
        f" {_n(t['reject_warnings'])}  reject warnings",
        f" {_n(t['held'])}  held",
        f" {_n(t['discarded'])}  discarded ({dis_pct}%)",
        "",
        f" {_n(t['bytes_received'])}  bytes received",
        f" {_n(t['bytes_delivered'])}  bytes delivered",
        f" {_n(t['senders'])}  senders",
        f" {_n(t['sending_hosts'])}  sending hosts/domains",
        f" {_n(t['recipients'])}  recipients",
        f" {_n(t['recipient_hosts'])}  recipient hosts/domains",
    ]


_TRAFFIC_HEAD = ("received  delivered   deferred    bounced     rejected\n"
                 "    " + "-" * 68)


def traffic(s: Summary) -> list[str]:
    lines: list[str] = []
    days = sorted(s.per_day.items())
    if len(days) > 1:
        lines += [*_title("Per-Day Traffic Summary"), "    date          " + _TRAFFIC_HEAD]
        for (y, m, d), row in days:
            name = MONTH_NAMES[m - 1] if 1 <= m <= 12 else "???"
            lines.append(f"    {name} {d:2d} {y:04d}" + "".join(f"    {_n(v)}" for v in row))
    ndays = max(len(days), 1)
    kind = "Daily Average" if ndays > 1 else "Summary"
    lines += [*_title(f"Per-Hour Traffic {kind}"), "    time          " + _TRAFFIC_HEAD]
    for hour, row in enumerate(s.per_hour):
        values = [v / ndays + 0.5 if ndays > 1 else v for v in row]
        lines.append(f"    {hour:02d}00-{hour + 1:02d}00  "
                     + "".join(f"    {_n(v)}" for v in values))
    return lines


def _table(title: str, rows: Iterable[tuple[str, float]]) -> list[str]:
    body = [f" {_n(count)}  {shown(key)}" for key, count in rows]
    if not body:
        return [*_title(title), " none"]
    return [*_title(title), *body]


def domains(s: Summary, top: int) -> list[str]:
    # the top rows only (heapq: the tables hold every domain and address seen)
    rcpt = heapq.nsmallest(top, s.recipient_domains.items(),
                           key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    lines = [*_title(f"Host/Domain Summary: Message Delivery (top {top})"),
             " sent cnt  bytes   defers   avg dly max dly host/domain",
             " -------- -------  -------  ------- ------- -----------"]
    for dom, (cnt, size, defers, dly, dmax) in rcpt:
        avg = dly / cnt if cnt else 0.0
        lines.append(f" {_n(cnt)}  {_n(size)}  {_n(defers)}  {_dly(avg)}  {_dly(dmax)}  "
                     f"{shown(dom)}")
    sent = heapq.nsmallest(top, s.sending_domains.items(),
                           key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    lines += [*_title(f"Host/Domain Summary: Messages Received (top {top})"),
              " msg cnt   bytes   host/domain", " -------- -------  -----------"]
    lines += [f" {_n(c)}  {_n(b)}  {shown(d)}" for d, (c, b) in sent]
    return lines


def _dly(seconds: float) -> str:
    if seconds > 3600:
        return f"{seconds / 3600:5.1f} h"
    if seconds > 60:
        return f"{seconds / 60:5.1f} m"
    return f"{seconds:5.1f} s"


def users(s: Summary, top: int) -> list[str]:
    def by(table: dict[str, list[int]], i: int) -> list[tuple[str, float]]:
        rows = heapq.nsmallest(top, table.items(), key=lambda kv: (-kv[1][i], kv[0]))
        return [(k, v[i]) for k, v in rows]

    return [*_table(f"top {top} Senders by message count", by(s.senders, 0)),
            *_table(f"top {top} Recipients by message count", by(s.recipients, 0)),
            *_table(f"top {top} Senders by message size", by(s.senders, 1)),
            *_table(f"top {top} Recipients by message size", by(s.recipients, 1))]


def security(report: dict[str, Any]) -> list[str]:
    sec = report["security"]

    def rows(key: str) -> list[tuple[str, float]]:
        return [(r["key"], r["count"]) for r in sec[key]]

    lines = [*_title("Security (not in pflogsumm)"),
             f" {_n(sec['sasl_failures'])}  SASL authentication failures",
             f" {_n(sec['relay_attempts'])}  relay attempts (Relay access denied)",
             f" {_n(sec['tls_failures'])}  TLS handshake failures",
             f" {_n(sec['postscreen_drops'])}  postscreen drops"]
    for key, title in (
            ("sasl_failures_by_client", "SASL failures by client"),
            ("sasl_failures_by_account", "SASL failures by account"),
            ("sasl_failures_by_source", "SASL failures by service"),
            ("relay_attempts_by_client", "Relay attempts by client"),
            ("rejects_by_restriction", "Rejects by restriction"),
            ("rejects_by_reason", "Rejects by command and reason"),
            ("tls_failures_by_client", "TLS failures by client"),
            ("tls_failures_by_reason", "TLS failures by reason"),
            ("postscreen_drops_by_test", "Postscreen drops by test"),
            ("postscreen_drops_by_client", "Postscreen drops by client"),
            ("postwarden_decisions", "postwarden decisions (check action)"),
            ("rate_limits", "Rate limits hit"),
            ("protocol_abuse", "Protocol abuse")):
        lines += _table(title, rows(key))
    return lines


def render(s: Summary, top: int = 10) -> str:
    report = s.to_json(top)
    lines = [*grand_totals(s), "", *traffic(s), *domains(s, top), *users(s, top),
             *security(report), "",
             f"{s.lines} lines read, {s.matched} recognised by the summary's patterns"]
    return "\n".join(lines) + "\n"
