"""pflogsumm 1.1.5 as the reference: running it, reading its Grand Totals, its units.

Security: pflogsumm runs from an argument list (never a shell) on logs the caller names; its
report is parsed line by line with anchored patterns, and a report without every Grand Total
is a ``ValueError``, not a guess. The "exact" copy of the script is written only into the
caller's work directory, and only the two display thresholds differ from the installed one.
Standards: pflogsumm 1.1.5 (Debian 1.1.5-8, /usr/sbin/pflogsumm): the "Grand Totals"
section, its ``k``/``m`` units (``$divByOneKAt``, ``$divByOneMegAt``: above 512k and 512m).

Theory of operation
-------------------
pflogsumm prints a count above 524,288 as whole ``k`` and above 536,870,912 as whole ``m``
(truncated), so its report loses precision on big logs. Two ways to compare:

1. In its own units: ``pflogsumm_figures(truth.pflogsumm, ...)`` renders the expected totals
   as the installed script prints them, for comparison with ``parse_grand_totals``.
2. Exactly: ``pflogsumm_argv(workdir, exact=True)`` runs a copy whose only change is those
   thresholds, so every figure prints in full; ``exact_totals`` turns it back into
   ``Totals``. The counting code is untouched, so the copy counts as the original does.
"""

from __future__ import annotations

import re
from pathlib import Path

from postwarden.lab.maillog_truth import Totals

PFLOGSUMM = "/usr/sbin/pflogsumm"
GRAND_TOTALS = {"received": "received", "delivered": "delivered", "forwarded": "forwarded",
                "deferred": "deferred", "bounced": "bounced", "rejected": "rejected",
                "reject warnings": "reject_warnings", "held": "held",
                "discarded": "discarded", "bytes received": "bytes_received",
                "bytes delivered": "bytes_delivered", "senders": "senders",
                "sending hosts/domains": "sending_hosts", "recipients": "recipients",
                "recipient hosts/domains": "recipient_hosts"}
_GRAND_LINE = re.compile(r" *(\d+[ km])  ([a-z /]+?)"
                         r"(?:  \((\d+[ km]) deferrals\)| \(\d+%\))?")
_UNIT_LIMITS = re.compile(r"(\$divByOne(?:K|Meg)At\s*=\s*)\d+;")


def pflogsumm_figure(value: int) -> str:
    """A count as pflogsumm prints it: ``k`` above 512k, ``m`` above 512m (truncated)."""
    if value > 536_870_912:
        return f"{value // 1_048_576}m"
    if value > 524_288:
        return f"{value // 1024}k"
    return str(value)


def pflogsumm_figures(totals: Totals, deferrals: int) -> dict[str, str]:
    """What pflogsumm's Grand Totals would print for these totals, by JSON key."""
    figures = {key: pflogsumm_figure(value) for key, value in totals.as_dict().items()}
    figures["deferrals"] = pflogsumm_figure(deferrals)
    return figures


def parse_grand_totals(report: str) -> dict[str, str]:
    """The Grand Totals figures of a pflogsumm report by JSON key (``deferrals`` too; "0"
    when pflogsumm leaves it out). Raises ValueError when the section is not all there."""
    section = report.partition("Grand Totals")[2].partition("\n\n\n")[0]
    figures: dict[str, str] = {"deferrals": "0"}
    for line in section.splitlines():
        match = _GRAND_LINE.fullmatch(line)
        if match is None or match.group(2) not in GRAND_TOTALS:
            continue
        figures[GRAND_TOTALS[match.group(2)]] = match.group(1).strip()
        if match.group(3):
            figures["deferrals"] = match.group(3).strip()
    missing = set(GRAND_TOTALS.values()) - figures.keys()
    if missing:
        raise ValueError(f"pflogsumm report lacks {', '.join(sorted(missing))}")
    return figures


def exact_totals(figures: dict[str, str]) -> tuple[Totals, int]:
    """Totals from figures printed without units (see ``pflogsumm_argv(exact=True)``)."""
    values = {key: int(text) for key, text in figures.items()}
    deferrals = values.pop("deferrals")
    return Totals(**values), deferrals


def pflogsumm_argv(workdir: Path, *, exact: bool = False) -> list[str]:
    """The command that runs pflogsumm 1.1.5. ``exact``: a copy in ``workdir`` whose only
    change is the 512k/512m display thresholds, so that bytes print in full; the counting
    code is untouched."""
    if not exact:
        return [PFLOGSUMM]
    text, changed = _UNIT_LIMITS.subn(r"\g<1>1000000000000000000;",
                                      Path(PFLOGSUMM).read_text(encoding="latin-1"))
    if changed != 2:
        raise ValueError(f"{PFLOGSUMM}: the unit thresholds were not found; not 1.1.5?")
    copy = Path(workdir) / "pflogsumm-exact"
    copy.write_text(text, encoding="latin-1")
    return ["perl", str(copy)]
