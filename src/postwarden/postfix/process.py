"""Running Postfix programs, finding the processes of one Postfix instance, and its error.

Security: commands are argument lists run with a fixed, minimal environment (no shell, none
of the caller's variables); output kept is bounded (MAX_OUTPUT). Processes are recognised
only by facts /proc gives about them (process group, MAIL_CONFIG), never by name.
Standards: postfix(1) (MAIL_CONFIG), proc(5).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from postwarden.errors import PostwardenError

MAX_OUTPUT = 64 * 1024
POLL = 0.05
# The environment for Postfix commands: theirs to build (postfix(1) sets MAIL_CONFIG and
# import_environment filters the rest), so none of the caller's environment leaks in.
COMMAND_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


class InstanceError(PostwardenError):
    """A private Postfix instance could not be set up, started, stopped or observed."""

    def __init__(self, reason: str, *, output: str = "", log_tail: str = "") -> None:
        self.reason = reason
        self.output = output
        self.log_tail = log_tail
        parts = [reason]
        if output.strip():
            parts.append("command output:\n" + _indent(output))
        if log_tail.strip():
            parts.append("log tail:\n" + _indent(log_tail))
        super().__init__("\n".join(parts))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.strip("\n").splitlines())


@dataclass(frozen=True)
class CommandResult:
    """What a Postfix command said (terminal output, CR removed) and how it ended."""

    returncode: int | None  # None: killed at the timeout
    output: str


def run_on_terminal(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run a command with stdout and stderr on a pseudo-terminal and collect what it says.

    Postfix commands print errors only when stderr is a terminal (instance.py, point 5). Reading
    stops when the command exits, not at end of file: a daemon it starts may keep the
    terminal open. The output kept is bounded by MAX_OUTPUT.
    """
    leader, follower = os.openpty()
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower,
                                    stderr=follower, env=COMMAND_ENV, start_new_session=True)
        finally:
            os.close(follower)  # else the terminal never reports end of output
        while True:
            exited = proc.poll() is not None
            ready, _, _ = select.select([leader], [], [], 0 if exited else POLL)
            data = _read_terminal(leader) if ready else b""
            output += data
            del output[:-MAX_OUTPUT]
            if exited and (not data or time.monotonic() >= deadline):
                break
            if not exited and time.monotonic() >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return CommandResult(None, _terminal_text(output))
    finally:
        os.close(leader)
    return CommandResult(proc.returncode, _terminal_text(output))


def _read_terminal(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError as error:
        # Linux reports EIO once every writer has closed the terminal: end of output.
        if error.errno == errno.EIO:
            return b""
        raise


def _terminal_text(data: bytes | bytearray) -> str:
    return data.decode("utf-8", "replace").replace("\r\n", "\n")


def instance_pids(config_dir: str, pgid: int | None) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        state = _process_state(pid)
        if state is None or state[0] in "ZX":
            continue
        if state[1] == pgid or process_config(pid) == config_dir:
            pids.append(pid)
    return sorted(pids)


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) from /proc/PID/stat, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold anything: split after the last ")".
    fields = text[text.rfind(")") + 2:].split()
    return fields[0], int(fields[2])


def process_config(pid: int) -> str | None:
    """The MAIL_CONFIG a live process runs with, or None."""
    state = _process_state(pid)
    if state is None or state[0] in "ZX":
        return None
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(b"MAIL_CONFIG="):
            return item[len(b"MAIL_CONFIG="):].decode("utf-8", "replace")
    return None


def port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the master, ignore TIME_WAIT leftovers: only a listener makes it "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def free_port(address: str) -> int:
    """A TCP port nobody listens on at ``address`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port
