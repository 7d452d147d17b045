"""The milter daemon's life: published-key checks, start-up, privilege drop, workers, stop.

Security: private keys are read and sockets bound as root, then privileges are dropped for
good before any connection is served (running as root needs ``user = "root"`` on
purpose). Every module serving needs is imported before the drop, since afterwards Python
may no longer be able to read its own library. DNS answers checked by
``check_published`` are compared, never executed or stored.
Standards: RFC 6376 3.6.1 (the key record: v=, k=, p=, t=); what opendkim-testkey checks.

Theory of operation
-------------------
``run``: keys are read and sockets bound as root, every module serving needs is imported,
privileges are dropped, then ``postwarden.prefork`` runs ``workers`` processes, each with
its own event loop, ``daemon.Engine`` and store connection. ``check_published`` is
``milter --check-config``: one query per key, compared with the private key's public half.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from postwarden.errors import PostwardenError, clip
from postwarden.listen import bind_tcp, bind_unix
from postwarden.milter import dmarc, signing
from postwarden.milter.daemon import Engine, MilterHandler
from postwarden.milter.keys import PrivateKey, public_key_data
from postwarden.milter.metrics import MilterCounters, start_metrics
from postwarden.milter.milter_settings import MilterSettings
from postwarden.milter.protocol import SMFIP_NODATA, SMFIP_NOUNKNOWN, SMFIP_NR_FLAGS, Verdict
from postwarden.milter.server import MilterOptions, MilterServer
from postwarden.policy.model import Resolver
from postwarden.settings import Settings, StoreSettings

if TYPE_CHECKING:
    from postwarden.milter.reports import EvaluationStore

log = logging.getLogger(__name__)


# -- published keys (what opendkim-testkey does) ---------------------------------------------


@dataclass(frozen=True)
class KeyCheck:
    """Whether one signing key's DNS record publishes its public half."""

    ok: bool
    key: signing.SigningKey
    name: str
    reason: str

    def line(self) -> str:
        word = "ok" if self.ok else "fail"
        return (f"{word} d={self.key.domain} s={self.key.selector} a={self.key.algorithm} "
                f"{self.name}: {self.reason}")


def _record_tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags[name.strip()] = "".join(value.split())
    return tags


def compare_record(key: signing.SigningKey, private: PrivateKey, records: Sequence[str]
                   ) -> tuple[bool, str]:
    """Whether one of ``records`` (TXT strings at the key's name) holds ``private``'s public
    key, and a sentence on why not."""
    want = base64.b64encode(public_key_data(private.public_key())).decode("ascii")
    kind = "ed25519" if key.algorithm == "ed25519-sha256" else "rsa"
    if not records:
        return False, "no TXT record (NODATA)"
    problems = []
    for record in records:
        tags = _record_tags(record)
        if tags.get("v", "DKIM1") != "DKIM1":
            problems.append("v= is not DKIM1")
        elif tags.get("k", "rsa") != kind:
            problems.append(f"k={clip(tags.get('k', 'rsa'))}, but the key is {kind}")
        elif not tags.get("p"):
            problems.append("p= is empty (revoked) or missing")
        elif tags["p"] != want:
            problems.append("p= is another public key than this private key's")
        else:
            testing = " (t=y: verifiers treat the domain as testing)" if "y" in \
                tags.get("t", "").split(":") else ""
            return True, f"the published key matches the private key{testing}"
    return False, "; ".join(problems)


async def check_published(settings: signing.SigningSettings, keys: Mapping[str, PrivateKey],
                          resolver: Resolver) -> list[KeyCheck]:
    """One ``KeyCheck`` per configured key, the DNS queries made concurrently."""
    async def one(key: signing.SigningKey) -> KeyCheck:
        name = f"{key.selector}._domainkey.{key.domain}"
        answer = await resolver.query(name, "TXT")
        if answer.rcode != "NOERROR":
            return KeyCheck(False, key, name, f"DNS answered {answer.rcode}")
        ok, reason = compare_record(key, keys[key.name], answer.records)
        return KeyCheck(ok, key, name, reason)
    return list(await asyncio.gather(*(one(k) for k in settings.keys)))


# -- the daemon ------------------------------------------------------------------------------


def load_keys(settings: signing.SigningSettings) -> dict[str, PrivateKey]:
    """Every configured private key by ``domain:selector`` (``DkimKeyError`` on a bad one)."""
    return {key.name: private for key, private in settings.load_keys()}


def bind(settings: MilterSettings) -> list[socket.socket]:
    """The listening sockets of ``[milter] listen``; on any failure none stays open."""
    bound: list[socket.socket] = []
    try:
        for e in settings.listen:
            bound.append(bind_unix(e.path, settings.socket_mode, settings.socket_owner,
                                   settings.socket_group) if e.kind == "unix"
                         else bind_tcp(e.host, e.port))
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


