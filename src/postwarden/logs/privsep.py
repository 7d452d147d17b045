"""Privilege separation for ``logs watch``: the log parser gives up root, a helper bans.

Security: the watcher reads log lines, which anyone who can reach the mail server writes
into; the process that parses them runs as ``[watch] user`` with exactly ``[watch] groups``
as supplementary groups (e.g. ``adm`` to read /var/log/mail.log), and cannot get root back
(checked: setuid(0) and setgid(0) must fail). A helper forked before the drop keeps root and
does one thing: it applies ban operations (the ``Backend`` protocol of
``postwarden.logs.bans``) sent over a socketpair. Every message is a length-prefixed JSON
object of at most 8 MiB with a fixed shape; a network must be canonical CIDR text with a
prefix of at least /8 (IPv4) or /16 (IPv6) and never overlap a protected network
(loopback, the ignore list, mynetworks); a timeout is an integer from 1 s to
``max_duration``. Anything else is refused, logged and answered with an error; a frame
longer than the limit ends the helper (the stream cannot be trusted after it). So a
parser taken over by a crafted log line can at worst ban or unban unprotected networks
for at most ``max_duration``, as a real attack could make it do anyway.
Standards: POSIX fork(2), setgroups(2), setgid(2), setuid(2), waitpid(2); Linux prctl(2)
``PR_SET_PDEATHSIG``; RFC 8259 (JSON); the privilege separation of OpenSSH's sshd and of
Postfix (a small privileged part, a parser that is not).

Theory of operation
-------------------
1. ``separated`` runs as root before the log, the store or any socket is opened and before
   any thread starts (a fork copies only the calling thread). It makes a socketpair,
   forks the helper and drops privileges in the calling process for good: setgroups,
   setgid (the user's login group), setuid; real, effective and saved ids all change.
   It yields a ``PrivilegedBackend`` that the ``BanManager`` uses as its backend.
2. The helper asks for SIGTERM when its parent dies, ignores SIGINT and SIGHUP (a Ctrl-C
   or a hangup reaches the whole process group; the watcher ends the helper by closing
   the socket, and reloads without it), then answers one request at a time: read a
   frame, check it (``parse_request``), apply it through the real backend, reply
   ``{"ok": true}`` or ``{"ok": false, "error": "..."}``. End of file (the watcher
   stopped or died) ends it with status 0.
3. In the watcher a thread waits for the helper's exit. An exit before the watcher closed
   the socket is logged as an error, every later ban operation fails, ``on_death`` is
   called (the command passes its stop event's ``set``), and leaving ``separated`` raises
   ``PrivsepError``: the command exits non-zero and systemd restarts it, instead of a
   watcher that goes on detecting but can no longer ban.
4. ``user`` None or root: no separation (the watcher runs as it was started). A dry run,
   or ``backend = "none"``, needs no helper: the drop happens, nothing is forked.

XXX: the helper keeps full root rather than only CAP_NET_ADMIN: nft run through ``ip
netns exec`` needs CAP_SYS_ADMIN as well, the access-map backend writes under /etc/postfix
and runs postmap and ``postfix reload``, and handing an exec'ed program only some
capabilities needs ambient capabilities, which the standard library cannot set. The way
out is a capability set per backend through prctl(PR_CAP_AMBIENT) with ctypes, once it
is worth its code; meanwhile the helper's whole surface is the four checked operations.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import re
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from postwarden import prefork
from postwarden.errors import PostwardenError, clip
from postwarden.logs.bans import COMMAND_TIMEOUT, Backend, BanError, NoBackend, Protection
from postwarden.logs.bans_store import Ban
from postwarden.logs.watch_settings import IPNetwork, WatchSettings
from postwarden.policy.privileges import PrivilegeError, lookup_group, lookup_user

log = logging.getLogger(__name__)

MAX_REQUEST = 8 << 20           # bytes of one request frame (a sync of 100,000 bans fits)
MAX_REPLY = 64 << 10
MAX_BANS = 100_000              # networks in one sync, or replaced by one add
MAX_NETWORK = 43                # characters of the longest IPv6 CIDR text
MIN_PREFIX = {4: 8, 6: 16}      # the widest network the helper will ban
REPLY_TIMEOUT = 2 * COMMAND_TIMEOUT + 5   # an add may run nft twice (fallback), then answer
_HEADER = struct.Struct(">I")
_CIDR = re.compile(r"[0-9a-f:.]+/[0-9]{1,3}")
OPS = ("sync", "add", "lift", "expire")


class PrivsepError(PostwardenError):
    """The privileged helper could not be started, or died while the watcher ran."""


class Refused(ValueError):
    """A request the helper does not accept (the reason is logged and answered)."""


@dataclass(frozen=True)
class Request:
    """One ban operation. ``bans``: (network, seconds) to enforce (one for ``add``, all
    for ``sync``); ``networks``: what ``add`` replaces, or the one to ``lift``/``expire``."""

    op: str
    bans: tuple[tuple[str, int], ...] = ()
    networks: tuple[str, ...] = ()


# -- the message format (pure) ---------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise Refused("a key appears twice")
    return dict(pairs)


def _no_constant(name: str) -> NoReturn:
    raise Refused(f"{name} is not a number here")


def _network(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NETWORK:
        raise Refused("a network must be a string of at most 43 characters")
    if not _CIDR.fullmatch(value):   # also keeps out zone ids, which ipaddress accepts
        raise Refused(f"{clip(value)!r} is not CIDR text")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise Refused(f"{clip(value)!r} is not a network") from None
    if str(net) != value:
        raise Refused(f"{clip(value)!r} is not in canonical form ({net})")
    if net.prefixlen < MIN_PREFIX[net.version]:
        raise Refused(f"{value} is wider than /{MIN_PREFIX[net.version]}")
    return value


def _seconds(value: object, longest: int) -> int:
    if type(value) is not int or not 1 <= value <= longest:
        raise Refused(f"a timeout must be an integer from 1 to {longest} seconds")
    return value


def _ban(value: object, longest: int) -> tuple[str, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise Refused("a ban must be [network, seconds]")
    return _network(value[0]), _seconds(value[1], longest)


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_BANS:
        raise Refused(f"{what} must be a list of at most {MAX_BANS}")
    return value


def parse_request(data: bytes, longest: int) -> Request:
    """Check one request frame; ``Refused`` with the reason. ``longest``: the largest
    timeout accepted (``[watch.ban] max_duration``)."""
    try:
        message = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                             parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Refused(f"not a JSON message: {clip(str(exc), 80)}") from None
    if not isinstance(message, dict) or message.get("op") not in OPS:
        raise Refused(f"expected an object with op one of {', '.join(OPS)}")
    op = message["op"]
    keys = {"sync": {"op", "bans"}, "add": {"op", "ban", "replaces"}}.get(op, {"op", "network"})
    if set(message) != keys:
        raise Refused(f"{op}: expected exactly the keys {', '.join(sorted(keys))}")
    if op == "sync":
        bans = tuple(_ban(b, longest) for b in _list(message["bans"], "bans"))
        return Request(op, bans=bans)
    if op == "add":
        replaces = tuple(_network(n) for n in _list(message["replaces"], "replaces"))
        return Request(op, bans=(_ban(message["ban"], longest),), networks=replaces)
    return Request(op, networks=(_network(message["network"]),))


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None at end of file before the first byte."""
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            if got:
                raise ConnectionError("end of file inside a frame")
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, limit: int) -> bytes | None:
    """One frame's body, None at end of file; ``ConnectionError`` when it is too long."""
    header = _read_exactly(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise ConnectionError(f"a frame of {size} bytes (at most {limit})")
    body = _read_exactly(sock, size)
    if body is None:
        raise ConnectionError("end of file inside a frame")
    return body


# -- the privileged helper ------------------------------------------------------------------

def apply(request: Request, backend: Backend, protection: Protection, now: float) -> None:
    """Carry out one checked request. Protected networks are never enforced: an ``add``
    of one is refused, a ``sync`` leaves them out (saying so)."""
    if request.op == "sync":
        kept = []
        for network, seconds in request.bans:
            if protection.overlaps(ipaddress.ip_network(network)):
                log.warning("watch: privsep: network=%s left out of a sync: protected",
                            network)
                continue
            kept.append(Ban(network, now, now + seconds))
        backend.sync(kept, now)
    elif request.op == "add":
        network, seconds = request.bans[0]
        if protection.overlaps(ipaddress.ip_network(network)):
            raise Refused(f"{network} overlaps a protected network")
        backend.add(Ban(network, now, now + seconds), now,
                    [Ban(n, now, now) for n in request.networks])
    elif request.op == "lift":
        backend.lift(Ban(request.networks[0], now, now), now)
    else:
        backend.expire(Ban(request.networks[0], now, now), now)


def answer(data: bytes, backend: Backend, protection: Protection, longest: int,
           now: float) -> dict[str, Any]:
    """The reply to one frame; a refusal or a failure is logged, never raised."""
    try:
        request = parse_request(data, longest)
        apply(request, backend, protection, now)
    except Refused as exc:
        log.error("watch: privsep: refused a request: %s", exc)
        return {"ok": False, "error": f"refused: {exc}"}
    except BanError as exc:
        return {"ok": False, "error": clip(str(exc), 1000)}
    except Exception as exc:  # one bad request must not end the helper
        log.exception("watch: privsep: a request failed")
        return {"ok": False, "error": clip(f"{type(exc).__name__}: {exc}", 1000)}
    return {"ok": True}


def serve(sock: socket.socket, backend: Backend, protection: Protection,
          longest: int) -> int:
    """The helper's loop (theory point 2); its exit status. Closes ``sock`` at the end."""
    with sock:
        return _serve(sock, backend, protection, longest)


def _serve(sock: socket.socket, backend: Backend, protection: Protection,
           longest: int) -> int:
    import time

    while True:
        try:
            data = read_frame(sock, MAX_REQUEST)
        except ConnectionError as exc:
            log.error("watch: privsep: refused the connection: %s; the helper stops", exc)
            return 1
        except OSError as exc:
            log.error("watch: privsep: reading a request: %s", exc)
            return 1
        if data is None:
            return 0
        reply = answer(data, backend, protection, longest, time.time())
        try:
            sock.sendall(encode(reply))
        except OSError:
            return 0   # the watcher is gone


def _helper(sock: socket.socket, backend: Backend, protection: Protection, longest: int,
            parent: int) -> NoReturn:
    code = 1
    try:
        if not prefork.die_with_parent(parent):
            os._exit(0)   # the watcher died before the prctl took effect
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # the watcher's to act on
        signal.signal(signal.SIGHUP, signal.SIG_IGN)    # a reload is the watcher's
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log.info("watch: privsep: helper pid=%d applies bans with backend %s", os.getpid(),
                 backend.name)
        code = serve(sock, backend, protection, longest)
    except BaseException:  # never return into the caller's stack
        log.exception("watch: privsep: the helper failed")
    finally:
        logging.shutdown()
        os._exit(code)


# -- the unprivileged side -------------------------------------------------------------------

class PrivilegedBackend:
    """A ``Backend`` whose operations the privileged helper carries out (theory point 3)."""

    def __init__(self, sock: socket.socket, name: str, longest: int) -> None:
        self.name = name
        self.longest = longest
        self._sock = sock
        self._lock = threading.Lock()
        self.dead = False

    def _timeout(self, ban: Ban, now: float) -> int:
        # A ban from another host may be longer than ours: enforced here for our longest.
        return min(self.longest, max(1, math.ceil(ban.remaining(now))))

    def _call(self, message: dict[str, Any]) -> None:
        if self.dead:
            raise BanError("privileged helper is gone")
        with self._lock:
            try:
                self._sock.sendall(encode(message))
                data = read_frame(self._sock, MAX_REPLY)
            except (OSError, ConnectionError) as exc:
                self.dead = True
                raise BanError(f"privileged helper: {exc}") from None
        if data is None:
            self.dead = True
            raise BanError("privileged helper is gone")
        try:
            reply = json.loads(data)
            ok, error = reply["ok"], reply.get("error", "")
        except (ValueError, KeyError, TypeError):
            raise BanError("privileged helper: unreadable reply") from None
        if ok is not True:
            raise BanError(str(error))

    def sync(self, bans: Sequence[Ban], now: float) -> None:
        live = [[b.network, self._timeout(b, now)] for b in bans if b.expires > now]
        if len(live) > MAX_BANS:
            raise BanError(f"{len(live)} bans: more than one sync carries ({MAX_BANS})")
        self._call({"op": "sync", "bans": live})

    def add(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
        self._call({"op": "add", "ban": [ban.network, self._timeout(ban, now)],
                    "replaces": [b.network for b in replaces][:MAX_BANS]})

    def lift(self, ban: Ban, now: float) -> None:
        self._call({"op": "lift", "network": ban.network})

    def expire(self, ban: Ban, now: float) -> None:
        self._call({"op": "expire", "network": ban.network})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


@dataclass(frozen=True)
class Dropped:
    uid: int
    gid: int
    groups: tuple[int, ...]


def drop(user: str, groups: Sequence[str]) -> Dropped:
    """Become ``user`` (with its login group) with exactly ``groups`` as supplementary
    groups, for good; ``PrivilegeError`` when any step fails or root can be regained."""
    entry = lookup_user(user)
    gids = tuple(sorted({lookup_group(g) for g in groups}))
    try:
        os.setgroups(list(gids))
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot drop privileges to {user}: {exc.strerror}") from None
    if (os.getresuid() != (entry.pw_uid,) * 3 or os.getresgid() != (entry.pw_gid,) * 3
            or set(os.getgroups()) != set(gids)):
        raise PrivilegeError(f"privilege drop to {user} did not take effect")
    for regain in (os.setuid, os.setgid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise PrivilegeError(f"privilege drop to {user} is reversible: {regain.__name__}(0) "
                             "succeeded")
    return Dropped(entry.pw_uid, entry.pw_gid, gids)


def _wants_separation(user: str | None) -> bool:
    """Whether to drop (and fork a helper): only as root, with another user named."""
    if user is None:
        return False
    uid = lookup_user(user).pw_uid
    if os.geteuid() != 0:
        if uid != os.geteuid():
            raise PrivilegeError(f"cannot switch to user {user}: not running as root")
        return False
    return uid != 0


class _Waiter:
    """Waits for the helper's exit on a thread of its own (theory point 3)."""

    def __init__(self, pid: int, remote: PrivilegedBackend,
                 on_death: Callable[[], None] | None) -> None:
        self.pid, self.remote, self.on_death = pid, remote, on_death
        self.closing = False
        self.died: str | None = None
        self.thread = threading.Thread(target=self._wait, name="privsep-waiter", daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 0
        if self.closing:
            return
        self.remote.dead = True
        self.died = f"privileged helper pid={self.pid} exited ({_status(status)})"
        log.error("watch: %s: bans can no longer be applied; stopping", self.died)
        if self.on_death is not None:
            self.on_death()


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"


@contextlib.contextmanager
def separated(settings: WatchSettings, backend: Backend, *, user: str | None,
              groups: Sequence[str] = (), protected: Sequence[IPNetwork],
              on_death: Callable[[], None] | None = None) -> Iterator[Backend]:
    """Fork the privileged helper for ``backend`` and drop to ``user`` with ``groups`` in
    this process; yields the backend to give the ``BanManager`` (theory of operation).
    Call it as root before opening the log, the store or any socket, with no thread
    running. ``PrivsepError`` on leaving when the helper died on the way."""
    if not _wants_separation(user):
        yield backend
        return
    assert user is not None
    if isinstance(backend, NoBackend):   # dry run, or backend "none": nothing to apply
        drop(user, groups)
        yield backend
        return
    if threading.active_count() != 1:
        raise PrivsepError("the helper must be forked before any thread starts")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _helper(theirs, backend, Protection(protected), settings.ban.max_duration, parent)
    theirs.close()
    ours.settimeout(REPLY_TIMEOUT)
    remote = PrivilegedBackend(ours, backend.name, settings.ban.max_duration)
    try:
        drop(user, groups)
    except BaseException:
        remote.close()   # the helper sees end of file and leaves
        os.waitpid(pid, 0)
        raise
    waiter = _Waiter(pid, remote, on_death)
    try:
        yield remote
    finally:
        waiter.closing = waiter.died is None
        remote.close()
        waiter.thread.join(timeout=10)
    if waiter.died is not None:
        raise PrivsepError(f"{waiter.died} while the watcher ran")
