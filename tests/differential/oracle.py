"""Run the real postconf and postwarden on one config directory and say whether they agree.

Security: postconf runs from its fixed Debian path with an argument list (never a shell), a
minimal environment and a timeout; the directories it reads are per-test temporary copies.
Standards: postconf(1) output of ``-n -x -d -M -P -h`` and named lookups (Postfix 3.7);
Debian's postinst for how a fresh main.cf is built.

Theory of operation
-------------------
The real postconf is the oracle. For one configuration directory and one flag list we run
``/usr/sbin/postconf -c DIR FLAGS`` as a subprocess and ``postwarden.cli.main(["config",
"show", "-c", DIR, *FLAGS])`` in this process, with ``sys.stdout``/``sys.stderr`` swapped
for byte-backed text streams (UTF-8, ``surrogateescape``, so bytes that are not UTF-8 in a
main.cf survive the round trip). The two agree when

* postconf exits 0, postwarden returns 0 and both standard outputs are the same bytes; or
* postconf exits non-zero (a fatal error in the input) and postwarden returns 2 without
  having rejected its own command line (an argparse usage error is not agreement).

Standard error is never compared: postconf prints its warnings in hash-table order, a
different order from run to run, and repeats them once per pass over main.cf.

A corpus directory describes its input with these files:

``main.cf`` / ``master.cf``
    copied as they are;
``use-debian-main``
    main.cf is built as Debian's postinst builds it for a new install: main.cf.debian,
    then main.cf.tls, then ``postconf -e`` of ``smtpd_relay_restrictions``; a committed
    ``main.cf.append`` is then added to the end;
``use-debian-master``
    master.cf is Debian's master.cf.dist, followed by a committed ``master.cf.append``;
``lookup-names``
    parameter names (whitespace separated, ``#`` comments) for the named-lookup cases;
``about``
    one line saying what the directory tests.

postconf sleeps until main.cf is at least about two seconds old before it reads it (Postfix
guards against reading a file that is still being written), so every file we write is
back-dated by a minute; without that each postconf run costs two seconds.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from postwarden import cli
from postwarden.postfix import debian

POSTCONF = Path("/usr/sbin/postconf")
DEBIAN_MAIN_PARTS = debian.MAIN_PARTS
DEBIAN_MASTER = debian.MASTER

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
FAILING_CORPUS = HERE / "corpus-postconf-fails"

USE_DEBIAN_MAIN = debian.USE_MAIN
USE_DEBIAN_MASTER = debian.USE_MASTER
MAIN_APPEND = debian.MAIN_APPEND
MASTER_APPEND = debian.MASTER_APPEND
LOOKUP_NAMES = "lookup-names"
ABOUT = "about"
CORPUS_FILES = frozenset(
    {
        "main.cf",
        "master.cf",
        USE_DEBIAN_MAIN,
        USE_DEBIAN_MASTER,
        MAIN_APPEND,
        MASTER_APPEND,
        LOOKUP_NAMES,
        ABOUT,
    }
)

POSTCONF_TIMEOUT = 60.0
BACKDATE_SECONDS = 60.0
MAX_DIFF_LINES = 120
MAX_STDERR_CHARS = 2000
EXIT_USAGE = 2


@dataclass(frozen=True)
class Run:
    """One program run: what was asked and what came out."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    usage_error: bool = False

    def text(self) -> str:
        return self.stdout.decode("utf-8", "backslashreplace")

    def error_text(self) -> str:
        shown = self.stderr.decode("utf-8", "backslashreplace")
        if len(shown) > MAX_STDERR_CHARS:
            shown = shown[:MAX_STDERR_CHARS] + "\n[... stderr cut ...]\n"
        return shown


@dataclass
class Tally:
    """How many differential cases ran and how many agreed; printed at the end of the run."""

    corpus_dirs: int = 0
    failing_dirs: int = 0
    cases: int = 0
    agreed: int = 0
    disagreed: list[str] = field(default_factory=list)
    generated: int = 0
    generated_agreed: int = 0

    def record(self, case_id: str, agreed: bool) -> None:
        self.cases += 1
        if agreed:
            self.agreed += 1
        else:
            self.disagreed.append(case_id)

    def record_generated(self, agreed: bool) -> None:
        self.generated += 1
        if agreed:
            self.generated_agreed += 1


TALLY = Tally()


def require_postconf() -> Path:
    """The real postconf, or a loud failure: these tests must never skip silently."""
    if not os.access(POSTCONF, os.X_OK):
        pytest.fail(
            f"{POSTCONF} is missing: the differential tests need Debian's postfix package "
            "(bash scripts/setup.sh installs it)",
            pytrace=False,
        )
    for part in (*DEBIAN_MAIN_PARTS, DEBIAN_MASTER):
        if not part.is_file():
            pytest.fail(f"{part} is missing: Debian's postfix package is incomplete", pytrace=False)
    return POSTCONF


