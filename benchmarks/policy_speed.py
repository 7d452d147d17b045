"""Benchmark: postwarden policyd beside postgrey 1.37 (Debian), same requests, same run.

Security: both servers listen on 127.0.0.1 only, on free ports, with state in a temporary
directory; both are stopped (by process) at the end, whatever happens. The load is bounded:
``--requests`` per scenario and connection count.
Standards: SMTPD_POLICY_README (the request format smtpd sends).

Usage: ``.venv/bin/python benchmarks/policy_speed.py [--requests 10000] [--runs 5]
[--concurrency 1,50] [--rate R] [--policyd-workers 1,2]`` as root (postgrey drops to its
own user). Scenarios, each at concurrency 1 and 50, on fresh state:

- ``new``: every request a triplet never seen (distinct senders over about 40 /24s), so
  every request writes a new entry and is deferred;
- ``known``: the same triplets again, so every request updates an existing entry.

The client keeps one persistent connection per simulated smtpd process and sends requests
one after another on each (never two at once on a connection), like smtpd; it is a plain
epoll loop with requests encoded before the clock starts, so it costs little CPU per
request and leaves the machine's CPUs to the servers. Postwarden runs once per
``--policyd-workers`` count (the rows ``w=1``, ``w=2``: processes sharing the socket and
the SQLite file). Each run starts every server afresh, in alternating order; with
``--runs N`` the table shows medians over the runs and the ranges of requests per second
and of p99, since on a shared machine single runs vary. Per server and scenario: requests
per second, p50 and p99 latency, CPU per request of the server (user+system from
/proc/PID/stat, threads and worker processes included) and of this client, then the ratio
of each postwarden row to postgrey. The load average before and after is printed as a noise
indicator, and so is the machine's own tail: a fixed block of CPU work (about 1 ms) timed
again and again, before and after, with nothing of the benchmark running. On a quiet
machine its p99 is close to its p50; on the shared VM this was written on it was 1.3 to 1.9
times its p50 in samples seconds apart, and a server's p99 at saturation is stretched as
much, whatever the server does. The load is closed-loop: with N connections there are
always N requests in flight, so mean latency is N divided by the rate (Little's law).
``--rate R`` makes it open-loop instead: R requests per second offered in total, each
connection still one request at a time, latency counted from when a request was due; that
shows the latency at a given load rather than at saturation.

Both servers keep their state across a crash: postgrey's BerkeleyDB commits every write
with fdatasync; postwarden commits each group of requests to SQLite's WAL before it
answers them (``synchronous=NORMAL``: safe against a crash of the process, not against
a power loss before the next checkpoint; see docs/policyd.md).
"""

from __future__ import annotations

import argparse
import heapq
import os
import select
import shutil
import signal
import socket
import statistics
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
MAX_REQUESTS = 100_000
MAX_CONNECTIONS = 200
JITTER_SECONDS = 2.0  # how long the machine's own tail is sampled, before and after
JITTER_ROUNDS = 130  # small dictionaries filled in the fixed block (about 1 ms)


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float         # the server's
    client_cpu_seconds: float  # this process's (the load generator's)

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


class Connection:
    """One smtpd-like connection: it sends its requests one after another, each only
    after the reply to the previous one has come in. Requests are encoded before the clock
    starts and a reply is only checked for its end and its first word."""

    def __init__(self, sock: socket.socket, requests: list[bytes], due: float) -> None:
        self.sock = sock
        self.requests = requests
        self.next = 0
        self.buffer = b""
        self.due = due      # open loop: when the next request is due
        self.sent = 0.0     # when the request in flight was sent (or was due)

    def send(self, when: float) -> None:
        self.sent = when
        self.sock.sendall(self.requests[self.next])
        self.next += 1

    def receive(self) -> bool:
        """Read what is there; True once the reply is whole."""
        data = self.sock.recv(4096)
        if not data:
            raise RuntimeError("the server closed the connection")
        self.buffer += data
        if not self.buffer.endswith(b"\n\n"):
            return False
        reply, self.buffer = self.buffer, b""
        if not reply.startswith(b"action=") or reply.count(b"\n") != 2:
            raise RuntimeError(f"unexpected reply {reply[:80]!r}")
        return True

    @property
    def finished(self) -> bool:
        return self.next == len(self.requests)


