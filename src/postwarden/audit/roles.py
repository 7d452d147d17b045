"""Which roles a Postfix configuration plays, and why.

Security: reads the parsed configuration only.
Standards: STANDARD_CONFIGURATION_README (null client, internet host, relay); master(5).

Theory of operation
-------------------
``infer`` looks at what the configuration does, not at what it is called: a public smtpd
or postscreen on port 25 makes it an MX; a public smtpd on 587/465, or any public smtpd with
SASL switched on, makes it a submission server; a ``mynetworks`` that trusts more than this
host makes it a relay; no public SMTP service at all makes it a null client. Each role comes
with the sentence that justifies it, so ``audit`` can say why it chose it.
"""

from __future__ import annotations

import ipaddress

from postwarden.audit.context import Context
from postwarden.audit.model import Role
from postwarden.errors import UsageError


def parse_roles(text: str) -> frozenset[Role] | None:
    """'auto' -> None; 'mx,submission' -> those roles."""
    if text == "auto":
        return None
    roles = set()
    for word in text.split(","):
        try:
            roles.add(Role(word.strip()))
        except ValueError:
            choices = ", ".join(r.value for r in Role)
            raise UsageError(f"unknown role {word!r} (choose auto or from {choices})") from None
    return frozenset(roles)


def _trusts_others(ctx: Context) -> bool:
    for word in ctx.words("mynetworks"):
        try:
            network = ipaddress.ip_network(word.strip("[]").replace("]/", "/"), strict=False)
        except ValueError:
            return True  # a table or a host name: trust we cannot see through
        if not network.is_loopback and network.num_addresses > 1:
            return True
    return False


def infer(ctx: Context) -> tuple[frozenset[Role], list[str]]:
    roles: set[Role] = set()
    reasons: list[str] = []
    mx = ctx.mx_services()
    if mx:
        roles.add(Role.MX)
        reasons.append(f"mx: {mx[0].key} (line {mx[0].lineno}) listens on port 25 on a "
                       "public address")
    submission = ctx.submission_services()
    if submission:
        roles.add(Role.SUBMISSION)
        reasons.append(f"submission: {submission[0].key} (line {submission[0].lineno}) takes "
                       "authenticated clients")
    if _trusts_others(ctx):
        roles.add(Role.RELAY)
        reasons.append(f"relay: mynetworks = {ctx.value('mynetworks')} trusts other hosts")
    if not ctx.public_smtpd_services():
        roles.add(Role.NULL_CLIENT)
        reasons.append("null-client: no SMTP service listens on a public address "
                       f"(inet_interfaces = {ctx.value('inet_interfaces')})")
    return frozenset(roles), reasons
