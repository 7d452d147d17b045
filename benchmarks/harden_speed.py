"""Benchmark: planning and writing a hardened main.cf with postwarden and with `postconf -e`.

Security: works on temporary copies of the examples; runs postconf and postwarden only.
Standards: none.

Usage: ``.venv/bin/python benchmarks/harden_speed.py [--runs N]``. Per configuration and
role, prints the median wall time of:

- ``plan``: the in-process plan (load, audit, remedies, re-audit until nothing changes);
- ``harden``: the whole ``postwarden harden --check`` command (interpreter start included);
- ``postconf -e``: Postfix's own editor setting the same main.cf values in one call, the
  way an administrator applies a hardening guide by hand (the reference). postconf only
  writes what it is told; it does not decide what to change, keep restriction lists in
  place or touch master.cf, so the ratio is a cost comparison, not a like-for-like one.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from postwarden.audit.fixes import Inputs, Op
from postwarden.audit.model import Role
from postwarden.audit.roles import parse_roles
from postwarden.harden.plan import make_plan
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.debian import backdate, build

ROOT = Path(__file__).resolve().parent.parent
POSTCONF = "/usr/sbin/postconf"
CASES = (("debian-internet-site", "mx"), ("debian-internet-site", "submission"),
         ("guide", "mx,submission"), ("weak", "mx,submission"))
INPUTS = Inputs(hostname="mx.example.org", domain="example.org", sasl="dovecot")


def median(runs: int, action: Callable[[], object]) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def plan_once(etc: Path, roles: frozenset[Role]) -> None:
    make_plan(PostfixConfig.load(etc), roles, INPUTS)


def harden_check(etc: Path, role: str) -> None:
    subprocess.run([sys.executable, "-m", "postwarden", "harden", "-c", str(etc), "--role",
                    role, "--hostname", "mx.example.org", "--sasl", "dovecot", "--check"],
                   capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'configuration':34} {'plan':>8} {'harden':>8} {'postconf -e':>12} "
          f"{'harden/postconf':>16} changes")
    with tempfile.TemporaryDirectory() as tmp:
        for example, role in CASES:
            etc = Path(tmp) / f"{example}-{role}"
            shutil.copytree(ROOT / "examples" / example, etc)
            build(ROOT / "examples" / example, etc)
            roles = parse_roles(role) or frozenset()
            plan = make_plan(PostfixConfig.load(etc), roles, INPUTS)
            settings = [f"{s.change.name}={s.change.value}" for s in plan.steps
                        if s.change.op is Op.SET and s.change.service is None]
            original = (etc / "main.cf").read_bytes()

            def postconf_e(etc: Path = etc, settings: list[str] = settings,
                           original: bytes = original) -> None:
                (etc / "main.cf").write_bytes(original)
                backdate(etc / "main.cf")
                subprocess.run([POSTCONF, "-c", str(etc), "-e", *settings],
                               capture_output=True, check=True)

            planned = median(args.runs, functools.partial(plan_once, etc, roles))
            command = median(args.runs, functools.partial(harden_check, etc, role))
            reference = median(args.runs, postconf_e)
            (etc / "main.cf").write_bytes(original)
            print(f"{example + ' ' + role:34} {planned * 1000:6.0f}ms {command * 1000:6.0f}ms "
                  f"{reference * 1000:10.0f}ms {command / reference:15.1f}x "
                  f"{len(plan.steps)} ({len(settings)} by postconf -e)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
