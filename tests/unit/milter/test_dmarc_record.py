"""DMARC records (RFC 9989 4.7/4.8), the tree walk's names and org-domain selection, and
the [dmarc] settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from postwarden.errors import ConfigError
from postwarden.milter.dmarc import (
    DmarcPolicyRecord,
    DmarcSettings,
    is_dmarc,
    organizational_domain,
    parse_record,
    psl,
    walk_names,
)


def record(text: str) -> DmarcPolicyRecord:
    parsed = parse_record(text)
    assert parsed is not None
    return parsed


def test_full_record() -> None:
    r = record("v=DMARC1; p=reject; sp=quarantine; np=reject; adkim=s; aspf=s; t=y; psd=n; "
               "rua=mailto:a@example.com,mailto:b@example.net!10m; ruf=mailto:f@example.com;"
               " fo=1:d:s")
    assert (r.p, r.sp, r.np, r.adkim, r.aspf, r.t, r.psd) == (
        "reject", "quarantine", "reject", "s", "s", True, "n")
    assert r.rua == ("mailto:a@example.com", "mailto:b@example.net")  # !size dropped
    assert r.ruf == ("mailto:f@example.com",)
    assert r.fo == "1:d:s"
    assert r.usable and r.problems == ()
    assert r.raw.startswith("v=DMARC1; p=reject")


def test_defaults() -> None:
    r = record("v=DMARC1")
    assert (r.p, r.sp, r.np, r.adkim, r.aspf, r.t, r.psd, r.pct, r.fo) == (
        "none", "", "", "r", "r", False, "u", None, "0")
    assert r.usable


@pytest.mark.parametrize("text", [
    "p=reject; v=DMARC1",          # v not first
    "v=dmarc1; p=reject",          # value is case sensitive
    "v=DMARC2; p=reject",
    "v=spf1 -all",
    "",
    "DMARC1",
    "vv=DMARC1; p=reject",
])
def test_not_dmarc(text: str) -> None:
    assert parse_record(text) is None
    assert not is_dmarc(text)


def test_whitespace_and_case_tolerated() -> None:
    r = record("  V = DMARC1 ;P=Reject;  SP = none ;ADKIM=S;")
    assert (r.p, r.sp, r.adkim) == ("reject", "none", "s")


def test_unknown_and_historic_tags_ignored_pct_kept() -> None:
    r = record("v=DMARC1; p=quarantine; rf=afrf; ri=3600; foo=bar; pct=20")
    assert r.p == "quarantine" and r.pct == 20
    assert r.problems == ()


@pytest.mark.parametrize(("text", "field", "value"), [
    ("v=DMARC1; p=reject; adkim=x", "adkim", "r"),
    ("v=DMARC1; p=reject; aspf=strict", "aspf", "r"),
    ("v=DMARC1; p=reject; t=yes", "t", False),
    ("v=DMARC1; p=reject; psd=maybe", "psd", "u"),
    ("v=DMARC1; p=reject; pct=101", "pct", None),
    ("v=DMARC1; p=reject; pct=-1", "pct", None),
    ("v=DMARC1; p=reject; fo=0:1", "fo", "0"),
    ("v=DMARC1; p=reject; fo=x", "fo", "0"),
])
def test_bad_tag_falls_back_to_default(text: str, field: str, value: object) -> None:
    r = record(text)
    assert getattr(r, field) == value
    assert r.p == "reject" and r.usable
    assert r.problems   # the reason is kept


def test_bad_policy_with_rua_acts_as_none() -> None:
    r = record("v=DMARC1; p=bogus; sp=reject; rua=mailto:d@example.com")
    assert r.usable and (r.p, r.sp, r.np) == ("none", "", "")
    assert any("p=none" in p for p in r.problems)


@pytest.mark.parametrize("text", [
    "v=DMARC1; p=bogus",
    "v=DMARC1; p=reject; sp=maybe",
    "v=DMARC1; p=reject; np=all; rua=not a uri",
])
def test_bad_policy_without_rua_is_unusable(text: str) -> None:
    r = record(text)
    assert not r.usable
    assert any("no DMARC processing" in p for p in r.problems)


def test_repeated_and_malformed_tags() -> None:
    r = record("v=DMARC1; p=reject; p=none; garbage; 9x=1")
    assert r.p == "reject"
    assert len(r.problems) == 3


def test_huge_record_is_bounded() -> None:
    r = record("v=DMARC1; p=reject; rua=" + ",".join(["mailto:a@example.com"] * 5000))
    assert len(r.raw) <= 2048


# -- the tree walk (RFC 9989 4.10) ---------------------------------------------------------

def test_walk_names_rfc_example() -> None:
    # RFC 9989 4.10: the eight queries for a.b.c.d.e.f.g.h.i.j.mail.example.com
    assert walk_names("a.b.c.d.e.f.g.h.i.j.mail.example.com") == (
        "a.b.c.d.e.f.g.h.i.j.mail.example.com", "g.h.i.j.mail.example.com",
        "h.i.j.mail.example.com", "i.j.mail.example.com", "j.mail.example.com",
        "mail.example.com", "example.com", "com")


@pytest.mark.parametrize(("start", "count"), [
    ("com", 1), ("example.com", 2), ("a.mail.example.com", 4),
    ("1.2.3.4.5.6.example.com", 8), ("1.2.3.4.5.6.7.example.com", 8),
    (".".join(["x"] * 40) + ".example.com", 8),
])
def test_walk_is_bounded(start: str, count: int) -> None:
    names = walk_names(start)
    assert len(names) == count <= 8
    assert names[0] == start and names[-1] == start.split(".")[-1]


U = record("v=DMARC1; p=none")
N = record("v=DMARC1; p=none; psd=n")
Y = record("v=DMARC1; p=none; psd=y")


def test_org_domain_rfc_examples() -> None:
    # RFC 9989 4.10.2: records at mail.example.com and example.com -> example.com
    assert organizational_domain("a.mail.example.com",
                                 [("mail.example.com", U), ("example.com", U)]) == "example.com"
    # psd=n at mail.example.com -> mail.example.com
    assert organizational_domain("a.mail.example.com",
                                 [("mail.example.com", N)]) == "mail.example.com"
    # only _dmarc.com with psd=y -> example.com
    assert organizational_domain("a.mail.example.com", [("com", Y)]) == "example.com"


def test_org_domain_edge_cases() -> None:
    assert organizational_domain("example.com", []) is None
    # psd=y at the start itself: rule 2 excludes it, the start is its own org domain
    assert organizational_domain("example", [("example", Y)]) == "example"
    # a record only at the start: the start is the org domain
    assert organizational_domain("mail.example.com",
                                 [("mail.example.com", U)]) == "mail.example.com"


def test_psl_is_loaded_once() -> None:
    assert psl() is psl()
    assert psl().privatesuffix("a.b.example.co.uk") == "example.co.uk"


# -- settings ------------------------------------------------------------------------------

def test_settings_defaults_and_values(tmp_path: Path) -> None:
    assert DmarcSettings.from_toml({}, tmp_path / "p.toml") == DmarcSettings()
    s = DmarcSettings.from_toml({"on_reject": "quarantine", "on_quarantine": "header",
                                 "budget": 2, "psl_fallback": False,
                                 "report_email": "dmarc@example.org",
                                 "report_org_name": "Example"}, "p.toml")
    assert s.budget == 2.0 and isinstance(s.budget, float)
    assert (s.on_reject, s.on_quarantine, s.psl_fallback) == ("quarantine", "header", False)


@pytest.mark.parametrize(("table", "key"), [
    ({"enable": True}, "dmarc.enable"),
    ({"enabled": "yes"}, "dmarc.enabled"),
    ({"enabled": 1}, "dmarc.enabled"),
    ({"budget": True}, "dmarc.budget"),
    ({"budget": "5"}, "dmarc.budget"),
    ({"budget": 0}, "dmarc.budget"),
    ({"budget": 1000}, "dmarc.budget"),
    ({"on_reject": "drop"}, "dmarc.on_reject"),
    ({"on_quarantine": "reject"}, "dmarc.on_quarantine"),
    ({"report_email": "not an address"}, "dmarc.report_email"),
    ({"report_org_name": "a\nb"}, "dmarc.report_org_name"),
])
def test_settings_strict(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        DmarcSettings.from_toml(table, "/etc/postwarden/postwarden.toml")
    assert str(info.value).startswith(f"/etc/postwarden/postwarden.toml: {key}:")


def test_settings_not_a_table() -> None:
    with pytest.raises(ConfigError, match="dmarc: expected a table"):
        DmarcSettings.from_toml([], "x.toml")  # type: ignore[arg-type]