def corpus_dirs(root: Path) -> list[Path]:
    """Corpus directories under root, sorted by name (collection must not need postconf)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def lookup_names(corpus_dir: Path) -> tuple[str, ...]:
    path = corpus_dir / LOOKUP_NAMES
    if not path.is_file():
        return ()
    names: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        names.extend(line.split("#", 1)[0].split())
    return tuple(names)


def backdate(path: Path) -> None:
    """Make path look a minute old, so postconf reads it at once (see the module docstring)."""
    then = time.time() - BACKDATE_SECONDS
    os.utime(path, (then, then))


def postconf_env() -> dict[str, str]:
    # postconf imports MAIL_CONFIG, MAIL_DEBUG, MAIL_LOGTAG and others from the environment;
    # give it nothing of ours so the result depends on the directory alone.
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


def materialise(corpus_dir: Path, dest: Path) -> Path:
    """Write the configuration a corpus directory describes into dest; return dest."""
    dest.mkdir(parents=True, exist_ok=True)
    debian.build(corpus_dir, dest)  # the parts built from Debian's package, as for examples
    if not (corpus_dir / USE_DEBIAN_MAIN).exists() and (corpus_dir / "main.cf").is_file():
        shutil.copyfile(corpus_dir / "main.cf", dest / "main.cf")
    if not (corpus_dir / USE_DEBIAN_MASTER).exists() and (corpus_dir / "master.cf").is_file():
        shutil.copyfile(corpus_dir / "master.cf", dest / "master.cf")
    for name in ("main.cf", "master.cf"):
        if (dest / name).exists():
            backdate(dest / name)
    return dest


def write_config(dest: Path, main_cf: bytes, master_cf: bytes | None) -> Path:
    """Write generated main.cf (and master.cf) bytes into dest, back-dated; return dest."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "main.cf").write_bytes(main_cf)
    backdate(dest / "main.cf")
    if master_cf is not None:
        (dest / "master.cf").write_bytes(master_cf)
        backdate(dest / "master.cf")
    return dest


def run_postconf(confdir: Path, flags: tuple[str, ...]) -> Run:
    argv = (str(POSTCONF), "-c", str(confdir), *flags)
    done = subprocess.run(
        list(argv),
        capture_output=True,
        timeout=POSTCONF_TIMEOUT,
        env=postconf_env(),
        check=False,
    )
    return Run(argv=argv, returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)


def _exit_status(code: object) -> int:
    # sys.exit(None) is success; sys.exit("message") prints the message and exits 1.
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


def run_postwarden(confdir: Path, flags: tuple[str, ...]) -> Run:
    """postwarden's ``config show`` in this process, its output captured as bytes."""
    argv = ("config", "show", "-c", str(confdir), *flags)
    out, err = io.BytesIO(), io.BytesIO()
    out_text = io.TextIOWrapper(
        out, encoding="utf-8", errors="surrogateescape", newline="\n", write_through=True
    )
    err_text = io.TextIOWrapper(
        err, encoding="utf-8", errors="surrogateescape", newline="\n", write_through=True
    )
    usage_error = False
    with contextlib.redirect_stdout(out_text), contextlib.redirect_stderr(err_text):
        try:
            status = cli.main(list(argv))
        except SystemExit as exc:
            # argparse exits (status 2) on a command line it does not accept; that is not
            # the "refused this configuration" that agreement on a fatal input asks for.
            status = _exit_status(exc.code)
            usage_error = True
        out_text.flush()
        err_text.flush()
    return Run(
        argv=("postwarden", *argv),
        returncode=status,
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        usage_error=usage_error,
    )


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "backslashreplace").splitlines()


def _diff(expected: Run, got: Run) -> str:
    diff = list(
        difflib.unified_diff(
            _lines(expected.stdout),
            _lines(got.stdout),
            fromfile="postconf (expected)",
            tofile="postwarden (got)",
            n=2,
            lineterm="",
        )
    )
    if not diff:
        return (
            "no line differs; the bytes do (line ends, a final newline or undecodable bytes):\n"
            f"expected {expected.stdout[-200:]!r}\ngot      {got.stdout[-200:]!r}\n"
        )
    if len(diff) > MAX_DIFF_LINES:
        diff = [*diff[:MAX_DIFF_LINES], f"[... {len(diff) - MAX_DIFF_LINES} more diff lines ...]"]
    return "\n".join(diff) + "\n"


def disagreement(expected: Run, got: Run) -> str | None:
    """None when postwarden agrees with postconf, else a readable account of how it differs."""
    if expected.returncode != 0:
        if got.returncode == EXIT_USAGE and not got.usage_error:
            return None
        return (
            f"postconf rejected this input (exit {expected.returncode}); postwarden must "
            f"exit {EXIT_USAGE} after reading it, but "
            + ("rejected its command line" if got.usage_error else f"exited {got.returncode}")
            + f"\n$ {' '.join(expected.argv)}\n{expected.error_text()}"
            + f"$ {' '.join(got.argv)}  -> exit {got.returncode}\n{got.error_text()}"
            + (f"postwarden stdout:\n{got.text()}" if got.stdout else "")
        )
    if got.returncode == 0 and got.stdout == expected.stdout:
        return None
    return (
        f"$ {' '.join(expected.argv)}\n$ {' '.join(got.argv)}\n"
        f"postconf exit 0, postwarden exit {got.returncode}"
        + (" (command line rejected)" if got.usage_error else "")
        + "\n"
        + _diff(expected, got)
        + (f"postwarden stderr:\n{got.error_text()}" if got.stderr else "")
        + (f"postconf stderr:\n{expected.error_text()}" if expected.stderr else "")
    )
