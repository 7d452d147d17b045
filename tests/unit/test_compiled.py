"""The compiled (mypyc) fast path of ``logs summary``: used when its build is fresh, never when
a source changed, and it reports byte for byte what pure Python reports.

The build is made (or found up to date) by scripts/build_compiled.py, as scripts/setup.sh
does; every check runs Python in a subprocess, because which modules load is decided once,
when ``postwarden.logs`` is first imported.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import postwarden.logs as logs
from postwarden.lab import maillog
from postwarden.lab.maillog import Options
from postwarden.logs.patterns import PATTERNS

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build_compiled.py"
PROBE = """
import json, postwarden.logs as logs
from postwarden.logs import events, parse, parse_builders, patterns, summary, summary_parallel
modules = (events, parse, parse_builders, patterns, summary, summary_parallel)
print(json.dumps({"compiled": logs.COMPILED, "files": [m.__file__ for m in modules]}))
"""
# lines a real log may hold that the generator does not write: bytes that are not UTF-8 in
# every field, a line past the parser's cut, NULs, a header and nothing else, JSON that is
# not an entry
ODD_LINES = [
    b"Mar  5 10:00:00 mx1 postfix/smtpd[1]: connect from h\xff\xfe[192.0.2.1]\n",
    b"Mar  5 10:00:01 mx1 postfix/smtpd[1]: ABCDEF0123: client=\xc3\x28[192.0.2.1]\n",
    b"Mar  5 10:00:02 mx1 postfix/qmgr[2]: ABCDEF0123: from=<\xff@ex\xfe.org>, size=12, "
    b"nrcpt=1 (queue active)\n",
    b"Mar  5 10:00:03 mx1 postfix/smtp[3]: ABCDEF0123: to=<u\xff@EXAMPLE.net>, "
    b"relay=none, delay=0.1, delays=0/0/0/0, dsn=2.0.0, status=sent (250 ok \xff)\n",
    b"Mar  5 10:00:04 mx1 postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[192.0.2.9]: "
    b"554 5.7.1 <a\xff@b>: Relay access denied; from=<\xfe> to=<a@b> proto=ESMTP helo=<\xff>\n",
    b"Mar  5 10:00:05 mx1 postfix/smtpd[1]: warning: x[192.0.2.9]: SASL LOGIN "
    b"authentication failed: \xff, sasl_username=\xfe\xff\n",
    b"Mar  5 10:00:06 mx1 postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[192.0.2.9]: "
    + b"554 " + b"A" * 200_000 + b"\n",
    b"Mar  5 10:00:07 mx1 postfix/smtpd[1]: \x00ABCDEF0124: client=a\x00b[192.0.2.7]\n",
    b"Mar  5 10:00:08 mx1 postfix/smtpd[1]: \n",
    b"Mar  5 10:00:09 mx1 \n",
    b"{\"MESSAGE\": [255, 254, 65], \"SYSLOG_IDENTIFIER\": \"postfix/smtpd\"}\n",
    b"{\"MESSAGE\": 5}\n",
    b"[1, 2, 3]\n",
    b"{not json\n",
    b"\xff" * 40 + b": " + b"\xfe" * 40 + b"\n",
    b"2026-03-05T10:00:10.5+0100 mx1 postfix/submissions/smtpd[9]: ABCDEF0125: "
    b"client=\xff[2001:db8::1], sasl_method=PLAIN, sasl_username=\xfe\n",
]


@pytest.fixture(scope="module")
def compiled_root() -> Path:
    """The venv's compiled build, made fresh if it is not (a no-op when it is)."""
    run = subprocess.run([sys.executable, str(BUILD)], capture_output=True, text=True,
                         check=False, cwd=ROOT, env=child_env())
    assert run.returncode == 0, run.stdout + run.stderr
    return Path(sys.prefix) / "postwarden-compiled"


