"""DMARC aggregate reports end to end: the Redis store, and a report mailed through Postfix.

The Redis half runs the evaluation store against a real redis-server started here (the one
of test_stores.py). The Postfix half records evaluations in SQLite, runs ``postwarden dmarc
report --send`` as a separate process with the real Postfix ``sendmail`` pointed at a
private instance (MAIL_CONFIG), lets local(8) deliver the report to a mailbox, and reads it
back: the MIME structure, the attachment's name, the gunzipped XML against the schema. The
external-destination check asks a DNS server on loopback.

Security: everything listens on 127.0.0.1; directories and processes are removed at the end.
Standards: RFC 9990 3.3 (report mail), section 4 (external destinations).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import mailbox
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from postwarden.lab.dns import DnsServer
from postwarden.milter.reports import (
    DAY,
    NAMESPACE,
    Evaluation,
    EvaluationStore,
    open_evaluation_store,
    validate,
)
from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance, find_program
from tests.integration.test_stores import RedisServer, redis_server  # noqa: F401 - fixture

NewRoot = Callable[[], Path]
TODAY = int(time.time()) // DAY * DAY
YESTERDAY = TODAY - DAY
REPORTS = f"dmarc-reports@{TEST_HOSTNAME}"
EVALUATION = Evaluation(
    time=YESTERDAY + 3600, source_ip="192.0.2.1", header_from="example.org",
    envelope_from="example.org", envelope_to=TEST_HOSTNAME, policy_domain="example.org",
    record=f"v=DMARC1; p=reject; rua=mailto:{REPORTS}", disposition="none",
    dkim_aligned=True, spf_aligned=True, dkim=(("example.org", "s1", "pass"),),
    spf=("example.org", "mfrom", "pass"), policy="reject", requested="reject",
    discovery="treewalk")


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state.db"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url(f"d{request.node.name.encode().hex()[-40:]}:")


def on_store(url: str, body: Callable[[EvaluationStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = await open_evaluation_store(url)
        try:
            await body(store)
        finally:
            await store.close()
    asyncio.run(main())


def test_store_records_ranges_and_expires(store_url: str) -> None:
    async def body(store: EvaluationStore) -> None:
        for offset in (0, 5, 5, 9):
            await store.add(replace(EVALUATION, time=YESTERDAY + offset))
        # Two identical evaluations are two messages: both kept.
        got = await store.between(YESTERDAY + 5, YESTERDAY + 9)
        assert got == [replace(EVALUATION, time=YESTERDAY + 5)] * 2
        assert len(await store.between(YESTERDAY, YESTERDAY + 10)) == 4
        assert await store.expire(YESTERDAY + 6, batch=2) == 2
        assert await store.expire(YESTERDAY + 6, batch=2) == 1
        assert [e.time for e in await store.between(0, TODAY)] == [YESTERDAY + 9]
    on_store(store_url, body)


def test_redis_store_reads_long_ranges_in_pages(redis_server: RedisServer) -> None:  # noqa: F811
    url = redis_server.url("dpages:")

    async def body(store: EvaluationStore) -> None:
        for i in range(12_000):
            await store.add(replace(EVALUATION, time=YESTERDAY + i))
        got = await store.between(YESTERDAY, TODAY)
        assert [e.time for e in got] == [YESTERDAY + i for i in range(12_000)]
    on_store(url, body)


def test_redis_outage_is_a_store_error() -> None:
    from postwarden.policy.store import StoreError

    async def body() -> None:
        store = await open_evaluation_store("redis://127.0.0.1:1/0")
        try:
            await store.add(EVALUATION)
        finally:
            await store.close()
    with pytest.raises(StoreError, match="redis store"):
        asyncio.run(body())


@pytest.mark.postfix
def test_report_mailed_through_postfix(new_root: NewRoot, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/state/state.db"
    no_consent = replace(EVALUATION, policy_domain="example.com", header_from="example.com",
                         record=f"v=DMARC1; p=none; rua=mailto:{REPORTS}")
    failing = replace(EVALUATION, source_ip="2001:db8::7", dkim_aligned=False,
                      spf_aligned=False, disposition="reject", dkim=(),
                      spf=("evil.example", "mfrom", "fail"))

    async def fill(store: EvaluationStore) -> None:
        for evaluation in (EVALUATION, EVALUATION, failing, no_consent):
            await store.add(evaluation)
    on_store(url, fill)
    zone = {f"example.org._report._dmarc.{TEST_HOSTNAME}": {"TXT": ["v=DMARC1;"]}}
    pf = PostfixInstance(new_root(), main_cf={
        "alias_maps": "inline:{ postmaster=root, abuse=root, dmarc-reports=root }"})
    sendmail = find_program("sendmail")
    assert sendmail, "Postfix's sendmail is not installed"
    with pf, DnsServer(zone) as dns:
        env = dict(os.environ, MAIL_CONFIG=str(pf.config_dir))
        done = subprocess.run(
            [sys.executable, "-m", "postwarden", "dmarc", "report", "--store", url,
             "--send", "--sendmail", sendmail, "--nameserver", dns.address,
             "--org-name", "postwarden test", "--email", f"postmaster@{TEST_HOSTNAME}",
             "--keep", "0"],
            env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "example.com: not sent" in done.stdout       # no consent for example.com
        pf.wait_for_log(rf"to=<{REPORTS}>.*status=sent", timeout=30)
        box = mailbox.mbox(str(pf.mail_directory / "root"))
        [raw] = [bytes(m) for m in box]
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(mail, email.message.EmailMessage)
    assert str(mail["From"]) == f"postwarden test <postmaster@{TEST_HOSTNAME}>"
    assert " ".join(str(mail["Subject"]).split()).startswith(
        f"Report Domain: example.org Submitter: {TEST_HOSTNAME} Report-ID: <")
    assert mail["Return-Path"] == f"<postmaster@{TEST_HOSTNAME}>"
    [part] = [p for p in mail.iter_attachments()]
    assert part.get_content_type() == "application/gzip"
    name = part.get_filename() or ""
    assert name.startswith(f"{TEST_HOSTNAME}!example.org!{YESTERDAY}!{TODAY - 1}!")
    assert name.endswith(".xml.gz")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    xml = gzip.decompress(payload)
    validate(xml, "rfc9990")
    root = etree.fromstring(xml)
    ns = {"d": NAMESPACE}
    rows = {(r.findtext("d:source_ip", namespaces=ns), r.findtext("d:count", namespaces=ns),
             r.findtext("d:policy_evaluated/d:disposition", namespaces=ns))
            for r in root.iterfind("d:record/d:row", namespaces=ns)}
    assert rows == {("192.0.2.1", "2", "pass"), ("2001:db8::7", "1", "reject")}
    report_id = root.findtext("d:report_metadata/d:report_id", namespaces=ns)
    assert name == f"{TEST_HOSTNAME}!example.org!{YESTERDAY}!{TODAY - 1}!{report_id}.xml.gz"
