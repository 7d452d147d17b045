"""Several worker processes serving the same listening sockets, under one supervisor.

Security: the sockets are bound (and privileges dropped) by the caller before ``run``, so
the workers inherit exactly those file descriptors and nothing is bound twice. The parent
runs no application code after forking: it only waits for signals and child exits. A
worker that dies is restarted after a growing delay, and a worker that keeps dying (more
than ``restarts_per_minute`` exits in a minute) stops the whole service with status 1,
rather than forking forever. Each worker asks the kernel (``PR_SET_PDEATHSIG``) for SIGTERM
when the supervisor dies, so a killed supervisor leaves no orphan serving on its sockets.
Standards: POSIX fork(2), waitpid(2), sigtimedwait(2) and pthread_sigmask(3); Linux
prctl(2) ``PR_SET_PDEATHSIG``; the preforking model of Postfix's master(8) and Apache's
prefork MPM (many processes accepting on one inherited listening socket).

Theory of operation
-------------------
1. ``run(1, child)`` is ``child()``: no fork, no supervisor.
2. ``run(n, child)`` blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD in the parent, then forks
   ``n`` workers. A worker restores the signal mask (SIGHUP starts ignored, so a worker
   that does not reload is not killed by a reload request), runs ``child()`` (which makes
   its own asyncio loop and accepts on the inherited sockets: the kernel hands each new
   connection to one of the processes waiting on the socket) and leaves with
   ``os._exit(code)``, never returning into the caller's stack.
3. The parent loops on ``sigtimedwait``: the blocked signals are taken synchronously, so
   there is no handler and no race between a signal and the loop's state. After every
   wake-up it reaps its own workers by pid (never ``waitpid(-1)``, which would steal the
   status of other children of the process).
4. SIGTERM or SIGINT: forward it to every worker, restart nothing any more, wait for all
   of them; a worker still alive ``grace`` seconds later gets SIGKILL. The result is 0
   when every worker ended with status 0 or by the signal it was sent, else 1.
   SIGHUP is forwarded to every worker and changes nothing in the parent.
5. A worker that exits while the service is not stopping is restarted in the same slot
   after 0.1 s, doubled for each further exit within the last minute, at most 10 s.
6. A new connection may wake every idle worker; one accepts, the others find nothing.
   Measured with two workers: 1.6 failed accept(2) calls per connection, one of which is
   the accepting worker's own check that the queue is empty, so 0.6 wasted wake-ups per
   connection. Watching the socket with ``EPOLLEXCLUSIVE`` (a custom selector) brought
   that only to 0.5, with no CPU difference the benchmark could see: plain asyncio loops.
7. Before serving, everything alive (modules, settings, keys: the start-up heap) is moved
   out of the cyclic garbage collector's sight with ``gc.freeze()``. Otherwise each full
   collection walks all of it: 20 to 30 ms with the event loop stopped, measured in
   policyd under load every few thousand requests, and the cause of its p99 latency. It
   also keeps forked workers from copying those pages when the collector touches them.
   What comes to live long after that (caches, connections) is walked by a full
   collection only a tenth as often as by default (``FULL_EVERY``): those came every 4,500
   policy requests, took 0.4 to 1.3 ms with the loop stopped and almost never found
   anything, and 50 requests in flight each time is 1% of them, the p99. Young
   collections come every ``YOUNG_EVERY`` allocations rather than 700: each walks the
   container objects made since the last one that are still alive, and under load those
   are mostly the requests in flight, walked again and again at the default rate; the
   policy service's in-process harness counted 2.4% fewer instructions per request at
   2,000 (no fewer at 10,000), and a young collection stays a fraction of a millisecond.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

log = logging.getLogger(__name__)

SUPERVISED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
RESTARTS_PER_MINUTE = 10
GRACE = 30.0          # seconds a worker has to finish after SIGTERM
FIRST_DELAY = 0.1     # seconds before the first restart
MAX_DELAY = 10.0
WINDOW = 60.0         # the "minute" of restarts_per_minute
POLL = 1.0            # the longest the parent sleeps without looking at its workers
EXIT_INTERNAL = 70    # EX_SOFTWARE: child() raised
EXIT_INTERRUPTED = 130
FULL_EVERY = 100      # middle-generation collections per full one after freeze() (default 10)
YOUNG_EVERY = 2000    # allocations per young collection after freeze() (default 700)
_PR_SET_PDEATHSIG = 1

_worker: int | None = None


def worker() -> int | None:
    """This process's worker slot (0 .. workers-1); 0 with one worker; None in the
    supervising parent or outside ``run``."""
    return _worker


@dataclass
class _Supervisor:
    workers: int
    child: Callable[[], int]
    name: str
    restarts_per_minute: int
    grace: float
    old_mask: set[int | signal.Signals]
    slots: dict[int, int] = field(default_factory=dict)          # pid -> slot
    due: dict[int, float] = field(default_factory=dict)          # slot -> restart time
    deaths: deque[float] = field(default_factory=deque)          # unexpected exits
    stopping: bool = False
    kill_at: float = 0.0
    killed: bool = False
    status: int = 0

    # -- the parent's loop ---------------------------------------------------------------

    def supervise(self) -> int:
        for slot in range(self.workers):
            self._spawn(slot)
        log.info("%s: %d workers started", self.name, self.workers)
        while True:
            self._reap()
            now = time.monotonic()
            if self.stopping:
                if not self.slots:
                    log.info("%s: all workers stopped", self.name)
                    return self.status
                if now >= self.kill_at and not self.killed:
                    self._kill_remaining()
            else:
                for slot, when in sorted(self.due.items()):
                    if when <= now:
                        del self.due[slot]
                        self._spawn(slot)
            info = signal.sigtimedwait(SUPERVISED, self._timeout(now))
            if info is not None:
                self._signal(signal.Signals(info.si_signo))

    def _timeout(self, now: float) -> float:
        moments = [*self.due.values()] if not self.stopping else [self.kill_at]
        wait = min([POLL, *(when - now for when in moments)])
        return max(wait, 0.0)

    def _signal(self, signum: signal.Signals) -> None:
        if signum in STOP_SIGNALS:
            if not self.stopping:
                log.info("%s: %s: stopping %d workers", self.name, signum.name,
                         len(self.slots))
                self.stopping = True
                self.kill_at = time.monotonic() + self.grace
                self.due.clear()
            self._forward(signum)
        elif signum == signal.SIGHUP:
            log.info("%s: SIGHUP: passed on to %d workers", self.name, len(self.slots))
            self._forward(signum)
        # SIGCHLD only wakes the loop, which reaps next

    def _forward(self, signum: signal.Signals) -> None:
        for pid in list(self.slots):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _kill_remaining(self) -> None:
        self.killed = True
        self.status = 1
        log.error("%s: %d workers still running %.0fs after the stop signal: SIGKILL",
                  self.name, len(self.slots), self.grace)
        self._forward(signal.SIGKILL)

    def abandon(self) -> None:
        """The parent itself failed: stop the workers and wait for them."""
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while self.slots and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        self._forward(signal.SIGKILL)
        for pid in list(self.slots):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.slots.clear()

    # -- children ------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._be_worker(slot, parent)
        self.slots[pid] = slot
        log.debug("%s: worker %d started: pid=%d", self.name, slot, pid)

    def _be_worker(self, slot: int, parent: int) -> NoReturn:
        """The forked child: run ``child()`` and leave the process, whatever happens."""
        global _worker
        _worker = slot
        code = EXIT_INTERNAL
        try:
            if not die_with_parent(parent):
                raise SystemExit(0)  # the supervisor died before the prctl took effect
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, self.old_mask)
            code = self.child()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except BaseException:
            log.exception("%s: worker %d failed", self.name, slot)
        finally:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code & 0xFF)

    def _reap(self) -> None:
        for pid in list(self.slots):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: status unknown
                done, status = pid, 0
            if done == pid:
                self._exited(pid, self.slots.pop(pid), os.waitstatus_to_exitcode(status))

    def _exited(self, pid: int, slot: int, code: int) -> None:
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        if self.stopping:
            clean = code in (0, EXIT_INTERRUPTED) or -code in STOP_SIGNALS
            if not clean:
                self.status = 1
            log.debug("%s: worker %d (pid %d) ended: %s", self.name, slot, pid, how)
            return
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - WINDOW:
            self.deaths.popleft()
        if len(self.deaths) > self.restarts_per_minute:
            log.error("%s: worker %d (pid %d) ended: %s; %d exits within %.0fs: giving up",
                      self.name, slot, pid, how, len(self.deaths), WINDOW)
            self.status = 1
            self._signal(signal.SIGTERM)
            return
        delay = min(FIRST_DELAY * 2 ** (len(self.deaths) - 1), MAX_DELAY)
        log.warning("%s: worker %d (pid %d) ended: %s; restarting in %.1fs", self.name,
                    slot, pid, how, delay)
        self.due[slot] = now + delay


def die_with_parent(parent: int) -> bool:
    """Linux: SIGTERM to this forked process when its parent dies. Whether ``parent`` is
    still its parent: if not, the parent died before the prctl took effect, and the
    caller should leave."""
    name = ctypes.util.find_library("c")
    if name is not None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM),
                                                   0, 0, 0)
    return os.getppid() == parent


def run(workers: int, child: Callable[[], int], *, name: str,
        restarts_per_minute: int = RESTARTS_PER_MINUTE, grace: float = GRACE) -> int:
    """Run ``child`` in ``workers`` processes sharing the sockets bound before the call.

    With one worker, ``child()`` runs here. Otherwise this process supervises (see the
    module docstring) and returns 0 after a clean stop, 1 when workers kept dying or did
    not stop cleanly. ``child`` must not rely on an event loop made before the fork.
    """
    global _worker
    if workers < 1:
        raise ValueError(f"{name}: workers must be at least 1, not {workers}")
    gc.collect()
    gc.freeze()  # see the module docstring, 7.
    _, middle, _ = gc.get_threshold()
    gc.set_threshold(YOUNG_EVERY, middle, FULL_EVERY)
    if workers == 1:
        _worker = 0
        try:
            return child()
        finally:
            _worker = None
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISED)
    supervisor = _Supervisor(workers, child, name, restarts_per_minute, grace, set(old_mask))
    try:
        return supervisor.supervise()
    except BaseException:
        supervisor.abandon()
        raise
    finally:
        while signal.sigtimedwait(SUPERVISED, 0) is not None:
            pass  # taken here, not delivered to Python's handlers on unblocking
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
