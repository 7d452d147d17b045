"""Postfix and Dovecot logs: one parser feeding summaries, detectors, bans, alerts and metrics.

Security: the compiled fast path is used only when its stamp matches, for every module in
``COMPILED_MODULES``, the running interpreter and the bytes of the source beside this file
(its SHA-256, checked whenever the file's size or mtime differs from the stamp's); anything
else (no build, an edited source, another Python, an unreadable or malformed stamp,
``POSTWARDEN_PURE=1``) loads the pure-Python modules. The directory is the venv's own
(``<sys.prefix>/postwarden-compiled``) or ``$POSTWARDEN_COMPILED_DIR``: a directory its owner
controls, as the venv itself is.
Standards: PEP 302/451 package ``__path__`` (the compiled directory is searched first);
mypyc extension modules, built by scripts/build_compiled.py.

Theory of operation: ``scripts/build_compiled.py`` compiles the hot modules of ``logs
summary`` with mypyc into ``<dir>/postwarden/logs/`` and writes ``<dir>/stamp.txt`` last:
one line ``python <tag>``, then per module ``<file> <size> <mtime_ns> <sha256>``. At import,
each extension must be present and each source is stat()ed: where size and mtime equal the
stamp's, its hash is taken as unchanged, else the file is hashed. All match: that directory
goes first in ``__path__`` and ``COMPILED`` is true. Compiled modules are all-or-nothing
(mypyc compiles them against each other), so one stale module makes every module load from
source.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES

COMPILED_MODULES = ("events", "patterns", "parse_builders", "parse", "summary",
                    "summary_parallel")
STAMP = "stamp.txt"
SHARED_LIBRARY = "_compiled__mypyc"   # mypyc's code for all of them (the group's library)
_HERE = os.path.dirname(os.path.abspath(__file__))


def python_tag() -> str:
    """The interpreter an extension module is built for (implementation, version, ABI)."""
    return f"{sys.implementation.cache_tag}{EXTENSION_SUFFIXES[0]}"


def compiled_root() -> str:
    return os.environ.get("POSTWARDEN_COMPILED_DIR") or os.path.join(
        sys.prefix, "postwarden-compiled")


def source_sha256(name: str) -> str:
    from hashlib import sha256  # only when a source's size or mtime moved (~4 ms import)

    with open(os.path.join(_HERE, name), "rb") as f:
        return sha256(f.read()).hexdigest()


def stamp_matches(root: str) -> bool:
    """Whether ``root``'s stamp names this interpreter and the current sources."""
    try:
        with open(os.path.join(root, STAMP), encoding="ascii") as f:
            lines = f.read().splitlines()
    except (OSError, ValueError):
        return False
    if not lines or lines[0] != f"python {python_tag()}":
        return False
    rows = [line.split(" ") for line in lines[1:]]
    if sorted(row[0] for row in rows) != sorted(f"{m}.py" for m in COMPILED_MODULES):
        return False
    for row in rows:
        if len(row) != 4 or not _same_source(*row):
            return False
    return _all_built(os.path.join(root, "postwarden", "logs"))


def _all_built(directory: str) -> bool:
    # a missing extension would mix a source module into the compiled set
    try:
        present = set(os.listdir(directory))
    except OSError:
        return False
    suffix = EXTENSION_SUFFIXES[0]
    return all(f"{m}{suffix}" in present for m in (*COMPILED_MODULES, SHARED_LIBRARY))


def _same_source(name: str, size: str, mtime_ns: str, digest: str) -> bool:
    try:
        st = os.stat(os.path.join(_HERE, name))
        if str(st.st_size) == size and str(st.st_mtime_ns) == mtime_ns:
            return True
        return source_sha256(name) == digest
    except OSError:
        return False


def _use_compiled() -> bool:
    if os.environ.get("POSTWARDEN_PURE", "") not in ("", "0"):
        return False
    root = compiled_root()
    if not stamp_matches(root):
        return False
    __path__.insert(0, os.path.join(root, "postwarden", "logs"))
    return True


COMPILED = _use_compiled()
