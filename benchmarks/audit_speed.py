"""Benchmark: `postwarden audit` on the examples and on a 2,000-line main.cf, beside `postconf -n`.

Security: runs postconf and postwarden on temporary copies; loopback-free, bounded runs.
Standards: none.

Usage: ``.venv/bin/python benchmarks/audit_speed.py [--runs N]``. Prints, per configuration,
the median wall time of an in-process audit (configuration load + every rule), of the whole
``postwarden audit`` command (interpreter start included), and of ``postconf -c DIR -n``
(Postfix's own reading of the same files, the reference), with the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from postwarden.audit.engine import audit
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.debian import backdate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
POSTCONF = "/usr/sbin/postconf"


def big_main_cf(lines: int) -> str:
    """A realistic 2,000-line main.cf: settings, comments, continued restriction lists."""
    out = ["compatibility_level = 3.6", "myhostname = mx.example.org"]
    i = 0
    while len(out) < lines:
        out += [f"# block {i}: per-customer settings",
                f"customer{i}_restrictions =",
                f"    check_client_access hash:/etc/postfix/customer{i}_clients,",
                "    permit_sasl_authenticated,",
                "    reject_unauth_destination",
                f"customer{i}_note = $myhostname customer {i}"]
        i += 1
    out.append("smtpd_restriction_classes = " + ", ".join(
        f"customer{n}_restrictions" for n in range(i)))
    return "\n".join([*out[:lines], out[-1]]) + "\n"


def timed(action: list[str] | None, runs: int, call: object = None) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        if action is not None:
            subprocess.run(action, capture_output=True, check=False)
        elif callable(call):
            call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    subprocess.run([sys.executable, str(ROOT / "scripts/build_examples.py")],
                   capture_output=True, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        targets = []
        for example in sorted(p for p in EXAMPLES.iterdir() if (p / "main.cf").exists()):
            copy = Path(tmp) / example.name
            shutil.copytree(example, copy, symlinks=False)
            targets.append(copy)
        big = Path(tmp) / "big-2000-lines"
        big.mkdir()
        (big / "main.cf").write_text(big_main_cf(2000))
        shutil.copyfile(EXAMPLES / "hardened-mx/master.cf", big / "master.cf")
        targets.append(big)
        for target in targets:
            for name in ("main.cf", "master.cf"):
                backdate(target / name)
        print(f"{'configuration':22} {'audit (in-process)':>19} {'postwarden audit':>17} "
              f"{'postconf -n':>12} {'ratio':>7}")
        for target in targets:
            def in_process(target: Path = target) -> None:
                audit(PostfixConfig.load(target))
            inner = timed(None, args.runs, in_process)
            command = timed([sys.executable, "-m", "postwarden", "audit", "-c", str(target),
                             "--format", "json"], args.runs)
            reference = timed([POSTCONF, "-c", str(target), "-n"], args.runs)
            print(f"{target.name:22} {inner * 1000:16.1f} ms {command * 1000:14.1f} ms "
                  f"{reference * 1000:9.1f} ms {command / reference:6.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
