"""Fuzzing the whole read path: whatever the bytes, only postwarden's own errors escape."""

from __future__ import annotations

import contextlib
import ipaddress
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.errors import PostwardenError
from postwarden.postfix import defaults, postconf
from postwarden.postfix.check import check
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.expand import expand
from postwarden.postfix.host import HostFacts, Interface

FACTS = HostFacts("fuzz", (Interface(ipaddress.ip_address("127.0.0.1"), 8, True),))
TABLE = defaults.shipped()
NAMES = ["myhostname", "mydomain", "mynetworks", "mynetworks_style", "compatibility_level",
         "inet_interfaces", "smtpd_recipient_restrictions", "smtpd_restriction_classes",
         "alias_maps", "a", "b", "relay_time_limit", "default_rbl_reply"]
PIECES = ["$a", "${b}", "$(a)", "$$", "${a?{x}:{y}}", "${b:z}", "${{$a} == {1}?{t}:{f}}",
          "${{$compatibility_level} <level {3.6}}", "${", "}", "{", "$", "ldap:x", "{ mysql:y }",
          "\t", " ", ",", "\r", "é", "\udcff", "#", "3.6", "all", "host", "loopback-only"]

value = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)
line = st.one_of(
    st.tuples(st.sampled_from(NAMES), value).map(lambda nv: f"{nv[0]} = {nv[1]}"),
    st.sampled_from(["  continued", "# comment", "", "junk line", " = x", "\tindented = 1"]),
)
master_line = st.sampled_from([
    "smtp inet n - y - - smtpd", "relay unix - - y - - smtp -o a=$b",
    "sub inet n - y - - smtpd -o { b = ${a } -osyslog_name=x", "x unix - n n -? 1 pipe",
    "  -o a=1", "bad", "y unix - - - - - spawn {arg with space}",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(line, max_size=10), st.lists(master_line, max_size=5))
def test_only_postwarden_errors_escape(main_lines: list[str], master_lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "main.cf").write_bytes("\n".join(main_lines).encode("utf-8", "surrogateescape"))
        (root / "master.cf").write_text("\n".join(master_lines))
        try:
            config = PostfixConfig.load(root, table=TABLE, facts=FACTS)
            check(config)
            config.compute_host_defaults()
            for evaluate in (False, True):
                postconf.show_main(config, [], nondefault=True, evaluate=evaluate)
                postconf.show_master(config, [], evaluate=evaluate)
                postconf.show_master_params(config, [], evaluate=evaluate)
        except PostwardenError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60), st.dictionaries(st.sampled_from(["a", "b", "c"]),
                                             st.text(max_size=20), max_size=3))
def test_expansion_of_any_text(text: str, params: dict[str, str]) -> None:
    with contextlib.suppress(PostwardenError):
        expand(text, params.get)
