"""The one store test suite, run on SQLite and on a real redis-server started here.

Security: redis-server listens on a free loopback port with its files in a fresh
temporary directory, and is stopped at teardown.
Standards: none.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from postwarden.policy.store import (
    SLIDING_WINDOW,
    TOKEN_BUCKET,
    GreylistTiming,
    RateCharge,
    RateState,
    Store,
    StoreError,
    Triplet,
    greylist_request,
    open_store,
    rate_step,
)

T = TypeVar("T")
NOW = 1_700_000_000
TIMING = GreylistTiming()
TRIPLET = Triplet("192.0.2.0", "a@example.org", "b@example.net")


class RedisServer:
    """A private redis-server with the append-only file on, restartable in place."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (Debian package redis-server)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", str(self.directory), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: redis flushes the append-only file
            self.process.wait(timeout=10)
            self.process = None

    def url(self, prefix: str) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state/state.db"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url(f"t{request.node.name.encode().hex()[-40:]}:")


def run(url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = open_store(url)
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


def test_greylist_attempts_follow_postgrey(store_url: str) -> None:
    async def body(store: Store) -> None:
        first = await store.greylist_attempt(TRIPLET, NOW, TIMING)
        assert (first.first, first.previous_last, first.passed_before) == (NOW, None, False)
        early = await store.greylist_attempt(TRIPLET, NOW + 100, TIMING)
        assert (early.first, early.previous_last, early.passed_before) == (NOW, NOW, False)
        passing = await store.greylist_attempt(TRIPLET, NOW + 300, TIMING)
        assert (passing.first, passing.passed_before) == (NOW, False)
        later = await store.greylist_attempt(TRIPLET, NOW + 4000, TIMING)
        assert (later.first, later.previous_last, later.passed_before) == \
            (NOW, NOW + 300, True)
        [entry] = await store.list_triplets(NOW + 4000)
        assert (entry.key, entry.client, entry.sender, entry.recipient) == \
            (TRIPLET.key, "192.0.2.0", "a@example.org", "b@example.net")
        assert (entry.first, entry.last, entry.passed(300)) == (NOW, NOW + 4000, True)
    run(store_url, body)


def test_retry_window_and_max_age_start_again(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.greylist_attempt(TRIPLET, NOW, TIMING)
        at_edge = await store.greylist_attempt(TRIPLET, NOW + TIMING.retry_window, TIMING)
        assert at_edge.first == NOW  # postgrey resets only when strictly past the window
        other = Triplet("198.51.100.0", "a@example.org", "b@example.net")
        await store.greylist_attempt(other, NOW, TIMING)
        late = await store.greylist_attempt(other, NOW + TIMING.retry_window + 1, TIMING)
        assert (late.first, late.previous_last) == (NOW + TIMING.retry_window + 1, None)
        # A passed triplet lives max_age past its last sighting, then starts again.
        third = Triplet("203.0.113.0", "a@example.org", "b@example.net")
        await store.greylist_attempt(third, NOW, TIMING)
        await store.greylist_attempt(third, NOW + 300, TIMING)
        kept = await store.greylist_attempt(third, NOW + 300 + TIMING.max_age - 1, TIMING)
        assert kept.passed_before
        gone = await store.greylist_attempt(third, NOW + 300 + 2 * TIMING.max_age, TIMING)
        assert (gone.passed_before, gone.previous_last) == (False, None)
    run(store_url, body)


def test_auto_whitelist_counts_once_an_hour(store_url: str) -> None:
    async def body(store: Store) -> None:
        assert await store.awl_count("192.0.2.7", NOW) == 0
        assert await store.awl_bump("192.0.2.7", NOW, TIMING.max_age) == 1
        assert await store.awl_bump("192.0.2.7", NOW + 3599, TIMING.max_age) == 1
        assert await store.awl_bump("192.0.2.7", NOW + 3600, TIMING.max_age) == 2
        assert await store.awl_count("192.0.2.7", NOW + 3600) == 2
        assert await store.awl_set("192.0.2.8", NOW, 5, TIMING.max_age) == 5
        assert await store.awl_set("192.0.2.8", NOW, 3, TIMING.max_age) == 5
        assert await store.awl_count("192.0.2.7", NOW + 3600 + TIMING.max_age) == 0
        listed = await store.list_awl(NOW + 3600)
        assert [(e.client, e.count) for e in listed] == [("192.0.2.7", 2), ("192.0.2.8", 5)]
        assert await store.delete_awl("192.0.2.8") == 1
        assert await store.awl_count("192.0.2.8", NOW) == 0
    run(store_url, body)


@pytest.mark.parametrize("composed", [False, True])
def test_one_greylist_call_per_request(store_url: str, composed: bool) -> None:
    """``Store.greylist``: the triplet's attempt, the first pass counted for the client
    (once an hour), and from ``awl_clients`` passes on the client let through untouched.
    The same from ``greylist_request``, the reference made of the single steps."""
    client = "192.0.2.77"

    async def body(store: Store) -> None:
        greylist = functools.partial(greylist_request, store) if composed else \
            store.greylist
        whitelisted = []
        for n in range(5):
            now = NOW + n * 3600
            triplet = Triplet("192.0.2.0", f"s{chr(97 + n)}@x", "r@y")
            first = await greylist(triplet, client, now, TIMING, 5)
            assert first.attempt is not None and first.attempt.previous_last is None
            assert not first.whitelisted_now
            passing = await greylist(triplet, client, now + 300, TIMING, 5)
            assert passing.attempt is not None and not passing.attempt.passed_before
            whitelisted.append(passing.whitelisted_now)
            again = await greylist(triplet, client, now + 400, TIMING, 5)
            if n < 4:
                assert again.attempt is not None and again.attempt.passed_before
            else:  # the fifth pass whitelisted the client
                assert again.attempt is None
        assert whitelisted == [False, False, False, False, True]
        later = NOW + 5 * 3600
        new = Triplet("192.0.2.0", "new@x", "r@y")
        skipped = await greylist(new, client, later, TIMING, 5)
        assert skipped.attempt is None and not skipped.whitelisted_now
        assert await store.list_triplets(later, limit=100) and all(
            e.sender != "new@x" for e in await store.list_triplets(later, limit=100))
        assert await store.awl_count(client, later) == 5  # moves at most once an hour
        assert await greylist(new, client, later + 3600, TIMING, 5) == skipped
        assert await store.awl_count(client, later + 3600) == 6
        off = await greylist(new, client, later, TIMING, 0)
        assert off.attempt is not None and off.attempt.previous_last is None
    run(store_url, body)


def test_token_bucket_spends_and_refills(store_url: str) -> None:
    bucket = RateCharge("sasl-hour:alice", TOKEN_BUCKET, 10, 3600.0, 4)

    async def body(store: Store) -> None:
        assert [r.allowed for r in [*await store.rate_consume([bucket], NOW),
                                    *await store.rate_consume([bucket], NOW)]] == [True, True]
        [denied] = await store.rate_consume([bucket], NOW)
        assert not denied.allowed
        assert denied.remaining == 2.0
        assert denied.retry_after == pytest.approx(720.0)  # 2 tokens at 10/3600 a second
        [again] = await store.rate_consume([bucket], NOW + 720)
        assert again.allowed and again.remaining == pytest.approx(0.0)
        too_big = RateCharge("sasl-hour:alice", TOKEN_BUCKET, 10, 3600.0, 11)
        [never] = await store.rate_consume([too_big], NOW + 10_000)
        assert not never.allowed and never.retry_after == 3600.0
    run(store_url, body)


def test_charges_are_all_or_nothing(store_url: str) -> None:
    hour = RateCharge("sasl-hour:bob", TOKEN_BUCKET, 100, 3600.0, 5)
    day = RateCharge("sasl-day:bob", SLIDING_WINDOW, 12, 86400.0, 5)

    async def body(store: Store) -> None:
        results = [await store.rate_consume([hour, day], NOW + i) for i in range(3)]
        assert [[r.allowed for r in pair] for pair in results] == \
            [[True, True], [True, True], [True, False]]
        # The refused third request spent nothing from the hourly bucket either.
        [left] = await store.rate_consume([RateCharge("sasl-hour:bob", TOKEN_BUCKET, 100,
                                                      3600.0, 90)], NOW + 3)
        assert left.allowed
    run(store_url, body)


def test_rate_results_match_the_reference_arithmetic(store_url: str) -> None:
    """Both backends reproduce ``rate_step`` bit for bit over a long sequence."""
    charges = [RateCharge("k1", TOKEN_BUCKET, 7, 60.0, 1),
               RateCharge("k2", SLIDING_WINDOW, 9, 45.0, 2)]
    times = [NOW + i * 0.7 + (0.37 * i * i) % 3 for i in range(80)]

    def expected() -> list[tuple[bool, float, float]]:
        states: dict[str, RateState | None] = {"k1": None, "k2": None}
        out = []
        for i, now in enumerate(times):
            charge = charges[i % 2]
            state = states[charge.key]
            live = state if state is not None and state.expires > now else None
            result, new = rate_step(live, charge, now)
            if result.allowed:
                states[charge.key] = new
            out.append((result.allowed, result.remaining, result.retry_after))
        return out

    async def body(store: Store) -> list[tuple[bool, float, float]]:
        out = []
        for i, now in enumerate(times):
            [result] = await store.rate_consume([charges[i % 2]], now)
            out.append((result.allowed, result.remaining, result.retry_after))
        return out

    got = run(store_url, body)
    assert got == expected()
    assert any(not allowed for allowed, _, _ in got)


def test_sliding_window_weighs_the_previous_window(store_url: str) -> None:
    charge = RateCharge("client-hour:192.0.2.1", SLIDING_WINDOW, 10, 100.0, 1)
    start = 1_700_000_000 // 100 * 100

    async def body(store: Store) -> None:
        for _ in range(10):
            [ok] = await store.rate_consume([charge], start + 10)
            assert ok.allowed
        [full] = await store.rate_consume([charge], start + 20)
        assert not full.allowed and full.retry_after == 80.0
        # Halfway through the next window half of the previous one still counts.
        allowed = [(await store.rate_consume([charge], start + 150))[0].allowed
                   for _ in range(6)]
        assert allowed == [True] * 5 + [False]
    run(store_url, body)


def test_concurrent_requests_are_atomic(store_url: str) -> None:
    bucket = RateCharge("client:198.51.100.9", TOKEN_BUCKET, 30, 3600.0, 1)

    async def body(store: Store) -> None:
        attempts = await asyncio.gather(*(store.greylist_attempt(TRIPLET, NOW, TIMING)
                                          for _ in range(50)))
        assert sum(a.previous_last is None for a in attempts) == 1
        assert {a.first for a in attempts} == {NOW}
        results = await asyncio.gather(*(store.rate_consume([bucket], NOW)
                                         for _ in range(100)))
        assert sum(r[0].allowed for r in results) == 30
        counts = await asyncio.gather(*(store.awl_bump("192.0.2.1", NOW, TIMING.max_age)
                                        for _ in range(20)))
        assert sorted(counts) == [1] * 20
    run(store_url, body)


def test_concurrent_hosts_share_one_budget(store_url: str) -> None:
    """Two store connections (two MX hosts on one Redis, or two processes on one file)."""
    bucket = RateCharge("sasl-hour:carol", TOKEN_BUCKET, 40, 3600.0, 1)

    async def body(first: Store) -> None:
        second = open_store(store_url)
        try:
            results = await asyncio.gather(*(store.rate_consume([bucket], NOW)
                                             for _ in range(50) for store in (first, second)))
            assert sum(r[0].allowed for r in results) == 40
        finally:
            await second.close()
    run(store_url, body)


def test_expiry_runs_in_batches(store_url: str) -> None:
    async def body(store: Store) -> None:
        for i in range(25):
            await store.greylist_attempt(Triplet(f"10.0.{i}.0", "s@x", "r@y"), NOW, TIMING)
        await store.greylist_attempt(TRIPLET, NOW + TIMING.retry_window, TIMING)
        await store.awl_bump("192.0.2.1", NOW + TIMING.retry_window, TIMING.max_age)
        await store.rate_consume([RateCharge("k", TOKEN_BUCKET, 5, 60.0, 5)],
                                 NOW + TIMING.retry_window)
        later = NOW + TIMING.retry_window + 1
        assert [await store.expire(later, 10) for _ in range(4)] == [10, 10, 5, 0]
        assert [e.key for e in await store.list_triplets(later)] == [TRIPLET.key]
        assert await store.awl_count("192.0.2.1", later) == 1
        # The rate bucket refills within a minute; then it is due too.
        assert await store.expire(later + 60, 10) == 1
        assert await store.expire(later + TIMING.max_age + 10**6, 10) == 2
    run(store_url, body)


def test_list_and_delete(store_url: str) -> None:
    async def body(store: Store) -> None:
        for triplet in (TRIPLET, Triplet("192.0.2.0", "c@example.org", "b@example.net"),
                        Triplet("198.51.100.0", "a@example.org", "d@example.net")):
            await store.greylist_attempt(triplet, NOW, TIMING)
        assert await store.delete_triplets(sender="a@example.org", client="192.0.2.0") == 1
        assert await store.delete_triplets(client="nowhere") == 0
        assert await store.delete_triplets(key="198.51.100.0/a@example.org/d@example.net") == 1
        assert [e.key for e in await store.list_triplets(NOW)] == \
            ["192.0.2.0/c@example.org/b@example.net"]
        with pytest.raises(StoreError):
            await store.delete_triplets()
    run(store_url, body)


def test_sqlite_restart_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/state/state.db"
    _write_state(url)
    _check_state(url)
    path = tmp_path / "state" / "state.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_sqlite_survives_a_killed_process(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL: a committed write survives the process dying."""
    url = f"sqlite://{tmp_path}/state.db"
    code = ("import asyncio, os\n"
            "from postwarden.policy.store import open_store, Triplet, GreylistTiming\n"
            "async def main():\n"
            f"    store = open_store({url!r})\n"
            f"    await store.greylist_attempt(Triplet('192.0.2.0', 'a@x', 'b@y'), {NOW},"
            " GreylistTiming())\n"
            "    os._exit(9)\n"
            "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    assert done.returncode == 9

    async def body(store: Store) -> None:
        [entry] = await store.list_triplets(NOW)
        assert entry.key == "192.0.2.0/a@x/b@y"
    run(url, body)


@pytest.mark.parametrize("hold", [0.02, 0.3])
def test_sqlite_waits_for_a_foreign_write_lock_without_blocking_the_loop(
        tmp_path: Path, hold: float) -> None:
    """Another process's transaction: short ones are waited for on the loop, long ones on
    the worker thread; either way the loop keeps running and the answer comes after."""
    import sqlite3
    url = f"sqlite://{tmp_path}/state.db"

    async def body(store: Store) -> None:
        await store.greylist_attempt(TRIPLET, NOW, TIMING)  # creates the file
        other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        loop = asyncio.get_running_loop()
        loop.call_later(hold, other.execute, "COMMIT")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        results = await asyncio.gather(*(store.greylist_attempt(
            Triplet("192.0.2.0", f"s{i}@x", "r@y"), NOW, TIMING) for i in range(20)))
        waited = time.monotonic() - started
        ticking.cancel()
        other.close()
        assert all(r.first == NOW and r.previous_last is None for r in results)
        assert waited >= hold * 0.9
        assert ticks >= max(1, hold / 0.005 / 6)  # the loop ran while the lock was held
        assert len(await store.list_triplets(NOW)) == 21
    run(url, body)


def test_sqlite_group_commit_and_cancelled_callers(tmp_path: Path) -> None:
    """Calls made in one pass of the loop share one transaction; a caller that gave up
    before its turn writes nothing; a failing job fails alone."""
    url = f"sqlite://{tmp_path}/state.db"

    async def body(store: Store) -> None:
        from postwarden.policy.store.sqlite import SqliteStore
        assert isinstance(store, SqliteStore)
        await store.awl_count("x", NOW)
        seen: list[str] = []
        db = store._loop_db
        assert db is not None
        db.set_trace_callback(seen.append)
        calls = [asyncio.ensure_future(store.greylist_attempt(
            Triplet("192.0.2.0", f"s{i}@x", "r@y"), NOW, TIMING)) for i in range(5)]
        calls[2].cancel()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(outcomes[2], asyncio.CancelledError)
        # One transaction, and no savepoints while no job fails.
        assert [line for line in seen if not line.startswith(("SELECT", "INSERT"))] == \
            ["BEGIN IMMEDIATE", "COMMIT"]
        seen.clear()
        more: list[asyncio.Future[object]] = [asyncio.ensure_future(store.greylist_attempt(
            Triplet("192.0.2.0", f"t{i}@x", "r@y"), NOW, TIMING)) for i in range(3)]
        more.append(asyncio.ensure_future(
            store._run(lambda db: db.execute("DELETE FROM nowhere"))))
        results = await asyncio.gather(*more, return_exceptions=True)
        db.set_trace_callback(None)
        assert isinstance(results[-1], StoreError) and "nowhere" in str(results[-1])
        # The group is rolled back and run again, each job in a savepoint of its own.
        control = [line for line in seen if line in ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")]
        assert control == ["BEGIN IMMEDIATE", "ROLLBACK", "BEGIN IMMEDIATE", "COMMIT"]
        assert seen.count("SAVEPOINT job") == 4
        keys = [e.sender for e in await store.list_triplets(NOW)]
        assert keys == ["s0@x", "s1@x", "s3@x", "s4@x", "t0@x", "t1@x", "t2@x"]
    run(url, body)


def test_redis_restart_loses_nothing(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        url = server.url("restart:")
        _write_state(url)
        server.stop()
        server.start()
        _check_state(url)
    finally:
        server.stop()


def _write_state(url: str) -> None:
    async def body(store: Store) -> None:
        await store.greylist_attempt(TRIPLET, NOW, TIMING)
        await store.awl_set("192.0.2.9", NOW, 5, TIMING.max_age)
        await store.rate_consume([RateCharge("r:x", TOKEN_BUCKET, 3, 3600.0, 2)], NOW)
    run(url, body)


def _check_state(url: str) -> None:
    async def body(store: Store) -> None:
        again = await store.greylist_attempt(TRIPLET, NOW + 10, TIMING)
        assert (again.first, again.previous_last) == (NOW, NOW)
        assert await store.awl_count("192.0.2.9", NOW) == 5
        [result] = await store.rate_consume([RateCharge("r:x", TOKEN_BUCKET, 3, 3600.0, 2)],
                                            NOW)
        assert not result.allowed and result.remaining == 1.0
    run(url, body)


def test_redis_outage_fails_fast() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there

    async def body(store: Store) -> None:
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.greylist_attempt(TRIPLET, NOW, TIMING)
        assert time.monotonic() - started < 2.5
    run(f"redis://127.0.0.1:{port}/0", body)


def test_sqlite_errors_are_store_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    async def body(store: Store) -> None:
        with pytest.raises(StoreError):
            await store.awl_count("192.0.2.1", NOW)
    run(f"sqlite://{blocker}/state.db", body)
    with pytest.raises(StoreError, match="sqlite:///absolute"):
        open_store("sqlite://relative.db")
    with pytest.raises(StoreError, match="unknown scheme"):
        open_store("memcached://x")


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/state.db"

    async def body(store: Store) -> None:
        await store.awl_count("x", NOW)
    run(url, body)
    import sqlite3
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert os.path.exists(tmp_path / "state.db")


def test_sqlite_wal_is_checkpointed_and_reused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a steady stream of writes the WAL does not grow without end: checkpoints
    copy it and, past RESTART_FRAMES, it starts again from its beginning."""
    from postwarden.policy.store import sqlite
    monkeypatch.setattr(sqlite, "CHECKPOINT_JOBS", 500)
    monkeypatch.setattr(sqlite, "RESTART_FRAMES", 512)
    total = 8000

    async def body(store: Store) -> None:
        for start in range(0, total, 100):
            # keys all over the table, so that each group dirties many pages
            await asyncio.gather(*(store.greylist_attempt(
                Triplet(f"10.0.0.{i * 7919 % total}", "s@x", "r@y"), NOW, TIMING)
                for i in range(start, start + 100)))
        # Without restarts this stream leaves a WAL of about half a page per write
        # (18 MB); with them, about RESTART_FRAMES plus what comes during a checkpoint.
        assert (tmp_path / "state.db-wal").stat().st_size < 2_000 * 4096
        assert len(await store.list_triplets(NOW, limit=total)) == total
    run(f"sqlite://{tmp_path}/state.db", body)


def test_sqlite_schema_1_is_migrated(tmp_path: Path) -> None:
    """Version 1 had an index on expires (and on client) per table; version 2 drops them
    and keeps every record."""
    import sqlite3
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE greylist (key TEXT PRIMARY KEY, client TEXT NOT NULL, "
                   "sender TEXT NOT NULL, recipient TEXT NOT NULL, first INTEGER NOT NULL, "
                   "last INTEGER NOT NULL, expires REAL NOT NULL) WITHOUT ROWID")
        db.execute("CREATE INDEX greylist_expires ON greylist (expires)")
        db.execute("CREATE INDEX greylist_client ON greylist (client)")
        db.execute("CREATE TABLE awl (client TEXT PRIMARY KEY, count INTEGER NOT NULL, "
                   "last INTEGER NOT NULL, expires REAL NOT NULL) WITHOUT ROWID")
        db.execute("CREATE INDEX awl_expires ON awl (expires)")
        db.execute("CREATE TABLE rate (key TEXT PRIMARY KEY, a REAL NOT NULL, b REAL NOT NULL,"
                   " c REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID")
        db.execute("CREATE INDEX rate_expires ON rate (expires)")
        db.execute("INSERT INTO greylist VALUES (?,?,?,?,?,?,?)",
                   (TRIPLET.key, TRIPLET.client, TRIPLET.sender, TRIPLET.recipient, NOW, NOW,
                    NOW + 1000.0))
        db.execute("PRAGMA user_version=1")
    db.close()

    async def body(store: Store) -> None:
        again = await store.greylist_attempt(TRIPLET, NOW + 10, TIMING)
        assert (again.first, again.previous_last) == (NOW, NOW)
    run(f"sqlite://{path}", body)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("SELECT name FROM sqlite_master WHERE type='index' "
                          "AND sql IS NOT NULL").fetchall() == []
    db.close()


def test_sqlite_expiry_sweeps_a_big_table_in_bounded_steps(tmp_path: Path) -> None:
    """Expiry looks at a bounded key range per call, so due records far apart in key
    order are all found within a few calls, and live ones stay."""
    from postwarden.policy.store.sqlite import SWEEP_ROWS

    async def body(store: Store) -> None:
        total = SWEEP_ROWS * 3
        for i in range(total):
            # every 7th triplet passed (lives 35 days); the others are due after 2 days
            await store.greylist_attempt(Triplet(f"10.{i // 256}.{i % 256}.0", "s@x", "r@y"),
                                         NOW, TIMING)
            if i % 7 == 0:
                await store.greylist_attempt(
                    Triplet(f"10.{i // 256}.{i % 256}.0", "s@x", "r@y"), NOW + 300, TIMING)
        later = NOW + TIMING.retry_window + 1000
        deleted = [await store.expire(later, 10_000) for _ in range(4)]
        assert sum(deleted) == total - len(range(0, total, 7))
        assert deleted[-1] == 0
        assert len(await store.list_triplets(later, limit=total)) == len(range(0, total, 7))
    run(f"sqlite://{tmp_path}/state.db", body)


def test_cli_greylist_list_delete_whitelist(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from postwarden.cli import main
    url = f"sqlite://{tmp_path}/state.db"
    now = int(time.time())

    async def body(store: Store) -> None:
        await store.greylist_attempt(TRIPLET, now - 400, TIMING)
        await store.greylist_attempt(TRIPLET, now, TIMING)
        await store.greylist_attempt(Triplet("198.51.100.0", "c@x", "d@y"), now, TIMING)
    run(url, body)
    assert main(["greylist", "list", "--store", url, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["key"], t["state"]) for t in listed["triplets"]] == \
        [(TRIPLET.key, "passed"), ("198.51.100.0/c@x/d@y", "pending")]
    assert main(["greylist", "delete", "--store", url, "--client", "198.51.100.77"]) == 0
    assert capsys.readouterr().out == "deleted 1 triplet\n"
    assert main(["greylist", "delete", "--store", url, "--sender", "A+tag@Example.org"]) == 0
    assert main(["greylist", "delete", "--store", url, TRIPLET.key]) == 1
    assert main(["greylist", "whitelist", "--store", url, "192.0.2.55"]) == 0
    assert main(["greylist", "whitelist", "--store", url, "not-an-ip"]) == 2
    capsys.readouterr()
    assert main(["greylist", "list", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "count=5 192.0.2.55" in out and "0 triplets, 1 auto-whitelisted clients" in out


def test_expiry_task_drains_a_backlog_in_batches(tmp_path: Path) -> None:
    from postwarden.policy.model import FixedClock
    from postwarden.policy.store import expire_forever

    async def body(store: Store) -> None:
        for i in range(30):
            await store.greylist_attempt(Triplet(f"10.1.{i}.0", "s@x", "r@y"), NOW, TIMING)
        clock = FixedClock(float(NOW + TIMING.retry_window + 1))
        task = asyncio.create_task(expire_forever(store, clock, every=0.01, batch=7))
        for _ in range(200):
            if not await store.list_triplets(NOW):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.list_triplets(NOW) == []
    run(f"sqlite://{tmp_path}/state.db", body)
