"""postgrey's whitelist file formats."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from postwarden.errors import ConfigError
from postwarden.policy.whitelist import (
    MAX_PATTERN,
    load_clients,
    load_recipients,
    parse_clients,
    parse_recipients,
)

CLIENTS = """\
# a comment
/^smtp\\d+\\.mailer\\.example$/
192.0.2.5
198.51.100.0/25    # trailing comment
203.0.113
10.20
2001:db8:5::/48
example.com

"""


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(("name", "address", "expected"), [
    ("smtp12.mailer.example", "192.0.2.1", True),     # regex, case-insensitive below
    ("SMTP3.Mailer.Example", "192.0.2.1", True),
    ("smtpx.mailer.example", "192.0.2.1", False),
    ("unknown", "192.0.2.5", True),                   # single address
    ("unknown", "192.0.2.6", False),
    ("unknown", "198.51.100.127", True),              # CIDR
    ("unknown", "198.51.100.128", False),
    ("unknown", "203.0.113.250", True),               # a.b.c -> /24
    ("unknown", "10.20.200.1", True),                 # a.b -> /16 (documented, not postgrey's /24)
    ("unknown", "10.21.0.1", False),
    ("unknown", "2001:db8:5:ffff::1", True),          # IPv6 CIDR
    ("mx.example.com", "192.0.2.1", True),            # domain and subdomains
    ("example.com", "192.0.2.1", True),
    ("badexample.com", "192.0.2.1", False),
    ("example.com.evil.test", "192.0.2.1", False),
])
def test_client_entries(name: str, address: str, expected: bool) -> None:
    assert parse_clients(CLIENTS).matches(name, ip(address)) is expected


RECIPIENTS = "postmaster@\nabuse@example.net\nexample.org\n/^list-.*@lists\\./\n"


@pytest.mark.parametrize(("recipient", "expected"), [
    ("postmaster@anything.example", True),
    ("Postmaster+tag@anything.example", True),
    ("postmasterx@anything.example", False),
    ("abuse@example.net", True),
    ("abuse+x@example.net", True),
    ("abuse@example.net.evil", False),
    ("abuse@other.net", False),
    ("anyone@example.org", True),
    ("anyone@sub.example.org", True),
    ("anyone@notexample.org", False),
    ("list-dev@lists.example", True),
])
def test_recipient_entries(recipient: str, expected: bool) -> None:
    assert parse_recipients(RECIPIENTS).matches(recipient) is expected


@pytest.mark.parametrize(("text", "reason"), [
    ("ok.example\n/[unclosed/\n", "line 2: bad regex"),
    ("192.0.2.300\n", "line 1: bad address"),
    ("192.0.2.0/33\n", "line 1: bad address"),
    ("two words\n", "line 1: does not look like"),
    ("/" + "a" * (MAX_PATTERN + 1) + "/\n", "line 1: regex longer"),
])
def test_bad_client_lines_name_file_and_line(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"whitelist_clients, {reason}"):
        parse_clients(text, "whitelist_clients")


def test_bad_recipient_line() -> None:
    with pytest.raises(ConfigError, match="rcpts, line 2: does not look like an address"):
        parse_recipients("ok@\nnot an address\n", "rcpts")


def test_load_skips_missing_local_files(tmp_path: Path) -> None:
    main = tmp_path / "whitelist_clients"
    main.write_text("example.com\n")
    loaded = load_clients([main, tmp_path / "whitelist_clients.local"])
    assert loaded.matches("a.example.com", None)
    with pytest.raises(ConfigError, match="no such file"):
        load_recipients([tmp_path / "whitelist_recipients"])


def test_long_subjects_are_cut() -> None:
    wl = parse_recipients("/x$/\n")
    assert not wl.matches("a" * 600 + "x")
    assert wl.matches("a" * 100 + "x")


def test_debian_postgrey_whitelist_parses() -> None:
    """postgrey's own shipped list loads (when Debian's postgrey package is installed)."""
    shipped = Path("/etc/postgrey/whitelist_clients")
    if not shipped.exists():
        pytest.skip("Debian's postgrey package is not installed")
    wl = load_clients([shipped])
    assert len(wl.patterns) + len(wl.domains) + len(wl.networks) > 100
