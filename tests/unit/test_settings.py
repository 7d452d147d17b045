"""postwarden.toml: defaults, every key read, and one-line errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from postwarden import settings
from postwarden.errors import ConfigError, UsageError
from postwarden.policy.ratelimit import RateRule
from postwarden.settings import Endpoint, load, parse_duration, parse_endpoint

FULL = """
[policyd]
listen = ["unix:/var/spool/postfix/postwarden/policy", "tcp:127.0.0.1:10023", "tcp:[::1]:10024"]
socket_mode = 0o600
socket_owner = "postfix"
socket_group = "postfix"
user = "postwarden"
group = "postwarden"
budget = "45s"
failsafe_action = "DEFER_IF_PERMIT 4.3.0 Policy service unavailable"
dry_run = true

[store]
url = "redis://:hunter2@10.0.0.5:6380/3"

[greylist]
enabled = true
delay = "1m"
retry_window = "1d"
max_age = "5w"
auto_whitelist_clients = 0
key_by_spf_domain = "skip"
exempt_networks = ["127.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]
whitelist_clients = ["/etc/postgrey/whitelist_clients", "/etc/postwarden/clients.local"]
whitelist_recipients = ["/etc/postgrey/whitelist_recipients"]

[spf]
enabled = true
helo_reject = "spf_not_pass"
mail_from_reject = "Softfail"
permerror_reject = true
temperror_defer = true
header_type = "AR"
authserv_id = "mx.example.org"
lookup_time = 20

[ratelimit]
enabled = true

[[ratelimit.rule]]
name = "sasl-minute"
key = "sasl_username"
limit = 20
window = "1m"
count = "messages"
action = "DEFER 4.7.1 Slow down"

[[ratelimit.rule]]
name = "client-minute"
key = "client_address"
limit = 100
window = 60
algorithm = "sliding_window"
stage = "END-OF-MESSAGE"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postwarden.toml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    return message[len(f"{path}: "):]


def test_every_key(tmp_path: Path) -> None:
    s = load(write(tmp_path, FULL))
    p = s.policyd
    assert p.listen == (Endpoint("unix", path="/var/spool/postfix/postwarden/policy"),
                        Endpoint("tcp", host="127.0.0.1", port=10023),
                        Endpoint("tcp", host="::1", port=10024))
    assert [str(e) for e in p.listen][2] == "tcp:[::1]:10024"
    assert (p.socket_mode, p.socket_owner, p.socket_group) == (0o600, "postfix", "postfix")
    assert (p.user, p.group, p.budget, p.dry_run) == ("postwarden", "postwarden", 45, True)
    assert p.failsafe_action.startswith("DEFER_IF_PERMIT")
    assert s.store.kind == "redis" and s.store.shown == "redis://:***@10.0.0.5:6380/3"
    g = s.greylist
    assert (g.delay, g.retry_window, g.max_age, g.auto_whitelist_clients) == (
        60, 86400, 35 * 86400, 0)
    assert g.key_by_spf_domain == "skip"
    assert "192.0.2.0/24" in g.exempt_networks
    assert g.whitelist_recipients == ("/etc/postgrey/whitelist_recipients",)
    assert (s.spf.helo_reject, s.spf.mail_from_reject, s.spf.header_type) == (
        "SPF_Not_Pass", "Softfail", "AR")
    assert s.spf.permerror_reject and s.spf.temperror_defer
    assert s.ratelimit.rules == (
        RateRule("sasl-minute", "sasl_username", 20, 60, count="messages",
                 action="DEFER 4.7.1 Slow down"),
        RateRule("client-minute", "client_address", 100, 60, algorithm="sliding_window",
                 stage="END-OF-MESSAGE"))
    assert "hunter2" not in s.summary()


def test_defaults_follow_postgrey() -> None:
    s = settings.Settings()
    assert (s.greylist.delay, s.greylist.retry_window, s.greylist.max_age) == (
        300, 2 * 86400, 35 * 86400)
    assert s.greylist.auto_whitelist_clients == 5
    assert [str(n) for n in s.greylist.exempt_networks] == ["127.0.0.0/8", "::1/128"]
    assert s.policyd.failsafe_action == "DUNNO" and s.policyd.socket_mode == 0o660
    assert s.store.url == "sqlite:///var/lib/postwarden/state.db"
    assert (s.spf.helo_reject, s.spf.mail_from_reject, s.spf.lookup_time) == ("Fail", "Fail", 20)


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, "")) == settings.Settings(path=str(tmp_path / "postwarden.toml"))


