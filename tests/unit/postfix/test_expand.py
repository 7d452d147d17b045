"""Expansion: every form postconf(5) documents, Postfix's quirks, and the error cases."""

from __future__ import annotations

import pytest

from postwarden.postfix.expand import ExpansionError, compat_level, expand, references

PARAMS = {
    "a": "alpha",
    "empty": "",
    "nested": "$a-$a",
    "compatibility_level": "3.6",
    "dollar": "$$x",
    "self": "$self",
    "ping": "$pong",
    "pong": "$ping",
}


def ex(value: str) -> str:
    return expand(value, PARAMS.get).text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$a", "alpha"),
        ("${a}", "alpha"),
        ("$(a)", "alpha"),
        ("x$a.y", "xalpha.y"),
        ("$$", "$"),
        ("$$a", "$a"),
        ("$dollar", "$x"),  # $$ in a looked-up value is still one literal $
        ("$nested", "alpha-alpha"),
        ("${a?yes}", "yes"),
        ("${a?{yes}}", "yes"),
        ("${empty?yes}", ""),
        ("${undefined?yes}", ""),
        # ${name:value} is not a shell default: value only when name is empty or undefined.
        ("${a:fallback}", ""),
        ("${empty:fallback}", "fallback"),
        ("${undefined:{fallback}}", "fallback"),
        ("${a?{A}:{B}}", "A"),
        ("${empty?{A}:{B}}", "B"),
        ("${a ? {A} : {B}}", "A"),
        # Without braces the text after ? runs to the end, ':' included (Postfix 2.11).
        ("${a?x:y}", "x:y"),
        ("${a?$a}", "alpha"),
        ("${{$a} == {alpha} ? {eq} : {ne}}", "eq"),
        ("${{$a} != {alpha} ? {eq} : {ne}}", "ne"),
        ("${{10} < {9}?{lt}:{ge}}", "ge"),  # all digits: numeric
        ("${{10} < {9a}?{lt}:{ge}}", "lt"),  # else bytes
        ("${{2} <= {2}?{y}}", "y"),
        ("${{3} >= {4}?{y}:{n}}", "n"),
        ("${{3} > {4}?{y}:{n}}", "n"),
        ("${{$compatibility_level} <level {2} ? {subnet} : {host}}", "host"),
        ("${{$compatibility_level} <level {3.10} ? {old} : {new}}", "old"),
        ("${{3.6} ==level {3.6.0}?{same}}", "same"),
        ("${{$a} == {alpha}}", "true"),
        ("$undefined", ""),
    ],
)
def test_forms(value: str, expected: str) -> None:
    assert ex(value) == expected


def test_undefined_names_are_reported() -> None:
    result = expand("$a $nothere ${alsonot}", PARAMS.get)
    assert result.text == "alpha  "
    assert result.undefined == ["nothere", "alsonot"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${a", "truncated macro reference"),
        ("$(a", "truncated macro reference"),
        ("$ a", "empty macro name"),
        ("trailing $", "empty macro name"),
        ("${a b}", "attribute name syntax error"),
        ("${{a} ~ {b}}", "expected at"),
        ("${{a} == b}", "{expression}"),
        ("${{a} == {b} x}", '"?" or ":" expected'),
        ("${{a} ==foo {b}}", "bad operator suffix"),
        ("${a?{x}y}", '":" expected'),
        ("${a:{x}y}", "unexpected input"),
        ("${{$a} <level {2}}", "malformed compatibility level"),
        ("${{a} == {b}", "truncated"),
    ],
)
def test_syntax_errors(value: str, message: str) -> None:
    with pytest.raises(ExpansionError, match=message.replace("{", r"\{").replace("?", r"\?")):
        expand(value, PARAMS.get)


@pytest.mark.parametrize("value", ["$self", "$ping", "${{$self} == {x}}"])
def test_loops_are_errors_not_hangs(value: str) -> None:
    with pytest.raises(ExpansionError, match="unreasonable macro call nesting"):
        expand(value, PARAMS.get)


def test_references_visit_every_branch() -> None:
    assert references("${a?{$b}:{$c}} ${{$d} == {x}} $$e ${f:$g}") == ["a", "b", "c", "d", "f",
                                                                          "g"]


def test_references_survive_syntax_errors() -> None:
    assert references("$a ${b") == ["a"]


def test_compat_level_encoding_orders_versions() -> None:
    assert compat_level("2") < compat_level("3.6") < compat_level("3.10") < compat_level("10")
    with pytest.raises(ExpansionError):
        compat_level("3.x")