async def open_store(settings: Settings) -> EvaluationStore | None:
    """The evaluation store, or None when nothing is recorded or it cannot be opened."""
    if not (settings.dmarc.enabled and settings.dmarc.record and settings.milter.verifies):
        return None
    from postwarden.milter.reports import open_evaluation_store

    url = settings.milter.store or settings.store.url
    try:
        return await open_evaluation_store(url)
    except (PostwardenError, OSError) as exc:
        log.error("milter: evaluation store %s cannot be opened, evaluations are not "
                  "recorded: %s", StoreSettings(url).shown, clip(str(exc), 200))
        return None


async def serve(settings: Settings, keys: Mapping[str, PrivateKey],
                sockets: Sequence[socket.socket], metrics: socket.socket | None) -> None:
    """Serve until SIGTERM or SIGINT."""
    from postwarden.dns import DnsResolver
    from postwarden.prefork import worker

    m = settings.milter
    resolver = DnsResolver(nameserver=m.nameserver or None, timeout=m.verify_budget)
    engine = Engine(settings, resolver, keys, await open_store(settings),
                    MilterCounters(worker=worker() or 0))
    # MilterHandler continues at every step before end of message: the MTA need not wait
    options = MilterOptions(failsafe=Verdict.ACCEPT if m.on_error == "accept"
                            else Verdict.TEMPFAIL, no_reply=SMFIP_NR_FLAGS,
                            skip=SMFIP_NODATA | SMFIP_NOUNKNOWN)  # steps it has no use for
    server = MilterServer(lambda: MilterHandler(engine), sockets, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    scrape = await start_metrics(metrics, engine.counters) if metrics is not None else None
    try:
        await server.start()
        log.info("milter: listening on %s mode=%s authserv_id=%s keys=%d%s",
                 " ".join(str(e) for e in m.listen), m.mode, engine.authserv_id, len(keys),
                 " dry_run=yes" if m.dry_run else "")
        await stop.wait()
    finally:
        # XXX: messages in flight are cut off and get Postfix's milter_default_action;
        # a grace period needs MilterServer to stop accepting before it cancels.
        await server.close()
        if scrape is not None:
            scrape.close()
        if engine.store is not None:
            await engine.store.close()
        log.info("milter: stopped")


def preload(settings: Settings, names: Sequence[str]) -> None:
    """Import now what serving imports on first use (see the XXX in policy/server.py:
    after the privilege drop Python may no longer read its own library)."""
    import importlib

    import dns.asyncbackend
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    for name in names:
        codecs.lookup(name)
    for rdtype in ("TXT", "A", "AAAA", "MX", "PTR", "CNAME"):
        dns.rdata.get_rdata_class(  # type: ignore[no-untyped-call]
            dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
    dns.asyncbackend.get_backend("asyncio")
    for module in ("postwarden.dns", "postwarden.prefork", "postwarden.milter.reports",
                   "postwarden.milter.report_store", "concurrent.futures.thread"):
        importlib.import_module(module)
    if settings.dmarc.enabled and settings.dmarc.psl_fallback:
        dmarc.psl()     # parsed once, before the fork: every worker shares it
    if (settings.milter.store or settings.store.url).startswith(("redis", "unix")):
        for module in ("redis.asyncio", "redis.asyncio.retry", "redis.backoff",
                       "redis.exceptions", "postwarden.policy.store.redis"):
            importlib.import_module(module)


def run(settings: Settings, metrics: tuple[str, int] | None = None) -> int:
    """Load keys, bind, drop privileges, serve in ``workers`` processes."""
    from postwarden import prefork
    from postwarden.policy import privileges
    from postwarden.policy.server import PRELOAD_CODECS

    m = settings.milter
    if os.geteuid() == 0 and m.user is None:   # refused before any socket is bound
        privileges.drop_privileges(None, None, section="milter")
    preload(settings, PRELOAD_CODECS)
    keys = load_keys(settings.dkim) if m.signs else {}   # as root: keys may be root's 0600
    sockets = bind(m)
    opened = list(sockets)
    try:
        if metrics is not None:
            opened.append(bind_tcp(*metrics))
        account = privileges.drop_privileges(m.user, m.group, section="milter")
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    if account is not None:
        log.info("milter: running as %s (uid %d, gid %d)", account.user, account.uid,
                 account.gid)
    metrics_socket = opened[-1] if metrics is not None else None

    def child() -> int:
        asyncio.run(serve(settings, keys, sockets, metrics_socket))
        return 0
    return prefork.run(m.workers, child, name="milter")


def summary(settings: Settings) -> str:
    """One line on what the milter will do, for ``milter --check-config``."""
    m, d = settings.milter, settings.dmarc
    parts = [f"listen {' '.join(str(e) for e in m.listen)}", f"mode {m.mode}",
             f"authserv-id {m.authserv}", f"workers {m.workers}",
             f"keys {len(settings.dkim.keys)}", f"on_error {m.on_error}"]
    if d.enabled:
        parts.append(f"dmarc on (p=reject: {d.on_reject}, p=quarantine: {d.on_quarantine}, "
                     f"record {'on' if d.record else 'off'})")
    else:
        parts.append("dmarc off")
    if m.dry_run:
        parts.append("dry-run")
    return "; ".join(parts)
