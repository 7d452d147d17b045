"""What Postfix learns from the host it runs on: its name and its interface addresses.

Security: reads only local facts (gethostname, getifaddrs); no DNS, no files.
Standards: Postfix 3.7 ``global/mail_params.c`` (check_myhostname), ``util/inet_addr_local.c``
(getifaddrs order), ``global/mynetworks.c`` (host, subnet and class styles).

Theory of operation
-------------------
``HostFacts`` is a plain record so tests can inject any host. ``HostFacts.local()`` asks the
C library's getifaddrs() through ctypes, in the order Postfix sees the addresses, with each
address's prefix length. ``mynetworks`` turns the addresses into Postfix's default
``mynetworks`` for a ``mynetworks_style``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import socket
from dataclasses import dataclass

from postwarden.errors import PostwardenError

IFF_LOOPBACK = 0x8
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Interface:
    address: IPAddress
    prefixlen: int
    loopback: bool


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    interfaces: tuple[Interface, ...]

    @classmethod
    def local(cls) -> HostFacts:
        return cls(socket.gethostname(), tuple(_getifaddrs()))


class _SockAddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_ubyte * 14)]


class _SockAddrIn(ctypes.Structure):
    _fields_ = [("sin_family", ctypes.c_ushort), ("sin_port", ctypes.c_ushort),
                ("sin_addr", ctypes.c_ubyte * 4)]


class _SockAddrIn6(ctypes.Structure):
    _fields_ = [("sin6_family", ctypes.c_ushort), ("sin6_port", ctypes.c_ushort),
                ("sin6_flowinfo", ctypes.c_uint32), ("sin6_addr", ctypes.c_ubyte * 16),
                ("sin6_scope_id", ctypes.c_uint32)]


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)), ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint), ("ifa_addr", ctypes.POINTER(_SockAddr)),
    ("ifa_netmask", ctypes.POINTER(_SockAddr)), ("ifa_ifu", ctypes.POINTER(_SockAddr)),
    ("ifa_data", ctypes.c_void_p),
]


def _address(pointer: ctypes._Pointer[_SockAddr]) -> bytes | None:
    if not pointer:
        return None
    family = pointer.contents.sa_family
    if family == socket.AF_INET:
        return bytes(ctypes.cast(pointer, ctypes.POINTER(_SockAddrIn)).contents.sin_addr)
    if family == socket.AF_INET6:
        return bytes(ctypes.cast(pointer, ctypes.POINTER(_SockAddrIn6)).contents.sin6_addr)
    return None


def _getifaddrs() -> list[Interface]:
    """Interface addresses with prefix lengths, in getifaddrs() order (as Postfix sees them)."""
    name = ctypes.util.find_library("c")
    if name is None:  # XXX: no libc found (not Linux); fall back to loopback only.
        return [Interface(ipaddress.ip_address("127.0.0.1"), 8, True)]
    libc = ctypes.CDLL(name, use_errno=True)
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        return []
    found: list[Interface] = []
    try:
        node = head
        while node:
            entry = node.contents
            raw, mask = _address(entry.ifa_addr), _address(entry.ifa_netmask)
            if raw is not None and mask is not None:
                prefix = bin(int.from_bytes(mask, "big")).count("1")
                found.append(Interface(ipaddress.ip_address(raw), prefix,
                                       bool(entry.ifa_flags & IFF_LOOPBACK)))
            node = entry.ifa_next
    finally:
        libc.freeifaddrs(head)
    return found


def default_myhostname(facts: HostFacts, mydomain: str | None) -> str:
    """check_myhostname(): the host name, with '.$mydomain' added when it has no dot."""
    name = facts.hostname
    if "." not in name:
        name = f"{name}.{mydomain if mydomain is not None else 'localdomain'}"
    return name


def default_mydomain(myhostname: str) -> str:
    """check_mydomainname(): what follows the first dot of myhostname, else 'localdomain'."""
    return myhostname.split(".", 1)[1] if "." in myhostname else "localdomain"


def _classful(address: ipaddress.IPv4Address) -> int:
    first = int(address) >> 24
    if first < 128:
        return 8
    if first < 192:
        return 16
    if first < 224:
        return 24
    return 4


class HostError(PostwardenError):
    """A host-dependent setting Postfix could not apply (its programs would stop)."""


def _families(inet_protocols: str) -> set[int]:
    tokens = set(inet_protocols.replace(",", " ").split())
    families = set()
    if tokens & {"all", "ipv4"}:
        families.add(4)
    if tokens & {"all", "ipv6"} and socket.has_ipv6:
        families.add(6)
    return families


def _resolve(name: str, families: set[int], hosts_file: str) -> list[IPAddress]:
    """inet_addr_host() without DNS: an address literal, or the names in /etc/hosts."""
    try:
        literal = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        return [literal] if literal.version in families else []
    found: list[IPAddress] = []
    try:
        with open(hosts_file, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split("#", 1)[0].split()
                if len(fields) > 1 and name.lower() in (f.lower() for f in fields[1:]):
                    with contextlib.suppress(ValueError):
                        address = ipaddress.ip_address(fields[0])
                        if address.version in families and address not in found:
                            found.append(address)
    except OSError:
        pass
    return found


def select_interfaces(facts: HostFacts, inet_interfaces: str, inet_protocols: str,
                      hosts_file: str = "/etc/hosts") -> list[Interface]:
    """own_inet_addr_list(): the addresses Postfix listens on, with their netmasks.

    'all' and 'loopback-only' count only as the whole value, as in own_inet_addr.c; other
    words are addresses or host names (resolved from /etc/hosts: postwarden asks no DNS).
    """
    families = _families(inet_protocols)
    present = [i for i in facts.interfaces if i.address.version in families]
    if inet_interfaces == "all":
        return present
    if inet_interfaces == "loopback-only":
        return [i for i in present if i.loopback]
    addresses: list[IPAddress] = []
    for name in inet_interfaces.replace(",", " ").split():
        found = _resolve(name, families, hosts_file)
        if not found:
            raise HostError(f"config variable inet_interfaces: host not found: {name}")
        addresses += [a for a in found if a not in addresses]
    chosen = []
    for address in addresses:
        match = [i for i in present if i.address == address]
        if not match:
            raise HostError(
                f"parameter inet_interfaces: no local interface found for {address}")
        chosen.append(match[0])
    return chosen


MASK_STYLES = ("host", "subnet", "class")


def check_style(style: str) -> str:
    """name_mask() on mynetworks_style: exactly one of host, subnet, class."""
    words = style.replace(",", " ").split()
    for word in words:
        if word not in MASK_STYLES:
            raise HostError(f'unknown mynetworks mask style value "{word}" in "{style}"')
    if len(set(words)) != 1:
        raise HostError(f"bad mynetworks_style value: {style}; specify exactly one value")
    return words[0]


def mynetworks(interfaces: list[Interface], style: str) -> str:
    """mynetworks_core(): the default mynetworks for 'host', 'subnet' or 'class' style."""
    seen: list[str] = []
    for iface in interfaces:
        address = iface.address
        if address.version == 4:
            length = {"host": 32, "class": _classful(address)}.get(style, iface.prefixlen)
            net = ipaddress.ip_network(f"{address}/{length}", strict=False)
            text = f"{net.network_address}/{length}"
        else:
            length = 128 if style == "host" else iface.prefixlen
            net = ipaddress.ip_network(f"{address}/{length}", strict=False)
            text = f"[{net.network_address}]/{length}"
        if text not in seen:
            seen.append(text)
    return " ".join(seen)
