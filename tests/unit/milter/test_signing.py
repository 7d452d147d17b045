"""The DKIM signing decision: patterns, internal senders, From parsing, config, CLI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from postwarden.cli import main
from postwarden.errors import ConfigError
from postwarden.milter import keys
from postwarden.milter.keys import DkimKeyError
from postwarden.milter.signing import (
    SigningKey,
    SigningSettings,
    decide,
    from_domain,
    normalize_pattern,
)

R = SigningKey("example.org", "r2026", "/k/r.private", "rsa-sha256")
S = SigningKey("example.org", "s2026", "/k/s.private", "ed25519-sha256")
N = SigningKey("example.net", "n1", "/k/n.private")
SUB = SigningKey("a.example.org", "sub1", "/k/sub.private")
ANY = SigningKey("example.com", "any1", "/k/any.private")

SETTINGS = SigningSettings(
    keys=(R, S, N, SUB, ANY),
    domains=(("example.org", ("r2026", "s2026")), (".example.org", ("r2026",)),
             ("*.a.example.org", ("sub1",)), ("lists.example.org", ()),
             ("EXAMPLE.net.", ("example.net:n1",)), ("*", ("any1",))),
)
SASL = {"{auth_authen}": "alice"}


def signed_with(domain: str | None, settings: SigningSettings = SETTINGS) -> tuple[str, ...]:
    decision = decide(settings, from_header_domain=domain, macros=SASL, client_address=None)
    assert decision.sign == bool(decision.keys)
    return tuple(k.selector for k in decision.keys)


@pytest.mark.parametrize(("domain", "selectors"), [
    ("example.org", ("r2026", "s2026")),  # exact, dual RSA + Ed25519
    ("EXAMPLE.ORG.", ("r2026", "s2026")),  # case and trailing dot do not matter
    ("mail.example.org", ("r2026",)),  # .example.org: subdomains
    ("x.y.example.org", ("r2026",)),
    ("a.example.org", ("r2026",)),  # *.a.example.org is subdomains only, not a. itself
    ("b.a.example.org", ("sub1",)),  # the nearest parent wins over .example.org
    ("c.b.a.example.org", ("sub1",)),
    ("lists.example.org", ()),  # exact with no keys beats .example.org: never signed
    ("example.net", ("n1",)),
    ("sub.example.net", ("any1",)),  # example.net is exact only; * catches the rest
    ("notexample.org", ("any1",)),  # a suffix that is not a label boundary is not a match
    ("bücher.example", ("any1",)),  # IDN turned into A-labels, still a domain
])
def test_pattern_specificity(domain: str, selectors: tuple[str, ...]) -> None:
    assert signed_with(domain) == selectors


def test_no_wildcard_no_match() -> None:
    settings = SigningSettings(keys=(R,), domains=(("example.org", ("r2026",)),))
    decision = decide(settings, from_header_domain="example.com", macros=SASL,
                      client_address="127.0.0.1")
    assert not decision.sign and decision.keys == ()
    assert "From domain example.com matches no sign pattern: 'example.org'" in decision.reasons


def test_match_reason_names_pattern_as_written_and_selectors() -> None:
    decision = decide(SETTINGS, from_header_domain="example.org", macros=SASL,
                      client_address=None)
    assert decision.sign and decision.keys == (R, S)
    assert "From domain example.org matches 'example.org' -> selectors r2026, s2026" \
        in decision.reasons
    decision = decide(SETTINGS, from_header_domain="b.a.example.org", macros=SASL,
                      client_address=None)
    assert "From domain b.a.example.org matches '*.a.example.org' -> selectors sub1" \
        in decision.reasons


def test_unaligned_key_is_noted() -> None:
    decision = decide(SETTINGS, from_header_domain="other.example", macros=SASL,
                      client_address=None)
    assert decision.sign
    assert any("not aligned" in r and "d=example.com" in r for r in decision.reasons)


@pytest.mark.parametrize(("client", "macros", "why"), [
    ("127.0.0.1", {}, "in internal_networks (127.0.0.0/8)"),  # default: loopback
    ("::1", {}, "in internal_networks (::1/128)"),
    ("::ffff:127.0.0.5", {}, "in internal_networks (127.0.0.0/8)"),  # IPv4-mapped
    ("[IPv6:::1]", {}, "in internal_networks (::1/128)"),
    ("192.0.2.7", {"{auth_authen}": "alice"}, "SASL login 'alice'"),
    ("192.0.2.7", {"auth_authen": "bob"}, "SASL login 'bob'"),  # braces optional
    ("192.0.2.7", {"{daemon_name}": "ORIGINATING"}, "daemon_name is 'ORIGINATING'"),
    (None, {"daemon_name": "ORIGINATING"}, "daemon_name is 'ORIGINATING'"),
])
def test_internal(client: str | None, macros: dict[str, str], why: str) -> None:
    decision = decide(SETTINGS, from_header_domain="example.org", macros=macros,
                      client_address=client)
    assert decision.sign, decision.reasons
    assert "is internal: " in decision.reasons[0] and why in decision.reasons[0]


def test_not_internal_explains_every_check() -> None:
    decision = decide(SETTINGS, from_header_domain="example.org",
                      macros={"{daemon_name}": "smtpd", "{auth_authen}": ""},
                      client_address="192.0.2.7")
    assert not decision.sign and decision.keys == ()
    assert decision.reasons[0] == (
        "client 192.0.2.7 is not internal: not in internal_networks, no SASL login "
        "({auth_authen} empty), daemon_name is 'smtpd' not ORIGINATING")
    # the pattern is still reported, so the user sees that only the sender was wrong
    assert "From domain example.org matches 'example.org' -> selectors r2026, s2026" \
        in decision.reasons


def test_internal_networks_replace_the_default() -> None:
    settings = SigningSettings(keys=(R,), domains=(("example.org", ("r2026",)),),
                               internal_networks=("192.0.2.0/24",))
    assert decide(settings, from_header_domain="example.org", macros={},
                  client_address="192.0.2.200").sign
    assert not decide(settings, from_header_domain="example.org", macros={},
                      client_address="127.0.0.1").sign


def test_daemon_names_configurable() -> None:
    settings = SigningSettings(keys=(R,), domains=(("example.org", ("r2026",)),),
                               daemon_names=("submission",))
    assert decide(settings, from_header_domain="example.org",
                  macros={"{daemon_name}": "submission"}, client_address="192.0.2.1").sign
    assert not decide(settings, from_header_domain="example.org",
                      macros={"{daemon_name}": "ORIGINATING"}, client_address="192.0.2.1").sign


@pytest.mark.parametrize("domain", [None, "", "  ", "[192.0.2.1]", "not a domain",
                                    "a..b", "-x.example", "x" * 300, "\udcff.example",
                                    "example.org\x00"])
def test_no_or_bad_from_domain_never_signs_never_raises(domain: str | None) -> None:
    decision = decide(SETTINGS, from_header_domain=domain, macros=SASL,
                      client_address="127.0.0.1")
    assert not decision.sign and decision.keys == ()
    assert any("not signed" in r for r in decision.reasons)


@pytest.mark.parametrize("client", ["", "unknown", "999.1.1.1", "fe80::1%eth0", "[", "\x00"])
def test_odd_client_addresses(client: str) -> None:
    decision = decide(SETTINGS, from_header_domain="example.org", macros={},
                      client_address=client)
    assert decision.reasons[0].startswith("client")


def test_from_domain() -> None:
    assert from_domain([]) == (None, "no From header field")
    assert from_domain(["Alice <alice@Mail.Example.ORG>"])[0] == "mail.example.org"
    assert from_domain(['"Doe, J" <j@example.org>, k@example.net'])[0] == "example.org"
    domain, why = from_domain(["a@example.org", "b@example.net"])
    assert domain == "example.org" and "of 2 From fields" in why
    for bad in ("garbage", "<>", "alice@", "@example.org", "a@[192.0.2.1]", "a@b@", ""):
        assert from_domain([bad])[0] is None, bad


def test_normalize_pattern() -> None:
    assert normalize_pattern("*.Example.org") == ".example.org"
    assert normalize_pattern(".example.org.") == ".example.org"
    assert normalize_pattern(" * ") == "*"
    for bad in ("*example.org", "ex ample.org", "..example.org", "a.*.example.org", ""):
        with pytest.raises(ValueError):
            normalize_pattern(bad)


# -- configuration ------------------------------------------------------------------

CONFIG = """
[dkim]
internal_networks = ["192.0.2.0/24", "2001:db8::/32"]

