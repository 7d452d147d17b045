"""Giving up root for good, after the sockets are bound, as Postfix's daemons do.

Security: runs as root with names from the settings file. The drop is real: supplementary
groups are replaced (initgroups), then the group, then the user (setgid before setuid,
since a non-root process can no longer change its group); real, effective and saved ids
all change. Afterwards regaining root must fail; if it does not, or any step fails, the
daemon stops (``PrivilegeError``) rather than serve with privileges it meant to drop.
Running as root with no user to drop to is refused unless the settings say
``user = "root"`` on purpose.
Standards: Postfix set_ugid.c (the order setgid, initgroups, setuid); POSIX setuid(2).
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from postwarden.errors import PostwardenError


class PrivilegeError(PostwardenError):
    """A user or group that does not exist, or a drop that did not hold."""


@dataclass(frozen=True)
class Account:
    user: str
    uid: int
    gid: int


def lookup_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"no such user: {name}") from None


def lookup_group(name: str) -> int:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise PrivilegeError(f"no such group: {name}") from None


def resolve(user: str, group: str | None) -> Account:
    """The ids to become: the user's, with ``group`` (default: the user's login group)."""
    entry = lookup_user(user)
    gid = lookup_group(group) if group else entry.pw_gid
    return Account(entry.pw_name, entry.pw_uid, gid)


def drop_privileges(user: str | None, group: str | None, *,
                    section: str = "policyd") -> Account | None:
    """Become ``user``:``group`` for good; None when nothing was to be done. ``section``
    names the postwarden.toml section that sets them, for the error message."""
    if os.geteuid() != 0:
        if user is not None and lookup_user(user).pw_uid != os.geteuid():
            raise PrivilegeError(f"cannot switch to user {user}: not running as root")
        return None
    if user is None:
        raise PrivilegeError(f"refusing to run as root: set [{section}] user (and group) to "
                             "drop to, or user = \"root\" to stay root on purpose")
    account = resolve(user, group)
    if account.uid == 0:
        return None  # user = "root": asked for explicitly
    try:
        os.setgid(account.gid)
        os.initgroups(account.user, account.gid)
        os.setuid(account.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot drop privileges to {user}: {exc.strerror}") from None
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise PrivilegeError(f"privilege drop to {user} did not take effect")
    try:
        os.setuid(0)
    except PermissionError:
        return account
    raise PrivilegeError(f"privilege drop to {user} is reversible: setuid(0) succeeded")
