"""Fixtures for integration tests that run a private Postfix instance.

Security: each instance lives in a fresh directory made here and removed afterwards; it
listens on loopback only.
Standards: none.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden.postfix.instance import postfix_available


@pytest.fixture(autouse=True)
def _postfix_required(request: pytest.FixtureRequest) -> None:
    """Fail, never skip, a postfix-marked test on a machine without Postfix or root."""
    if request.node.get_closest_marker("postfix") is None:
        return
    assert postfix_available(), (
        "Postfix is not installed (no postfix/postconf in PATH or /usr/sbin): "
        "run scripts/setup.sh as root; postfix-marked tests must not be skipped")
    assert os.geteuid() == 0, "postfix-marked tests start Postfix and so must run as root"


@pytest.fixture
def new_root() -> Iterator[Callable[[], Path]]:
    """Make fresh directories the postfix user can reach; all are removed at teardown.

    Not tmp_path: pytest keeps it under a 0700 directory, which the master cannot enter
    after dropping privileges (theory point 4 in postwarden.postfix.instance).
    """
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="postwarden-instance-")))
        return made[-1]

    yield make
    for root in made:
        shutil.rmtree(root, ignore_errors=True)
