"""SMFIP_NR_* with a real Postfix: what the benchmark client assumes, checked against smtpd.

The milter client skips waiting for replies the milter declined (``SMFIP_NR_*``), as
Postfix's milter8.c does. Here a real Postfix instance drives ``MilterServer`` with
``MilterOptions(no_reply=SMFIP_NR_FLAGS)``: mail passes with the header added at end of
message, and a verdict given at a header (which Postfix does not wait for) reaches the
SMTP client at the end of DATA.

Security: Postfix listens on 127.0.0.1 only; its directory is made here and removed.
Standards: Postfix MILTER_README (milter_protocol = 6); Sendmail mfdef.h (SMFIP_NR_*).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import smtplib
import tempfile
import threading
from pathlib import Path

import pytest

from postwarden.listen import bind_tcp
from postwarden.milter.protocol import (
    SMFIP_NR_FLAGS,
    AddHeader,
    EndOfMessage,
    Header,
    Reply,
    ReplyCode,
    Verdict,
)
from postwarden.milter.server import (
    BaseHandler,
    EndOfMessageResult,
    MilterOptions,
    MilterServer,
    SessionContext,
)
from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance

HELD = "5.7.1 rejected at a header, told at end of message"


class Handler(BaseHandler):
    async def header(self, ctx: SessionContext, event: Header) -> Reply:
        return ReplyCode(550, HELD) if event.name == "X-Reject" else Verdict.CONTINUE

    async def end_of_message(self, ctx: SessionContext,
                             event: EndOfMessage) -> EndOfMessageResult:
        return EndOfMessageResult(Verdict.CONTINUE, (AddHeader("X-No-Reply", b" yes"),))


@pytest.mark.postfix
def test_postfix_honours_no_reply_steps() -> None:
    sock = bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    server = MilterServer(Handler, [sock], MilterOptions(no_reply=SMFIP_NR_FLAGS))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    root = Path(tempfile.mkdtemp(prefix="postwarden-instance-"))
    settings = {"smtpd_milters": f"inet:127.0.0.1:{port}", "milter_protocol": "6",
                "milter_default_action": "tempfail"}
    try:
        with PostfixInstance(root, main_cf=settings) as pf, \
                smtplib.SMTP(pf.address, pf.port, source_address=("127.0.0.2", 0),
                             timeout=30) as smtp:
            smtp.ehlo("client.example")
            smtp.mail("alice@example.org")
            smtp.rcpt(f"root@{TEST_HOSTNAME}")
            code, reply = smtp.data(b"From: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n")
            assert code == 250, reply
            queue_id = re.search(rb"queued as ([0-9A-Za-z]+)", reply)
            assert queue_id is not None
            pf.wait_for_log(rf"{queue_id.group(1).decode()}: to=<root@{TEST_HOSTNAME}>, "
                            r".*status=sent", timeout=20)
            assert b"\nX-No-Reply: yes\n" in (pf.mail_directory / "root").read_bytes()
            smtp.mail("alice@example.org")
            smtp.rcpt(f"root@{TEST_HOSTNAME}")
            code, reply = smtp.data(b"From: alice@example.org\r\nX-Reject: 1\r\n\r\nhi\r\n")
            assert (code, reply.decode()) == (550, HELD)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        shutil.rmtree(root, ignore_errors=True)
