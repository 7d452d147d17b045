"""main.cf: lossless round trip, Postfix's lexical rules, and edits that touch little."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.errors import ConfigError, PostwardenError
from postwarden.postfix.maincf import EditError, MainCf

GUIDE_LIKE = """\
# Debian-ish header
smtpd_banner = $myhostname ESMTP
smtpd_recipient_restrictions =
    permit_mynetworks,
# a comment inside a continued value
    reject_unauth_destination

\tcheck_policy_service inet:127.0.0.1:10023
mynetworks = 127.0.0.0/8 # trailing
mydomain=example.org
smtpd_milters = unix:/a
smtpd_milters = inet:localhost:8893
"""


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(),
                                                  lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("---", "+++"))]


def test_round_trip_is_byte_identical() -> None:
    for text in (GUIDE_LIKE, GUIDE_LIKE.replace("\n", "\r\n"), "a = b", "", "\n\n# only\n",
                 "x = caf\udce9\n"):
        assert MainCf(text).render() == text


def test_lexical_rules() -> None:
    main = MainCf(GUIDE_LIKE)
    params = main.params()
    # Continuations join without a separator; comment and blank lines do not end a value.
    assert params["smtpd_recipient_restrictions"] == (
        "permit_mynetworks,    reject_unauth_destination\tcheck_policy_service "
        "inet:127.0.0.1:10023")
    # '#' after a value is text, not a comment.
    assert params["mynetworks"] == "127.0.0.0/8 # trailing"
    assert params["mydomain"] == "example.org"
    # The last definition wins; the earlier one is recorded with its line.
    assert params["smtpd_milters"] == "inet:localhost:8893"
    assert [d.lineno for d in main.find("smtpd_milters")] == [11, 12]
    overrides = main.overrides()
    assert [(o.name, o.lineno, o.old_value) for o in overrides] == [
        ("smtpd_milters", 12, "unix:/a")]


def test_crlf_values_lose_their_cr() -> None:
    assert MainCf("a = b \r\nc = d\r\n").params() == {"a": "b", "c": "d"}


def test_leading_whitespace_line_is_dropped_as_postfix_does() -> None:
    main = MainCf("  orphan = 1\n    more\nreal = 2\n")
    assert main.params() == {"real": "2"}
    assert [d.first for d in main.dropped] == [0]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a = 1\nnot a setting\n", 2, "missing '=' after attribute name"),
        ("a = 1\n= value\n", 2, "missing attribute name"),
        ("a = 1\nb = 2\n  = 3\nc\n", 4, "missing '='"),
    ],
)
def test_parse_errors_name_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MainCf(text, "/etc/postfix/main.cf")
    assert caught.value.line == line
    assert reason in str(caught.value)
    assert str(caught.value).startswith(f"/etc/postfix/main.cf, line {line}: ")


def test_binary_garbage_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_bytes(b"a = 1\nb = \x00\xff\n")
    with pytest.raises(ConfigError, match="line 2: binary data"):
        MainCf.read(path)


def test_huge_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_bytes(b"a = " + b"x" * (10 * 1024 * 1024) + b"\n")
    with pytest.raises(ConfigError, match="line 1: logical line longer than"):
        MainCf.read(path)


def test_set_touches_only_the_effective_definition() -> None:
    main = MainCf(GUIDE_LIKE)
    main.set("smtpd_milters", "inet:127.0.0.1:8891")
    assert changed_lines(GUIDE_LIKE, main.render()) == [
        "-smtpd_milters = inet:localhost:8893", "+smtpd_milters = inet:127.0.0.1:8891"]
    assert main.get("smtpd_milters") == "inet:127.0.0.1:8891"


def test_set_keeps_comments_inside_a_replaced_value() -> None:
    main = MainCf(GUIDE_LIKE)
    main.set("smtpd_recipient_restrictions", "reject")
    assert "# a comment inside a continued value\n" in main.render()
    assert main.get("smtpd_recipient_restrictions") == "reject"


def test_set_appends_a_new_name_and_keeps_crlf() -> None:
    main = MainCf("a = 1\r\n")
    main.set("b", "2")
    assert main.render() == "a = 1\r\nb = 2\r\n"
    main = MainCf("a = 1")
    main.set("b", "2")
    assert main.render() == "a = 1\nb = 2\n"


def test_set_of_an_unchanged_value_changes_nothing() -> None:
    main = MainCf(GUIDE_LIKE)
    main.set("mydomain", "example.org")
    assert main.render() == GUIDE_LIKE


def test_remove_duplicates_keeps_the_effective_one() -> None:
    main = MainCf(GUIDE_LIKE)
    assert main.remove("smtpd_milters", keep_last=True) == 1
    assert changed_lines(GUIDE_LIKE, main.render()) == ["-smtpd_milters = unix:/a"]
    assert main.remove("smtpd_milters") == 1
    assert "smtpd_milters" not in main


def test_add_to_multiline_list_adds_one_line() -> None:
    main = MainCf(GUIDE_LIKE)
    main.add_to_list("smtpd_recipient_restrictions", "check_policy_service unix:private/pw")
    assert changed_lines(GUIDE_LIKE, main.render()) == [
        "-\tcheck_policy_service inet:127.0.0.1:10023",
        "+\tcheck_policy_service inet:127.0.0.1:10023,",
        "+\tcheck_policy_service unix:private/pw",
    ]
    main.add_to_list("smtpd_recipient_restrictions", "check_policy_service unix:private/pw")
    assert main.render().count("unix:private/pw") == 1


def test_add_before_an_item_and_remove_items() -> None:
    main = MainCf(GUIDE_LIKE)
    main.add_to_list("smtpd_recipient_restrictions", "permit_sasl_authenticated",
                     before="reject_unauth_destination")
    assert changed_lines(GUIDE_LIKE, main.render()) == [
        "-    reject_unauth_destination",
        "+    permit_sasl_authenticated, reject_unauth_destination",
    ]
    main.remove_from_list("smtpd_recipient_restrictions", "permit_mynetworks")
    value = main.get("smtpd_recipient_restrictions") or ""
    assert "permit_mynetworks" not in value
    assert value.split()[0] == "permit_sasl_authenticated,"
    assert not main.remove_from_list("smtpd_recipient_restrictions", "not_there")


def test_single_line_list_edits() -> None:
    main = MainCf("mydestination = $myhostname, localhost\n")
    main.add_to_list("mydestination", "example.org")
    assert main.render() == "mydestination = $myhostname, localhost, example.org\n"
    main.remove_from_list("mydestination", "localhost")
    assert main.render() == "mydestination = $myhostname, example.org\n"
    main.remove_from_list("mydestination", "example.org")
    assert main.render() == "mydestination = $myhostname\n"


@pytest.mark.parametrize(("name", "value"), [
    ("a", "x\ninjected = yes"), ("a", "x\r"), ("a b", "x"), ("", "x"), ("a=b", "x"),
    ("#a", "x")])
def test_edits_that_would_corrupt_the_file_are_refused(name: str, value: str) -> None:
    main = MainCf("a = 1\n")
    with pytest.raises(EditError):
        main.set(name, value)
    assert main.render() == "a = 1\n"


def test_write_is_atomic_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_text("a = 1\n")
    path.chmod(0o640)
    main = MainCf.read(path)
    main.set("a", "2")
    main.write()
    assert path.read_text() == "a = 2\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["main.cf"]


line = st.text(alphabet=st.sampled_from(list("ab_=$#{}() \t\r,:?.\\é\n")), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(line, max_size=12))
def test_fuzz_only_postwarden_errors_escape(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        main = MainCf(text)
    except PostwardenError:
        return
    assert main.render() == text
    for definition in main:
        assert "\n" not in definition.name
