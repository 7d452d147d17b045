"""postwarden ``config show`` prints what ``postconf -c DIR`` prints, for every corpus case.

Security: corpus inputs are copied into per-test temporary directories before use.
Standards: postconf(1) flags -n -x -d -M -P -h and named lookups (Postfix 3.7.11).

Every directory under corpus/ is run with each flag set in FLAG_SETS and, when it has a
``lookup-names`` file, with three named lookups (plain, ``-x`` and ``-d``). Directories under
corpus-postconf-fails/ hold inputs postconf refuses (exit 1); postwarden must refuse them
with exit status 2. See docs/differential-tests.md for how to add a case.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from .oracle import (
    ABOUT,
    CORPUS,
    CORPUS_FILES,
    FAILING_CORPUS,
    LOOKUP_NAMES,
    MAIN_APPEND,
    MASTER_APPEND,
    TALLY,
    USE_DEBIAN_MAIN,
    USE_DEBIAN_MASTER,
    Run,
    corpus_dirs,
    disagreement,
    lookup_names,
    materialise,
    run_postconf,
    run_postwarden,
)

pytestmark = pytest.mark.postfix

MIN_CORPUS_DIRS = 45

FLAG_SETS: dict[str, tuple[str, ...]] = {
    "-n": ("-n",),
    "-nx": ("-n", "-x"),
    "-M": ("-M",),
    "-P": ("-P",),
    "-Mx": ("-M", "-x"),
    "-Px": ("-P", "-x"),
    "-nh": ("-n", "-h"),
}
# postconf exits 1 on a fatal input whatever it was asked to print; these are enough.
FAILING_FLAG_SETS: dict[str, tuple[str, ...]] = {
    key: FLAG_SETS[key] for key in ("-n", "-nx", "-M", "-P")
}

PASSING_DIRS = corpus_dirs(CORPUS)
FAILING_DIRS = corpus_dirs(FAILING_CORPUS)
TALLY.corpus_dirs = len(PASSING_DIRS)
TALLY.failing_dirs = len(FAILING_DIRS)


@dataclass(frozen=True)
class Case:
    """One corpus directory run with one flag list."""

    corpus_dir: Path
    label: str
    flags: tuple[str, ...]

    @property
    def case_id(self) -> str:
        return f"{self.corpus_dir.name}[{self.label}]"


def _cases(dirs: list[Path], flag_sets: dict[str, tuple[str, ...]], lookups: bool) -> list[Case]:
    cases: list[Case] = []
    for corpus_dir in dirs:
        cases.extend(Case(corpus_dir, label, flags) for label, flags in flag_sets.items())
        names = lookup_names(corpus_dir)
        if lookups and names:
            cases.append(Case(corpus_dir, "names", names))
            cases.append(Case(corpus_dir, "-x-names", ("-x", *names)))
            cases.append(Case(corpus_dir, "-d-names", ("-d", *names)))
    return cases


AGREEMENT_CASES = _cases(PASSING_DIRS, FLAG_SETS, lookups=True)
FAILING_CASES = _cases(FAILING_DIRS, FAILING_FLAG_SETS, lookups=False)


def _about(corpus_dir: Path) -> str:
    about = corpus_dir / ABOUT
    return about.read_text(encoding="utf-8").strip() if about.is_file() else corpus_dir.name


@pytest.mark.parametrize("case", AGREEMENT_CASES, ids=[c.case_id for c in AGREEMENT_CASES])
def test_agrees_with_postconf(case: Case, postconf: Path, tmp_path: Path) -> None:
    confdir = materialise(case.corpus_dir, tmp_path / "postfix")
    expected = run_postconf(confdir, case.flags)
    assert expected.returncode == 0, (
        f"corpus bug: postconf rejects {case.corpus_dir.name} (move it to "
        f"corpus-postconf-fails/ or fix it):\n{expected.error_text()}"
    )
    got = run_postwarden(confdir, case.flags)
    problem = disagreement(expected, got)
    TALLY.record(case.case_id, problem is None)
    if problem is not None:
        pytest.fail(f"{case.case_id}: {_about(case.corpus_dir)}\n{problem}", pytrace=False)


@pytest.fixture(scope="session")
def postconf_refusals(
    postconf: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Run]]:
    """postconf on every refusal case, run in parallel: a postconf fatal error sleeps one
    second before exiting (Postfix's msg_fatal), so one after another they would take 40 s."""
    dirs = {
        c.case_id: materialise(c.corpus_dir, tmp_path_factory.mktemp("refusal") / "postfix")
        for c in FAILING_CASES
    }
    with ThreadPoolExecutor(max_workers=max(1, len(FAILING_CASES))) as pool:
        runs = pool.map(lambda c: run_postconf(dirs[c.case_id], c.flags), FAILING_CASES)
        pairs = zip(FAILING_CASES, runs, strict=True)
        return {c.case_id: (dirs[c.case_id], run) for c, run in pairs}


@pytest.mark.parametrize("case", FAILING_CASES, ids=[c.case_id for c in FAILING_CASES])
def test_refuses_what_postconf_refuses(
    case: Case, postconf_refusals: dict[str, tuple[Path, Run]]
) -> None:
    confdir, expected = postconf_refusals[case.case_id]
    assert expected.returncode != 0, (
        f"corpus bug: postconf accepts {case.corpus_dir.name}, which is filed under "
        "corpus-postconf-fails/"
    )
    got = run_postwarden(confdir, case.flags)
    problem = disagreement(expected, got)
    TALLY.record(case.case_id, problem is None)
    if problem is not None:
        pytest.fail(f"{case.case_id}: {_about(case.corpus_dir)}\n{problem}", pytrace=False)


def _structure_problems(corpus_dir: Path) -> list[str]:
    present = {p.name for p in corpus_dir.iterdir()}
    problems = [f"unexpected file {name}" for name in sorted(present - CORPUS_FILES)]
    if ("main.cf" in present) == (USE_DEBIAN_MAIN in present):
        problems.append(f"needs exactly one of main.cf and {USE_DEBIAN_MAIN}")
    if "master.cf" in present and USE_DEBIAN_MASTER in present:
        problems.append(f"has both master.cf and {USE_DEBIAN_MASTER}")
    if MAIN_APPEND in present and USE_DEBIAN_MAIN not in present:
        problems.append(f"{MAIN_APPEND} without {USE_DEBIAN_MAIN}")
    if MASTER_APPEND in present and USE_DEBIAN_MASTER not in present:
        problems.append(f"{MASTER_APPEND} without {USE_DEBIAN_MASTER}")
    if ABOUT not in present or not _about(corpus_dir):
        problems.append(f"needs a one-line {ABOUT}")
    if LOOKUP_NAMES in present and not lookup_names(corpus_dir):
        problems.append(f"{LOOKUP_NAMES} names nothing")
    return problems


def test_corpus_inventory() -> None:
    """The corpus is big enough and every directory is well formed (no postconf needed)."""
    problems = {d.name: p for d in [*PASSING_DIRS, *FAILING_DIRS] if (p := _structure_problems(d))}
    print(
        f"\ndifferential corpus: {len(PASSING_DIRS)} directories postconf accepts, "
        f"{len(FAILING_DIRS)} it rejects; {len(AGREEMENT_CASES)} agreement cases, "
        f"{len(FAILING_CASES)} refusal cases"
    )
    assert not problems, f"malformed corpus directories: {problems}"
    assert len(PASSING_DIRS) >= MIN_CORPUS_DIRS, (
        f"the corpus has {len(PASSING_DIRS)} directories, fewer than {MIN_CORPUS_DIRS}"
    )
    assert FAILING_DIRS, "corpus-postconf-fails/ is empty"
    names = [d.name for d in PASSING_DIRS + FAILING_DIRS]
    assert len(names) == len(set(names)), "a directory name is used in both corpora"


@pytest.mark.parametrize("corpus_dir", PASSING_DIRS, ids=[d.name for d in PASSING_DIRS])
def test_corpus_is_clean_for_postconf(corpus_dir: Path, postconf: Path, tmp_path: Path) -> None:
    """postconf accepts every corpus input, so a disagreement is postwarden's, not the input's."""
    confdir = materialise(corpus_dir, tmp_path / "postfix")
    for flags in (("-n",), ("-n", "-x"), ("-M",), ("-P", "-x")):
        run = run_postconf(confdir, flags)
        assert run.returncode == 0, f"postconf {' '.join(flags)}: {run.error_text()}"
        assert flags[0] != "-n" or b"config_directory = " in run.stdout, run.text()
