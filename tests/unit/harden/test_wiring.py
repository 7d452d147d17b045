"""--with policy and --with milter on the seed guide: its services, wired correctly.

The guide wires postgrey and policyd-spf in two more definitions of
smtpd_recipient_restrictions (only the last counts), OpenDKIM and OpenDMARC in two
definitions of smtpd_milters, with milter_protocol = 2 and milter_default_action = accept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from postwarden.audit.fixes import Inputs
from postwarden.audit.restrictions import parse
from postwarden.audit.roles import parse_roles
from postwarden.harden.plan import make_plan
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.debian import build
from postwarden.postfix.maincf import MainCf

GUIDE = Path(__file__).resolve().parents[3] / "examples" / "guide"


def test_guide_with_policy_and_milter(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    shutil.copytree(GUIDE, etc)
    build(GUIDE, etc)
    inputs = Inputs(hostname="mx.example.org", extras=frozenset({"policy", "milter"}))
    plan = make_plan(PostfixConfig.load(etc), parse_roles("mx,submission") or frozenset(),
                     inputs)
    main = MainCf(plan.new["main.cf"])
    assert main.duplicates() == {}
    policies = [r.argument for name in ("smtpd_client_restrictions", "smtpd_helo_restrictions",
                                        "smtpd_sender_restrictions", "smtpd_relay_restrictions",
                                        "smtpd_recipient_restrictions")
                for r in parse(main.get(name) or "") if r.name == "check_policy_service"]
    assert policies == ["unix:postwarden/policy"]
    recipient = [r.name for r in parse(main.get("smtpd_recipient_restrictions") or "")]
    assert recipient == ["permit_mynetworks", "permit_sasl_authenticated",
                         "check_policy_service"]
    assert "defer_unauth_destination" in (main.get("smtpd_relay_restrictions") or "")
    assert main.get("smtpd_data_restrictions") == "check_policy_service unix:postwarden/policy"
    assert main.get("smtpd_milters") == "unix:postwarden/milter"
    assert main.get("non_smtpd_milters") == "unix:postwarden/milter"
    assert main.get("milter_default_action") == "tempfail"
    assert main.get("milter_protocol") == "6"
    for name in ("milter_connect_timeout", "milter_command_timeout", "milter_content_timeout",
                 "smtpd_policy_service_timeout", "smtpd_policy_service_default_action"):
        assert main.get(name), name
    values = " ".join(main.params().values())
    for gone in ("postgrey", "private/policyd-spf", "opendkim", ":8893", "..."):
        assert gone not in values, gone
