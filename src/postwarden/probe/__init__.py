"""postwarden probe: test a live mail server from outside, over SMTP.

Security: everything read from the probed server is untrusted; it is parsed only in
``postwarden.probe.smtp`` (bounded, sans-IO) and driven by ``postwarden.probe.client``.
Standards: see the modules.
"""

from __future__ import annotations

from postwarden.probe.client import (
    SmtpClient,
    SmtpConnectionError,
    SmtpTimeout,
    SmtpTlsError,
    TlsInfo,
    tls_context,
)
from postwarden.probe.smtp import (
    Reply,
    ReplyParser,
    SmtpCommandError,
    SmtpError,
    SmtpProtocolError,
    Transcript,
    command,
    data_bytes,
    parse_ehlo,
)

__all__ = [
    "Reply",
    "ReplyParser",
    "SmtpClient",
    "SmtpCommandError",
    "SmtpConnectionError",
    "SmtpError",
    "SmtpProtocolError",
    "SmtpTimeout",
    "SmtpTlsError",
    "TlsInfo",
    "Transcript",
    "command",
    "data_bytes",
    "parse_ehlo",
    "tls_context",
]
