"""Apply one ``Change`` to main.cf and master.cf in memory, touching only what it names.

Security: the text edited is the operator's configuration; the edits go through
``MainCf`` and ``MasterCf``, which refuse a name or value that would add a line. Nothing is
written to disk here.
Standards: postconf(5) list values and restriction lists; master(5) ``-o`` overrides.

Theory of operation
-------------------
A list item is inserted into the list the service really uses. When that list is not
written anywhere (its value is Postfix's default), the effective value is written out
first, so the default's items are kept and the new one joins them; ``$name`` references in
a written value stay as they are. Items are compared by their restriction name and
argument, so ``check_client_access hash:/etc/postfix/access`` is one item.
"""

from __future__ import annotations

from postwarden.audit.fixes import Change, Op
from postwarden.audit.restrictions import Restriction, parse
from postwarden.errors import PostwardenError
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.maincf import MainCf
from postwarden.postfix.mastercf import MasterCf, Service


class HardenError(PostwardenError):
    """A change harden cannot make to this configuration."""


def apply(change: Change, config: PostfixConfig) -> None:
    """Make the change in config.main / config.master (which are edited in place)."""
    main, master = config.main, config.master
    service = _service(config, change.service) if change.service else None
    if change.op is Op.SERVICE:
        if master is None:
            raise HardenError("master.cf is missing; cannot add the service "
                              f"{change.name}")
        if master.get(*change.name.split("/", 1)) is None:
            master.add_service(change.value)
    elif change.op is Op.DEDUP:
        main.remove(change.name, keep_last=True)
    elif change.op is Op.SET:
        _set(main, master, service, change.name, change.value)
    elif change.op is Op.UNSET:
        if service is not None and master is not None:
            master.remove_override(service.name, service.type, change.name)
        else:
            main.remove(change.name)
    else:
        _edit_list(change, config, service)


def _service(config: PostfixConfig, key: str) -> Service:
    name, _, type_ = key.partition("/")
    found = config.master.get(name, type_ or "inet") if config.master else None
    if found is None:
        raise HardenError(f"master.cf has no service {key}")
    return found


def _set(main: MainCf, master: MasterCf | None, service: Service | None, name: str,
         value: str) -> None:
    if service is not None and master is not None:
        master.set_override(service.name, service.type, name, value)
    else:
        main.set(name, value, wrap=True)


def _current(config: PostfixConfig, name: str, service: Service | None) -> str:
    """The list as written where it is edited; the effective value when not written."""
    if service is not None and name in service.overrides():
        return service.overrides()[name]
    written = config.main.get(name)
    if written is not None:
        return written
    return config.value(name, service=service) or ""


def _edit_list(change: Change, config: PostfixConfig, service: Service | None) -> None:
    name = change.name
    current = parse(_current(config, name, service))
    item = parse(change.value)
    if change.op is Op.REMOVE:
        kept = [r for r in current if not _same(r, item)]
        if len(kept) != len(current):
            _write_list(config, service, name, kept, current, removed=item)
        return
    item = [r for r in item if _position_of(current, [r]) is None]  # those not there yet
    if not item:
        return
    index = _insertion_point(current, change.after, change.before)
    _write_list(config, service, name, [*current[:index], *item, *current[index:]], current,
                added=(item, index))


def _same(candidate: Restriction, item: list[Restriction]) -> bool:
    return any(candidate.name == r.name and candidate.argument == r.argument for r in item)


def _position_of(items: list[Restriction], item: list[Restriction]) -> int | None:
    for index, candidate in enumerate(items):
        if _same(candidate, item):
            return index
    return None


def _insertion_point(items: list[Restriction], after: tuple[str, ...],
                     before: tuple[str, ...]) -> int:
    """Right after the last of ``after``; else before the first of ``before``; else the end.

    XXX: when the list has a ``before`` item ahead of an ``after`` item, ``after`` wins; the
    remedies only name pairs whose order Postfix's own documentation gives.
    """
    names = [r.name for r in items]
    lasts = [i for i, n in enumerate(names) if n in after]
    if lasts:
        return lasts[-1] + 1
    firsts = [i for i, n in enumerate(names) if n in before]
    return firsts[0] if firsts else len(items)


def _text(items: list[Restriction]) -> str:
    return ", ".join(r.text() for r in items)


def _write_list(config: PostfixConfig, service: Service | None, name: str,
                items: list[Restriction], old: list[Restriction], *,
                added: tuple[list[Restriction], int] | None = None,
                removed: list[Restriction] | None = None) -> None:
    """Write the new list: a line-level edit of main.cf where possible, else a rewrite."""
    main = config.main
    if service is not None and name in service.overrides() and config.master is not None:
        config.master.set_override(service.name, service.type, name, _text(items))
        return
    if name not in main:
        main.set(name, _text(items), wrap=True)
        return
    if removed is not None:
        for r in old:
            if _same(r, removed):
                main.remove_from_list(name, r.text())
        return
    assert added is not None
    item, index = added
    definition = main.find(name)[-1]
    if definition.first == definition.last:  # one line: write it again, wrapped if long
        main.set(name, _text(items), wrap=True)
        return
    main.add_to_list(name, _text(item), before=old[index].name
                     if index < len(old) and old[index].argument is None else None)
    if _position_of(parse(main.get(name) or ""), item) != index:
        main.set(name, _text(items), wrap=True)  # the neighbour has an argument: rewrite
