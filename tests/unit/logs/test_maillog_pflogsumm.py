"""The generator's ground truth is what pflogsumm 1.1.5 (Debian, /usr/sbin/pflogsumm) prints.

pflogsumm is the reference: if its Grand Totals and the generator's ``pflogsumm`` totals ever
differ, the generator's model of pflogsumm is wrong. pflogsumm prints counts above 512k in
``k``/``m`` units, so each log is read twice: by pflogsumm as installed (compared in its
units) and by a copy whose only change is those display thresholds (compared exactly).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from postwarden.lab import maillog
from postwarden.lab.maillog import Options
from postwarden.lab.maillog_truth import Totals
from postwarden.lab.pflogsumm import (
    exact_totals,
    parse_grand_totals,
    pflogsumm_argv,
    pflogsumm_figures,
)

LINES = 30_000


def pflogsumm(path: Path, workdir: Path, *, exact: bool) -> dict[str, str]:
    argv = [*pflogsumm_argv(workdir, exact=exact), str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return parse_grand_totals(done.stdout)


@pytest.mark.parametrize(("log_format", "names", "queue_ids"), [
    ("bsd", "classic", "short"),
    ("bsd", "all", "long"),
    ("rfc3339", "classic", "long"),
    ("rfc3339", "all", "short"),
    ("postlog", "all", "short"),
])
def test_pflogsumm_prints_the_ground_truth(tmp_path: Path, log_format: str, names: str,
                                           queue_ids: str) -> None:
    options = Options(lines=LINES, seed=11, format=log_format, names=names, queue_ids=queue_ids)
    path = tmp_path / "mail.log"
    truth = maillog.write_log(path, options)
    exact, deferrals = exact_totals(pflogsumm(path, tmp_path, exact=True))
    assert exact == truth.pflogsumm
    assert deferrals == truth.pflogsumm_deferrals
    installed = pflogsumm(path, tmp_path, exact=False)
    assert installed == pflogsumm_figures(truth.pflogsumm, truth.pflogsumm_deferrals)
    if names == "classic":
        assert truth.pflogsumm == truth.totals
    else:
        assert truth.pflogsumm.received < truth.totals.received


@pytest.mark.parametrize("log_format", ["short-iso", "journal-json"])
def test_pflogsumm_sees_nothing_in_journal_formats(tmp_path: Path, log_format: str) -> None:
    """journalctl -o short-iso writes +0100 (no colon): pflogsumm silently counts zero."""
    path = tmp_path / "mail.log"
    truth = maillog.write_log(path, Options(lines=5000, seed=3, format=log_format))
    assert truth.totals.received > 0
    exact, deferrals = exact_totals(pflogsumm(path, tmp_path, exact=True))
    assert exact == Totals() and deferrals == 0
