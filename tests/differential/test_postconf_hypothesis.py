"""Generated main.cf/master.cf files: postwarden ``config show`` prints what postconf prints.

Security: generated files live in per-example temporary directories (see grammar.py).
Standards: postconf(1) -n, -n -x, -M, -P (and -x with -M/-P), Postfix 3.7.11.

The grammar (grammar.py) produces inputs postconf accepts; should postconf still exit
non-zero on one, postwarden must exit 2 on it.

Time bound: 150 examples take about 15 seconds when everything agrees. Shrinking a failure
is off by default: with this grammar Hypothesis's shrinker makes slow progress and runs into
its own five-minute limit. A failure is reported as first found (a few kilobytes of
configuration, printed with the diff) and saved in .hypothesis/, so the next run replays it
at once. Set POSTWARDEN_SHRINK=1 to have Hypothesis minimise it (takes minutes).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from .grammar import Generated, configurations, universe
from .oracle import TALLY, disagreement, run_postconf, run_postwarden, write_config

pytestmark = pytest.mark.postfix

MAX_EXAMPLES = 150
PHASES = (
    tuple(Phase)
    if os.environ.get("POSTWARDEN_SHRINK")
    else tuple(phase for phase in Phase if phase not in (Phase.shrink, Phase.explain))
)
MAIN_FLAG_SETS: tuple[tuple[str, ...], ...] = (("-n",), ("-n", "-x"))
MASTER_FLAG_SETS: tuple[tuple[str, ...], ...] = (("-M",), ("-P",), ("-M", "-x"), ("-P", "-x"))


@pytest.fixture(scope="session")
def generated_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where generated directories go (a plain Path: Hypothesis prints its arguments)."""
    return tmp_path_factory.mktemp("generated")


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Deferred: the grammar asks the installed postconf for parameter names, which must not
# happen at import time; the postconf fixture fails first (loudly) when it is missing.
@given(generated=st.deferred(lambda: configurations(universe())))
def test_generated_configurations_agree(
    generated: Generated, postconf: Path, generated_root: Path
) -> None:
    confdir = write_config(
        Path(tempfile.mkdtemp(dir=generated_root)) / "postfix",
        generated.main_cf,
        generated.master_cf,
    )
    flag_sets = MAIN_FLAG_SETS + (MASTER_FLAG_SETS if generated.has_services else ())
    for flags in flag_sets:
        expected = run_postconf(confdir, flags)
        got = run_postwarden(confdir, flags)
        problem = disagreement(expected, got)
        if problem is not None:
            TALLY.record_generated(agreed=False)
            note(repr(generated))
            pytest.fail(
                f"postconf {' '.join(flags)} disagrees:\n{problem}{generated!r}", pytrace=False
            )
        if expected.returncode != 0:
            break  # postconf refused the input; the other flag sets would refuse it too
    TALLY.record_generated(agreed=True)
