"""The SQLite evaluation store (the Redis one runs in tests/integration/test_dmarc_report.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from postwarden.milter.report_store import SqliteEvaluationStore
from postwarden.milter.reports import Evaluation, open_evaluation_store
from postwarden.policy.store import GreylistTiming, StoreError, Triplet, open_store

DAY0 = 1_795_910_400
EVALUATION = Evaluation(
    time=DAY0, source_ip="192.0.2.1", header_from="example.org",
    envelope_from="example.org", envelope_to="example.net", policy_domain="example.org",
    record="v=DMARC1; p=none", disposition="none", dkim_aligned=True, spf_aligned=True)


def test_add_between_and_expire(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/state/state.db"

    async def body() -> None:
        store = await open_evaluation_store(url)
        try:
            for offset in (0, 10, 10, 20, 30):
                await store.add(replace(EVALUATION, time=DAY0 + offset))
            got = await store.between(DAY0 + 10, DAY0 + 30)  # [start, end)
            assert [e.time for e in got] == [DAY0 + 10, DAY0 + 10, DAY0 + 20]
            assert got[0] == replace(EVALUATION, time=DAY0 + 10)
            assert await store.expire(DAY0 + 20, batch=2) == 2
            assert await store.expire(DAY0 + 20, batch=2) == 1
            assert await store.expire(DAY0 + 20) == 0
            assert [e.time for e in await store.between(0, DAY0 + 100)] == \
                [DAY0 + 20, DAY0 + 30]
        finally:
            await store.close()
    asyncio.run(body())
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "state.db").stat().st_mode) == 0o600


def test_shares_a_file_with_the_policy_store(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/state.db"

    async def body() -> None:
        policy = open_store(url)
        evaluations = await open_evaluation_store(url)
        try:
            await policy.greylist_attempt(Triplet("192.0.2.0", "a@x", "b@y"), DAY0,
                                          GreylistTiming())
            await evaluations.add(EVALUATION)
            assert len(await policy.list_triplets(DAY0)) == 1
            assert await evaluations.between(DAY0, DAY0 + 1) == [EVALUATION]
        finally:
            await policy.close()
            await evaluations.close()
    asyncio.run(body())
    # And in the other order, on a fresh file.
    other = f"sqlite://{tmp_path}/other.db"

    async def reverse() -> None:
        evaluations = await open_evaluation_store(other)
        await evaluations.add(EVALUATION)
        await evaluations.close()
        policy = open_store(other)
        await policy.greylist_attempt(Triplet("192.0.2.0", "a@x", "b@y"), DAY0,
                                      GreylistTiming())
        await policy.close()
    asyncio.run(reverse())


def test_a_corrupt_row_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"

    async def fill() -> None:
        store = SqliteEvaluationStore(path)
        await store.add(EVALUATION)
        await store.close()
    asyncio.run(fill())
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO dmarc_evaluation (time, data) VALUES (?, ?)",
                   (DAY0, "not json"))

    async def read() -> list[Evaluation]:
        store = SqliteEvaluationStore(path)
        try:
            return await store.between(0, DAY0 + 1)
        finally:
            await store.close()
    assert asyncio.run(read()) == [EVALUATION]
    assert "skipped a stored evaluation" in caplog.text


def test_bad_urls_and_unusable_files(tmp_path: Path) -> None:
    for url in ("postgres://x", "sqlite://relative.db", "sqlite:///x.db?mode=ro"):
        with pytest.raises(StoreError):
            asyncio.run(open_evaluation_store(url))
    (tmp_path / "dir.db").mkdir()

    async def body() -> None:
        store = await open_evaluation_store(f"sqlite://{tmp_path}/dir.db")
        try:
            await store.add(EVALUATION)
        finally:
            await store.close()
    with pytest.raises(StoreError, match=r"dir\.db"):
        asyncio.run(body())