def child_env(**overrides: str) -> dict[str, str]:
    """This environment without the switches of the run itself (a developer's
    POSTWARDEN_PURE=1 would turn every compiled check here into a pure one)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("POSTWARDEN_PURE", "POSTWARDEN_COMPILED_DIR")}
    return {**env, **overrides}


def probe(env: dict[str, str] | None = None, script: str = PROBE) -> dict[str, object]:
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env=child_env(**(env or {})))
    result: dict[str, object] = json.loads(run.stdout)
    return result


def loads_compiled(result: dict[str, object], root: Path) -> bool:
    files = result["files"]
    assert isinstance(files, list)
    suffix = EXTENSION_SUFFIXES[0]
    compiled = [f.startswith(str(root)) and f.endswith(suffix) for f in files]
    assert all(compiled) or not any(compiled), files     # never a mixed set
    assert result["compiled"] is all(compiled)
    return all(compiled)


def summary_json(path: Path, *args: str, pure: bool) -> bytes:
    env = child_env(POSTWARDEN_PURE="1" if pure else "0")
    run = subprocess.run([sys.executable, "-m", "postwarden", "logs", "summary", "--format",
                          "json", *args, str(path)], capture_output=True, check=False, env=env)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return run.stdout


# -- (a) a fresh build is used, POSTWARDEN_PURE=1 turns it off --------------------------------

def test_fresh_build_is_used(compiled_root: Path) -> None:
    assert loads_compiled(probe(), compiled_root)


def test_pure_forces_source_modules(compiled_root: Path) -> None:
    result = probe({"POSTWARDEN_PURE": "1"})
    assert not loads_compiled(result, compiled_root)
    files = result["files"]
    assert isinstance(files, list)
    assert all(f.endswith(".py") for f in files)


# -- (b) compiled and pure give the same report -----------------------------------------------

@pytest.mark.parametrize("log_format", ["bsd", "rfc3339", "short-iso", "journal-json",
                                        "postlog"])
def test_same_report_compiled_and_pure(compiled_root: Path, tmp_path: Path,
                                       log_format: str) -> None:
    path = tmp_path / "mail.log"
    maillog.write_log(path, Options(lines=30_000, seed=11, format=log_format,
                                    queue_ids="long" if log_format == "rfc3339" else "short"))
    with path.open("ab") as f:
        f.write(b"".join(ODD_LINES))
    pure = summary_json(path, "--year", "2026", pure=True)
    assert json.loads(pure)["totals"]["received"] > 0
    assert summary_json(path, "--year", "2026", pure=False) == pure


def test_same_report_in_parallel(compiled_root: Path, tmp_path: Path) -> None:
    """A file large enough to be cut across processes: the compiled workers' parts merge
    (none is counted again) into the pure single pass's report."""
    path = tmp_path / "mail.log"
    maillog.write_log(path, Options(lines=150_000, seed=12, format="bsd"))
    with path.open("ab") as f:
        f.write(b"".join(ODD_LINES))
    assert path.stat().st_size > 16 << 20     # cli/logs.py PARALLEL_BYTES
    pure = summary_json(path, "--jobs", "1", pure=True)
    assert summary_json(path, "--jobs", "3", pure=False) == pure
    check = (
        "import json, sys, os\n"
        "import postwarden.logs as logs\n"
        "from postwarden.logs.reader import split_points\n"
        "from postwarden.logs.summary_parallel import summarise\n"
        "path = sys.argv[1]\n"
        "recounted = []\n"
        "ranges = split_points(path, os.path.getsize(path), 3)\n"
        "summarise(path, ranges, {'year': 2026}, recounted=recounted)\n"
        "print(json.dumps([logs.COMPILED, recounted]))\n")
    run = subprocess.run([sys.executable, "-c", check, str(path)], capture_output=True,
                         text=True, check=True, env=child_env())
    assert json.loads(run.stdout) == [True, []]


EVENTS = """
import sys
from postwarden.logs.parse import Parser
parser = Parser(year=2026, now=0)
with open(sys.argv[1], "rb") as f:
    for raw in f:
        print(repr(parser.parse(raw)))
"""