def drive(port: int, shares: list[list[bytes]], interval: float) -> list[float]:
    """Send every share over a connection of its own and return the latencies.

    A plain epoll loop in this one thread rather than asyncio, so that the load generator
    costs as little CPU as it can: on a machine with few CPUs it shares them with the
    servers. Closed loop (``interval`` 0): the next request goes out as soon as the reply
    is in; latency is counted from the send. Open loop: each connection's request k is due
    ``k * interval`` after its start (the connections' starts are staggered); latency is
    counted from when it was due, so a server that falls behind is charged for the wait
    too (no coordinated omission)."""
    latencies: list[float] = []
    connections: dict[int, Connection] = {}
    poller = select.epoll()
    try:
        for share in shares:
            sock = socket.create_connection((HOST, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connections[sock.fileno()] = Connection(sock, share, 0.0)
        begin = time.perf_counter() + 0.01
        waiting: list[tuple[float, int]] = []  # (due, fd) of requests not yet sent
        for number, (fd, conn) in enumerate(connections.items()):
            conn.due = begin + number * interval / len(connections)
            waiting.append((conn.due, fd))
            poller.register(fd, select.EPOLLIN)
        heapq.heapify(waiting)
        busy = len(connections)
        while busy:
            now = time.perf_counter()
            while waiting and waiting[0][0] <= now:
                due, fd = heapq.heappop(waiting)
                connections[fd].send(due if interval else now)
            timeout = max(0.0, waiting[0][0] - now) if waiting else 5.0
            events = poller.poll(timeout)
            if not events and not waiting:
                raise RuntimeError("no reply for 5 seconds")
            for fd, _ in events:
                conn = connections[fd]
                if not conn.receive():
                    continue
                now = time.perf_counter()
                latencies.append(now - conn.sent)
                if conn.finished:
                    busy -= 1
                elif interval:  # sent when due; if that is past, at once, charged from then
                    conn.due += interval
                    heapq.heappush(waiting, (conn.due, fd))
                else:
                    conn.send(now)
    finally:
        poller.close()
        for conn in connections.values():
            conn.sock.close()
    return latencies


def cpu_seconds(pid: int) -> float:
    """User+system time of the process and of its direct children (prefork workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def load(port: int, pid: int, requests: int, concurrency: int,
         rate: float = 0.0) -> Result:
    """Send ``requests`` over ``concurrency`` connections: closed loop, or open loop at
    ``rate`` requests per second in total (each connection gets its share, staggered)."""
    shares = [[request(index) for index in range(i, requests, concurrency)]
              for i in range(concurrency)]
    interval = concurrency / rate if rate else 0.0
    cpu = cpu_seconds(pid)
    client_cpu = time.process_time()
    start = time.perf_counter()
    latencies = drive(port, shares, interval)
    seconds = time.perf_counter() - start
    return Result(requests, seconds, latencies, cpu_seconds(pid) - cpu,
                  time.process_time() - client_cpu)


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


def policyd_starter(workers: int) -> Callable[[Path, int], subprocess.Popen[bytes]]:
    def start_policyd(state: Path, port: int) -> subprocess.Popen[bytes]:
        state.mkdir(mode=0o700)
        config = state / "postwarden.toml"
        config.write_text(
            "[policyd]\n"
            f'listen = ["tcp:{HOST}:{port}"]\n'
            'user = "nobody"\n'
            + (f"workers = {workers}\n" if workers > 1 else "")
            + "[store]\n"
            f'url = "sqlite://{state}/state.db"\n'
            "[greylist]\nenabled = true\nexempt_networks = []\n"
            "[spf]\nenabled = false\n"
            "[ratelimit]\nenabled = false\n")
        shutil.chown(state, "nobody")
        return subprocess.Popen([sys.executable, "-m", "postwarden", "policyd", "--config",
                                 str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return start_policyd


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


Table = dict[tuple[str, int], Result]


def run_server(name: str, start: Callable[[Path, int], subprocess.Popen[bytes]],
               tmp: Path, requests: int, levels: list[int], rate: float) -> Table:
    results: Table = {}
    for concurrency in levels:
        port = free_port()
        process = start(tmp / f"{name}-{concurrency}", port)
        try:
            wait_listening(port, process)
            for scenario in ("new", "known"):
                results[(scenario, concurrency)] = load(port, process.pid, requests,
                                                        concurrency, rate)
        finally:
            stop(process)
    return results


def one_run(number: int, tmp: Path, requests: int, levels: list[int],
            workers: list[int], rate: float) -> dict[str, Table]:
    """Every server, each on fresh state; the order alternates from run to run."""
    starts: dict[str, Callable[[Path, int], subprocess.Popen[bytes]]] = {
        "postgrey": start_postgrey}
    for count in workers:
        starts[f"postwarden w={count}"] = policyd_starter(count)
    order = list(starts) if number % 2 == 0 else list(reversed(starts))
    return {name: run_server(name.replace(" ", "").replace("=", ""), starts[name],
                             tmp / f"run{number}", requests, levels, rate)
            for name in order}


def host_jitter(seconds: float = JITTER_SECONDS) -> tuple[float, float]:
    """The p50 and p99, in ms, of the time one fixed block of CPU work takes, timed over
    and over for ``seconds``."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        _fixed_work()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(0.99 * len(times))] * 1000


def _fixed_work() -> int:
    """About a millisecond of interpreter work (small dictionaries, the stuff of a
    request), the same every time and with no memory to ask the system for."""
    size = 0
    for _ in range(JITTER_ROUNDS):
        table = {}
        for number in range(256):
            table[number] = number
        size += len(table)
    return size


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(runs: list[dict[str, Table]]) -> None:
    """Per scenario: each server's median over the runs, the spread of its rate, and the
    ratio of each postwarden row to postgrey's medians."""
    print(f"{'scenario':8} {'conc':>4} {'server':14} {'req/s':>7} {'(min-max)':>13} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'(min-max)':>11} {'srv CPU':>8} {'client CPU':>10}")
    names = ["postgrey", *sorted(name for name in runs[0] if name != "postgrey")]
    for key in runs[0]["postgrey"]:
        medians: dict[str, tuple[float, float, float, float]] = {}
        for name in names:
            results = [run[name][key] for run in runs]
            rates = [r.rate for r in results]
            p99s = [r.percentile(0.99) * 1000 for r in results]
            medians[name] = (median(rates),
                             median([r.percentile(0.5) * 1000 for r in results]),
                             median(p99s),
                             median([r.cpu_seconds / r.requests * 1e6 for r in results]))
            client = median([r.client_cpu_seconds / r.requests * 1e6 for r in results])
            rate, p50, p99, cpu = medians[name]
            spread = f"{min(rates):.0f}-{max(rates):.0f}"
            tail = f"{min(p99s):.2f}-{max(p99s):.2f}"
            print(f"{key[0]:8} {key[1]:4} {name:14} {rate:7.0f} {spread:>13} {p50:7.2f} "
                  f"{p99:7.2f} {tail:>11} {cpu:5.0f} us {client:7.0f} us")
        theirs = medians["postgrey"]
        for name in names[1:]:
            ours = medians[name]
            label = "ratio " + name.split()[-1]
            print(f"{'':8} {'':4} {label:14} {ours[0] / theirs[0]:6.1f}x {'':13} "
                  f"{ours[1] / theirs[1]:6.2f}x {ours[2] / theirs[2]:6.2f}x {'':11} "
                  f"{ours[3] / max(theirs[3], 1e-9):5.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole comparison and report medians (default 1)")
    parser.add_argument("--concurrency", default="1,50", metavar="N,N",
                        help="connection counts to test (default 1,50)")
    parser.add_argument("--policyd-workers", default="1,2", metavar="N,N",
                        help="postwarden rows to run, by processes on the socket "
                             "([policyd] workers; default 1,2)")
    parser.add_argument("--rate", type=float, default=0.0, metavar="R",
                        help="open loop: offer R requests per second in total, spread over "
                             "the connections (default: closed loop, as fast as answered)")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    workers = [int(n) for n in args.policyd_workers.split(",")]
    if os.geteuid() != 0:
        print("policy_speed: run as root (postgrey changes to its own user)", file=sys.stderr)
        return 2
    if (not 1 <= args.requests <= MAX_REQUESTS
            or not all(1 <= n <= MAX_CONNECTIONS for n in levels)
            or not all(1 <= n <= 8 for n in workers)):
        print(f"policy_speed: at most {MAX_REQUESTS} requests, {MAX_CONNECTIONS} "
              "connections and 8 workers", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    jitter_before = host_jitter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="postwarden-bench-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the servers run as postgrey and nobody
        for number in range(args.runs):
            (Path(tmp) / f"run{number}").mkdir(mode=0o755)
            runs.append(one_run(number, Path(tmp), args.requests, levels, workers,
                                args.rate))
    print(f"{args.runs} run(s) of {args.requests} requests per scenario; postwarden with "
          f"{args.policyd_workers} worker(s) (w=N); "
          + (f"open loop at {args.rate:g} req/s; " if args.rate else "closed loop; ")
          + "load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on "
          f"{os.cpu_count()} CPUs; CPU is per request")
    jitter_after = host_jitter()
    print("the machine's own tail, a fixed CPU block timed over and over for "
          f"{JITTER_SECONDS:g} s: p50 {jitter_before[0]:.2f} ms, p99 {jitter_before[1]:.2f} "
          f"ms ({jitter_before[1] / jitter_before[0]:.1f}x) before; p50 "
          f"{jitter_after[0]:.2f} ms, p99 {jitter_after[1]:.2f} ms "
          f"({jitter_after[1] / jitter_after[0]:.1f}x) after")
    report(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
