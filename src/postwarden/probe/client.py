"""An asyncio SMTP client for probing: exact bytes, STARTTLS, AUTH, XCLIENT, a transcript.

Security: the server is untrusted. Every read is bounded in time (``timeout``, through
``asyncio.timeout``) and in size (the ``ReplyParser`` limits); a connection that stalls or
floods ends in ``SmtpTimeout`` or ``SmtpProtocolError``, never a hang. The default TLS
context does not verify the certificate: mail TLS is opportunistic (RFC 7435) and the probe
checks judge the chain, name and expiry themselves from ``TlsInfo.peer_chain``; nothing
this client learns is trusted because of the handshake. Credentials given to the AUTH
methods are sent only on request and are masked in the transcript. Plaintext that arrives
after the 220 to STARTTLS but before the handshake is discarded (RFC 3207 4.2), so it
cannot pose as a reply received under TLS.
Standards: RFC 5321 (commands, replies, 4.5.3.2 timeouts), RFC 3207 (STARTTLS), RFC 8314
3.3 (implicit TLS on 465), RFC 4954 (AUTH), RFC 4616 (PLAIN), the LOGIN mechanism
(draft-murchison-sasl-login), Postfix XCLIENT_README (XCLIENT, xtext), RFC 3461 4 (xtext).

Theory of operation
-------------------
1. One ``SmtpClient`` is one TCP connection. ``async with`` connects (from ``source`` when
   given), wraps TLS at once for implicit TLS, and reads the banner unless
   ``read_banner=False`` (then commands can be written before the greeting, the
   "pregreet" probe, and ``read_banner()`` reads it later).
2. Writes and reads are separate: ``send_raw`` writes exact bytes, ``read_reply`` returns
   the next reply, so pipelined groups are one ``send_raw`` and several ``read_reply``.
   ``cmd`` and the verbs built on it are one command, one reply. Reading happens only when
   the parser holds no complete reply, so its buffer stays within one reply plus one read.
3. Every byte sent and every reply is recorded in ``transcript``; notes ("*") record the
   TLS handshake, timeouts and the close. Errors say what was being waited for.
4. TLS versions. Python (3.10+) gives client contexts a TLS 1.2 floor, and OpenSSL 3.0
   (here 3.0.19, Debian 12, default security level 2) offers no cipher suite for TLS 1.0
   or 1.1 at security level 1 or above (their handshake signatures use SHA-1): a context
   pinned to TLS 1.0 fails locally with NO_CIPHERS_AVAILABLE before the server has a
   say. ``tls_context`` therefore lowers the floor and adds ``@SECLEVEL=0`` whenever the
   range includes a version below TLS 1.2. Observed against Postfix 3.7.11 (P-256 key,
   Debian's OpenSSL): with Postfix's defaults (``smtpd_tls_protocols = >=TLSv1``,
   ``smtpd_tls_ciphers = medium``) TLS 1.0 and 1.1 are *accepted* (TLSv1,
   ECDHE-ECDSA-AES256-SHA); with ``smtpd_tls_protocols = >=TLSv1.2`` the server answers
   the 220 to STARTTLS, then a protocol_version alert (SmtpTlsError
   "TLSV1_ALERT_PROTOCOL_VERSION"), and the connection is unusable afterwards.
5. ``TlsInfo.peer_chain`` is the chain the server sent, leaf first, as DER. Python 3.13
   has ``SSLObject.get_unverified_chain()``; 3.11 and 3.12 have the same call on the
   private ``_sslobj``. XXX: the private call is used when present, else only the leaf
   from ``getpeercert(binary_form=True)``; drop it when 3.13 is the minimum.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import ssl
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from postwarden.probe.smtp import (
    Reply,
    ReplyParser,
    SmtpCommandError,
    SmtpError,
    Transcript,
    auth_plain_response,
    command,
    data_bytes,
    parse_ehlo,
)

READ_SIZE = 4096
_ENCODING_DER = 2  # _ssl.ENCODING_DER, for the private chain call (theory point 5)
LEGACY_VERSIONS = (ssl.TLSVersion.SSLv3, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
XCLIENT_ATTRIBUTES = frozenset({"NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN",
                                "DESTADDR", "DESTPORT", "REVERSE_NAME"})


class SmtpConnectionError(SmtpError):
    """The connection could not be made, or the server closed it."""


class SmtpTlsError(SmtpConnectionError):
    """The TLS handshake failed (say, no protocol version or cipher in common)."""


class SmtpTimeout(SmtpError):
    """No complete reply (or connection) within the timeout."""


@dataclass(frozen=True)
class TlsInfo:
    """What the TLS handshake negotiated, and the certificates the server sent."""

    version: str                  # "TLSv1.3"
    cipher: str                   # "TLS_AES_256_GCM_SHA384"
    bits: int
    peer_chain: tuple[bytes, ...]  # DER, leaf first; () if the server sent none


def tls_context(minimum: ssl.TLSVersion | None = None,
                maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context that verifies nothing, optionally pinned to a TLS version range.

    Allowing a version below TLS 1.2 also sets ``@SECLEVEL=0`` (theory point 4), else
    OpenSSL 3 would offer nothing usable for it.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if minimum is None and maximum in LEGACY_VERSIONS:
        minimum = ssl.TLSVersion.MINIMUM_SUPPORTED  # else Python's 1.2 floor exceeds it
    with warnings.catch_warnings():
        # Python deprecates TLSv1/TLSv1_1; testing whether a server accepts them is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
    if minimum in LEGACY_VERSIONS or maximum in LEGACY_VERSIONS:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def xtext(value: str) -> str:
    """RFC 3461 4 xtext: "!".."~" except "+" and "=" as is, every other byte as +HH."""
    out = []
    for byte in value.encode("utf-8", "surrogateescape"):
        char = chr(byte)
        out.append(char if 33 <= byte <= 126 and char not in "+=" else f"+{byte:02X}")
    return "".join(out)


def _server_name(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


def _chain(ssl_object: Any) -> tuple[bytes, ...]:
    """Theory point 5: the whole chain where Python can give it, else the leaf."""
    for owner in (ssl_object, getattr(ssl_object, "_sslobj", None)):
        getter = getattr(owner, "get_unverified_chain", None)
        if getter is None:
            continue
        chain = getter() or []
        return tuple(cert if isinstance(cert, bytes) else cert.public_bytes(_ENCODING_DER)
                     for cert in chain)
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


class SmtpClient:
    """One SMTP connection to the probed server; see the module docstring."""

    def __init__(self, host: str, port: int, *, source: str | None = None,
                 timeout: float = 10.0, implicit_tls: bool = False,
                 tls_context: ssl.SSLContext | None = None, read_banner: bool = True,
                 server_name: str | None = None) -> None:
        self.host = host
        self.port = port
        self.source = source
        self.timeout = timeout
        self.implicit_tls = implicit_tls
        self.tls_context = tls_context
        self.server_name = server_name if server_name is not None else _server_name(host)
        self.transcript = Transcript()
        self.extensions: dict[str, str] = {}
        self.tls: TlsInfo | None = None
        self._read_banner = read_banner
        self._banner: Reply | None = None
        self._parser = ReplyParser()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last = "the banner"   # what the next reply answers, for error messages

    @property
    def banner(self) -> Reply:
        if self._banner is None:
            raise RuntimeError("the banner has not been read (read_banner=False?)")
        return self._banner

    # -- connection ------------------------------------------------------------------------

    async def __aenter__(self) -> SmtpClient:
        await self.connect()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        where = f"{self.host}:{self.port}" + (f" from {self.source}" if self.source else "")
        context = (self.tls_context or tls_context()) if self.implicit_tls else None
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=context,
                    server_hostname=self.server_name if context else None,
                    local_addr=(self.source, 0) if self.source else None)
        except TimeoutError:
            self.transcript.note(f"connect to {where} timed out")
            raise SmtpTimeout(f"no connection to {where} within {self.timeout:g} s") from None
        except ssl.SSLError as error:
            self.transcript.note(f"TLS handshake failed: {error.reason or error}")
            raise SmtpTlsError(f"TLS handshake with {where} failed: "
                               f"{error.reason or error}") from None
        except OSError as error:
            self.transcript.note(f"connect to {where} failed: {error.strerror or error}")
            raise SmtpConnectionError(f"cannot connect to {where}: "
                                      f"{error.strerror or error}") from None
        self.transcript.note(f"connected to {where}")
        if context is not None:
            self._record_tls()
        if self._read_banner:
            await self.read_banner()

    async def close(self) -> None:
        """Close the connection (no QUIT); safe to repeat."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()

    # -- raw I/O ---------------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        """Write exact bytes (pipelined groups, bare LF or CR, pregreet) and record them."""
        self._last = "the raw bytes sent"
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        writer = self._require_writer()
        self.transcript.client(data)
        try:
            writer.write(data)
            async with asyncio.timeout(self.timeout):
                await writer.drain()
        except TimeoutError:
            raise SmtpTimeout(f"could not send within {self.timeout:g} s") from None
        except (OSError, ssl.SSLError) as error:
            self.transcript.note(f"send failed: {error}")
            raise SmtpConnectionError(f"connection lost while sending: {error}") from None

    async def read_reply(self, timeout: float | None = None) -> Reply:
        """The next reply; ``timeout`` overrides the client's for this read only."""
        reader = self._reader
        if reader is None:
            raise SmtpConnectionError("not connected")
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while (reply := self._parser.next_reply()) is None:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        self.transcript.note("connection closed by the server")
                        raise SmtpConnectionError(
                            f"server closed the connection while we waited for {self._last}")
                    self._parser.feed(data)
        except TimeoutError:
            self.transcript.note(f"no reply to {self._last} within {limit:g} s")
            raise SmtpTimeout(f"no reply to {self._last} within {limit:g} s") from None
        except (OSError, ssl.SSLError) as error:
            self.transcript.note(f"read failed: {error}")
            raise SmtpConnectionError(
                f"connection lost while waiting for {self._last}: {error}") from None
        self.transcript.server(reply)
        return reply

    async def read_banner(self) -> Reply:
        """Read the 220 greeting (or 421/554 refusal) and keep it as ``banner``."""
        self._last = "the banner"
        self._banner = await self.read_reply()
        return self._banner

    # -- commands --------------------------------------------------------------------------

    async def cmd(self, verb: str, argument: str = "") -> Reply:
        """Send one command and read its reply."""
        data = command(verb, argument)
        self._last = verb.upper()
        await self._write(data)
        return await self.read_reply()

    async def ehlo(self, name: str) -> Reply:
        reply = await self.cmd("EHLO", name)
        self.extensions = parse_ehlo(reply)
        return reply

    async def helo(self, name: str) -> Reply:
        self.extensions = {}
        return await self.cmd("HELO", name)

    async def starttls(self, context: ssl.SSLContext | None = None) -> Reply:
        """STARTTLS; on 220 the connection is upgraded in place and ``tls`` is set.

        A failed handshake raises ``SmtpTlsError``; the extensions are forgotten either way
        after a 220 (RFC 3207 4.2: the client must EHLO again).
        """
        reply = await self.cmd("STARTTLS")
        if reply.code == 220:
            await self.upgrade(context)
        return reply

    async def upgrade(self, context: ssl.SSLContext | None = None) -> TlsInfo:
        """The TLS handshake alone, for when STARTTLS went out by ``send_raw``."""
        writer = self._require_writer()
        if self._parser.pending:
            # RFC 3207 4.2: nothing received before TLS may count as a reply under TLS.
            self.transcript.note(f"{self._parser.pending} bytes received after the 220 "
                                 "to STARTTLS, before TLS; discarded")
            self._parser = ReplyParser()
        self.extensions = {}
        chosen = context or self.tls_context or tls_context()
        try:
            async with asyncio.timeout(self.timeout):
                await writer.start_tls(chosen, server_hostname=self.server_name)
        except TimeoutError:
            self.transcript.note(f"TLS handshake timed out after {self.timeout:g} s")
            raise SmtpTimeout(f"no TLS handshake within {self.timeout:g} s") from None
        except ssl.SSLError as error:
            self.transcript.note(f"TLS handshake failed: {error.reason or error}")
            raise SmtpTlsError(f"TLS handshake failed: {error.reason or error}") from None
        except OSError as error:
            self.transcript.note(f"TLS handshake failed: {error}")
            raise SmtpConnectionError(f"connection lost in the TLS handshake: {error}") from None
        return self._record_tls()

    def _record_tls(self) -> TlsInfo:
        assert self._writer is not None
        ssl_object = self._writer.get_extra_info("ssl_object")
        name, _version, bits = ssl_object.cipher()
        self.tls = TlsInfo(version=ssl_object.version() or "", cipher=name, bits=bits,
                           peer_chain=_chain(ssl_object))
        self.transcript.note(f"TLS handshake: {self.tls.version} {self.tls.cipher}")
        return self.tls

    async def auth_plain(self, user: str, password: str) -> Reply:
        """AUTH PLAIN with an initial response (RFC 4954 4, RFC 4616)."""
        return await self.cmd("AUTH", "PLAIN " + auth_plain_response(user, password))

    async def auth_login(self, user: str, password: str) -> Reply:
        """AUTH LOGIN: user and password each answer a 334; any other reply ends it."""
        reply = await self.cmd("AUTH", "LOGIN")
        for secret in (user, password):
            if reply.code != 334:
                return reply
            encoded = _base64(secret)
            self._last = "an AUTH LOGIN response"
            await self._write(encoded.encode("ascii") + b"\r\n")
            reply = await self.read_reply()
        return reply

    async def xclient(self, **attributes: str) -> Reply:
        """XCLIENT NAME=... ADDR=... (Postfix XCLIENT_README); values are xtext-encoded.

        Postfix answers a permitted XCLIENT with a new 220 greeting; EHLO again after it.
        """
        if not attributes:
            raise SmtpCommandError("XCLIENT needs at least one attribute")
        words = []
        for key, value in attributes.items():
            name = key.upper()
            if name not in XCLIENT_ATTRIBUTES:
                raise SmtpCommandError(f"not an XCLIENT attribute: {name}")
            words.append(f"{name}={xtext(value)}")
        return await self.cmd("XCLIENT", " ".join(words))

    async def mail(self, sender: str, params: str = "") -> Reply:
        """MAIL FROM:<sender> [params]; "" is the null sender."""
        return await self.cmd("MAIL", f"FROM:<{sender}>" + (f" {params}" if params else ""))

    async def rcpt(self, recipient: str) -> Reply:
        return await self.cmd("RCPT", f"TO:<{recipient}>")

    async def data(self, message: bytes) -> Reply:
        """DATA, then on 354 the dot-stuffed message; the final reply (or the DATA reply)."""
        reply = await self.cmd("DATA")
        if reply.code != 354:
            return reply
        self._last = "the end of data"
        await self._write(data_bytes(message))
        return await self.read_reply()

    async def quit(self) -> Reply | None:
        """QUIT and close; a server that is already gone is no error here."""
        try:
            return await self.cmd("QUIT")
        except SmtpError:
            return None
        finally:
            await self.close()

    def _require_writer(self) -> asyncio.StreamWriter:
        if self._writer is None:
            raise SmtpConnectionError("not connected")
        return self._writer


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
