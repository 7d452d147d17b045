"""Benchmark: ``postwarden logs summary`` beside pflogsumm 1.1.5 (Debian), same log, one run.

Security: the logs are generated (``postwarden.lab.maillog``) into a temporary directory (or
``--workdir``); both tools read them as the invoking user; nothing listens on the network.
``logs watch`` runs in dry-run mode with its state in the work directory, so it bans nothing.
Standards: pflogsumm 1.1.5's Grand Totals (what "equal totals" means); getrusage(2) (CPU
time and peak resident set size of each child, taken from wait4).

Usage: ``.venv/bin/python benchmarks/logs_speed.py [--lines 1000000] [--memory-lines 5000000]
[--format bsd|rfc3339] [--population N] [--repeat N] [--jobs N] [--pure | --also-pure]
[--watch | --no-watch] [--watch-aggregate N]``.

postwarden runs compiled (the mypyc build of scripts/build_compiled.py) when that build is
fresh, else as pure Python; the output says which. ``--pure`` forces pure Python
(``POSTWARDEN_PURE=1``); ``--also-pure`` adds a pure-Python row on the small log, run
interleaved with the others. ``--jobs N`` is passed to ``logs summary`` (1: one process).

1. A log of ``--lines`` lines with only the syslog names pflogsumm knows (so that both tools
   must print the same totals) and its ground truth are generated.
2. pflogsumm (as installed) and ``postwarden logs summary --format json`` each read it, one
   after the other; for each: wall time, CPU (user+system, children included), lines per
   second, peak RSS (the larger of wait4's ru_maxrss and the summed RSS of the process tree
   sampled every 50 ms, so that forked workers count), and
   whether its totals equal the ground truth (pflogsumm's in its own k/m units).
3. With ``--memory-lines`` (0 to skip), the same on a larger log: peak memory of each tool at
   both sizes, to see whether it grows with the log. Distinct senders and recipients grow
   with a generated log, and both tools must keep them to count them; ``--population N``
   draws addresses from fixed pools, so that what remains is each tool's own growth.
4. ``logs watch --once --from-start --dry-run`` (every detector on, the default) replays the
   small log: lines per second against the 20k lines/s target. ``--no-watch`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from postwarden.lab import maillog, pflogsumm
from postwarden.lab.maillog import Options, Truth
from postwarden.lab.maillog_truth import TOTALS_KEYS, Totals

POSTWARDEN = [sys.executable, "-m", "postwarden"]
SAMPLE_INTERVAL = 0.05  # seconds between process-tree memory samples


@dataclass(frozen=True)
class Run:
    tool: str
    lines: int
    wall: float
    cpu: float
    peak_rss_kb: int
    returncode: int
    stdout: bytes

    @property
    def rate(self) -> float:
        return self.lines / self.wall if self.wall else 0.0


def tree_rss_kb(pid: int) -> int:
    """The resident memory of a process and all its descendants now (from /proc)."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree: wait4's ru_maxrss is the largest single
    process, which understates a tool that forks workers."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_INTERVAL):
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.pid))


