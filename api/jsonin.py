"""JSON from clients (request bodies, the CLI's options, batch files), read exactly.

Fractions are ``Decimal`` (floats never touch money or a price parameter), ``NaN`` and
``Infinity`` are refused (``constant`` raises), and so is an object that gives a key
twice (``{"amount": 1, "amount": 1000}``): Python's parser would keep the last value and
drop the first unseen, and which one was meant is not for the ledger to guess. So are
arrays and objects nested more than ``MAX_DEPTH`` deep: Python's parser, and every walk
of the document after it, recurse once per level, and run out of stack (RecursionError)
some thousand levels down, where a 64 KiB body can nest 32,000.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NoReturn

#: How deep arrays and objects may nest: far more than any request body needs (the
#: content parts of a chat's messages are six deep), far less than Python's stack allows.
MAX_DEPTH = 64

#: A string (to the text's end when it is never closed) or a bracket. Possessive: each
#: character is read once, never again on backtracking.
_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


class RepeatedKey(ValueError):
    """An object of the document gives a key ``times`` times; ``loc`` is the key's
    place (object keys and array indexes from the top)."""

    def __init__(self, loc: tuple[str | int, ...], times: int) -> None:
        self.loc = loc
        self.times = times
        self.field = ".".join(str(part) for part in loc)
        self.reason = f"given {times} times: give it once"
        super().__init__(f"{self.field}: {self.reason}")


def loads(text: str, *, constant: Callable[[str], NoReturn]) -> Any:
    """The JSON document ``text``, fractions as Decimals; ``constant`` is called with
    ``NaN``, ``Infinity`` or ``-Infinity`` and raises. RepeatedKey for a key given twice
    in one object (a ValueError, as ``json.JSONDecodeError`` is); TooDeep (a
    JSONDecodeError) for arrays and objects nested more than ``MAX_DEPTH`` deep."""
    # By the object's id, the object itself (kept, so that no other object takes its id
    # while the document is read: a value dropped for a later one is freed), the first
    # key it gives twice or more, and how many times.
    repeated: dict[int, tuple[dict[str, Any], str, int]] = {}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            key, times = next((k, n) for k, n in Counter(k for k, _ in items).items() if n > 1)
            repeated[id(obj)] = (obj, key, times)
        return obj

    try:
        document = json.loads(
            text,
            parse_float=Decimal,
            parse_int=_whole,
            parse_constant=constant,
            object_pairs_hook=pairs,
        )
    except RecursionError:
        raise _too_deep(text) from None
    # Fewer brackets than levels allowed: no need to look.
    if text.count("[") + text.count("{") > MAX_DEPTH and _deeper(document):
        raise _too_deep(text)
    if repeated:
        # An object of the document holds the first of them: a value is only ever
        # dropped for a key given again, by an object that is then in ``repeated``.
        found = _first(document, repeated, ())
        assert found is not None
        loc, (key, times) = found
        raise RepeatedKey((*loc, key), times)
    return document


#: What ``TooDeep`` says (its ``msg``; an HTTP error's detail).
TOO_DEEP = f"arrays and objects nest more than {MAX_DEPTH} deep"


class TooDeep(json.JSONDecodeError):
    """A document nested more than ``MAX_DEPTH`` deep: valid JSON, maybe, but not read."""


def _too_deep(text: str) -> TooDeep:
    """The error for ``text`` nested past ``MAX_DEPTH``, at the bracket that opens the
    level past it (the text's start when none does: a RecursionError came first)."""
    depth = 0
    for token in _TOKEN.finditer(text):
        char = token.group()[0]
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return TooDeep(TOO_DEEP, text, token.start())
        elif char in "]}":
            depth -= 1
    return TooDeep(TOO_DEEP, text, 0)


def _deeper(document: Any) -> bool:
    """Whether ``document`` nests arrays and objects more than ``MAX_DEPTH`` deep; read a
    level at a time, without recursion."""
    level = [document] if type(document) in (dict, list) else []
    for _ in range(MAX_DEPTH):
        below = [
            item
            for value in level
            for item in (value.values() if type(value) is dict else value)
            if type(item) is dict or type(item) is list
        ]
        if not below:
            return False
        level = below
    return True


def _whole(text: str) -> int | Decimal:
    """A whole number of the document: an ``int``, or past the digits Python reads into
    one (``sys.get_int_max_str_digits``, 4300: longer takes quadratic time) the exact
    Decimal, which every whole-number field then refuses by name, as it does ``1e400``."""
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


def _first(
    value: Any, repeated: dict[int, tuple[dict[str, Any], str, int]], loc: tuple[str | int, ...]
) -> tuple[tuple[str | int, ...], tuple[str, int]] | None:
    """The place of the first object of ``repeated`` within ``value`` (in document
    order, an object before those within it), with its key and count; None when there is
    none."""
    if isinstance(value, dict):
        if id(value) in repeated:
            _, key, times = repeated[id(value)]
            return loc, (key, times)
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first(item, repeated, (*loc, key))
        if found is not None:
            return found
    return None
