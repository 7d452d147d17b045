"""``logs test-pattern``: which pattern matched each line of a log, and which lines none did
(what fail2ban-regex does for its filters).

Security: lines are outside data; they are shown escaped (no terminal control characters) and
the lists of lines kept for display are bounded.
Standards: none beyond parse.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from postwarden.logs.parse import Parser

MAX_SHOWN = 1000


@dataclass
class PatternReport:
    lines: int = 0
    events: Counter[str] = field(default_factory=Counter)     # pattern -> lines with an event
    ignored: Counter[str] = field(default_factory=Counter)    # pattern matched, no event
    types: Counter[str] = field(default_factory=Counter)      # event class -> lines
    unmatched: int = 0
    shown: list[tuple[int, str, str]] = field(default_factory=list)  # (line no, pattern, text)

    @property
    def matched(self) -> int:
        return sum(self.events.values()) + sum(self.ignored.values())

    def to_json(self) -> dict[str, object]:
        return {
            "lines": self.lines, "matched": self.matched, "unmatched": self.unmatched,
            "patterns": dict(sorted(self.events.items())),
            "ignored": dict(sorted(self.ignored.items())),
            "events": dict(sorted(self.types.items())),
            "shown": [{"line": n, "pattern": p, "text": t} for n, p, t in self.shown],
        }


def check(lines: Iterable[str], parser: Parser, *, show: str = "unmatched",
          limit: int = 50) -> PatternReport:
    """Run every pattern over the lines; keep up to ``limit`` lines of the kind ``show``
    (unmatched, matched, all or none) for display."""
    report = PatternReport()
    limit = min(limit, MAX_SHOWN)
    for number, line in enumerate(lines, 1):
        report.lines = number
        found = parser.match(line)
        name = ""
        if found is None:
            report.unmatched += 1
        else:
            name = found[0].name
            event = parser.build(found)
            if event is None:
                report.ignored[name] += 1
                name += " (no event)"
            else:
                report.events[name] += 1
                report.types[type(event).__name__] += 1
                name += f" -> {type(event).__name__}"
        wanted = show == "all" or (show == "unmatched" and found is None) or (
            show == "matched" and found is not None)
        if wanted and len(report.shown) < limit:
            report.shown.append((number, name, line.rstrip("\n")))
    return report
