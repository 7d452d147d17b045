"""master.cf: fields, -o forms, commented-out services, lossless edits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.errors import ConfigError, PostwardenError
from postwarden.postfix.mastercf import MasterCf, daemon_options, postconf_args, split_words

MASTER = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
smtp      inet  n       -       y       -       -       smtpd
submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
# a comment between options
  -o { smtpd_client_restrictions = permit_sasl_authenticated, reject }
  -osmtpd_tls_security_level=encrypt
  -o smtpd_recipient_restrictions=$mua_recipient_restrictions
#smtps     inet  n       -       y       -       -       smtpd
#  -o syslog_name=postfix/smtps
#  -o smtpd_tls_wrappermode=yes
127.0.0.1:10025 inet n - n - - smtpd -o content_filter= -o smtpd_sasl_auth_enable=no
pickup    unix  n       -       y       60      1       pickup
postlog   unix-dgram n  -       n       -       1       postlogd
policyd-spf unix - n n - 0 spawn user=nobody argv=/usr/bin/policyd-spf
smtp      unix  -       -       y       -       -       smtp
"""


def test_round_trip_and_fields() -> None:
    master = MasterCf(MASTER)
    assert master.render() == MASTER
    assert [s.key for s in master] == [
        "smtp/inet", "submission/inet", "127.0.0.1:10025/inet", "pickup/unix",
        "postlog/unix-dgram", "policyd-spf/unix", "smtp/unix"]
    pickup = master.get("pickup", "unix")
    assert pickup is not None
    assert pickup.fields == ("pickup", "unix", "n", "-", "y", "60", "1", "pickup")
    assert pickup.lineno == 13


def test_overrides_in_every_form() -> None:
    submission = MasterCf(MASTER).get("submission", "inet")
    assert submission is not None
    assert submission.overrides() == {
        "syslog_name": "postfix/submission",
        "smtpd_client_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_tls_security_level": "encrypt",
        "smtpd_recipient_restrictions": "$mua_recipient_restrictions",
    }
    assert (submission.first, submission.last) == (2, 7)
    relay = MasterCf(MASTER).get("127.0.0.1:10025", "inet")
    assert relay is not None
    assert relay.overrides() == {"content_filter": "", "smtpd_sasl_auth_enable": "no"}


def test_commented_out_services_are_recognised() -> None:
    master = MasterCf(MASTER)
    assert [s.key for s in master.commented] == ["smtps/inet"]
    smtps = master.commented[0]
    assert smtps.commented
    assert smtps.overrides() == {"syslog_name": "postfix/smtps",
                                 "smtpd_tls_wrappermode": "yes"}
    # The header comment is not a service.
    assert all(s.name != "service" for s in master.commented)


def test_postconf_misreads_glued_options_the_daemon_does_not() -> None:
    words = ["-osyslog_name=foo", "-vo", "a=b"]
    assert postconf_args(words) == ["-o", "sysl", "-o", "g_name=f", "-o", "-o", "-v", "-o",
                                    "a=b"]
    assert daemon_options(words) == [("o", "syslog_name=foo"), ("v", ""), ("o", "a=b")]


def test_split_words_keeps_braces_together() -> None:
    assert split_words("a { b c } d{e f}g h") == ["a", "{ b c }", "d{e f}g", "h"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("smtp inet n - y - -\n", "bad field count"),
        ("smtp tcp n - y - - smtpd\n", 'invalid type field "tcp"'),
        ("smtp inet x - y - - smtpd\n", 'invalid private field "x"'),
        ("smtp inet n - y 1m - smtpd\n", 'invalid wakeup field "1m"'),
        ("smtp inet n - y - many smtpd\n", 'invalid maxproc field "many"'),
    ],
)
def test_bad_entries_name_file_and_line(line: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MasterCf("# ok\n" + line, "/etc/postfix/master.cf")
    assert caught.value.line == 2
    assert reason in str(caught.value)


def test_set_override_rewrites_only_its_line() -> None:
    master = MasterCf(MASTER)
    master.set_override("submission", "inet", "syslog_name", "postfix/msa")
    before, after = MASTER.splitlines(), master.render().splitlines()
    assert [(b, a) for b, a in zip(before, after, strict=True) if b != a] == [
        ("  -o syslog_name=postfix/submission", "  -o syslog_name=postfix/msa")]
    master.set_override("submission", "inet", "smtpd_sasl_auth_enable", "yes")
    assert "  -o smtpd_sasl_auth_enable=yes\n#smtps" in master.render()
    master.set_override("submission", "inet", "smtpd_client_restrictions",
                        "permit_sasl_authenticated, reject_unauth_destination")
    submission = master.get("submission", "inet")
    assert submission is not None
    assert submission.overrides()["smtpd_client_restrictions"] == (
        "permit_sasl_authenticated, reject_unauth_destination")
    assert "# a comment between options" in master.render()


def test_remove_override_and_add_service() -> None:
    master = MasterCf(MASTER)
    assert master.remove_override("submission", "inet", "smtpd_tls_security_level")
    assert "encrypt" not in master.render()
    assert not master.remove_override("submission", "inet", "nothing_like_this")
    master.add_service("submissions inet n - y - - smtpd\n  -o smtpd_tls_wrappermode=yes\n")
    service = master.get("submissions", "inet")
    assert service is not None
    assert service.overrides() == {"smtpd_tls_wrappermode": "yes"}
    with pytest.raises(PostwardenError):
        master.add_service("broken inet n\n")


word = st.text(alphabet=st.sampled_from(list("abo-={}$ \t#\n,y")), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(word, max_size=10))
def test_fuzz_only_postwarden_errors_escape(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        master = MasterCf(text)
    except PostwardenError:
        return
    assert master.render() == text
    for service in master:
        service.overrides()
        service.postconf_params()
