"""Benchmark: postwarden policyd beside postgrey 1.37 (Debian), same requests, one run.

Security: both servers listen on 127.0.0.1 only, on free ports, with state in a temporary
directory; both are stopped (by process) at the end, whatever happens. The load is bounded:
``--requests`` per scenario and connection count.
Standards: SMTPD_POLICY_README (the request format smtpd sends).

Usage: ``.venv/bin/python benchmarks/policy_speed.py [--requests 10000]`` as root (postgrey
drops to its own user). Scenarios, each at concurrency 1 and 50, on fresh state:

- ``new``: every request a triplet never seen (distinct senders over about 40 /24s), so
  every request writes a new entry and is deferred;
- ``known``: the same triplets again, so every request updates an existing entry.

Clients are asyncio tasks with one persistent connection each, sending requests one after
another like smtpd processes. Per server and scenario the script prints requests per second,
p50 and p99 latency, and CPU per request (user+system time of the server process from
/proc/PID/stat, threads included), then the ratio postwarden/postgrey. Both servers keep
their state durably: postgrey's BerkeleyDB commits every write (fdatasync), postwarden's
SQLite runs in WAL mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

POSTGREY = "/usr/sbin/postgrey"
HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def request(index: int) -> bytes:
    """A full Postfix 3.x RCPT request for triplet number index."""
    net = index % 40
    attributes = {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": f"198.51.{100 + net % 20}.{index % 250 + 1}",
        "client_name": "unknown", "reverse_client_name": "unknown",
        "helo_name": f"mail{net}.example.net", "sender": f"user{index}@example.net",
        "recipient": f"rcpt{index % 97}@example.org", "recipient_count": "0",
        "queue_id": "", "instance": f"{index:x}.{index:x}.0", "size": "1234",
        "etrn_domain": "", "stress": "", "sasl_method": "", "sasl_username": "",
        "sasl_sender": "", "ccert_subject": "", "ccert_issuer": "", "ccert_fingerprint": "",
        "encryption_protocol": "TLSv1.3", "encryption_cipher": "TLS_AES_256_GCM_SHA384",
        "encryption_keysize": "256", "client_port": "41234", "server_address": HOST,
        "server_port": "25", "policy_context": "",
    }
    return "".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n"


async def client(port: int, indexes: list[int], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for index in indexes:
            start = time.perf_counter()
            writer.write(request(index))
            await writer.drain()
            reply = await reader.readuntil(b"\n\n")
            latencies.append(time.perf_counter() - start)
            if not reply.startswith(b"action="):
                raise RuntimeError(f"unexpected reply {reply[:80]!r}")
    finally:
        writer.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def load(port: int, pid: int, requests: int, concurrency: int) -> Result:
    latencies: list[float] = []
    shares = [list(range(i, requests, concurrency)) for i in range(concurrency)]
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    await asyncio.gather(*(client(port, share, latencies) for share in shares))
    seconds = time.perf_counter() - start
    return Result(requests, seconds, latencies, cpu_seconds(pid) - cpu)


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {START_TIMEOUT}s")


def start_postgrey(state: Path, port: int) -> subprocess.Popen[bytes]:
    state.mkdir()
    shutil.chown(state, "postgrey", "postgrey")
    empty = state / "empty"
    empty.write_text("")
    return subprocess.Popen(
        [POSTGREY, f"--inet={HOST}:{port}", f"--dbdir={state}", "--user=postgrey",
         "--group=postgrey", f"--whitelist-clients={empty}",
         f"--whitelist-recipients={empty}", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_policyd(state: Path, port: int) -> subprocess.Popen[bytes]:
    state.mkdir(mode=0o700)
    config = state / "postwarden.toml"
    config.write_text(
        "[policyd]\n"
        f'listen = ["tcp:{HOST}:{port}"]\n'
        'user = "nobody"\n'
        "[store]\n"
        f'url = "sqlite://{state}/state.db"\n'
        "[greylist]\nenabled = true\nexempt_networks = []\n"
        "[spf]\nenabled = false\n"
        "[ratelimit]\nenabled = false\n")
    shutil.chown(state, "nobody")
    return subprocess.Popen([sys.executable, "-m", "postwarden", "policyd", "--config",
                             str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_server(name: str, start: Callable[[Path, int], subprocess.Popen[bytes]],
               tmp: Path, requests: int) -> dict[tuple[str, int], Result]:
    results: dict[tuple[str, int], Result] = {}
    for concurrency in (1, 50):
        port = free_port()
        process = start(tmp / f"{name}-{concurrency}", port)
        try:
            wait_listening(port, process)
            for scenario in ("new", "known"):
                results[(scenario, concurrency)] = asyncio.run(
                    load(port, process.pid, requests, concurrency))
        finally:
            stop(process)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("policy_speed: run as root (postgrey changes to its own user)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="postwarden-bench-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the servers run as postgrey and nobody
        servers = {"postgrey": run_server("postgrey", start_postgrey, Path(tmp), args.requests),
                   "postwarden": run_server("postwarden", start_policyd, Path(tmp),
                                            args.requests)}
    print(f"{'scenario':10} {'conc':>4} {'server':10} {'req/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'CPU us/req':>10}")
    for key in servers["postgrey"]:
        for name, results in servers.items():
            r = results[key]
            print(f"{key[0]:10} {key[1]:4} {name:10} {r.rate:8.0f} "
                  f"{r.percentile(0.5) * 1000:8.2f} {r.percentile(0.99) * 1000:8.2f} "
                  f"{r.cpu_seconds / r.requests * 1e6:10.0f}")
        ours, theirs = servers["postwarden"][key], servers["postgrey"][key]
        cpu_ratio = (ours.cpu_seconds / ours.requests) / max(
            theirs.cpu_seconds / theirs.requests, 1e-9)
        print(f"{'':10} {'':4} {'ratio':10} {ours.rate / theirs.rate:7.1f}x "
              f"{ours.percentile(0.5) / theirs.percentile(0.5):7.2f}x "
              f"{ours.percentile(0.99) / theirs.percentile(0.99):7.2f}x {cpu_ratio:9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
