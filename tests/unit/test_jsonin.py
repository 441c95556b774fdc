"""Reading clients' JSON exactly: Decimals, no NaN, no key given twice."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, NoReturn

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.jsonin import RepeatedKey, TooDeep, loads


def _refuse(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def test_a_document_without_repeated_keys_is_read_with_decimals() -> None:
    value = loads('{"a": 1, "b": [1.5, {"c": null}], "d": "x"}', constant=_refuse)
    assert value == {"a": 1, "b": [Decimal("1.5"), {"c": None}], "d": "x"}
    assert type(value["b"][0]) is Decimal


@pytest.mark.parametrize("text", ['{"a": NaN}', "[Infinity]", "-Infinity"])
def test_nan_and_infinity_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a number"):
        loads(text, constant=_refuse)


@pytest.mark.parametrize(
    ("text", "loc", "times"),
    [
        ('{"amount": 1, "amount": 1000}', ("amount",), 2),
        ('{"a": 1, "b": 2, "a": 3, "a": 4}', ("a",), 3),
        # Of two keys an object gives twice, the one it gives first.
        ('{"b": 1, "a": 1, "a": 2, "a": 3, "b": 2}', ("b",), 2),
        ('{"params": {"x": [1, {"k": 1, "k": 2}]}}', ("params", "x", 1, "k"), 2),
        ('[{"z": 1}, {"b": 1, "b": 1}]', (1, "b"), 2),
        # The first object in document order, however deep; an object before those
        # within it.
        ('{"a": {"x": 1, "x": 2}, "b": {"y": 1, "y": 1}}', ("a", "x"), 2),
        ('{"a": {"b": {"c": {"d": 1, "d": 2}}}, "e": {"f": 1, "f": 2}}', ("a", "b", "c", "d"), 2),
        ('{"a": {"b": {"c": {"d": 1, "d": 2}}}, "e": 1, "e": 2}', ("e",), 2),
        # A value dropped for the key's later one is itself not in the document: the
        # object that gives the key twice is named.
        ('{"a": {"x": 1, "x": 2}, "a": 5}', ("a",), 2),
        ('{"a": [{"x": 1, "x": 2}], "a": [{"y": 1}]}', ("a",), 2),
    ],
)
def test_a_key_given_twice_is_named_with_its_place(
    text: str, loc: tuple[Any, ...], times: int
) -> None:
    with pytest.raises(RepeatedKey) as raised:
        loads(text, constant=_refuse)
    assert raised.value.loc == loc
    assert raised.value.times == times
    assert raised.value.field == ".".join(str(p) for p in loc)
    assert str(raised.value) == f"{raised.value.field}: given {times} times: give it once"
    assert isinstance(raised.value, ValueError)


def test_the_same_key_in_two_objects_is_no_repetition() -> None:
    assert loads('[{"a": 1}, {"a": 2}, {"b": {"a": 3}}]', constant=_refuse) == [
        {"a": 1},
        {"a": 2},
        {"b": {"a": 3}},
    ]


def test_a_whole_number_past_pythons_digits_is_read_exactly_as_a_decimal() -> None:
    """Python reads at most 4,300 digits into an int (more takes quadratic time) and
    raises otherwise: a 500 for a body that is valid JSON. Such a number is kept exact,
    as a Decimal, which every whole-number field refuses by name."""
    digits = "9" * 5000
    document = loads(f'{{"amount": {digits}, "small": -12, "list": [-{digits}]}}', constant=_refuse)
    assert document["amount"] == Decimal(digits)
    assert type(document["amount"]) is Decimal
    assert document["list"] == [Decimal(f"-{digits}")]
    assert (document["small"], type(document["small"])) == (-12, int)
    edge = "9" * 4300
    assert type(loads(edge, constant=_refuse)) is int


@pytest.mark.parametrize(
    ("text", "at"),
    [
        ("[" * 65 + "]" * 65, 64),
        ('{"a": ' * 65 + "1" + "}" * 65, 6 * 64),
        # Deep enough that Python's parser runs out of stack (RecursionError) first.
        ("[" * 100_000 + "]" * 100_000, 64),
        ("[" * 100_000, 64),  # and never closed
        # Brackets inside strings are text; an escaped quote does not end a string.
        ('["[[[[", "\\"]]]", ' + "[" * 64 + "]" * 64 + "]", 18 + 63),
        # Levels closed before are left: the deep array is inside the top object only.
        ('{"a": {}, "b": [[]], "c": ' + "[" * 64 + "]" * 64 + "}", 26 + 63),
    ],
)
def test_arrays_and_objects_nested_past_64_deep_are_refused_where_they_pass_it(
    text: str, at: int
) -> None:
    with pytest.raises(TooDeep) as raised:
        loads(text, constant=_refuse)
    assert raised.value.msg == "arrays and objects nest more than 64 deep"
    assert raised.value.pos == at
    assert text[at] in "[{"
    assert isinstance(raised.value, json.JSONDecodeError)


def test_64_deep_and_brackets_in_strings_are_read() -> None:
    deep = loads("[" * 64 + "]" * 64, constant=_refuse)
    for _ in range(63):
        (deep,) = deep
    assert deep == []
    # 64 deep with more brackets than levels (here one more): read level by level.
    deep = loads("[{}, " + "[" * 63 + "]" * 63 + "]", constant=_refuse)
    assert deep[0] == {}
    deep = deep[1]
    for _ in range(62):
        (deep,) = deep
    assert deep == []
    brackets = '"' + "[{" * 1000 + '"'
    assert loads(f"[{brackets}, {{}}]", constant=_refuse) == ["[{" * 1000, {}]
    wide = loads("[" + ", ".join(["[[1]]"] * 500) + "]", constant=_refuse)
    assert wide == [[[1]]] * 500  # many brackets, three deep


def _depth(value: Any) -> int:
    """How deep ``value`` nests arrays and objects (0 for a scalar)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


_KEYS = st.text(alphabet='ab"\\[]{}', max_size=3)
_DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='x"\\[]{}', max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=200,
)


@given(document=_DOCUMENTS, wrap=st.integers(min_value=0, max_value=80))
def test_a_document_is_read_as_json_reads_it_unless_nested_past_64_deep(
    document: Any, wrap: int
) -> None:
    """Whatever the brackets and quotes in its strings and keys, a document is read as
    Python's parser reads it, up to 64 deep; past that, refused at the bracket that opens
    the 65th level."""
    for _ in range(wrap):
        document = [document]
    text = json.dumps(document)
    if _depth(document) <= 64:
        assert loads(text, constant=_refuse) == json.loads(text)
        return
    with pytest.raises(TooDeep) as raised:
        loads(text, constant=_refuse)
    assert raised.value.pos == _first_past_64(text)


def _first_past_64(text: str) -> int:
    """Where ``text`` (JSON) opens its 65th level, read a character at a time."""
    depth, quoted, escaped = 0, False, False
    for at, char in enumerate(text):
        if quoted:
            escaped, quoted = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            quoted = True
        elif char in "[{":
            depth += 1
            if depth > 64:
                return at
        elif char in "]}":
            depth -= 1
    raise AssertionError("not nested past 64")
