"""``logs watch`` and ``logs metrics``: detectors, bans, alerts and the Prometheus exporter."""

from __future__ import annotations

from postwarden.cli.common import Subparsers


def add(actions: Subparsers) -> None:
    del actions