[[dkim.key]]
domain = "example.org"
selector = "r2026"
key_file = "keys/r2026.private"
algorithm = "rsa-sha256"

[[dkim.key]]
domain = "example.org"
selector = "s2026"
key_file = "/etc/postwarden/s2026.private"
algorithm = "ed25519-sha256"

[dkim.sign]
"example.org" = ["r2026", "s2026"]
".example.org" = ["example.org:r2026"]
"""


def load(text: str, path: Path = Path("/etc/postwarden/postwarden.toml")) -> SigningSettings:
    data: dict[str, Any] = tomllib.loads(text)
    return SigningSettings.from_toml(data.get("dkim", {}), path)


def test_from_toml() -> None:
    settings = load(CONFIG)
    assert settings.keys[0] == SigningKey("example.org", "r2026",
                                          "/etc/postwarden/keys/r2026.private", "rsa-sha256")
    assert settings.keys[1].algorithm == "ed25519-sha256"
    assert settings.keys[1].key_file == "/etc/postwarden/s2026.private"
    assert settings.internal_networks == ("192.0.2.0/24", "2001:db8::/32")
    assert settings.daemon_names == ("ORIGINATING",)
    assert signed_with("example.org", settings) == ("r2026", "s2026")
    assert signed_with("x.example.org", settings) == ("r2026",)
    assert load("").keys == () and load("[dkim]\n").domains == ()


def test_algorithm_defaults_to_rsa() -> None:
    settings = load('[[dkim.key]]\ndomain = "e.org"\nselector = "s"\nkey_file = "/k"\n')
    assert settings.keys[0].algorithm == "rsa-sha256"


@pytest.mark.parametrize(("text", "where", "reason"), [
    (CONFIG.replace('"example.org" = ["r2026", "s2026"]', '"example.org" = ["r2026", "t9"]'),
     'dkim.sign."example.org"', "'t9' names no [[dkim.key]]"),
    (CONFIG.replace('"example.org:r2026"', '"example.net:r2026"'),
     'dkim.sign.".example.org"', "names no [[dkim.key]]"),
    (CONFIG.replace("internal_networks", "internal_network"), "dkim.internal_network",
     "unknown key"),
    (CONFIG.replace('algorithm = "rsa-sha256"', 'algoritm = "rsa-sha256"'),
     "dkim.key[0].algoritm", "unknown key"),
    (CONFIG.replace('algorithm = "rsa-sha256"', 'algorithm = "rsa-sha1"'),
     "dkim.key[0].algorithm", "'rsa-sha1': expected one of rsa-sha256, ed25519-sha256"),
    (CONFIG.replace('selector = "s2026"', 'selector = "bad selector"'),
     "dkim.key[1].selector", "not a selector"),
    (CONFIG.replace('domain = "example.org"\nselector = "s2026"', 'selector = "s2026"'),
     "dkim.key[1].domain", "missing"),
    (CONFIG.replace('key_file = "keys/r2026.private"', "key_file = 5"),
     "dkim.key[0].key_file", "expected a string, got int"),
    (CONFIG.replace('"192.0.2.0/24"', '"192.0.2/24"'), "dkim.internal_networks",
     "'192.0.2/24' is not an address or network"),
    (CONFIG.replace('"192.0.2.0/24", ', "5, "), "dkim.internal_networks",
     "expected a list of strings"),
    (CONFIG.replace('".example.org"', '"*.example.org" = ["r2026"]\n".example.org"'),
     "dkim.sign", "given twice"),
    (CONFIG.replace('".example.org" =', '"ex*ample.org" ='), "dkim.sign", "is not a domain"),
    (CONFIG.replace('["r2026", "s2026"]', '"r2026"'), 'dkim.sign."example.org"',
     "expected a list of strings"),
    (CONFIG.replace('["r2026", "s2026"]', '["r2026", "r2026"]'), 'dkim.sign."example.org"',
     "named twice"),
    (CONFIG.replace('selector = "s2026"', 'selector = "r2026"'), "dkim.key",
     "example.org:r2026 is configured twice"),
    (CONFIG + '[[dkim.key]]\ndomain = "example.net"\nselector = "r2026"\nkey_file = "/k"\n',
     'dkim.sign."example.org"', "'r2026' is the selector of several keys"),
    ("[dkim]\nkey = 3\n", "dkim.key", "expected an array of tables"),
    ("[dkim]\nsign = 3\n", "dkim.sign", "expected a table"),
])
def test_config_errors_name_file_and_key(text: str, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text, Path("/etc/pw.toml"))
    message = str(info.value)
    assert message.startswith(f"/etc/pw.toml: {where}: "), message
    assert reason in message, message


def test_load_keys_checks_algorithm(tmp_path: Path) -> None:
    keys.write_private(tmp_path / "r.private", keys.generate("rsa"))
    keys.write_private(tmp_path / "s.private", keys.generate("ed25519"))
    good = SigningSettings(keys=(
        SigningKey("example.org", "r", str(tmp_path / "r.private"), "rsa-sha256"),
        SigningKey("example.org", "s", str(tmp_path / "s.private"), "ed25519-sha256")))
    loaded = good.load_keys()
    assert [keys.kind_of(k) for _, k in loaded] == ["rsa", "ed25519"]
    wrong = SigningKey("example.org", "s", str(tmp_path / "s.private"), "rsa-sha256")
    with pytest.raises(DkimKeyError) as info:
        wrong.load()
    assert str(info.value).endswith("key type ed25519, but example.org:s is configured as "
                                    "rsa-sha256")


# -- postwarden dkim explain -------------------------------------------------------------

MESSAGE = b"From: Alice <alice@mail.example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nx\r\n"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "postwarden.toml"
    config.write_text('[policyd]\nanything = "ignored"\n' + CONFIG, encoding="utf-8")
    message = tmp_path / "m.eml"
    message.write_bytes(MESSAGE)
    return config, message


def test_explain_sign(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, message = files
    code = main(["dkim", "explain", str(message), "--config", str(config),
                 "--client", "198.51.100.1", "--macro", "{auth_authen}=alice"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines == [
        "sign",
        "From address 'alice@mail.example.org': domain mail.example.org",
        "client 198.51.100.1 is internal: SASL login 'alice' ({auth_authen})",
        "From domain mail.example.org matches '.example.org' -> selectors r2026",
        "signing with d=example.org s=r2026 a=rsa-sha256",
    ]


def test_explain_not_signed(files: tuple[Path, Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    config, message = files
    code = main(["dkim", "explain", str(message), "--config", str(config),
                 "--client", "198.51.100.1", "--macro", "daemon_name=smtpd"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0] == "not signed"
    assert ("client 198.51.100.1 is not internal: not in internal_networks, no SASL login "
            "({auth_authen} empty), daemon_name is 'smtpd' not ORIGINATING") in lines


def test_explain_bad_input(files: tuple[Path, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    config, message = files
    assert main(["dkim", "explain", str(message), "--config", str(tmp_path / "no")]) == 2
    assert main(["dkim", "explain", str(message), "--config", str(config),
                 "--macro", "novalue"]) == 2
    broken = tmp_path / "broken.toml"
    broken.write_text(CONFIG.replace('"s2026"]', '"zz"]'), encoding="utf-8")
    assert main(["dkim", "explain", str(message), "--config", str(broken)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert err[2] == (f"postwarden: {broken}: dkim.sign.\"example.org\": 'zz' names no "
                      "[[dkim.key]] (by selector, or DOMAIN:SELECTOR)")


def test_explain_stdin_subprocess(files: tuple[Path, Path]) -> None:
    config, _ = files
    run = subprocess.run(
        [sys.executable, "-m", "postwarden", "dkim", "explain", "-", "--config", str(config),
         "--client", "192.0.2.50"],
        input=b"Subject: no from\r\n\r\nbody\r\n", capture_output=True, check=False,
        timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().splitlines() == [
        "not signed",
        "no From header field",
        "client 192.0.2.50 is internal: in internal_networks (192.0.2.0/24)",
        "no From header domain: not signed",
    ]


def test_explain_malformed_from(files: tuple[Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = files
    message = tmp_path / "bad.eml"
    message.write_bytes(b"From: =?x?q?garbage \xff\xfe <<<\r\n\r\nbody\r\n")
    assert main(["dkim", "explain", str(message), "--config", str(config),
                 "--client", "::1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "not signed"
    assert "no From header domain: not signed" in lines
