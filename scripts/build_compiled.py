"""Build the compiled fast path of ``postwarden logs summary``: the hot log modules as C
extensions (mypyc), outside the source tree, with a stamp naming the sources they came from.

Security: compiles only this repository's modules named in ``postwarden.logs.COMPILED_MODULES``,
with the C compiler found on PATH; writes only under the output directory (default
``<sys.prefix>/postwarden-compiled``, a symlink to the current build), building into a fresh
sibling directory and pointing the symlink at it in one rename, so that a reader never sees
a half-built set or none; the stamp is written last (temp + fsync + rename).
Standards: mypyc (part of mypy); PEP 3149 extension file names (the ABI tag is part of the
file names and of the stamp).

Theory of operation: ``postwarden.logs`` (its ``__init__``) puts ``<out>/postwarden/logs`` in
front of the package's ``__path__`` only when the stamp names the running interpreter and
the current bytes of every compiled source; so an edited source makes the whole compiled
set ignored until this script runs again. With nothing changed a run only checks the stamp
(and rewrites it when only the files' mtimes moved) and exits. Exit codes: 0 built or up to
date, 3 no C compiler, 1 a build failure (in both, pure Python stays in use).

Usage: ``.venv/bin/python scripts/build_compiled.py [--out DIR] [--force] [--check]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import postwarden.logs as logs

HERE = Path(__file__).resolve().parent.parent
PACKAGE = HERE / "src" / "postwarden" / "logs"
# mypyc names the group's shared library GROUP + "__mypyc": postwarden.logs.SHARED_LIBRARY
GROUP = "postwarden.logs._compiled"
EXIT_NO_COMPILER = 3


def stamp_text() -> str:
    """The stamp of the current sources (postwarden.logs reads it: its theory of operation)."""
    rows = [f"python {logs.python_tag()}"]
    for module in logs.COMPILED_MODULES:
        name = f"{module}.py"
        st = (PACKAGE / name).stat()
        rows.append(f"{name} {st.st_size} {st.st_mtime_ns} {logs.source_sha256(name)}")
    return "\n".join(rows) + "\n"


def default_out() -> Path:
    return Path(logs.compiled_root())


def write_stamp(directory: Path, text: str) -> None:
    """temp + fsync + rename: a reader sees the old stamp or the new one."""
    fd, temp = tempfile.mkstemp(prefix=".stamp-", dir=directory)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(temp, 0o644)               # not a secret: any user of the venv reads it
    os.replace(temp, directory / logs.STAMP)


def build(out: Path) -> None:
    """Compile the modules into a fresh directory beside ``out``, then swap it into place."""
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped]  # no stubs here

    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = stamp_text()
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".build-", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix=out.name + ".work-", dir=out.parent))
    cwd = Path.cwd()
    try:
        os.chdir(HERE)                  # mypy reads pyproject.toml and finds src/ from here
        paths = [f"src/postwarden/logs/{module}.py" for module in logs.COMPILED_MODULES]
        extensions = mypycify(paths, opt_level="3", group_name=GROUP,
                              target_dir=str(work / "c"))
        dist = Distribution({"name": "postwarden-compiled", "ext_modules": extensions})
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(staging)
        command.build_temp = str(work / "o")
        command.parallel = os.cpu_count() or 1
        dist.run_command("build_ext")
        if stamp_text() != stamp:
            raise RuntimeError("the sources changed during the build: run it again")
        write_stamp(staging, stamp)
        if not logs.stamp_matches(str(staging)):   # what postwarden.logs will check
            raise RuntimeError(f"the build in {staging} is incomplete")
        staging.chmod(0o755)            # mkdtemp's 0700: every user of the venv may import
        _swap(staging, out)
        staging = work                  # in use now: not to be removed below
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, out: Path) -> None:
    """``out`` becomes a symlink to ``staging`` in one rename: a process importing meanwhile
    finds the old build or the new one, never no directory (that would make it mix compiled
    and source modules). The build it replaces is removed (a process that loaded it keeps
    its mapped files)."""
    link = out.with_name(f".{out.name}.link-{os.getpid()}")
    link.unlink(missing_ok=True)
    os.symlink(staging.name, link)
    old = out.parent / os.readlink(out) if out.is_symlink() else None
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)              # a build from before the symlink layout
    os.replace(link, out)
    if old is not None and old.resolve() != staging.resolve():
        shutil.rmtree(old, ignore_errors=True)


def compiler() -> str | None:
    cc = os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("cc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to build (default: $POSTWARDEN_COMPILED_DIR or "
                             "<sys.prefix>/postwarden-compiled)")
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    parser.add_argument("--check", action="store_true",
                        help="only say whether the build is up to date (exit 0) or not (1)")
    args = parser.parse_args()
    out: Path = (args.out or default_out()).absolute()  # not resolve(): it is a symlink
    fresh = logs.stamp_matches(str(out))
    if args.check:
        print(f"compiled log modules in {out}: {'up to date' if fresh else 'missing or stale'}")
        return 0 if fresh else 1
    if fresh and not args.force:
        current = stamp_text()
        if (out / logs.STAMP).read_text(encoding="ascii") != current:
            write_stamp(out, current)   # same bytes, new mtimes (a checkout): no hashing later
        print(f"compiled log modules: up to date ({out})")
        return 0
    if compiler() is None:
        print("compiled log modules: no C compiler found; postwarden runs as pure Python")
        return EXIT_NO_COMPILER
    started = time.monotonic()
    try:
        build(out)
    except Exception as exc:           # any build failure: pure Python stays in use
        print(f"compiled log modules: build failed ({type(exc).__name__}: {exc}); "
              "postwarden runs as pure Python", file=sys.stderr)
        return 1
    print(f"compiled log modules: built in {time.monotonic() - started:.0f} s ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