def measure(tool: str, argv: list[str], lines: int, pure: bool = False) -> Run:
    """Run one child to completion: wall time, its rusage (wait4: CPU of it and the
    children it waited for), and the peak RSS of its whole process tree."""
    env = {**os.environ, "POSTWARDEN_PURE": "1" if pure else "0"}
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, env=env)
        sampler = TreeSampler(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read()
    peak = max(usage.ru_maxrss, sampler.peak_kb)
    return Run(tool, lines, wall, usage.ru_utime + usage.ru_stime, peak,
               process.returncode, stdout)


def generate(workdir: Path, lines: int, log_format: str, seed: int,
             population: int) -> tuple[Path, Truth]:
    path = workdir / f"mail-{lines}.log"
    options = Options(lines=lines, format=log_format, seed=seed, names="classic",
                      population=population)
    started = time.perf_counter()
    truth = maillog.write_log(path, options)
    print(f"generated {path} ({lines:,} lines, {path.stat().st_size / 1e6:.1f} MB) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return path, truth


def pflogsumm_equal(run: Run, truth: Truth) -> str:
    if run.returncode != 0:
        return f"exit {run.returncode}"
    figures = pflogsumm.parse_grand_totals(run.stdout.decode("utf-8", "replace"))
    want = pflogsumm.pflogsumm_figures(truth.pflogsumm, truth.pflogsumm_deferrals)
    wrong = {key: (figures[key], want[key]) for key in want if figures[key] != want[key]}
    return "yes" if not wrong else f"no {wrong}"


def postwarden_equal(run: Run, truth: Truth) -> str:
    if run.returncode != 0:
        return f"exit {run.returncode}"
    totals = json.loads(run.stdout)["totals"]
    got = Totals(**{key: totals[key] for key in TOTALS_KEYS})
    mine, want = got.as_dict(), truth.totals.as_dict()
    wrong = {key: (mine[key], want[key]) for key in want if mine[key] != want[key]}
    return "yes" if not wrong else f"no {wrong}"


def median_run(runs: list[Run]) -> Run:
    """The run with the median wall time (runs interleave, so both tools see the same
    background load); its peak RSS is the largest seen."""
    chosen = sorted(runs, key=lambda run: run.wall)[len(runs) // 2]
    peak = max(run.peak_rss_kb for run in runs)
    return Run(chosen.tool, chosen.lines, chosen.wall, chosen.cpu, peak, chosen.returncode,
               chosen.stdout)


@dataclass(frozen=True)
class Variant:
    """How postwarden runs: its modules (compiled or pure) and ``--jobs``."""
    pure: bool
    jobs: int | None

    @property
    def name(self) -> str:
        jobs = "" if self.jobs is None else f", --jobs {self.jobs}"
        return f"postwarden ({'pure' if self.pure else compiled_state()}{jobs})"

    def argv(self, path: Path) -> list[str]:
        jobs = [] if self.jobs is None else ["--jobs", str(self.jobs)]
        return [*POSTWARDEN, "logs", "summary", "--format", "json", *jobs, str(path)]


def compiled_state() -> str:
    """Whether a child postwarden loads the compiled modules (their build is fresh)."""
    probe = subprocess.run([sys.executable, "-c",
                            "import postwarden.logs as l; print(int(l.COMPILED))"],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "POSTWARDEN_PURE": "0"})
    return "compiled" if probe.stdout.strip() == "1" else "pure, no fresh build"


def summarise(path: Path, truth: Truth, repeat: int,
              variants: list[Variant]) -> tuple[Run, list[Run]]:
    """pflogsumm and each variant, interleaved ``repeat`` times: the median of each."""
    lines = truth.lines
    references: list[Run] = []
    mine: list[list[Run]] = [[] for _ in variants]
    for _ in range(repeat):
        references.append(measure("pflogsumm 1.1.5", [pflogsumm.PFLOGSUMM, str(path)], lines))
        for runs, variant in zip(mine, variants, strict=True):
            runs.append(measure(variant.name, variant.argv(path), lines, variant.pure))
    return median_run(references), [median_run(runs) for runs in mine]


def watch(path: Path, workdir: Path, lines: int, aggregate: int | None) -> Run | None:
    """``logs watch`` replaying the file with every detector on, banning nothing;
    ``aggregate`` overrides ``[watch.ban] aggregate`` (0: no prefix bans)."""
    probe = subprocess.run([*POSTWARDEN, "logs", "watch", "--help"], capture_output=True,
                           check=False)
    if probe.returncode != 0:
        print("logs watch is not available: skipped")
        return None
    config = workdir / "watch.toml"
    (workdir / "watch.db").unlink(missing_ok=True)
    text = (f'[watch]\nstore = "sqlite://{workdir}/watch.db"\ndry_run = true\n'
            "[watch.alerts]\nsyslog = false\n")
    if aggregate is not None:
        text += f"[watch.ban]\naggregate = {aggregate}\n"
    config.write_text(text)
    return measure("postwarden watch (dry-run)",
                   [*POSTWARDEN, "logs", "watch", "--config", str(config), "--once",
                    "--from-start", "--dry-run", str(path)], lines)


def table(rows: list[tuple[Run, str]]) -> None:
    print(f"{'tool':36} {'lines':>10} {'wall s':>8} {'CPU s':>8} {'lines/s':>10} "
          f"{'peak RSS MB':>12}  totals equal")
    for run, equal in rows:
        print(f"{run.tool:36} {run.lines:>10,} {run.wall:>8.2f} {run.cpu:>8.2f} "
              f"{run.rate:>10,.0f} {run.peak_rss_kb / 1024:>12.1f}  {equal}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--memory-lines", type=int, default=5_000_000,
                        help="a second, larger log for the memory check (0: skip)")
    parser.add_argument("--format", choices=("bsd", "rfc3339"), default="bsd")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run both tools N times, interleaved, on the small log and "
                             "report the median (a busy machine)")
    parser.add_argument("--population", type=int, default=0, metavar="N",
                        help="cap distinct remote addresses and client IPs at N each, so "
                             "that the memory check sees no growth of the data itself")
    parser.add_argument("--watch", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure logs watch --once --dry-run (default: on)")
    parser.add_argument("--watch-aggregate", type=int, metavar="N",
                        help="[watch.ban] aggregate for the watch run (default: its own)")
    parser.add_argument("--workdir", type=Path, help="keep the logs here (default: a temp dir)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="logs summary --jobs N (default: its own, all CPUs)")
    modules = parser.add_mutually_exclusive_group()
    modules.add_argument("--pure", action="store_true",
                         help="run postwarden as pure Python (POSTWARDEN_PURE=1)")
    modules.add_argument("--also-pure", action="store_true",
                         help="add a pure-Python row on the small log")
    args = parser.parse_args()
    if args.repeat < 1 or args.lines < 1 or args.memory_lines < 0 or args.population < 0 \
            or (args.jobs is not None and args.jobs < 1):
        parser.error("--repeat, --lines and --jobs must be >= 1, the others >= 0")
    main_variant = Variant(args.pure, args.jobs)
    variants = [main_variant] + ([Variant(True, args.jobs)] if args.also_pure else [])
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{main_variant.name}", flush=True)
    with tempfile.TemporaryDirectory(prefix="postwarden-logs-bench-") as temp:
        workdir = args.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        path, truth = generate(workdir, args.lines, args.format, args.seed, args.population)
        reference, runs = summarise(path, truth, args.repeat, variants)
        mine = runs[0]
        rows = [(reference, pflogsumm_equal(reference, truth))]
        rows += [(run, postwarden_equal(run, truth)) for run in runs]
        if args.watch:
            run = watch(path, workdir, truth.lines, args.watch_aggregate)
            if run is not None:
                rows.append((run, "n/a" if run.returncode == 0 else f"exit {run.returncode}"))
        big: tuple[Run, Run] | None = None
        if args.memory_lines:
            big_path, big_truth = generate(workdir, args.memory_lines, args.format, args.seed,
                                           args.population)
            big_reference, big_runs = summarise(big_path, big_truth, 1, [main_variant])
            big = (big_reference, big_runs[0])
            rows += [(big[0], pflogsumm_equal(big[0], big_truth)),
                     (big[1], postwarden_equal(big[1], big_truth))]
        print()
        table(rows)
        print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for run in runs:
            if reference.returncode == 0 and run.returncode == 0:
                print(f"{run.tool} / pflogsumm, lines per second: "
                      f"{run.rate / reference.rate:.2f}x (target >= 3x); "
                      f"CPU: {reference.cpu / run.cpu:.2f}x less")
        if big is not None:
            for small, large in ((reference, big[0]), (mine, big[1])):
                print(f"{small.tool}: peak RSS {small.peak_rss_kb / 1024:.1f} MB at "
                      f"{small.lines:,} lines, {large.peak_rss_kb / 1024:.1f} MB at "
                      f"{large.lines:,} lines ({large.peak_rss_kb / small.peak_rss_kb:.2f}x)")
        for run, _ in rows:
            if run.tool.startswith("postwarden watch") and run.returncode == 0:
                print(f"watch: {run.rate:,.0f} lines/s (target 20,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