def test_missing_default_file_means_defaults(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setattr(settings, "DEFAULT_PATH", tmp_path / "absent.toml")
    assert load() == settings.Settings()


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml: no such file"):
        load(tmp_path / "absent.toml")


@pytest.mark.parametrize(("text", "expected"), [
    ("[greylst]\n", "greylst: unknown section"),
    ("[greylist]\ndelai = 5\n", "greylist.delai: unknown key"),
    ("[greylist]\nenabled = 1\n", "greylist.enabled: expected true or false, got int"),
    ("[greylist]\nauto_whitelist_clients = true\n",
     "greylist.auto_whitelist_clients: expected an integer, got bool"),
    ("[greylist]\nauto_whitelist_clients = -1\n",
     "greylist.auto_whitelist_clients: -1 is out of range"),
    ("[greylist]\ndelay = \"5 minutes\"\n", "greylist.delay: '5 minutes' is not a duration"),
    ("[greylist]\ndelay = -5\n", "greylist.delay: -5 is out of range"),
    ("[greylist]\ndelay = \"3d\"\n", "greylist.retry_window: must be longer than delay"),
    ("[greylist]\nmax_age = \"1d\"\n", "greylist.max_age: must be at least retry_window"),
    ("[greylist]\nkey_by_spf_domain = \"yes\"\n",
     "greylist.key_by_spf_domain: 'yes': expected one of domain, skip, off"),
    ("[greylist]\nexempt_networks = [\"10.0.0.0/33\"]\n", "greylist.exempt_networks: "),
    ("[greylist]\nexempt_networks = \"127.0.0.0/8\"\n",
     "greylist.exempt_networks: expected a list of strings, got str"),
    ("[greylist]\nwhitelist_clients = [\"clients.txt\"]\n",
     "greylist.whitelist_clients: 'clients.txt': give an absolute path"),
    ("[policyd]\nlisten = []\n", "policyd.listen: needs at least one endpoint"),
    ("[policyd]\nlisten = [\"tcp:localhost\"]\n", "policyd.listen: 'tcp:localhost': expected"),
    ("[policyd]\nlisten = [\"unix:relative/path\"]\n", "policyd.listen: 'unix:relative/path'"),
    ("[policyd]\nsocket_mode = 0o1777\n", "policyd.socket_mode: expected a permission mode"),
    ("[policyd]\nsocket_mode = \"rw\"\n", "policyd.socket_mode: expected a permission mode"),
    ("[policyd]\nuser = \"a b\"\n", "policyd.user: 'a b' is not a user or group name"),
    ("[policyd]\nbudget = 0\n", "policyd.budget: 0 is below the minimum of 1 s"),
    ("[policyd]\nfailsafe_action = \"MAYBE\"\n",
     "policyd.failsafe_action: 'MAYBE' is not an access(5) action"),
    ("[policyd]\nbudget = 10\n", "spf.lookup_time: 20 s must be below policyd.budget (10 s)"),
    ("[store]\nurl = \"sqlite://state.db\"\n", "store.url: expected sqlite:///ABSOLUTE/PATH"),
    ("[store]\nurl = \"redis://:pw@host:99999/0\"\n", "store.url: expected redis://"),
    ("[store]\nurl = \"redis://host/x\"\n", "store.url: expected redis://HOST[:PORT][/DB]"),
    ("[store]\nurl = \"mysql://db\"\n", "store.url: unknown scheme 'mysql'"),
    ("[spf]\nheader_type = \"XYZ\"\n", "spf.header_type: 'XYZ': expected one of SPF, AR, None"),
    ("[spf]\nhelo_reject = false\n", "spf.helo_reject: expected a string, got bool"),
    ("[spf]\nauthserv_id = \"a b\"\n", "spf.authserv_id: expected a host name"),
    ("[ratelimit]\nrule = 5\n", "ratelimit.rule: expected an array of tables"),
    ("[[ratelimit.rule]]\nname = \"a\"\nwindow = \"1h\"\nlimit = 5\n",
     "ratelimit.rule[0].key: missing"),
    ("[[ratelimit.rule]]\nname = \"a\"\nkey = \"ip\"\nlimit = 1\nwindow = 1\n",
     "ratelimit.rule[0].key: 'ip': expected one of"),
    ("[[ratelimit.rule]]\nname = \"a\"\nkey = \"sender\"\nlimit = 0\nwindow = 1\n",
     "ratelimit.rule[0].limit: 0 is out of range"),
    ("[[ratelimit.rule]]\nname = \"a\"\nkey = \"sender\"\nlimit = 5\nwindow = 0\n",
     "ratelimit.rule[0].window: 0 is below the minimum"),
    ("[[ratelimit.rule]]\nname = \"a\"\nkey = \"sender\"\nlimit = 5\nwindow = 5\n"
     "stage = \"RCPT\"\n", "ratelimit.rule[0]: rate rule 'a': recipients are only known"),
    ("[[ratelimit.rule]]\nname = \"a\"\nkey = \"sender\"\nlimit = 5\nwindow = 5\n"
     "burst = 2\n", "ratelimit.rule[0].burst: unknown key"),
    ("[[ratelimit.rule]]\nname = \"a\"\nkey = \"sender\"\nlimit = 5\nwindow = 5\n"
     "[[ratelimit.rule]]\nname = \"a\"\nkey = \"sender\"\nlimit = 9\nwindow = 5\n",
     "ratelimit.rule: two rules have the same name"),
    ("policyd = 5\n", "policyd: expected a table"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, text).startswith(expected)


def test_syntax_error_has_line_number(tmp_path: Path) -> None:
    assert "line 3" in error(tmp_path, "[greylist]\nenabled = true\ndelay = \n")


def test_password_never_in_an_error(tmp_path: Path) -> None:
    assert "hunter2" not in error(tmp_path, "[store]\nurl = \"redis://:hunter2@h/x\"\n")


@pytest.mark.parametrize(("value", "seconds"), [
    (0, 0), (300, 300), ("300", 300), ("300s", 300), ("5m", 300), ("2h", 7200),
    ("2d", 172800), ("35d", 35 * 86400), ("1w", 604800)])
def test_durations(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5 m", "5min", "1.5h", "-1", True, 1.5, "999w"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_endpoints() -> None:
    assert parse_endpoint("unix:/run/p") == Endpoint("unix", path="/run/p")
    assert parse_endpoint("tcp:[2001:db8::1]:10023") == Endpoint("tcp", host="2001:db8::1",
                                                                 port=10023)
    for bad in ("inet:127.0.0.1:1", "tcp:127.0.0.1:", "tcp::1", "tcp:h:70000", "unix:"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_command_line_overrides() -> None:
    s = settings.override(settings.Settings(), listen=["tcp:127.0.0.1:1"], dry_run=True)
    assert s.policyd.listen == (Endpoint("tcp", host="127.0.0.1", port=1),)
    assert s.policyd.dry_run
    with pytest.raises(UsageError, match="--listen: 'udp:x'"):
        settings.override(s, listen=["udp:x"])


def test_dkim_section_is_the_milters(tmp_path: Path) -> None:
    """[dkim] belongs to the milter's signing decision: accepted here, checked by it."""
    s = load(write(tmp_path, '[dkim]\ninternal_networks = ["192.0.2.0/24"]\n[[dkim.key]]\n'
                             'domain = "example.org"\nselector = "r1"\nkey_file = "k.pem"\n'
                             '[dkim.sign]\n"example.org" = ["r1"]\n'))
    assert [k.name for k in s.dkim.keys] == ["example.org:r1"]
    assert error(tmp_path, "[dkim]\ncolour = 1\n").startswith("dkim.colour: unknown key")
