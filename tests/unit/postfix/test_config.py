"""The effective configuration: per-service view, used names, host-dependent defaults."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from postwarden.errors import ConfigError, PostwardenError
from postwarden.postfix import defaults
from postwarden.postfix.check import check
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.host import HostFacts, Interface, mynetworks, select_interfaces

FACTS = HostFacts("mx1", (
    Interface(ipaddress.ip_address("127.0.0.1"), 8, True),
    Interface(ipaddress.ip_address("198.51.100.7"), 24, False),
    Interface(ipaddress.ip_address("172.20.1.5"), 16, False),
    Interface(ipaddress.ip_address("::1"), 128, True),
    Interface(ipaddress.ip_address("2001:db8:1::25"), 64, False),
))

MAIN = """\
compatibility_level = 3.6
myhostname = mx.example.org
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
mua_client_restrictions = permit_sasl_authenticated, reject
unused_thing = 1
smtpd_tls_securty_level = may
policyd-spf_time_limit = 3600s
"""

MASTER = """\
smtp      inet  n       -       y       -       -       smtpd
submission inet n       -       y       -       -       smtpd
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
  -o smtpd_client_restrictions=$mua_client_restrictions
  -o syslog_name=postfix/$service_name
relay     unix  -       -       y       -       -       smtp
"""


@pytest.fixture()
def config(tmp_path: Path) -> PostfixConfig:
    (tmp_path / "main.cf").write_text(MAIN)
    (tmp_path / "master.cf").write_text(MASTER)
    return PostfixConfig.load(tmp_path, table=defaults.shipped("3.7.11"), facts=FACTS)


def test_submission_sees_its_overrides(config: PostfixConfig) -> None:
    submission = config.service("submission")
    smtp = config.service("smtp")
    assert submission is not None and smtp is not None
    assert config.value("smtpd_recipient_restrictions", service=submission) == (
        "permit_sasl_authenticated,reject")
    assert config.value("smtpd_recipient_restrictions", service=smtp) == (
        "permit_mynetworks, reject_unauth_destination")
    assert config.value("smtpd_client_restrictions", service=submission) == (
        "permit_sasl_authenticated, reject")
    assert config.value("syslog_name", service=submission) == "postfix/submission"
    assert config.value("syslog_name", service=smtp) == "postfix"


def test_defaults_and_compatibility_level(config: PostfixConfig) -> None:
    assert config.value("smtpd_relay_restrictions") == (
        "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination")
    assert config.value("mynetworks_style") == "host"
    assert config.value("mydomain") == "example.org"
    assert config.value("mydestination") == "mx.example.org, localhost.example.org, localhost"
    assert config.value("mynetworks") == (
        "127.0.0.1/32 198.51.100.7/32 172.20.1.5/32 [::1]/128 [2001:db8:1::25]/128")
    assert config.value("relay_destination_concurrency_limit") == "20"


def test_used_and_unused_names(config: PostfixConfig) -> None:
    assert config.known("mua_client_restrictions")  # referenced from master.cf
    assert not config.known("unused_thing")
    assert not config.known("policyd-spf_time_limit")  # no policyd-spf service
    assert config.known("relay_time_limit") is False  # smtp transports have no _time_limit
    assert config.known("relay_destination_concurrency_limit")
    unused = {w.message.split(": ", 1)[1].split("=")[0] for w in config.unused()}
    assert unused == {"unused_thing", "smtpd_tls_securty_level", "policyd-spf_time_limit"}


def test_check_explains_unused_names(config: PostfixConfig) -> None:
    by_param = {f.parameter: f for f in check(config) if f.id == "CFG-UNUSED"}
    assert "smtpd_tls_security_level" in by_param["smtpd_tls_securty_level"].fix
    assert by_param["smtpd_tls_securty_level"].line == 6
    assert "'policyd-spf'" in by_param["policyd-spf_time_limit"].fix
    assert "spawn" in by_param["policyd-spf_time_limit"].fix


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("host", "127.0.0.1/32 198.51.100.7/32 172.20.1.5/32 [::1]/128 [2001:db8:1::25]/128"),
        ("subnet", "127.0.0.0/8 198.51.100.0/24 172.20.0.0/16 [::1]/128 [2001:db8:1::]/64"),
        ("class", "127.0.0.0/8 198.51.100.0/24 172.20.0.0/16 [::1]/128 [2001:db8:1::]/64"),
    ],
)
def test_mynetworks_styles(style: str, expected: str) -> None:
    assert mynetworks(select_interfaces(FACTS, "all", "all"), style) == expected


def test_mynetworks_follows_interfaces_and_protocols() -> None:
    assert mynetworks(select_interfaces(FACTS, "loopback-only", "ipv4"), "host") == (
        "127.0.0.1/32")
    assert mynetworks(select_interfaces(FACTS, "198.51.100.7, ::1", "all"), "subnet") == (
        "198.51.100.0/24 [::1]/128")


def test_hostname_without_dot_gets_mydomain(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("mydomain = corp.example\n")
    (tmp_path / "master.cf").write_text("")
    config = PostfixConfig.load(tmp_path, table=defaults.shipped(), facts=FACTS)
    assert config.value("myhostname") == "mx1.corp.example"


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        PostfixConfig.load(tmp_path / "nope", table=defaults.shipped(), facts=FACTS)
    with pytest.raises(ConfigError, match=r"main\.cf: no such file"):
        PostfixConfig.load(tmp_path, table=defaults.shipped(), facts=FACTS)
    (tmp_path / "main.cf").write_text("a = 1\n")
    config = PostfixConfig.load(tmp_path, table=defaults.shipped(), facts=FACTS)
    assert [w.code for w in config.warnings] == ["missing-master"]


def test_shipped_table_matches_the_installed_postfix() -> None:
    postconf = defaults.find_postconf()
    assert postconf is not None, "the test command installs Postfix; postconf is missing"
    live = defaults.probe(postconf)
    table = defaults.shipped(live.mail_version)
    if table.mail_version == live.mail_version:
        assert table.defaults == live.defaults
        assert table.raw == live.raw
        assert table.legacy == live.legacy
        assert table.service_suffixes == live.service_suffixes
    assert {"smtpd_expansion_filter", "default_rbl_reply"} <= live.raw


@pytest.mark.parametrize(
    ("main", "message"),
    [
        ("inet_interfaces = no-such-host.invalid\n", "host not found: no-such-host.invalid"),
        ("inet_interfaces = 203.0.113.9\n", "no local interface found for 203.0.113.9"),
        ("mynetworks_style = subnet, network\n", 'unknown mynetworks mask style value "network"'),
        ("mynetworks_style = host subnet\n", "specify exactly one value"),
        ("compatibility_level = three\n", "malformed compatibility level"),
    ],
)
def test_host_settings_postfix_cannot_apply(tmp_path: Path, main: str, message: str) -> None:
    (tmp_path / "main.cf").write_text(main)
    (tmp_path / "master.cf").write_text("")
    config = PostfixConfig.load(tmp_path, table=defaults.shipped(), facts=FACTS)
    with pytest.raises(PostwardenError, match=message):
        config.compute_host_defaults()


def test_legacy_table_parameters_count_as_used(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text(
        "alias_maps = proxy:ldap:aliases, { mysql:virt }\n"
        "aliases_server_host = ldap.example.org\nvirt_hosts = db\naliases_bogus = 1\n")
    (tmp_path / "master.cf").write_text("")
    config = PostfixConfig.load(tmp_path, table=defaults.shipped(), facts=FACTS)
    assert config.known("aliases_server_host")
    assert config.known("virt_hosts")
    assert not config.known("aliases_bogus")


def test_value_postconf_cannot_expand_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("a = 1\nsmtpd_banner = ${myhostname\n")
    (tmp_path / "master.cf").write_text("")
    with pytest.raises(ConfigError) as caught:
        PostfixConfig.load(tmp_path, table=defaults.shipped(), facts=FACTS)
    assert caught.value.line == 2
    assert "smtpd_banner: truncated macro reference" in str(caught.value)
