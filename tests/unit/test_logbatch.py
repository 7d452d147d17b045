"""The daemons' log handler: lines of one event-loop pass in one write, in order, none lost.

Covers: lines logged in a running loop wait for the loop's next pass and leave in one
write; a line with no loop running (another thread, before or after the loop) is written
at once and takes the waiting ones with it, in order; a loop that stops before its flush
does not strand the next loop's lines; the size limit; ``logging.shutdown``; and
``direct_writer``, which must give byte-identical lines, and only when the configuration
makes that certain.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator

import pytest

from postwarden.logbatch import FORMAT, LIMIT, LoopBatchedHandler, direct_writer


class Recorder(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, Recorder, LoopBatchedHandler]]:
    """A private logger (not propagating) with the daemons' handler and format."""
    stream = Recorder()
    handler = LoopBatchedHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    log = logging.getLogger("postwarden.test_logbatch")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    yield log, stream, handler
    log.removeHandler(handler)
    log.propagate = True


def test_lines_of_one_pass_leave_in_one_write(logger) -> None:  # type: ignore[no-untyped-def]
    log, stream, _ = logger

    async def main() -> list[str]:
        for number in range(3):
            log.info("line %d", number)
        before = list(stream.writes)   # nothing yet: the flush runs in the next pass
        await asyncio.sleep(0)
        return before

    assert asyncio.run(main()) == []
    assert stream.writes == ["INFO: line 0\nINFO: line 1\nINFO: line 2\n"]


def test_no_loop_writes_at_once(logger) -> None:  # type: ignore[no-untyped-def]
    log, stream, _ = logger
    log.warning("alone")
    assert stream.writes == ["WARNING: alone\n"]


def test_a_thread_without_loop_keeps_the_order(logger) -> None:  # type: ignore[no-untyped-def]
    log, stream, _ = logger

    async def main() -> None:
        log.info("first, from the loop")
        thread = threading.Thread(target=log.info, args=("second, from a thread",))
        thread.start()
        thread.join()
        log.info("third, from the loop")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert stream.getvalue() == ("INFO: first, from the loop\nINFO: second, from a thread\n"
                                 "INFO: third, from the loop\n")


def test_a_loop_that_stopped_before_its_flush_strands_nothing(  # type: ignore[no-untyped-def]
        logger) -> None:
    log, stream, _ = logger

    async def last_words() -> None:
        log.info("logged as the loop ends")  # its flush never runs: the loop closes

    asyncio.run(last_words())

    async def next_loop() -> None:
        log.info("logged in the next loop")
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert stream.getvalue() == "INFO: logged as the loop ends\nINFO: logged in the next loop\n"


def test_size_limit_writes_without_waiting(logger) -> None:  # type: ignore[no-untyped-def]
    log, stream, _ = logger

    async def main() -> int:
        line = "x" * 1000
        for _ in range(LIMIT // 1000 + 1):
            log.info(line)
        return len(stream.writes)

    assert asyncio.run(main()) == 1   # written as soon as the limit was passed
    assert stream.getvalue().count("\n") == LIMIT // 1000 + 1


def test_shutdown_flushes_what_waits(logger) -> None:  # type: ignore[no-untyped-def]
    log, stream, handler = logger

    async def main() -> None:
        log.info("pending")
        handler.flush()               # what logging.shutdown() calls for each handler
        assert stream.getvalue() == "INFO: pending\n"

    asyncio.run(main())


# --- direct_writer --------------------------------------------------------------------

def test_direct_writer_matches_the_logging_module(logger) -> None:  # type: ignore[no-untyped-def]
    log, stream, handler = logger
    log.handlers = [handler]  # (pytest's capturing handlers would rightly make it None)
    write = direct_writer(log, logging.INFO)
    assert write is not None

    async def main() -> None:
        log.info("a=%s b=<%s> ms=%.1f", "x", "y@z", 1.25)
        write("a=%s b=<%s> ms=%.1f" % ("x", "y@z", 1.25))  # noqa: UP031 - as the service does
        await asyncio.sleep(0)

    asyncio.run(main())
    first, second = stream.getvalue().splitlines(keepends=True)
    assert first == second == "INFO: a=x b=<y@z> ms=1.2\n"


def test_direct_writer_only_when_certain(logger) -> None:  # type: ignore[no-untyped-def]
    log, _, handler = logger
    log.handlers = [handler]  # (pytest's capturing handlers would rightly make it None)
    assert direct_writer(log, logging.INFO) is not None
    assert direct_writer(log, logging.DEBUG) is None          # not enabled

    other = logging.StreamHandler(io.StringIO())             # a second handler (caplog)
    log.addHandler(other)
    assert direct_writer(log, logging.INFO) is None
    log.removeHandler(other)

    log.addFilter(lambda record: True)                        # a filter on the way
    assert direct_writer(log, logging.INFO) is None
    log.filters.clear()

    handler.setFormatter(logging.Formatter("%(asctime)s " + FORMAT))  # another format
    assert direct_writer(log, logging.INFO) is None
    handler.setFormatter(logging.Formatter(FORMAT))

    handler.setLevel(logging.WARNING)                         # the handler drops INFO
    assert direct_writer(log, logging.INFO) is None
    handler.setLevel(logging.NOTSET)

    plain = logging.getLogger("postwarden.test_logbatch.plain")
    plain.propagate = False
    plain.addHandler(logging.StreamHandler(io.StringIO()))    # not the batched handler
    assert direct_writer(plain, logging.INFO) is None