def mutated(lines: list[bytes], count: int, seed: int) -> list[bytes]:
    """Lines cut, spliced and salted with bytes the patterns care about or cannot decode:
    whatever the parser makes of them, compiled code must make the same (mypyc checks the
    types of what it builds at run time; Python does not)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test input, not a secret
    salt = [b"[", b"]", b":", b": ", b"=", b"<", b">", b",", b" ", b"(", b")", b"\xff",
            b"\xc3", b"\x00", b"{", b"}", b'"', b"status=", b"client=", b"to=<", b"size=",
            b"9" * 30, b"-", b"1.5e999"]
    out = []
    for _ in range(count):
        line = bytearray(rng.choice(lines).rstrip(b"\n"))
        for _ in range(rng.randint(1, 4)):
            at = rng.randint(0, len(line))
            action = rng.random()
            if action < 0.4:
                line[at:at] = rng.choice(salt)
            elif action < 0.7:
                del line[at:at + rng.randint(1, 12)]
            else:
                other = rng.choice(lines)
                start = rng.randint(0, len(other))
                line[at:at] = other[start:start + rng.randint(1, 40)].rstrip(b"\n")
        out.append(bytes(line).replace(b"\n", b" ") + b"\n")
    return out


def test_same_events_on_mangled_lines(compiled_root: Path, tmp_path: Path) -> None:
    """Every event of every pattern's samples and of generated lines, mangled: the same
    event (or None), never an exception, compiled or not; the same summary too."""
    seeds: list[bytes] = [sample.line.encode("utf-8", "surrogateescape") + b"\n"
                          for pattern in PATTERNS for sample in pattern.samples]
    for i, log_format in enumerate(("bsd", "rfc3339", "short-iso", "journal-json")):
        path = tmp_path / f"{log_format}.log"
        maillog.write_log(path, Options(lines=2_000, seed=20 + i, format=log_format))
        seeds += path.read_bytes().splitlines(keepends=True)
    path = tmp_path / "mangled.log"
    path.write_bytes(b"".join(seeds + ODD_LINES + mutated(seeds, 20_000, seed=7)))
    results = []
    for pure in ("1", "0"):
        run = subprocess.run([sys.executable, "-c", EVENTS, str(path)], capture_output=True,
                             check=False, env=child_env(POSTWARDEN_PURE=pure))
        assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
        results.append(run.stdout)
    assert results[0].count(b"\n") == len(path.read_bytes().splitlines())
    assert results[0].count(b"None\n") < len(seeds) + 20_000   # events were built
    assert results[1] == results[0]
    assert summary_json(path, "--year", "2026", pure=False) == \
        summary_json(path, "--year", "2026", pure=True)


# -- (c) anything stale or unknown: the source modules --------------------------------------

def copy_build(compiled_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "compiled"
    shutil.copytree(compiled_root, copy)
    return copy


def rewrite_stamp(root: Path, name: str, field: int, value: str) -> None:
    stamp = root / logs.STAMP
    rows = [line.split(" ") for line in stamp.read_text(encoding="ascii").splitlines()]
    for row in rows:
        if row[0] == name:
            row[field] = value
    stamp.write_text("\n".join(" ".join(row) for row in rows) + "\n", encoding="ascii")


def test_a_copy_of_the_build_is_used(compiled_root: Path, tmp_path: Path) -> None:
    copy = copy_build(compiled_root, tmp_path)
    assert loads_compiled(probe({"POSTWARDEN_COMPILED_DIR": str(copy)}), copy)


def test_an_edited_source_loads_pure_modules(compiled_root: Path, tmp_path: Path) -> None:
    # what an edit of parse.py looks like from the stamp's side: another size, mtime and hash
    copy = copy_build(compiled_root, tmp_path)
    rewrite_stamp(copy, "parse.py", 1, "1")
    rewrite_stamp(copy, "parse.py", 2, "1")
    rewrite_stamp(copy, "parse.py", 3, "0" * 64)
    assert not loads_compiled(probe({"POSTWARDEN_COMPILED_DIR": str(copy)}), copy)


def test_a_touched_source_with_the_same_bytes_is_still_fresh(compiled_root: Path,
                                                            tmp_path: Path) -> None:
    copy = copy_build(compiled_root, tmp_path)
    rewrite_stamp(copy, "summary.py", 2, "1")     # mtime differs: the hash decides
    assert loads_compiled(probe({"POSTWARDEN_COMPILED_DIR": str(copy)}), copy)


@pytest.mark.parametrize("damage", ["python", "missing-module", "missing-extension",
                                    "missing-library", "empty", "no-stamp"])
def test_a_damaged_build_loads_pure_modules(compiled_root: Path, tmp_path: Path,
                                            damage: str) -> None:
    copy = copy_build(compiled_root, tmp_path)
    stamp = copy / logs.STAMP
    lines = stamp.read_text(encoding="ascii").splitlines()
    if damage == "python":
        stamp.write_text("python cpython-310.so\n" + "\n".join(lines[1:]) + "\n")
    elif damage == "missing-module":
        stamp.write_text("\n".join(line for line in lines if not line.startswith("events.py"))
                         + "\n")
    elif damage == "missing-extension":
        (copy / "postwarden" / "logs" / f"summary{EXTENSION_SUFFIXES[0]}").unlink()
    elif damage == "missing-library":
        (copy / "postwarden" / "logs" / f"{logs.SHARED_LIBRARY}{EXTENSION_SUFFIXES[0]}").unlink()
    elif damage == "empty":
        stamp.write_text("")
    else:
        stamp.unlink()
    assert not loads_compiled(probe({"POSTWARDEN_COMPILED_DIR": str(copy)}), copy)


def test_no_build_loads_pure_modules(tmp_path: Path) -> None:
    root = tmp_path / "none"
    assert not loads_compiled(probe({"POSTWARDEN_COMPILED_DIR": str(root)}), root)


# -- (d) policyd: its own compiled set, the same decisions and log lines ------------------------

POLICY_PROBE = """
import json, postwarden.policy as policy
from postwarden.policy import greylist, model, protocol, service
import postwarden.logs as logs
modules = (greylist, model, protocol, service)
print(json.dumps({"compiled": policy.COMPILED, "logs": logs.COMPILED,
                  "files": [m.__file__ for m in modules]}))
