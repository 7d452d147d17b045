"""Benchmark: postwarden milter beside OpenDKIM 2.11 (Debian), same messages, same client.

Security: both milters listen on unix sockets in a private temporary directory; the
verification keys come from a DNS server on 127.0.0.1 (postwarden) and a TestPublicKeys
file (OpenDKIM); nothing leaves the machine. Every process started here is stopped by its
pid at the end, whatever happens. The load is bounded by ``--messages``.
Standards: Postfix MILTER_README (the milter protocol as smtpd drives it, through
``postwarden.milter.client``); RFC 6376 and RFC 8463 (what is signed and verified).

Usage (as root or not; both milters run as the calling user)::

    .venv/bin/python benchmarks/milter_speed.py [--messages 2000] [--workers 1,2]
        [--scenarios rsa,ed25519,verify[,pass]] [--concurrency 1,4] [--rounds 3]
        [--postwarden daemon|direct|daemon,direct] [--profile DIR]

Scenarios: ``rsa`` (sign with an RSA-2048 key, relaxed/relaxed), ``ed25519`` (sign with an
Ed25519 key), ``verify`` (verify the RSA-2048 signature on each message; the messages are
signed once beforehand); on request also ``pass`` (sign mode, but the client is outside:
nothing to sign, so the row is the cost of the milter protocol and message handling
alone). Both milters see the same ~5 KB messages from the same client,
each message on its own milter connection (OPTNEG, CONNECT, HELO, MAIL, RCPT, DATA, 14
headers, EOH, body, end of message, QUIT), as smtpd does for a client sending one message.
Signing requests come from 127.0.0.1 with ``{daemon_name}=ORIGINATING`` and a SASL login;
verification requests from 192.0.2.10 without.

Postwarden is the real daemon (``postwarden milter --config FILE``); ``--postwarden
direct`` runs instead (or also) a ``MilterServer`` with only the signing and verification
code, in a child of this script with the same prefork workers, labelled ``pw direct`` in
the table. All milters of a scenario run at once and are measured in turn, ``--rounds``
times; each row is the median round. See docs/milter-benchmark.md.

For each tool, scenario and concurrency the table gives messages per second (wall clock;
the client shares the machine's cores), CPU milliseconds per message of the milter's
process tree (utime+stime of the process, its threads, its live children, and its reaped
children, from /proc/PID/stat), and postwarden/OpenDKIM ratios. Every reply is checked:
each signing outcome must carry a DKIM-Signature that verifies, each verification outcome
an Authentication-Results with dkim=pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pwd
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from postwarden import prefork
from postwarden.dns import DnsResolver
from postwarden.lab.dns import DnsServer
from postwarden.listen import bind_unix
from postwarden.milter import dkim, keys
from postwarden.milter.client import Envelope, Outcome, Prepared, deliver, prepare
from postwarden.milter.keys import PrivateKey
from postwarden.milter.protocol import (
    SMFIP_NODATA,
    SMFIP_NOHELO,
    SMFIP_NOUNKNOWN,
    SMFIP_NR_FLAGS,
    Body,
    EndOfMessage,
    Header,
    InsertHeader,
    MailFrom,
    Reply,
    Verdict,
)
from postwarden.milter.server import (
    BaseHandler,
    EndOfMessageResult,
    MilterOptions,
    MilterServer,
    SessionContext,
)
from postwarden.milter.signing import SigningSettings, decide, from_domain
from postwarden.testing.dns import FakeResolver

OPENDKIM = "/usr/sbin/opendkim"
POSTWARDEN = Path(sys.executable).with_name("postwarden")
DOMAIN = "example.com"
SELECTORS = {"rsa": "rsa2026", "ed25519": "ed2026"}
TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
WARMUP = 40
SCENARIOS = ("rsa", "ed25519", "verify")
ALL_SCENARIOS = (*SCENARIOS, "pass")
# direct mode: ask the MTA not to wait for replies before end of message (SMFIP_NR_*)
NO_REPLY = os.environ.get("MILTER_BENCH_NO_REPLY", "1") == "1"
LABELS = {"daemon": "postwarden",
          "direct": "pw direct" + ("+NR" if NO_REPLY else "")}

SIGN_ENVELOPE = Envelope(
    sender="alice@example.com", recipients=("bob@example.net",),
    client_address="127.0.0.1", client_name="localhost", helo_name="localhost",
    macros={"C": {"j": "mail.example.com", "{daemon_name}": "ORIGINATING",
                  "v": "Postfix 3.7.11"},
            "M": {"i": "4Q1AbC2xyz", "{auth_type}": "PLAIN", "{auth_authen}": "alice",
                  "{mail_addr}": "alice@example.com"},
            "E": {"i": "4Q1AbC2xyz"}})
VERIFY_ENVELOPE = Envelope(
    sender="alice@example.com", recipients=("bob@example.net",),
    client_address="192.0.2.10", client_name="mail.example.com",
    helo_name="mail.example.com",
    macros={"C": {"j": "mx.example.net", "{daemon_name}": "smtpd", "v": "Postfix 3.7.11"},
            "M": {"i": "4Q1AbC2xyz", "{mail_addr}": "alice@example.com"},
            "E": {"i": "4Q1AbC2xyz"}})

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "mail", "server",
         "postfix", "milter", "signature", "domain", "key", "verify", "header", "body",
         "relaxed", "canonical", "message", "delivery", "queue")


def make_messages(count: int, size: int, seed: int = 2026) -> list[bytes]:
    """``count`` distinct plain-text messages of about ``size`` bytes, 14 header fields."""
    rng = random.Random(seed)  # noqa: S311 - filler text, not a secret
    messages = []
    for number in range(count):
        head = (f"Return-Path: <alice@example.com>\r\n"
                f"Received: from localhost (localhost [127.0.0.1])\r\n"
                f"\tby mail.example.com (Postfix) with ESMTPSA id 4Q1AbC{number:04d}\r\n"
                f"\tfor <bob@example.net>; Mon, 30 Nov 2026 06:00:00 +0000 (UTC)\r\n"
                f"From: Alice Example <alice@example.com>\r\n"
                f"To: Bob Example <bob@example.net>\r\n"
                f"Cc: Carol <carol@example.net>\r\n"
                f"Subject: Benchmark message {number} about the\r\n"
                f" quarterly figures\r\n"
                f"Date: Mon, 30 Nov 2026 06:00:{number % 60:02d} +0000\r\n"
                f"Message-ID: <bench-{number}@example.com>\r\n"
                f"Reply-To: Alice <alice@example.com>\r\n"
                f"MIME-Version: 1.0\r\n"
                f"Content-Type: text/plain; charset=us-ascii\r\n"
                f"Content-Transfer-Encoding: 7bit\r\n"
                f"List-Unsubscribe: <mailto:leave@example.com>\r\n"
                f"X-Mailer: postwarden-bench\r\n\r\n")
        lines: list[str] = []
        length = len(head)
        while length < size:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
            if rng.random() < 0.1:
                line += "  "   # trailing spaces: relaxed body canonicalisation has work
            lines.append(line)
            length += len(line) + 2
        messages.append(head.encode() + "\r\n".join(lines).encode() + b"\r\n")
    return messages


# -- processes and CPU ---------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found += [int(x) for x in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its live descendants, plus what their reaped children
    used (cutime+cstime), in seconds."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = _stat(current)
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
            stack += _children(current)
    return total / TICKS


@dataclass
class Milter:
    label: str
    process: subprocess.Popen[bytes]
    endpoint: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_listening(milter: Milter) -> None:
    path = milter.endpoint.partition(":")[2]
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if milter.process.poll() is not None:
            raise RuntimeError(f"{milter.label} exited with status {milter.process.returncode}"
                               f": {milter.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(path)
            return
        time.sleep(0.05)
    raise RuntimeError(f"{milter.label}: nothing listens on {path}")


def _spawn(label: str, argv: Sequence[str], endpoint: str, log: Path) -> Milter:
    if Path(endpoint.partition(":")[2]).exists():
        raise RuntimeError(f"{label}: {endpoint} is in use already")
    out = log.open("wb")
    process = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    out.close()
    milter = Milter(label, process, endpoint, log)
    try:
        wait_listening(milter)
    except BaseException:
        milter.stop()
        raise
    return milter


@dataclass(frozen=True)
class Setup:
    tmp: Path
    key_files: dict[str, Path]
    records: dict[str, str]        # selector -> TXT record
    nameserver: str


def start_opendkim(setup: Setup, scenario: str) -> Milter:
    socket_path = setup.tmp / f"opendkim-{scenario}.sock"
    conf = setup.tmp / f"opendkim-{scenario}.conf"
    common = ("Syslog no\nRequireSafeKeys false\nCanonicalization relaxed/relaxed\n"
              f"Socket local:{socket_path}\nUMask 0077\n")
    if scenario == "verify":
        conf.write_text(common + f"Mode v\nTestPublicKeys {setup.tmp / 'test-keys'}\n")
    else:
        algorithm = "ed25519-sha256" if scenario == "ed25519" else "rsa-sha256"
        key = "ed25519" if scenario == "ed25519" else "rsa"
        conf.write_text(common + f"Mode s\nDomain {DOMAIN}\nSelector {SELECTORS[key]}\n"
                        f"KeyFile {setup.key_files[key]}\nSignatureAlgorithm {algorithm}\n"
                        "InternalHosts 127.0.0.1\n")
    return _spawn("OpenDKIM", [OPENDKIM, "-f", "-x", str(conf)], f"unix:{socket_path}",
                  setup.tmp / f"opendkim-{scenario}.log")


def postwarden_config(setup: Setup, scenario: str, workers: int, socket_path: Path) -> Path:
    config = setup.tmp / f"{socket_path.stem}.toml"
    key = "ed25519" if scenario == "ed25519" else "rsa"
    algorithm = "ed25519-sha256" if key == "ed25519" else "rsa-sha256"
    config.write_text(
        "[milter]\n"
        f'listen = ["unix:{socket_path}"]\n'
        f"workers = {workers}\n"
        f'mode = "{"verify" if scenario == "verify" else "sign"}"\n'
        'authserv_id = "mx.example.net"\n'
        f'nameserver = "{setup.nameserver}"\n'
        f'user = "{pwd.getpwuid(os.geteuid()).pw_name}"\n'   # stay who we are
        "[dkim]\n"
        'internal_networks = ["127.0.0.0/8"]\n'
        "[[dkim.key]]\n"
        f'domain = "{DOMAIN}"\nselector = "{SELECTORS[key]}"\n'
        f'key_file = "{setup.key_files[key]}"\nalgorithm = "{algorithm}"\n'
        "[dkim.sign]\n"
        f'"{DOMAIN}" = ["{SELECTORS[key]}"]\n'
        "[dmarc]\nenabled = false\n")
    return config


def daemon_available() -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run([str(POSTWARDEN), "milter", "--help"], capture_output=True,
                              timeout=60)
        return done.returncode == 0 and b"--config" in done.stdout
    return False


def start_postwarden(setup: Setup, scenario: str, workers: int, how: str,
                     profile: Path | None) -> Milter:
    socket_path = setup.tmp / f"{how}-{scenario}-{workers}.sock"
    config = postwarden_config(setup, scenario, workers, socket_path)
    log = setup.tmp / f"{how}-{scenario}-{workers}.log"
    if how == "daemon":
        argv = [str(POSTWARDEN), "milter", "--config", str(config)]
        if profile is not None and workers == 1:  # cProfile sees the process it starts
            argv = [sys.executable, "-m", "cProfile", "-o",
                    str(profile / f"daemon-{scenario}.prof"), "-m", "postwarden", *argv[1:]]
        label = LABELS["daemon"]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve", str(config),
                scenario, str(socket_path), str(workers), setup.nameserver]
        if profile is not None:
            argv.append(str(profile))
        label = LABELS["direct"]
    return _spawn(label, argv, f"unix:{socket_path}", log)


# -- the direct mode: MilterServer + the signing and verification code, no daemon ------------


class DirectHandler(BaseHandler):
    """Collects the message; at its end signs it (``sign``) or verifies it (``verify``)."""

    def __init__(self, scenario: str, settings: SigningSettings,
                 loaded: dict[str, PrivateKey], resolver: DnsResolver,
                 cache: dkim.KeyCache) -> None:
        self.scenario, self.settings, self.loaded = scenario, settings, loaded
        self.resolver, self.cache = resolver, cache
        self.fields: list[bytes] = []
        self.from_values: list[str] = []
        self.chunks: list[bytes] = []

    async def mail_from(self, ctx: SessionContext, event: MailFrom) -> Reply:
        self.fields, self.from_values, self.chunks = [], [], []
        return Verdict.CONTINUE

    async def header(self, ctx: SessionContext, event: Header) -> Reply:
        value = event.value.replace(b"\n", b"\r\n")
        self.fields.append(event.name.encode("utf-8", "surrogateescape") + b":" + value
                           + b"\r\n")
        if event.name.lower() == "from":
            self.from_values.append(value.decode("utf-8", "replace"))
        return Verdict.CONTINUE

    async def body(self, ctx: SessionContext, event: Body) -> Reply:
        self.chunks.append(event.chunk)
        return Verdict.CONTINUE

    async def end_of_message(self, ctx: SessionContext,
                             event: EndOfMessage) -> EndOfMessageResult:
        message = b"".join(self.fields) + b"\r\n" + b"".join(self.chunks) + event.chunk
        if self.scenario == "verify":
            found = await dkim.verify(message, self.resolver, cache=self.cache)
            words = "; ".join(f"dkim={r.result.value} header.d={r.domain} header.s={r.selector}"
                              for r in found) or "dkim=none"
            return EndOfMessageResult(Verdict.CONTINUE, (
                InsertHeader(0, "Authentication-Results", f" mx.example.net; {words}".encode()),))
        domain, _ = from_domain(self.from_values)
        address = ctx.connect.address if ctx.connect else None
        decision = decide(self.settings, from_header_domain=domain, macros=ctx.macros,
                          client_address=address)
        changes = []
        for key in decision.keys:
            header = dkim.sign(message, domain=key.domain, selector=key.selector,
                               key=self.loaded[key.name])
            value = header.partition(b":")[2].rstrip(b"\r\n").replace(b"\r\n", b"\n")
            changes.append(InsertHeader(0, "DKIM-Signature", value))
        return EndOfMessageResult(Verdict.CONTINUE, tuple(changes))


def serve_direct(argv: Sequence[str]) -> int:
    """``--serve CONFIG SCENARIO SOCKET WORKERS NAMESERVER [PROFILE_DIR]``."""
    config, scenario, socket_path, workers, nameserver, *rest = argv
    profile = Path(rest[0]) if rest else None
    with open(config, "rb") as handle:
        table = tomllib.load(handle)
    settings = SigningSettings.from_toml(table["dkim"], config)
    loaded = {k.name: key for k, key in settings.load_keys()}
    sock = bind_unix(socket_path, 0o600)

    async def serve() -> None:
        resolver = DnsResolver(nameserver=nameserver)
        cache = dkim.KeyCache()
        options = MilterOptions(no_reply=SMFIP_NR_FLAGS if NO_REPLY else 0,
                                skip=SMFIP_NOHELO | SMFIP_NODATA | SMFIP_NOUNKNOWN)
        server = MilterServer(lambda: DirectHandler(scenario, settings, loaded, resolver, cache),
                              [sock], options)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    def child() -> int:
        # CPU time, not wall time: a send that waits for the peer to be scheduled is idle
        profiler = cProfile.Profile(time.process_time) if profile is not None else None
        if profiler is not None:
            profiler.enable()
        try:
            asyncio.run(serve())
        finally:
            if profiler is not None and profile is not None:
                profiler.disable()
                profiler.dump_stats(profile / f"direct-{scenario}-{os.getpid()}.prof")
        return 0

    return prefork.run(int(workers), child, name="milter-bench")


# -- load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    messages: int
    seconds: float
    milter_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.milter_cpu / self.messages


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _send(endpoint: str, envelope: Envelope, prepared: Sequence[Prepared],
                indexes: Sequence[int], outcomes: list[tuple[int, Outcome]]) -> None:
    for index in indexes:
        outcome = await deliver(endpoint, envelope, prepared[index % len(prepared)])
        outcomes.append((index % len(prepared), outcome))


async def load(milter: Milter, envelope: Envelope, prepared: Sequence[Prepared],
               count: int, concurrency: int) -> tuple[Result, list[tuple[int, Outcome]]]:
    outcomes: list[tuple[int, Outcome]] = []
    shares = [range(i, count, concurrency) for i in range(concurrency)]
    cpu, client = cpu_seconds(milter.process.pid), _client_cpu()
    start = time.perf_counter()
    await asyncio.gather(*(_send(milter.endpoint, envelope, prepared, share, outcomes)
                           for share in shares))
    seconds = time.perf_counter() - start
    result = Result(count, seconds, cpu_seconds(milter.process.pid) - cpu,
                    _client_cpu() - client)
    return result, outcomes


def _signature(outcome: Outcome) -> bytes:
    found = outcome.headers("DKIM-Signature")
    if len(found) != 1:
        raise RuntimeError(f"expected one DKIM-Signature, got {outcome}")
    return found[0]


def check(label: str, scenario: str, outcomes: list[tuple[int, Outcome]],
          messages: Sequence[bytes], records: dict[str, str]) -> None:
    """Every outcome as expected; signatures of the first few actually verify."""
    resolver = FakeResolver({f"{s}._domainkey.{DOMAIN}": [("TXT", r)]
                             for s, r in records.items()})
    # OpenDKIM accepts an outside client's message at end of headers when it only signs
    stages = ("eoh", "eom") if scenario == "pass" else ("eom",)
    for number, (index, outcome) in enumerate(outcomes):
        if outcome.stage not in stages or outcome.reply not in (Verdict.CONTINUE,
                                                                 Verdict.ACCEPT):
            raise RuntimeError(f"{label}: message {index}: {outcome}")
        if scenario == "pass":
            if outcome.headers("DKIM-Signature"):
                raise RuntimeError(f"{label}: message {index} signed for an outside client")
            continue
        if scenario == "verify":
            results = outcome.headers("Authentication-Results")
            if not results or b"dkim=pass" not in results[-1]:
                raise RuntimeError(f"{label}: message {index}: no dkim=pass in {outcome}")
            continue
        value = _signature(outcome)
        if number < 5:
            header = b"DKIM-Signature:" + value.replace(b"\r\n", b"\n").replace(
                b"\n", b"\r\n") + b"\r\n"
            found = asyncio.run(dkim.verify(header + messages[index], resolver))
            if [r.result.value for r in found] != ["pass"]:
                raise RuntimeError(f"{label}: signature does not verify: {found}")


# -- the run ---------------------------------------------------------------------------------


def prepare_setup(tmp: Path, nameserver: str) -> Setup:
    key_files, records = {}, {}
    for kind, selector in SELECTORS.items():
        key = keys.generate("rsa" if kind == "rsa" else "ed25519")
        path = tmp / f"{selector}.private"
        keys.write_private(path, key)
        key_files[kind] = path
        records[selector] = keys.dns_record(key.public_key())
    (tmp / "test-keys").write_text("".join(f"{s}._domainkey.{DOMAIN} {r}\n"
                                           for s, r in records.items()))
    return Setup(tmp, key_files, records, nameserver)


# What policyd PREPENDs (postwarden's milter takes SPF from it instead of evaluating SPF
# again; OpenDKIM ignores it): so both verify DKIM only.
RECEIVED_SPF = (b"Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.10; "
                b"helo=mail.example.com;\r\n envelope-from=alice@example.com; "
                b"receiver=mx.example.net\r\n")


def signed_copies(messages: Sequence[bytes], key_file: Path) -> list[bytes]:
    key = keys.load_private(key_file)
    return [RECEIVED_SPF + dkim.sign(m, domain=DOMAIN, selector=SELECTORS["rsa"], key=key) + m
            for m in messages]


def measure(milters: Sequence[Milter], scenario: str, messages: Sequence[bytes],
            setup: Setup, count: int, levels: Sequence[int], rounds: int,
            ) -> dict[tuple[str, int], Result]:
    """Each milter at each concurrency level, ``rounds`` times, interleaved (so that a
    change in the machine's load touches every tool alike); the median round of each."""
    envelope = SIGN_ENVELOPE if scenario in ("rsa", "ed25519") else VERIFY_ENVELOPE
    prepared = [prepare(m) for m in messages]
    for milter in milters:
        asyncio.run(load(milter, envelope, prepared, WARMUP, max(levels)))
    found: dict[tuple[str, int], list[Result]] = {}
    for _ in range(rounds):
        for level in levels:
            for milter in milters:
                result, outcomes = asyncio.run(load(milter, envelope, prepared, count, level))
                check(milter.label, scenario, outcomes, messages, setup.records)
                found.setdefault((milter.label, level), []).append(result)
                print(f"{scenario:9} {level:>4} {milter.label:24} {result.rate:8.1f} msg/s "
                      f"{result.cpu_ms:8.3f} CPU ms/msg", file=sys.stderr, flush=True)
    return {key: sorted(results, key=lambda r: r.cpu_ms)[len(results) // 2]
            for key, results in found.items()}


def table(rows: list[tuple[str, str, int, Result]]) -> str:
    """One line per row; the last two columns are the row's figure over OpenDKIM's."""
    reference = {(s, lv): r for s, label, lv, r in rows if label == "OpenDKIM"}
    lines = [f"| {'scenario':8} | {'conc':>4} | {'milter':25} | {'msg/s':>7} | "
             f"{'CPU ms/msg':>10} | {'client ms/msg':>13} | {'msg/s ratio':>11} | "
             f"{'CPU ratio':>9} |",
             f"|{'-' * 10}|{'-' * 5}:|{'-' * 27}|{'-' * 8}:|{'-' * 11}:|{'-' * 14}:|"
             f"{'-' * 12}:|{'-' * 10}:|"]
    for scenario, label, level, result in rows:
        base = reference.get((scenario, level))
        rate = f"{result.rate / base.rate:11.2f}" if base else f"{'-':>11}"
        cpu = f"{result.cpu_ms / base.cpu_ms:9.2f}" if base else f"{'-':>9}"
        lines.append(f"| {scenario:8} | {level:>4} | {label:25} | {result.rate:7.1f} | "
                     f"{result.cpu_ms:10.3f} | "
                     f"{1000 * result.client_cpu / result.messages:13.3f} | {rate} | {cpu} |")
    return "\n".join(lines)


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        return serve_direct(sys.argv[2:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="per measurement")
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}",
                        help="postwarden worker counts to run (default 1,CPUs)")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--postwarden", default="auto",
                        help="daemon, direct, or both as daemon,direct (default: daemon if "
                             "`postwarden milter` exists, else direct)")
    parser.add_argument("--profile", type=Path, help="write cProfile data of the "
                        "postwarden side to this directory")
    parser.add_argument("--size", type=int, default=5000, help="message size in bytes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per row (median)")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    worker_counts = sorted({int(x) for x in args.workers.split(",")})
    scenarios = [s for s in args.scenarios.split(",") if s]
    if set(scenarios) - set(ALL_SCENARIOS):
        parser.error(f"--scenarios: choose from {', '.join(ALL_SCENARIOS)}")
    hows = [h for h in args.postwarden.split(",") if h]
    if hows == ["auto"]:
        hows = ["daemon" if daemon_available() else "direct"]
    if not hows or set(hows) - {"daemon", "direct"}:
        parser.error("--postwarden: expected daemon, direct or daemon,direct")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    messages = make_messages(20, args.size)
    load_before = Path("/proc/loadavg").read_text().split()[0]
    rows: list[tuple[str, str, int, Result]] = []
    with tempfile.TemporaryDirectory(prefix="postwarden-milter-bench-") as name:
        tmp = Path(name)
        zone: dict[str, dict[str, list[str]]] = {}
        with DnsServer(zone) as dns_server:
            setup = prepare_setup(tmp, dns_server.address)
            for selector, record in setup.records.items():
                zone[f"{selector}._domainkey.{DOMAIN}"] = {"TXT": [record]}
            verify_set = signed_copies(messages, setup.key_files["rsa"])
            for scenario in scenarios:
                data = verify_set if scenario == "verify" else messages
                tools: list[tuple[str, str, int]] = [("OpenDKIM", "", 0)]
                tools += [(f"{LABELS[how]} w={w}", how, w) for how in hows
                          for w in worker_counts]
                milters: list[Milter] = []
                try:
                    for label, how, workers in tools:
                        milters.append(
                            start_postwarden(setup, scenario, workers, how, args.profile)
                            if workers else start_opendkim(setup, scenario))
                        milters[-1].label = label
                    results = measure(milters, scenario, data, setup, args.messages, levels,
                                      args.rounds)
                finally:
                    for milter in milters:
                        milter.stop()
                rows += [(scenario, label, level, results[(label, level)])
                         for level in levels for label, _, _ in tools]
    print(f"milter_speed: {args.messages} messages of ~{args.size} bytes per row, median "
          f"of {args.rounds} rounds by CPU, {os.cpu_count()} CPUs, load average before: "
          f"{load_before}, after: {Path('/proc/loadavg').read_text().split()[0]}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
