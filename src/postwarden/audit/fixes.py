"""Fixes as data: the changes that answer a rule, for ``postwarden harden`` to apply.

Security: records and pure functions only; nothing here reads or writes a file. Values the
operator gives (host name, certificate paths) reach a change as they are; the editor that
applies changes refuses anything that would add a line to main.cf or master.cf.
Standards: postconf(5) (list values, restriction lists), master(5) (``-o`` overrides).

Theory of operation
-------------------
A rule's ``fix`` tells a person what to do; its ``remedy`` tells ``harden`` the same thing
as ``Change`` records, so the profile of a role is whatever the rules of that role ask for
and there is no second list to keep in step. A remedy is a function of the audit
``Context``, one ``Hit`` of the rule and the operator's ``Inputs``; it returns changes, and
``Needs`` for each input it would have used but was not given (harden then says so and
leaves that setting out: nothing is guessed or written as a placeholder).

Where a change lands follows the hit. A setting the hit's service overrides with ``-o`` is
changed there; otherwise main.cf is changed, which every service that does not override
it inherits. ``service_setting`` always writes the ``-o`` (a submission service's TLS
policy must not leak into the MX). An ``INSERT`` puts a list item after the last of
``after`` and before the first of ``before`` that the list holds, so an operator's own
entries (a ``check_client_access`` map) keep their place.

Rules with ``takes`` name the inputs they consume; harden runs their remedy once whenever
such an input is given, even when the rule reports nothing, so that ``--hostname`` changes a
host name that is already set, and an input no rule of the role takes is reported unused.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from postwarden.audit.context import Context
    from postwarden.audit.model import Hit


class Op(enum.Enum):
    SET = "set"          # name = value (main.cf), or -o name=value on a service
    UNSET = "unset"      # delete the definitions (main.cf) or the -o (service)
    INSERT = "insert"    # add an item to a list value at the right position
    REMOVE = "remove"    # delete an item from a list value
    DEDUP = "dedup"      # keep only the effective definition of a main.cf name
    SERVICE = "service"  # add a master.cf entry (name: "submission/inet", value: its text)


@dataclass(frozen=True)
class Change:
    op: Op
    name: str
    value: str = ""
    service: str | None = None  # "submission/inet": that service's -o; None: main.cf
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()

    def describe(self) -> str:
        where = f"{self.service}: -o " if self.service else ""
        if self.op is Op.SET:
            return f"{where}{self.name} = {self.value}".rstrip()
        if self.op is Op.UNSET:
            return f"{where}remove {self.name}"
        if self.op is Op.INSERT:
            return f"{where}{self.name}: add {self.value}"
        if self.op is Op.REMOVE:
            return f"{where}{self.name}: remove {self.value}"
        if self.op is Op.DEDUP:
            return f"{self.name}: keep only the effective definition"
        return f"master.cf: add service {self.name}"


@dataclass(frozen=True)
class Needs:
    """An input the remedy would have used: ``setting`` is its key ('tls-cert')."""

    setting: str
    parameter: str


INPUT_KEYS = ("hostname", "domain", "tls-cert", "tls-key", "sasl")
EXTRAS = ("policy", "milter")
SASL_TYPES = ("dovecot", "cyrus")


@dataclass(frozen=True)
class Inputs:
    """What only the operator can say; None when not given."""

    hostname: str | None = None
    domain: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    sasl: str | None = None
    extras: frozenset[str] = field(default_factory=frozenset)  # --with policy, milter

    def get(self, key: str) -> str | None:
        if key in EXTRAS:
            return key if key in self.extras else None
        value: str | None = getattr(self, key.replace("-", "_"))
        return value

    def given(self) -> list[str]:
        return [k for k in (*INPUT_KEYS, *EXTRAS) if self.get(k) is not None]


Outcome = Change | Needs
Remedy = Callable[["Context", "Hit", Inputs], Iterable[Outcome]]
Value = str | Callable[["Context", Inputs], "str | Needs"]


def scope(ctx: Context, hit: Hit, name: str) -> str | None:
    """The service whose ``-o`` holds name for this hit, or None for main.cf."""
    if hit.service is None:
        return None
    service = ctx.service(*hit.service.split("/", 1))
    if service is not None and name in service.overrides():
        return hit.service
    return None


def _resolve(value: Value, ctx: Context, inputs: Inputs) -> str | Needs:
    return value if isinstance(value, str) else value(ctx, inputs)


def setting(name: str, value: Value) -> Remedy:
    """name = value where the hit's service gets it from (its -o, else main.cf)."""

    def remedy(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
        resolved = _resolve(value, ctx, inputs)
        if isinstance(resolved, Needs):
            yield resolved
        else:
            yield Change(Op.SET, name, resolved, scope(ctx, hit, name))

    return remedy


def service_setting(name: str, value: Value) -> Remedy:
    """-o name=value on the hit's service (main.cf when the hit names none)."""

    def remedy(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
        resolved = _resolve(value, ctx, inputs)
        if isinstance(resolved, Needs):
            yield resolved
        else:
            yield Change(Op.SET, name, resolved, hit.service)

    return remedy


def unset(name: str) -> Remedy:
    """Back to the default: delete the definition where the hit's service gets it from."""

    def remedy(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
        yield Change(Op.UNSET, name, "", scope(ctx, hit, name))

    return remedy


def insert(name: str, item: str, *, after: Iterable[str] = (),
           before: Iterable[str] = ()) -> Remedy:
    """Add item to the list name, after the last of ``after`` and before the first of
    ``before`` present (restriction names); at the end when neither is present."""

    def remedy(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
        yield Change(Op.INSERT, name, item, scope(ctx, hit, name), tuple(after),
                     tuple(before))

    return remedy


def remove_item(name: str, item: str) -> Remedy:
    def remedy(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
        yield Change(Op.REMOVE, name, item, scope(ctx, hit, name))

    return remedy


def chain(*remedies: Remedy) -> Remedy:
    """All of the remedies, in order."""

    def remedy(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
        for one in remedies:
            yield from one(ctx, hit, inputs)

    return remedy


def from_input(key: str, parameter: str) -> Callable[[Context, Inputs], str | Needs]:
    """A value the operator gives with --KEY (or KEY in the settings file)."""

    def value(ctx: Context, inputs: Inputs) -> str | Needs:
        given = inputs.get(key)
        return given if given is not None else Needs(key, parameter)

    return value