"""

# Decodes request streams, good and broken, and decides the good ones with greylisting on a
# SQLite store at a fixed clock, twice (the second time after the delay); prints what the
# codec, the service and the log made of each.
DECISIONS = r"""
import asyncio, json, logging, random, sys, tempfile
from postwarden.policy.greylist import Greylist, GreylistSettings
from postwarden.policy.model import FixedClock
from postwarden.policy.protocol import ProtocolError, RequestDecoder
from postwarden.policy.service import PolicyService
from postwarden.policy.store.sqlite import SqliteStore
from postwarden.policy.whitelist import parse_clients, parse_recipients

lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.INFO)

rng = random.Random(5)
def value():
    return rng.choice(["", "a", "ab c", "x\\y", "\xff\xfe".encode("latin-1").decode(
        "utf-8", "surrogateescape"), "é", "t" * 300, "prvs=1234567890=bob", "u+ext",
        "user12", "\t"])
def stream(number):
    client = rng.choice(["198.51.100.%d" % rng.randint(1, 254), "2001:db8::%x" % number,
                         "127.0.0.1", "192.0.2.9", "not-an-ip", ""])
    attrs = {"request": "smtpd_access_policy",
             "protocol_state": rng.choice(["RCPT", "rcpt", "DATA", "END-OF-MESSAGE"]),
             "client_address": client, "client_name": rng.choice(["unknown", "mx.good.example",
             "bad host"]), "helo_name": value(), "recipient": value() + "@example.org",
             "sender": rng.choice(["", value() + "@example.net", "prvs=0123456789=x@y.z",
                                   "a+b@c.d", "user%d@x.y" % number]),
             "instance": "%x" % (number // 3), "sasl_username": rng.choice(["", "", "bob"])}
    for name in rng.sample(sorted(attrs), rng.randint(0, 2)):
        if name != "request":
            del attrs[name]
    if rng.random() < 0.3:
        attrs["etrn_domain"] = ""
    raw = "".join(f"{k}={v}\n" for k, v in attrs.items()).encode("utf-8", "surrogateescape")
    return rng.choice([raw + b"\n", raw + b"\n", raw.replace(b"\n", b"\r\n") + b"\r\n",
                       raw + b"oops\n\n", raw + b"a\0b=c\n\n", b"=x\n\n",
                       b"request=other\n\n", b"x" * 5000 + b"\n\n"])

async def main():
    store = SqliteStore(tempfile.mkdtemp() + "/state.db")
    clock = FixedClock()
    check = Greylist(GreylistSettings(hostname="mx.test", auto_whitelist_clients=2), store,
                     clock, clients=parse_clients("good.example\n"),
                     recipients=parse_recipients("/^postmaster@/\n"))
    service = PolicyService([check], budget=5, clock=lambda: 0.0)
    out = []
    streams = [stream(n) for n in range(1500)]
    for round in range(2):
        for raw in streams:
            decoder = RequestDecoder()
            try:
                decoder.feed(raw)
                request = decoder.next_request()
            except ProtocolError as exc:
                out.append(["protocol", str(exc)])
                continue
            if request is None:
                out.append(["incomplete"])
                continue
            verdict = await service.decide(request)
            out.append([verdict.action, verdict.check, verdict.reason])
        clock.advance(301)
    await store.close()
    print(json.dumps({"decisions": out, "log": lines,
                      "counters": service.counters.prometheus()}))

asyncio.run(main())
"""


def policy_probe(env: dict[str, str] | None = None) -> dict[str, object]:
    return probe(env, POLICY_PROBE)


def rewrite_policy_stamp(root: Path, name: str) -> None:
    stamp = root / "stamp-policy.txt"
    rows = [line.split(" ") for line in stamp.read_text(encoding="ascii").splitlines()]
    for row in rows:
        if row[0] == name:
            row[1:] = ["1", "1", "0" * 64]   # another size, mtime and hash: an edit
    stamp.write_text("\n".join(" ".join(row) for row in rows) + "\n", encoding="ascii")


def test_fresh_policy_build_is_used(compiled_root: Path) -> None:
    assert loads_compiled(policy_probe(), compiled_root)
    assert not loads_compiled(policy_probe({"POSTWARDEN_PURE": "1"}), compiled_root)


def test_a_stale_policy_build_leaves_the_log_build_alone(compiled_root: Path,
                                                         tmp_path: Path) -> None:
    copy = copy_build(compiled_root, tmp_path)
    rewrite_policy_stamp(copy, "greylist.py")
    result = policy_probe({"POSTWARDEN_COMPILED_DIR": str(copy)})
    assert not loads_compiled(result, copy)
    assert result["logs"] is True


def test_same_decisions_compiled_and_pure(compiled_root: Path) -> None:
    """The same answers, reasons, log lines and counters, request for request, from the
    compiled codec, records, greylisting and pipeline as from the sources."""
    def decisions(pure: bool) -> str:
        run = subprocess.run([sys.executable, "-c", DECISIONS], capture_output=True,
                             text=True, check=True,
                             env=child_env(POSTWARDEN_PURE="1" if pure else "0"))
        return run.stdout

    pure = decisions(pure=True)
    found = json.loads(pure)
    assert any(d[:2] == ["DUNNO", "none"] for d in found["decisions"])
    assert any(d[0].startswith("DEFER_IF_PERMIT") for d in found["decisions"])
    assert any(d[0].startswith("PREPEND X-Greylist") for d in found["decisions"])
    assert any(d[0] == "protocol" for d in found["decisions"])
    assert decisions(pure=False) == pure
