"""Debian's default Postfix configuration, built from the installed package as Debian does.

Security: reads Debian's shipped files and runs the local ``postconf -e`` (an argument list,
a minimal environment) on a directory the caller owns.
Standards: Debian 12 postfix package: ``/usr/share/postfix/main.cf.debian``,
``main.cf.tls``, ``master.cf.dist`` and what its postinst does for a new install.

Theory of operation
-------------------
postwarden does not ship Debian's files; it builds them from the package on this machine.
A "recipe" directory says what to build: ``use-debian-main`` (main.cf.debian, then
main.cf.tls, then the postinst's ``postconf -e`` of smtpd_relay_restrictions),
``use-debian-master`` (master.cf.dist), and ``main.cf.append`` / ``master.cf.append`` to add
to them; ``main.cf.append-from`` names (relative to the recipe) a file to add instead, so one
committed text can serve two examples without a symlink. The examples and the differential
tests use the same recipes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from postwarden.errors import PostwardenError

SHARE = Path("/usr/share/postfix")
MAIN_PARTS = (SHARE / "main.cf.debian", SHARE / "main.cf.tls")
MASTER = SHARE / "master.cf.dist"
# Debian postinst, for every new install but "No configuration".
POSTINST_EDIT = ("smtpd_relay_restrictions=permit_mynetworks permit_sasl_authenticated "
                 "defer_unauth_destination")
USE_MAIN = "use-debian-main"
USE_MASTER = "use-debian-master"
MAIN_APPEND = "main.cf.append"
MAIN_APPEND_FROM = "main.cf.append-from"
MASTER_APPEND = "master.cf.append"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
TIMEOUT = 60.0


class DebianError(PostwardenError):
    """Debian's Postfix files are not installed here."""


def backdate(path: Path) -> None:
    """Postfix re-reads a main.cf changed in the last ~2 s, sleeping between tries."""
    old = os.stat(path).st_mtime - 60
    os.utime(path, (old, old))


def _require(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        raise DebianError(f"{path}: not found (install Debian's postfix package)") from None


def write_main(dest: Path, postconf: str = "/usr/sbin/postconf") -> None:
    """dest/main.cf as Debian's postinst writes it for a new install."""
    main_cf = dest / "main.cf"
    main_cf.write_bytes(b"".join(_require(part) for part in MAIN_PARTS))
    backdate(main_cf)
    try:
        subprocess.run([postconf, "-c", str(dest), "-e", POSTINST_EDIT], check=True,
                       capture_output=True, timeout=TIMEOUT, env=ENV)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DebianError(f"postconf -e in {dest}: {exc}") from None


def needs_debian(recipe: Path) -> bool:
    return (recipe / USE_MAIN).exists() or (recipe / USE_MASTER).exists()


def build(recipe: Path, dest: Path) -> list[Path]:
    """Write the main.cf/master.cf a recipe directory describes into dest; return them."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    if (recipe / USE_MAIN).exists():
        write_main(dest)
        append = recipe / MAIN_APPEND
        pointer = recipe / MAIN_APPEND_FROM
        if pointer.is_file():
            append = recipe / pointer.read_text().strip()
        if append.is_file():
            with open(dest / "main.cf", "ab") as out:
                out.write(append.read_bytes())
        written.append(dest / "main.cf")
    if (recipe / USE_MASTER).exists():
        text = _require(MASTER)
        append = recipe / MASTER_APPEND
        if append.is_file():
            text += append.read_bytes()
        (dest / "master.cf").write_bytes(text)
        written.append(dest / "master.cf")
    for path in written:
        backdate(path)
    return written
