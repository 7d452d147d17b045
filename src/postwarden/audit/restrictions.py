"""SMTPD access restriction lists: split into restrictions with their arguments.

Security: values are configuration text; parsing is linear and bounded by the value.
Standards: postconf(5) and SMTPD_ACCESS_README (the restriction names and which take a
lookup table or other argument); Postfix 3.x ``{ ... }`` grouping of an argument
(``check_policy_service { inet:host:port, timeout=10s }``).
"""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.postfix.mastercf import extract_braced, split_words

SEPARATORS = ", \t\r\n"

# Restrictions followed by one argument (a lookup table, a DNS list domain, a policy
# endpoint, a number of seconds).
WITH_ARGUMENT = frozenset({
    "check_ccert_access", "check_client_access", "check_client_a_access",
    "check_client_mx_access", "check_client_ns_access", "check_helo_access",
    "check_helo_a_access", "check_helo_mx_access", "check_helo_ns_access",
    "check_recipient_access", "check_recipient_a_access", "check_recipient_mx_access",
    "check_recipient_ns_access", "check_reverse_client_hostname_access",
    "check_reverse_client_hostname_a_access", "check_reverse_client_hostname_mx_access",
    "check_reverse_client_hostname_ns_access", "check_sasl_access", "check_sender_access",
    "check_sender_a_access", "check_sender_mx_access", "check_sender_ns_access",
    "check_etrn_access", "check_policy_service", "reject_rbl_client", "reject_rhsbl_client",
    "reject_rhsbl_helo", "reject_rhsbl_reverse_client", "reject_rhsbl_sender",
    "reject_rhsbl_recipient", "permit_dnswl_client", "permit_rhswl_client", "sleep",
    "reject_maps_rbl",
})

WITHOUT_ARGUMENT = frozenset({
    "permit", "reject", "defer", "defer_if_permit", "defer_if_reject", "warn_if_reject",
    "permit_mynetworks", "permit_sasl_authenticated", "permit_tls_clientcerts",
    "permit_tls_all_clientcerts", "permit_inet_interfaces", "permit_auth_destination",
    "permit_mx_backup", "permit_naked_ip_address", "reject_unauth_destination",
    "defer_unauth_destination", "reject_unauth_pipelining", "reject_unknown_client_hostname",
    "reject_unknown_client", "reject_unknown_reverse_client_hostname",
    "reject_unknown_forward_client_hostname", "reject_invalid_helo_hostname",
    "reject_invalid_hostname", "reject_non_fqdn_helo_hostname", "reject_non_fqdn_hostname",
    "reject_unknown_helo_hostname", "reject_unknown_hostname", "reject_non_fqdn_sender",
    "reject_non_fqdn_recipient", "reject_unknown_sender_domain",
    "reject_unknown_recipient_domain", "reject_unlisted_sender", "reject_unlisted_recipient",
    "reject_unverified_sender", "reject_unverified_recipient", "reject_sender_login_mismatch",
    "reject_authenticated_sender_login_mismatch", "reject_known_sender_login_mismatch",
    "reject_unauthenticated_sender_login_mismatch", "reject_multi_recipient_bounce",
    "reject_plaintext_session", "check_relay_domains",
    "reject_unauth_sender_login_mismatch",
})

KNOWN = WITH_ARGUMENT | WITHOUT_ARGUMENT

# A list that contains one of these makes smtpd start (the relay guard of postconf(5)
# smtpd_relay_restrictions: "specify at least one working instance of ...").
RELAY_GUARDS = frozenset({
    "reject_unauth_destination", "defer_unauth_destination", "reject", "defer",
    "defer_if_permit", "check_relay_domains",
})


@dataclass(frozen=True)
class Restriction:
    name: str
    argument: str | None
    position: int

    def __str__(self) -> str:
        return f"{self.name} {self.argument}" if self.argument is not None else self.name

    def text(self) -> str:
        """The item as a list value writes it: an argument with blanks or commas in {}."""
        argument = self.argument
        if argument is None:
            return self.name
        if any(ch in argument for ch in " ,\t") and not argument.startswith("{"):
            argument = "{ " + argument + " }"
        return f"{self.name} {argument}"


def parse(value: str) -> list[Restriction]:
    """Restrictions of a list value, in order; unknown names are kept (the audit flags them)."""
    words = split_words(value, SEPARATORS)
    found: list[Restriction] = []
    i = 0
    while i < len(words):
        name = words[i]
        argument = None
        if name in WITH_ARGUMENT and i + 1 < len(words):
            argument = words[i + 1]
            if argument.startswith("{"):
                argument = extract_braced(argument)
            i += 1
        found.append(Restriction(name, argument, len(found)))
        i += 1
    return found


def names(restrictions: list[Restriction]) -> list[str]:
    return [r.name for r in restrictions]
