"""Fixtures of the differential tests and the closing line that counts agreement.

Security: nothing untrusted; see oracle.py.
Standards: none.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .oracle import TALLY, require_postconf


@pytest.fixture(scope="session")
def postconf() -> Path:
    """The real /usr/sbin/postconf; fails (never skips) when Postfix is not installed."""
    return require_postconf()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (TALLY.cases or TALLY.generated or TALLY.corpus_dirs):
        return
    terminalreporter.write_sep("-", "postwarden vs postconf")
    terminalreporter.write_line(
        f"corpus: {TALLY.corpus_dirs} directories postconf accepts, {TALLY.failing_dirs} it rejects"
    )
    terminalreporter.write_line(
        f"corpus cases: {TALLY.agreed} of {TALLY.cases} agree with postconf"
    )
    if TALLY.generated:
        terminalreporter.write_line(
            f"generated configurations: {TALLY.generated_agreed} of {TALLY.generated} "
            "agree with postconf (every Hypothesis run counted)"
        )
    if TALLY.disagreed:
        shown = ", ".join(TALLY.disagreed[:8])
        more = len(TALLY.disagreed) - 8
        terminalreporter.write_line(
            f"first disagreeing cases: {shown}" + (f" (+{more} more)" if more > 0 else "")
        )
