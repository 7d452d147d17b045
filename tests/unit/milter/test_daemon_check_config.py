"""``postwarden milter --check-config``: settings, keys, and each key's published record."""

from __future__ import annotations

from pathlib import Path

import pytest

from postwarden.cli import main
from postwarden.lab.dns import DnsServer
from postwarden.milter import keys
from postwarden.milter.service import compare_record
from postwarden.milter.signing import SigningKey

CONFIG = """
[milter]
authserv_id = "mx.example.org"
nameserver = "{nameserver}"
[[dkim.key]]
domain = "example.org"
selector = "r1"
key_file = "r1.private"
[[dkim.key]]
domain = "example.org"
selector = "e1"
key_file = "e1.private"
algorithm = "ed25519-sha256"
[[dkim.key]]
domain = "example.net"
selector = "n1"
key_file = "n1.private"
algorithm = "ed25519-sha256"
[dkim.sign]
"example.org" = ["r1", "e1"]
"example.net" = ["n1"]
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict[str, keys.PrivateKey]]:
    made = {"r1": keys.generate("rsa"), "e1": keys.generate("ed25519"),
            "n1": keys.generate("ed25519")}
    for name, key in made.items():
        keys.write_private(tmp_path / f"{name}.private", key)
    return tmp_path, made


def run(tmp_path: Path, zone: dict[str, dict[str, list[str]]],
        capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with DnsServer(zone) as dns:
        config = tmp_path / "postwarden.toml"
        config.write_text(CONFIG.format(nameserver=dns.address))
        code = main(["milter", "--config", str(config), "--check-config"])
    out = capsys.readouterr().out.splitlines()
    return code, out


def record(key: keys.PrivateKey) -> list[str]:
    return [keys.dns_record(key.public_key())]


def test_all_published_keys_match(setup: tuple[Path, dict[str, keys.PrivateKey]],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    root, made = setup
    zone = {"r1._domainkey.example.org": {"TXT": record(made["r1"])},
            "e1._domainkey.example.org": {"TXT": record(made["e1"])},
            "n1._domainkey.example.net": {"TXT": record(made["n1"])}}
    code, out = run(root, zone, capsys)
    assert code == 0, out
    assert out[0].endswith("mode sign+verify; authserv-id mx.example.org; workers 1; keys 3; "
                           "on_error tempfail; dmarc on (p=reject: reject, p=quarantine: "
                           "quarantine, record on)")
    assert out[1:] == [
        "ok d=example.org s=r1 a=rsa-sha256 r1._domainkey.example.org: the published key "
        "matches the private key",
        "ok d=example.org s=e1 a=ed25519-sha256 e1._domainkey.example.org: the published "
        "key matches the private key",
        "ok d=example.net s=n1 a=ed25519-sha256 n1._domainkey.example.net: the published "
        "key matches the private key"]


def test_mismatch_and_missing_records_fail(setup: tuple[Path, dict[str, keys.PrivateKey]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root, made = setup
    zone = {"r1._domainkey.example.org": {"TXT": record(keys.generate("rsa"))},
            "e1._domainkey.example.org": {"TXT": record(made["e1"])}}
    code, out = run(root, zone, capsys)
    assert code == 1
    assert out[1] == ("fail d=example.org s=r1 a=rsa-sha256 r1._domainkey.example.org: p= is "
                      "another public key than this private key's")
    assert out[2].startswith("ok d=example.org s=e1")
    assert out[3] == ("fail d=example.net s=n1 a=ed25519-sha256 n1._domainkey.example.net: "
                      "DNS answered NXDOMAIN")


def test_record_checks() -> None:
    key = keys.generate("ed25519")
    signing_key = SigningKey("example.org", "e1", "/k", "ed25519-sha256")
    good = keys.dns_record(key.public_key())
    assert compare_record(signing_key, key, [good])[0]
    assert compare_record(signing_key, key, [good + "; t=y"])[1].endswith("(t=y: verifiers "
                                                                         "treat the domain "
                                                                         "as testing)")
    assert compare_record(signing_key, key, []) == (False, "no TXT record (NODATA)")
    assert compare_record(signing_key, key, ["v=DKIM1; k=rsa; p=AAAA"]) == (
        False, "k=rsa, but the key is ed25519")
    assert compare_record(signing_key, key, ["v=DKIM1; k=ed25519; p="]) == (
        False, "p= is empty (revoked) or missing")
    # a record split into strings with blanks inside p= still matches
    spaced = good[:30] + " " + good[30:]
    assert compare_record(signing_key, key, [spaced])[0]


def test_bad_key_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r1.private").write_text("not a key")
    config = tmp_path / "postwarden.toml"
    config.write_text("[[dkim.key]]\ndomain = \"example.org\"\nselector = \"r1\"\n"
                      "key_file = \"r1.private\"\n")
    assert main(["milter", "--config", str(config), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "r1.private: not an unencrypted PEM private key" in err


def test_offline_checks_keys_but_asks_no_dns(setup: tuple[Path, dict[str, keys.PrivateKey]],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = setup
    config = root / "postwarden.toml"
    config.write_text(CONFIG.format(nameserver="127.0.0.1:9"))  # nobody answers there
    assert main(["milter", "--config", str(config), "--check-config", "--offline"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_root_without_a_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    config = tmp_path / "postwarden.toml"
    config.write_text('[milter]\nlisten = ["tcp:127.0.0.1:0"]\n')
    assert main(["milter", "--config", str(config)]) == 2
    assert "set [milter] user" in capsys.readouterr().err


def test_command_line_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "postwarden.toml"
    config.write_text("")
    assert main(["milter", "--config", str(config), "--check-config", "--dry-run",
                 "--nameserver", "127.0.0.1:5353"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("; dry-run")
    assert main(["milter", "--config", str(config), "--check-config", "--nameserver",
                 "dns.example"]) == 2
    assert "--nameserver 'dns.example': not an IP address" in capsys.readouterr().err
