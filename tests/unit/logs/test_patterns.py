"""The patterns as data: every pattern has golden samples that give the expected event, and no
pattern backtracks catastrophically on adversarial lines."""

from __future__ import annotations

import time

import pytest

from postwarden.logs import events as ev
from postwarden.logs.parse import Parser
from postwarden.logs.parse_builders import BUILDERS
from postwarden.logs.patterns import PATTERNS, Pattern, Sample

CASES = [(p, s) for p in PATTERNS for s in p.samples]


def problems(patterns: tuple[Pattern, ...]) -> list[str]:
    """What the meta-test complains about: patterns without samples or builders."""
    found = []
    names = [p.name for p in patterns]
    if len(names) != len(set(names)):
        found.append("duplicate pattern names")
    for p in patterns:
        if not p.samples:
            found.append(f"pattern {p.name} has no golden sample line")
        if p.name not in BUILDERS:
            found.append(f"pattern {p.name} has no builder")
    return found


def test_every_pattern_has_a_sample_and_a_builder() -> None:
    assert problems(PATTERNS) == []
    assert set(BUILDERS) == {p.name for p in PATTERNS}, "a builder without a pattern"


def test_meta_test_notices_a_pattern_without_sample() -> None:
    lonely = Pattern("smtpd.lonely", ("smtpd",), r"lonely", ())
    assert problems((*PATTERNS, lonely)) == [
        "pattern smtpd.lonely has no golden sample line", "pattern smtpd.lonely has no builder"]


@pytest.mark.parametrize(("pattern", "sample"), CASES,
                         ids=[f"{p.name}-{i}" for p in PATTERNS for i in range(len(p.samples))])
def test_sample_gives_its_event(pattern: Pattern, sample: Sample) -> None:
    parser = Parser(year=2024)
    found = parser.match(sample.line)
    assert found is not None, f"no pattern matched {sample.line!r}"
    assert found[0].name == pattern.name, f"{found[0].name} matched before {pattern.name}"
    event = parser.build(found)
    expected_type = sample.expect.get("type")
    if expected_type is None:
        assert event is None
        return
    assert event is not None
    assert type(event).__name__ == expected_type
    for key, value in sample.expect.items():
        if key == "type":
            continue
        got = getattr(event, key)
        if isinstance(value, float):
            assert got == pytest.approx(value), key
        else:
            assert got == value, key


def test_sample_event_types_exist() -> None:
    names = {t.__name__ for t in ev.EVENT_TYPES}
    for _, sample in CASES:
        assert sample.expect.get("type") in names | {None}


def test_each_sample_also_parses_as_bytes() -> None:
    for _, sample in CASES:
        parser = Parser(year=2024)
        assert (parser.parse(sample.line.encode()) is None) == (sample.expect["type"] is None)


# -- adversarial input ---------------------------------------------------------------------

PREFIXES = [
    "Mar  4 09:10:11 mx1 postfix/smtpd[1]: ",
    "Mar  4 09:10:11 mx1 postfix/postscreen[1]: ",
    "Mar  4 09:10:11 mx1 postfix/cleanup[1]: ",
    "Mar  4 09:10:11 mx1 postfix/qmgr[1]: ",
    "Mar  4 09:10:11 mx1 postfix/smtp[1]: ",
    "Mar  4 09:10:11 mx1 postfix/pickup[1]: ",
    "Mar  4 09:10:11 mx1 dovecot: ",
    "Mar  4 09:10:11 mx1 saslauthd[1]: ",
    "Mar  4 09:10:11 mx1 postwarden[1]: ",
    "2024-03-04T09:10:11+01:00 mx1 postfix/submission/smtpd[1]: ",
]
BODIES = [
    "A" * 20000,
    "warning: " + "x[" * 5000 + ": SASL LOGIN authentication failed: ",
    "warning: unknown[1.2.3.4]: SASL LOGIN authentication failed: " + ", sasl_username=a " * 2000,
    "NOQUEUE: reject: RCPT from " + "a[" * 5000,
    "QID: reject: RCPT from x[1.2.3.4]: 554 5.7.1 " + "<a>: " * 4000 + "; from=<" * 1000,
    "ABC: to=<" + "a>, relay=" * 3000,
    "ABC: to=<a>, relay=x, delay=1, delays=" + ",," * 5000,
    "imap-login: Disconnected: " + "a: " * 5000 + "(auth failed, 1 attempts",
    "imap-login: " + "(" * 10000,
    "auth-worker(1): " + "sql(a,b" * 3000,
    "auth(" + "a," * 5000 + "): Info: sql: Password mismatch",
    "pam_unix(" + "x" * 10000,
    "policyd: client=" + "k=v " * 5000,
    "ABC: reject: header " + " from x[" * 3000,
    "warning: " + "Connection rate " * 1000 + "limit exceeded: 1 from ",
    "PREGREET " + "[" * 10000,
    "connect from " + "[" * 10000,
    "disconnect from a[" + "]" * 10000,
    "improper command pipelining after " + "X " * 5000,
]


def test_adversarial_lines_finish_quickly() -> None:
    parser = Parser(year=2024)
    start = time.perf_counter()
    for prefix in PREFIXES:
        for body in BODIES:
            parser.parse(prefix + body)
            parser.parse(prefix + body + "\n")
    elapsed = time.perf_counter() - start
    # about 400 lines of 10-40 kB: a linear parser needs well under a second even on a busy
    # machine; one quadratic pattern would need minutes
    assert elapsed < 10, f"{elapsed:.1f} s"


def test_one_long_line_is_cut_not_slow() -> None:
    parser = Parser(year=2024)
    start = time.perf_counter()
    parser.parse("Mar  4 09:10:11 mx1 postfix/smtpd[1]: warning: " + "a[" * 2_000_000)
    assert time.perf_counter() - start < 5
