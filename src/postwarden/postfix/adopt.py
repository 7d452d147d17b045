"""main.cf and master.cf texts for a private instance: its own, and an adopted one made private.

Security: pure text transformations; nothing here reads a file or runs a command, apart from
asking the kernel for free loopback ports. The given texts are trusted as
``PostfixInstance.adopt`` trusts them (they are run as root as given), but an adopted inet
service that would listen on another host than loopback is refused, and an entry that
``mastercf`` cannot parse is a ConfigError.
Standards: master(5) (entry fields, continuation lines), postconf(5) main.cf format,
postlogd(8), MAILLOG_README; POSTSCREEN_README (postscreen is an SMTP server too).

Theory of operation
-------------------
The instance's own master.cf is the packaged template with the public ``smtp inet`` line
rebound to ADDRESS:PORT (``render_master_cf``). An adopted master.cf (theory point 11 of
``postwarden.postfix.instance``) keeps its text byte for byte apart from the edited fields:
every ``inet`` service run by smtpd or postscreen (``smtp``, ``submission``,
``127.0.0.1:2525``...) is rebound to ADDRESS:<free port> with its other fields, ``-o``
options and continuation lines kept (``ports`` maps the original name to the port), chroot
is "n" everywhere (a jail would need /etc copies) and postlog is added if missing. Other
inet services keep their names, so they listen on 127.0.0.1 at their usual ports. A rebound
service's ``$service_name`` is now ``ADDRESS:PORT``, which shows in
``-o syslog_name=postfix/$service_name`` log names. An adopted main.cf keeps its text;
``adopt_main_cf`` sets the given settings with ``MainCf.set``, in place or appended once
under ADOPTED_HEADER, so no name is defined twice.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from postwarden.postfix import lexer
from postwarden.postfix.maincf import MainCf
from postwarden.postfix.mastercf import FIELDS, MasterCf, Service
from postwarden.postfix.process import InstanceError, free_port

# master(5) commands of the services an SMTP client connects to.
SMTP_SERVERS = frozenset({"smtpd", "postscreen"})
SMTP_PORT_NAMES = ("smtp", "25")
POSTLOG_ENTRY = "postlog unix-dgram n - n - 1 postlogd"
ADOPTED_HEADER = ("# Set by postwarden.postfix.instance.PostfixInstance.adopt to run this "
                  "configuration privately:")

# A master.cf field: fields never hold braces, so a run of non-blanks (mastercf.BLANKS).
_FIELD = re.compile(r"[^ \t\r\n]+")
# master(5): service type private unpriv chroot wakeup maxproc command [args]
_ENTRY = re.compile(r"(?P<head>(?P<service>\S+)\s+(?P<type>\S+)\s+\S+\s+\S+\s+)(?P<chroot>\S+)"
                    r"(?P<tail>\s.*)\Z")


def render_main_cf(settings: Mapping[str, str]) -> str:
    """main.cf text: one ``name = value`` line per setting, in the mapping's order."""
    lines = ["# Written by postwarden.postfix.instance; rewritten on every start."]
    lines += [f"{name} = {value}".rstrip() for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def render_master_cf(template: str, *, address: str, port: int,
                     services: Sequence[str] = ()) -> str:
    """master.cf from the packaged template: smtpd on ADDRESS:PORT, no chroot, postlogd on.

    Lines that are comments, blank, continuations or not entries at all are kept as they
    are (postconf reports the last kind); ``services`` are appended verbatim.
    """
    out: list[str] = []
    has_postlog = False
    for line in template.splitlines():
        entry = _ENTRY.match(line)
        if line[:1].isspace() or line.lstrip().startswith("#") or entry is None:
            out.append(line)
            continue
        kind = (entry["service"], entry["type"])
        if kind == ("smtp", "inet"):
            out.append(f"{address}:{port} inet n - n - - smtpd")
            continue
        has_postlog = has_postlog or kind == ("postlog", "unix-dgram")
        # Chroot "n" everywhere: a chroot jail would need copies of /etc files inside root.
        out.append(entry["head"] + "n" + entry["tail"])
    if not has_postlog:
        out.append(POSTLOG_ENTRY)
    out.extend(services)
    return "\n".join(out) + "\n"


def adopt_main_cf(text: str, settings: Mapping[str, str]) -> str:
    """A given main.cf with ``settings`` set in place, or appended once under ADOPTED_HEADER."""
    if text and not text.endswith("\n"):
        text += "\n"
    edited = MainCf(text + ADOPTED_HEADER + "\n")
    for name, value in settings.items():
        edited.set(name, value)
    return edited.render()


@dataclass(frozen=True)
class AdoptedMasterCf:
    """A given master.cf made private: its text, the rebound ports and the one to await."""

    text: str
    ports: Mapping[str, int]  # original service name -> port on ADDRESS
    greeting_port: int  # smtp's, else the first plaintext one's (smtps sends no 220)


def adopt_master_cf(text: str, *, address: str) -> AdoptedMasterCf:
    """A given master.cf with its SMTP servers on ADDRESS:<free port> and no chroot.

    Everything but the edited fields stays byte for byte (module docstring); a malformed
    entry is a ConfigError, no SMTP server to await an InstanceError.
    """
    master = MasterCf(text)
    lines = list(master.lines)
    ports: dict[str, int] = {}
    plain: list[int] = []
    for service in master.services:
        fields = {FIELDS.index("chroot"): "n"}
        if service.type == "inet" and service.process_name in SMTP_SERVERS:
            port = free_port(address)
            while port in ports.values():
                port = free_port(address)
            ports[service.name] = port
            fields[FIELDS.index("service")] = f"{address}:{port}"
            smtp = service.name.rsplit(":", 1)[-1] in SMTP_PORT_NAMES
            # A wrapper-mode service waits for a TLS ClientHello and sends no 220 first.
            if smtp or service.overrides().get("smtpd_tls_wrappermode", "no") != "yes":
                plain.insert(0 if smtp else len(plain), port)
        elif service.type == "inet":
            _check_loopback_service(service.name)
        _replace_fields(lines, service, fields)
    if not plain:
        raise InstanceError("the adopted master.cf has no plaintext smtpd or postscreen "
                            f"inet service to await (rebound: {sorted(ports)})")
    if not master.find("postlog", "unix-dgram"):
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(POSTLOG_ENTRY + "\n")
    return AdoptedMasterCf("".join(lines), ports, plain[0])


def _check_loopback_service(name: str) -> None:
    """An inet service left as it is may name a host only if it is a loopback address."""
    host = name.rpartition(":")[0].strip("[]")
    if not host:
        return  # inet_interfaces = loopback-only applies
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InstanceError(f"the adopted master.cf service {name!r} would listen on "
                            "another host than loopback; remove it or make it 127.0.0.1")


def _replace_fields(lines: list[str], service: Service, new: Mapping[int, str]) -> None:
    """Replace fields (by index into FIELDS) of one entry in place, wherever its lines
    put them; the spacing, arguments and comment lines around them stay."""
    field = 0
    for index in range(service.first, service.last + 1):
        line = lines[index]
        if index != service.first and lexer.is_ignored(lexer.strip_newline(line)):
            continue
        parts: list[str] = []
        end = 0
        for word in _FIELD.finditer(line):
            if field >= len(FIELDS):
                break
            if field in new:
                parts.append(line[end:word.start()] + new[field])
                end = word.end()
            field += 1
        lines[index] = "".join(parts) + line[end:]
        if field >= len(FIELDS):
            return
