"""The asyncio shell of the milter: listeners, one session per MTA connection, fail-safe.

Security: anyone who can reach a listening socket is an MTA to us. The sockets come
bound from ``postwarden.listen`` (unix sockets created under umask 0177, then given the
explicit mode asked for, so never wider than asked). Each connection owns one
``MilterDecoder`` (bounded buffers, see ``postwarden.milter.protocol``); a protocol
error closes that connection with one log line and touches no other. Any other
exception in a handler gives the configured fail-safe verdict (accept or tempfail) and
one log line with the traceback; ``CancelledError`` is always re-raised. A connection
silent for ``idle_timeout`` is closed.
Standards: Postfix MILTER_README (Postfix 3.7: macros before each command, ABORT sent
twice after end of message, connection reuse with QUIT_NC, ``milter_default_action``);
Sendmail libmilter (``engine.c`` state order, ``xxfi_*`` callbacks).

Theory of operation
-------------------
1. A connection task loops: take the next event from the decoder, or read and feed when
   there is none; pass the event to its ``MilterSession``; write the bytes the session
   returns. It never reads ahead of a reply, so the decoder holds at most one partial
   packet and one read.
2. ``MilterSession`` is the state machine. The order is enforced loosely, as libmilter
   does: OPTNEG first; CONNECT at most once per (reused) connection; HELO and UNKNOWN at
   any time (HELO ends an open message); RCPT, DATA, HEADER, EOH, BODY and end of message
   only inside a message (MAIL starts it, end of message or ABORT ends it). MACRO may
   come at any time after OPTNEG and is kept per stage; ABORT is always allowed, also
   twice. Anything else is a protocol error.
3. A fresh handler is made for every connection (``handler_factory``), so per-connection
   state lives in the handler. MAIL while a message is open (never sent by Postfix, which
   sends ABORT) aborts the old one first.
4. Fail-safe: when a handler raises, or returns a reply the protocol cannot carry, the
   session answers ``failsafe`` (``Verdict.ACCEPT`` or ``Verdict.TEMPFAIL``). At end of
   message, the modifications are dropped with the verdict.
5. ``MilterOptions.no_reply`` asks for ``SMFIP_NR_*``: the MTA then sends those steps
   without waiting, and a message takes a few round trips instead of one per header (the
   difference between an OpenDKIM-like and a lower CPU cost per message). A verdict other
   than CONTINUE at such a step (a handler's, or the fail-safe) cannot be sent then; it is
   held and sent instead of the answer to the next step the MTA waits for (end of message
   at the latest). A verdict held inside a message is dropped when the message is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from postwarden.errors import PostwardenError
from postwarden.listen import SharedAcceptor
from postwarden.milter.protocol import (
    MILTER_VERSION,
    REQUIRED_ACTION,
    SMFIF_ADDHDRS,
    SMFIF_CHGHDRS,
    SMFIF_QUARANTINE,
    Abort,
    Body,
    Connect,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Event,
    Header,
    Helo,
    Macros,
    MailFrom,
    MilterDecoder,
    MilterProtocolError,
    MilterReplyError,
    Modification,
    Negotiated,
    OptNeg,
    Quit,
    QuitNewConnection,
    RcptTo,
    Reply,
    Unknown,
    Verdict,
    encode_modification,
    encode_optneg,
    encode_reply,
    needs_reply,
    negotiate,
)

log = logging.getLogger(__name__)

READ_SIZE = 65536
DEFAULT_ACTIONS = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE

# The order Postfix sends stages in; the merged macro view takes later stages last.
_STAGES = "CHMRTNE"
_CONTINUE = encode_reply(Verdict.CONTINUE)


@dataclass(frozen=True)
class EndOfMessageResult:
    """What a handler decides at end of message: modifications, then the verdict."""

    verdict: Reply = Verdict.CONTINUE
    modifications: tuple[Modification, ...] = ()


@dataclass
class SessionContext:
    """What a handler may read about its connection; owned and updated by the session."""

    peer: str
    negotiated: Negotiated | None = None
    connect: Connect | None = None
    helo_name: str | None = None
    stage_macros: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def macros(self) -> dict[str, str]:
        """All current macro values, later stages overriding earlier ones."""
        merged: dict[str, str] = {}
        for stage in _STAGES:
            merged.update(self.stage_macros.get(stage, {}))
        return merged


class Handler(Protocol):
    """The callbacks a milter application provides; one handler per MTA connection.

    Each step returns its verdict (``Verdict`` or ``ReplyCode``); ``end_of_message``
    returns the modifications and the verdict. ``abort`` is called when an open message is
    abandoned (RSET, a new MAIL or HELO, the client gone), never after end of message, so
    per-message state is reset in ``mail_from`` or ``end_of_message`` and ``abort``.
    ``close`` is called once when the MTA connection ends or is reused (QUIT_NC).
    A callback that raises gets the configured fail-safe verdict.
    """

    async def connect(self, ctx: SessionContext, event: Connect) -> Reply: ...
    async def helo(self, ctx: SessionContext, event: Helo) -> Reply: ...
    async def mail_from(self, ctx: SessionContext, event: MailFrom) -> Reply: ...
    async def rcpt_to(self, ctx: SessionContext, event: RcptTo) -> Reply: ...
    async def data(self, ctx: SessionContext, event: Data) -> Reply: ...
    async def header(self, ctx: SessionContext, event: Header) -> Reply: ...
    async def end_of_headers(self, ctx: SessionContext, event: EndOfHeaders) -> Reply: ...
    async def body(self, ctx: SessionContext, event: Body) -> Reply: ...
    async def end_of_message(self, ctx: SessionContext,
                             event: EndOfMessage) -> EndOfMessageResult: ...
    async def unknown(self, ctx: SessionContext, event: Unknown) -> Reply: ...
    async def abort(self, ctx: SessionContext) -> None: ...
    async def close(self, ctx: SessionContext) -> None: ...


class BaseHandler:
    """A handler that continues at every step; subclass and override what you need."""

    async def connect(self, ctx: SessionContext, event: Connect) -> Reply:
        return Verdict.CONTINUE

    async def helo(self, ctx: SessionContext, event: Helo) -> Reply:
        return Verdict.CONTINUE

    async def mail_from(self, ctx: SessionContext, event: MailFrom) -> Reply:
        return Verdict.CONTINUE

    async def rcpt_to(self, ctx: SessionContext, event: RcptTo) -> Reply:
        return Verdict.CONTINUE

    async def data(self, ctx: SessionContext, event: Data) -> Reply:
        return Verdict.CONTINUE

    async def header(self, ctx: SessionContext, event: Header) -> Reply:
        return Verdict.CONTINUE

    async def end_of_headers(self, ctx: SessionContext, event: EndOfHeaders) -> Reply:
        return Verdict.CONTINUE

    async def body(self, ctx: SessionContext, event: Body) -> Reply:
        return Verdict.CONTINUE

    async def end_of_message(self, ctx: SessionContext,
                             event: EndOfMessage) -> EndOfMessageResult:
        return EndOfMessageResult()

    async def unknown(self, ctx: SessionContext, event: Unknown) -> Reply:
        return Verdict.CONTINUE

    async def abort(self, ctx: SessionContext) -> None:
        return None

    async def close(self, ctx: SessionContext) -> None:
        return None


@dataclass(frozen=True)
class MilterOptions:
    """How every session negotiates and fails."""

    failsafe: Verdict = Verdict.TEMPFAIL
    actions: int = DEFAULT_ACTIONS
    skip: int = 0
    # SMFIP_NR_* steps the MTA need not wait for: only steps the handler always continues
    # at (a verdict given there anyway is held and sent at the next step that is answered)
    no_reply: int = 0
    macros: Mapping[int, Sequence[str]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.failsafe not in (Verdict.ACCEPT, Verdict.TEMPFAIL):
            raise PostwardenError("milter fail-safe must be accept or tempfail")
        # Fail at start-up, not at the first connection: negotiate against a full offer.
        negotiate(OptNeg(MILTER_VERSION, 0xFFFFFFFF, 0xFFFFFFFF), actions=self.actions,
                  skip=self.skip, no_reply=self.no_reply, macros=self.macros)


class SessionClosed(Exception):
    """QUIT: the MTA is done with this connection."""


class MilterSession:
    """One MTA connection: checks command order, calls the handler, builds replies."""

    def __init__(self, handler: Handler, options: MilterOptions, peer: str) -> None:
        self.handler = handler
        self.options = options
        self.ctx = SessionContext(peer)
        self._connected = False
        self._in_message = False
        self.messages = 0
        # a verdict given at a step the MTA did not wait for (SMFIP_NR_*), to be sent at
        # the next step it waits for; and whether it belongs to the open message
        self._held = b""
        self._held_in_message = False

    async def handle(self, event: Event) -> bytes:
        """The bytes to send in answer to ``event`` (often none); raises
        ``MilterProtocolError`` on an event out of order and ``SessionClosed`` on QUIT."""
        if type(event) is Header and self._in_message and self.ctx.negotiated is not None:
            # the common case (a message is mostly header fields), without the walk
            # through every event type below; the same order checks and fail-safe
            try:
                reply = await self.handler.header(self.ctx, event)
                answer = _CONTINUE if reply is Verdict.CONTINUE else encode_reply(reply)
            except asyncio.CancelledError:
                raise
            except Exception:
                answer = self._failsafe("Header")
            return self._answer(event, answer, self.ctx.negotiated.protocol)
        if isinstance(event, OptNeg):
            return self._optneg(event)
        agreed = self.ctx.negotiated
        if agreed is None:
            raise MilterProtocolError(f"{type(event).__name__} before option negotiation")
        if isinstance(event, Macros):
            self.ctx.stage_macros[event.command] = dict(event.macros)
            return b""
        if isinstance(event, Abort):
            await self._abort()
            return b""
        if isinstance(event, Quit):
            raise SessionClosed
        if isinstance(event, QuitNewConnection):
            await self._abort()
            await self._quiet("close", self.handler.close(self.ctx))
            self.ctx = SessionContext(self.ctx.peer, negotiated=self.ctx.negotiated)
            self._connected = False
            self._held = b""
            return b""
        return self._answer(event, await self._dispatch(event), agreed.protocol)

    def _answer(self, event: Event, reply: bytes, protocol: int) -> bytes:
        """What to send now: nothing at a step the MTA does not wait for (a verdict given
        there is held for the next step it waits for), else the held verdict or this one."""
        if not needs_reply(event, protocol):
            if reply != _CONTINUE and not self._held:
                self._held, self._held_in_message = reply, self._in_message
            return b""
        if self._held:
            reply, self._held = self._held, b""
        return reply

    def _optneg(self, offer: OptNeg) -> bytes:
        if self.ctx.negotiated is not None and self._connected:
            raise MilterProtocolError("option negotiation in the middle of a session")
        # checked in MilterOptions already
        agreed = negotiate(offer, actions=self.options.actions, skip=self.options.skip,
                           no_reply=self.options.no_reply, macros=self.options.macros)
        self.ctx.negotiated = agreed
        return encode_optneg(agreed)

    def _order(self, event: Event) -> None:
        if isinstance(event, Connect):
            if self._connected or self._in_message:
                raise MilterProtocolError("CONNECT twice in one session")
            self._connected = True
            return
        in_message = isinstance(event, (RcptTo, Data, Header, EndOfHeaders, Body,
                                        EndOfMessage))
        if in_message and not self._in_message:
            raise MilterProtocolError(f"{type(event).__name__} outside a message")

    async def _dispatch(self, event: Event) -> bytes:
        self._order(event)
        if isinstance(event, Helo) and self._in_message:
            # RFC 5321 4.1.4: EHLO/HELO resets the transaction; Postfix sends ABORT first,
            # an MTA that does not gets the same reset here
            await self._abort()
        if isinstance(event, MailFrom):
            if self._in_message:
                await self._abort()
            self._in_message = True
            self.messages += 1
        elif isinstance(event, EndOfMessage):
            self._in_message = False
            return await self._end_of_message(event)
        elif isinstance(event, Helo):
            self.ctx.helo_name = event.helo_name
        elif isinstance(event, Connect):
            self.ctx.connect = event
        try:
            reply = await self._call(event)
            return _CONTINUE if reply is Verdict.CONTINUE else encode_reply(reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            return self._failsafe(type(event).__name__)

    async def _call(self, event: Event) -> Reply:
        h, ctx = self.handler, self.ctx
        # most frequent first: a message is mostly header fields
        if isinstance(event, Header):
            return await h.header(ctx, event)
        if isinstance(event, Body):
            return await h.body(ctx, event)
        if isinstance(event, RcptTo):
            return await h.rcpt_to(ctx, event)
        if isinstance(event, MailFrom):
            return await h.mail_from(ctx, event)
        if isinstance(event, Connect):
            return await h.connect(ctx, event)
        if isinstance(event, Helo):
            return await h.helo(ctx, event)
        if isinstance(event, Data):
            return await h.data(ctx, event)
        if isinstance(event, EndOfHeaders):
            return await h.end_of_headers(ctx, event)
        if isinstance(event, Unknown):
            return await h.unknown(ctx, event)
        raise AssertionError(f"no handler for {event!r}")  # handle() took all the others

    async def _end_of_message(self, event: EndOfMessage) -> bytes:
        assert self.ctx.negotiated is not None
        try:
            result = await self.handler.end_of_message(self.ctx, event)
            packets = []
            for change in result.modifications:
                needed = REQUIRED_ACTION[type(change)]
                if not self.ctx.negotiated.actions & needed:
                    raise MilterReplyError(f"{type(change).__name__} was not negotiated "
                                           f"(MTA allows actions {self.ctx.negotiated.actions:#x})")
                packets.append(encode_modification(change))
            packets.append(encode_reply(result.verdict))
            return b"".join(packets)
        except asyncio.CancelledError:
            raise
        except Exception:
            return self._failsafe("EndOfMessage")

    def _failsafe(self, stage: str) -> bytes:
        action = self.options.failsafe
        log.error("milter: client=%s stage=%s action=%s reason=internal-error",
                  self.ctx.peer, stage, action.name.lower(), exc_info=True)
        return encode_reply(action)

    async def _abort(self) -> None:
        """ABORT: forget the message; the handler hears of it only if one was open (not
        for the two ABORTs Postfix sends after every end of message)."""
        was_open, self._in_message = self._in_message, False
        if self._held_in_message:
            self._held = b""
        for stage in "MRTNE":
            self.ctx.stage_macros.pop(stage, None)
        if was_open:
            await self._quiet("abort", self.handler.abort(self.ctx))

    async def _quiet(self, stage: str, call: Coroutine[object, object, None]) -> None:
        """Run a callback that sends no reply; an error is logged and nothing else."""
        try:
            await call
        except asyncio.CancelledError:
            raise
        except Exception:
            log.error("milter: client=%s stage=%s action=none reason=internal-error",
                      self.ctx.peer, stage, exc_info=True)

    async def close(self) -> None:
        """The connection is gone: let the handler clean up."""
        await self._quiet("close", self.handler.close(self.ctx))


# -- listeners and connections --------------------------------------------------------------


def _peer(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return "unix"


class MilterServer:
    """Serves a handler per MTA connection on bound sockets."""

    def __init__(self, handler_factory: Callable[[], Handler], sockets: Sequence[socket.socket],
                 options: MilterOptions | None = None, *, idle_timeout: float = 3600.0) -> None:
        self.handler_factory = handler_factory
        self.sockets = list(sockets)
        self.options = options or MilterOptions()
        # Postfix keeps a milter connection for the whole SMTP session (smtpd's own
        # timeout is 300 s a command); an hour of silence is no MTA.
        self.idle_timeout = idle_timeout
        self._servers: list[SharedAcceptor] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> None:
        for sock in self.sockets:   # one connection per wakeup: workers share a burst
            self._servers.append(SharedAcceptor(sock, self._accept))

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        self.connections += 1
        session: MilterSession | None = None
        try:
            session = MilterSession(self.handler_factory(), self.options, peer)
            await self._serve(session, reader, writer)
        except asyncio.CancelledError:
            raise
        except MilterProtocolError as error:
            log.warning("milter: client=%s action=close reason=protocol-error error=%s",
                        peer, error)
        except (TimeoutError, ConnectionError) as error:
            log.info("milter: client=%s action=close reason=%s", peer,
                     type(error).__name__)
        except Exception:
            log.error("milter: client=%s action=close reason=internal-error", peer,
                      exc_info=True)
        finally:
            if session is not None:
                await session.close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, session: MilterSession, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        decoder = MilterDecoder()
        while True:
            event = decoder.next_event()
            if event is None:
                async with asyncio.timeout(self.idle_timeout):
                    data = await reader.read(READ_SIZE)
                if not data:
                    return  # the MTA closed; Postfix does so without QUIT at times
                decoder.feed(data)
                continue
            try:
                reply = await session.handle(event)
            except SessionClosed:
                return
            if reply:
                writer.write(reply)
                await writer.drain()

    async def close(self) -> None:
        """Stop accepting, cancel every connection, and wait for them to end."""
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def __aenter__(self) -> MilterServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
