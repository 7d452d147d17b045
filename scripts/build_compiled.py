"""Build the compiled fast paths of ``postwarden logs summary`` and ``postwarden policyd``: their
hot modules as C extensions (mypyc), outside the source tree, with a stamp per package naming
the sources they came from.

Security: compiles only this repository's modules named in ``postwarden.compiled.PACKAGES``,
with the C compiler found on PATH; writes only under the output directory (default
``<sys.prefix>/postwarden-compiled``, a symlink to the current build), building into a fresh
sibling directory and pointing the symlink at it in one rename, so that a reader never sees
a half-built set or none; the stamps are written last (temp + fsync + rename).
Standards: mypyc (part of mypy); PEP 3149 extension file names (the ABI tag is part of the
file names and of the stamp).

Theory of operation: each package (``postwarden.logs``, ``postwarden.policy``: their
``__init__``, through ``postwarden.compiled``) puts ``<out>/postwarden/<package>`` in front
of its ``__path__`` only when its stamp names the running interpreter and the current bytes
of every compiled source of that package; so an edited source makes that package's whole
compiled set ignored until this script runs again. Each package is one mypyc group (one
shared library), so the packages do not depend on each other's builds. With nothing changed
a run only checks the stamps (and rewrites them when only the files' mtimes moved) and
exits; when one package is stale, both are built again. Exit codes: 0 built or up to
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

from postwarden import compiled

HERE = Path(__file__).resolve().parent.parent
EXIT_NO_COMPILER = 3


def group(package: str) -> str:
    """The mypyc group of a package; mypyc names its shared library GROUP + "__mypyc"
    (``postwarden.compiled.SHARED_LIBRARY``)."""
    return f"postwarden.{package}._compiled"


def stamp_text(package: str) -> str:
    """The stamp of a package's current sources (``postwarden.compiled`` reads it)."""
    rows = [f"python {compiled.python_tag()}"]
    for module in compiled.PACKAGES[package]:
        name = f"{module}.py"
        st = (Path(compiled.source_dir(package)) / name).stat()
        rows.append(f"{name} {st.st_size} {st.st_mtime_ns} "
                    f"{compiled.source_sha256(package, name)}")
    return "\n".join(rows) + "\n"


def stamps() -> dict[str, str]:
    return {package: stamp_text(package) for package in compiled.PACKAGES}


def fresh(out: Path) -> bool:
    return all(compiled.stamp_matches(str(out), package) for package in compiled.PACKAGES)


def default_out() -> Path:
    return Path(compiled.compiled_root())


def write_stamp(directory: Path, name: str, text: str) -> None:
    """temp + fsync + rename: a reader sees the old stamp or the new one."""
    fd, temp = tempfile.mkstemp(prefix=".stamp-", dir=directory)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(temp, 0o644)               # not a secret: any user of the venv reads it
    os.replace(temp, directory / name)


def build(out: Path) -> None:
    """Compile every package into a fresh directory beside ``out``, then swap it into
    place."""
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped]  # no stubs here

    out.parent.mkdir(parents=True, exist_ok=True)
    before = stamps()
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".build-", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix=out.name + ".work-", dir=out.parent))
    cwd = Path.cwd()
    try:
        os.chdir(HERE)                  # mypy reads pyproject.toml and finds src/ from here
        groups: list[tuple[list[str], str | None]] = [
            ([f"src/postwarden/{package}/{module}.py" for module in modules], group(package))
            for package, modules in compiled.PACKAGES.items()]
        extensions = mypycify([path for paths, _ in groups for path in paths],
                              opt_level="3", separate=groups, target_dir=str(work / "c"))
        dist = Distribution({"name": "postwarden-compiled", "ext_modules": extensions})
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(staging)
        command.build_temp = str(work / "o")
        command.parallel = os.cpu_count() or 1
        dist.run_command("build_ext")
        if stamps() != before:
            raise RuntimeError("the sources changed during the build: run it again")
        for package, text in before.items():
            write_stamp(staging, compiled.stamp_name(package), text)
        if not fresh(staging):          # what the packages will check
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
    up_to_date = fresh(out)
    if args.check:
        print(f"compiled modules in {out}: {'up to date' if up_to_date else 'missing or stale'}")
        return 0 if up_to_date else 1
    if up_to_date and not args.force:
        for package, current in stamps().items():
            stamp = out / compiled.stamp_name(package)
            if stamp.read_text(encoding="ascii") != current:  # same bytes, new mtimes (a
                write_stamp(out, stamp.name, current)         # checkout): no hashing later
        print(f"compiled modules: up to date ({out})")
        return 0
    if compiler() is None:
        print("compiled modules: no C compiler found; postwarden runs as pure Python")
        return EXIT_NO_COMPILER
    started = time.monotonic()
    try:
        build(out)
    except Exception as exc:           # any build failure: pure Python stays in use
        print(f"compiled modules: build failed ({type(exc).__name__}: {exc}); "
              "postwarden runs as pure Python", file=sys.stderr)
        return 1
    print(f"compiled modules: built in {time.monotonic() - started:.0f} s ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
