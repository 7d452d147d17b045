"""The compiled (mypyc) fast paths: which build a package may use, and only a fresh one.

Security: a package uses compiled modules only when the build's stamp matches, for each of
its compiled modules, the running interpreter and the bytes of the source beside it (its
SHA-256, checked whenever the file's size or mtime differs from the stamp's); anything
else (no build, an edited source, another Python, an unreadable or malformed stamp,
``POSTWARDEN_PURE=1``) loads the pure-Python modules. The directory is the venv's own
(``<sys.prefix>/postwarden-compiled``) or ``$POSTWARDEN_COMPILED_DIR``: a directory its owner
controls, as the venv itself is.
Standards: PEP 302/451 package ``__path__`` (the compiled directory is searched first);
mypyc extension modules, built by scripts/build_compiled.py.

Theory of operation: ``scripts/build_compiled.py`` compiles each package's hot modules
(``PACKAGES``) with mypyc into ``<dir>/postwarden/<package>/``, one library per package, and
writes one stamp per package, ``<dir>/stamp-<package>.txt``, last: a line ``python <tag>``,
then per module ``<file> <size> <mtime_ns> <sha256>``. When the package is first imported,
its ``__init__`` calls ``use_compiled``: each extension must be present and each source is
stat()ed; where size and mtime equal the stamp's, its hash is taken as unchanged, else the
file is hashed. All match: the compiled directory goes first in the package's ``__path__``.
A package's compiled modules are all-or-nothing (mypyc compiles them against each other),
so one stale module makes every module of that package load from source; the other
package is not affected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableSequence, Sequence
from importlib.machinery import EXTENSION_SUFFIXES

# package -> its modules compiled together (what the build script compiles)
PACKAGES = {
    "logs": ("events", "patterns", "parse_builders", "parse", "summary", "summary_parallel"),
    "policy": ("protocol", "model", "state", "greylist", "service", "server"),
}
SHARED_LIBRARY = "_compiled__mypyc"   # mypyc's code for one package (its group's library)
_SOURCE_ROOT = os.path.dirname(os.path.abspath(__file__))


def python_tag() -> str:
    """The interpreter an extension module is built for (implementation, version, ABI)."""
    return f"{sys.implementation.cache_tag}{EXTENSION_SUFFIXES[0]}"


def compiled_root() -> str:
    return os.environ.get("POSTWARDEN_COMPILED_DIR") or os.path.join(
        sys.prefix, "postwarden-compiled")


def stamp_name(package: str) -> str:
    return f"stamp-{package}.txt"


def source_dir(package: str) -> str:
    return os.path.join(_SOURCE_ROOT, package)


def source_sha256(package: str, name: str) -> str:
    from hashlib import sha256  # only when a source's size or mtime moved (~4 ms import)

    with open(os.path.join(source_dir(package), name), "rb") as f:
        return sha256(f.read()).hexdigest()


def stamp_matches(root: str, package: str) -> bool:
    """Whether ``root``'s stamp for ``package`` names this interpreter and the current
    sources, and every extension is there."""
    try:
        with open(os.path.join(root, stamp_name(package)), encoding="ascii") as f:
            lines = f.read().splitlines()
    except (OSError, ValueError):
        return False
    if not lines or lines[0] != f"python {python_tag()}":
        return False
    modules = PACKAGES[package]
    rows = [line.split(" ") for line in lines[1:]]
    if sorted(row[0] for row in rows) != sorted(f"{m}.py" for m in modules):
        return False
    for row in rows:
        if len(row) != 4 or not _same_source(package, *row):
            return False
    return _all_built(os.path.join(root, "postwarden", package), modules)


def _all_built(directory: str, modules: Sequence[str]) -> bool:
    # a missing extension would mix a source module into the compiled set
    try:
        present = set(os.listdir(directory))
    except OSError:
        return False
    suffix = EXTENSION_SUFFIXES[0]
    return all(f"{m}{suffix}" in present for m in (*modules, SHARED_LIBRARY))


def _same_source(package: str, name: str, size: str, mtime_ns: str, digest: str) -> bool:
    try:
        st = os.stat(os.path.join(source_dir(package), name))
        if str(st.st_size) == size and str(st.st_mtime_ns) == mtime_ns:
            return True
        return source_sha256(package, name) == digest
    except OSError:
        return False


def use_compiled(package: str, path: MutableSequence[str]) -> bool:
    """Put the package's fresh compiled build first on its ``__path__``; whether it did."""
    if os.environ.get("POSTWARDEN_PURE", "") not in ("", "0"):
        return False
    root = compiled_root()
    if not stamp_matches(root, package):
        return False
    path.insert(0, os.path.join(root, "postwarden", package))
    return True
