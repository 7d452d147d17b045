"""The [milter] section: defaults, every key, one-line errors naming the file and key."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from postwarden import settings as config
from postwarden.errors import ConfigError
from postwarden.milter.milter_settings import DEFAULT_SOCKET, MilterSettings
from postwarden.settings import Endpoint

FULL = """
[milter]
listen = ["unix:/var/spool/postfix/postwarden/milter", "tcp:127.0.0.1:8891"]
socket_mode = "0660"
socket_owner = "root"
socket_group = "postfix"
user = "postwarden"
group = "postwarden"
workers = 4
authserv_id = "mx.example.org"
on_error = "accept"
mode = "verify"
dry_run = true
store = "sqlite:///var/lib/postwarden/dmarc.db"
verify_budget = "20s"
nameserver = "127.0.0.1:5353"
max_message_size = 10485760
spf_source = "evaluate"
"""


def parse(text: str) -> config.Settings:
    return config.parse(tomllib.loads(text), Path("/etc/postwarden/postwarden.toml"))


def test_every_key() -> None:
    m = parse(FULL).milter
    assert m == MilterSettings(
        listen=(Endpoint("unix", path=DEFAULT_SOCKET), Endpoint("tcp", host="127.0.0.1",
                                                                port=8891)),
        socket_mode=0o660, socket_owner="root", socket_group="postfix", user="postwarden",
        group="postwarden", workers=4, authserv_id="mx.example.org", on_error="accept",
        mode="verify", dry_run=True, store="sqlite:///var/lib/postwarden/dmarc.db",
        verify_budget=20.0, nameserver="127.0.0.1:5353", max_message_size=10485760,
        spf_source="evaluate")
    assert m.verifies and not m.signs and m.authserv == "mx.example.org"


def test_defaults() -> None:
    m = parse("").milter
    assert m.listen == (Endpoint("unix", path="/var/spool/postfix/postwarden/milter"),)
    assert (m.mode, m.on_error, m.workers, m.dry_run, m.socket_mode) == (
        "sign+verify", "tempfail", 1, False, 0o660)
    assert m.signs and m.verifies
    assert m.authserv == socket.gethostname()
    assert MilterSettings.from_toml({}, "/x.toml") == m


@pytest.mark.parametrize(("text", "expected"), [
    ("[milter]\nlisten = []", "milter.listen: needs at least one endpoint"),
    ('[milter]\nlisten = ["udp:1"]', "milter.listen: 'udp:1': expected unix:PATH"),
    ("[milter]\nworkers = 0", "milter.workers: 0 is out of range (1 to 64)"),
    ('[milter]\nworkers = "2"', "milter.workers: expected an integer, got str"),
    ('[milter]\nmode = "sign-only"', "milter.mode: 'sign-only': expected one of"),
    ('[milter]\non_error = "reject"', "milter.on_error: 'reject': expected one of accept"),
    ('[milter]\nauthserv_id = "mx example"', "milter.authserv_id: 'mx example' is not a host"),
    ('[milter]\nstore = "mysql://x"', "milter.store: unknown scheme 'mysql'"),
    ('[milter]\nnameserver = "dns.example"', "milter.nameserver: 'dns.example': expected an IP"),
    ('[milter]\nverify_budget = "0s"', "milter.verify_budget: '0s' is below the minimum"),
    ("[milter]\nmax_message_size = 10", "milter.max_message_size: 10 is out of range"),
    ('[milter]\nuser = "a b"', "milter.user: 'a b' is not a user or group name"),
    ('[milter]\nsocket_mode = "0999"', "milter.socket_mode: expected a permission mode"),
    ("[milter]\ndry_run = 1", "milter.dry_run: expected true or false, got int"),
    ("[milter]\nlisten_on = []", "milter.listen_on: unknown key"),
    ('[milter]\nspf_source = "header"', "milter.spf_source: 'header': expected one of auto"),
    ("milter = 3", "milter: expected a table"),
])
def test_errors_name_file_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith("/etc/postwarden/postwarden.toml: "), message
    assert expected in message, message


def test_dmarc_section_is_read_strictly() -> None:
    assert parse('[dmarc]\non_reject = "report"').dmarc.on_reject == "report"
    with pytest.raises(Exception, match="dmarc"):
        parse("[dmarc]\nno_such_key = 1")
