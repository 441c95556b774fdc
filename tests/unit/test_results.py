"""What makes two answers of the ledger equal. Tests across the suite check a replay with
``again == first``: that check is only worth something if a different answer is unequal,
so what equality compares is pinned here."""

from __future__ import annotations

from datetime import UTC, datetime
from unittest import mock

import pytest
from pydantic import ValidationError

from ledger.results import AccountChangePage, AccountPage, BalanceView


def balance(**changes: object) -> BalanceView:
    fields: dict[str, object] = {
        "account_id": "acme",
        "unit": "credit",
        "scale": 0,
        "balance": 500,
        "pending": 240,
        "available": 260,
        "overdraft_limit": 0,
        "debt": 0,
        "as_of": datetime(2026, 12, 1, tzinfo=UTC),
    }
    return BalanceView.model_validate(fields | changes)


def test_a_replay_equals_the_answer_it_replays() -> None:
    first = balance()
    replay = balance()
    replay._replayed = True  # as the use cases mark what they give back again
    assert replay.replayed
    assert not first.replayed
    assert replay == first
    assert first == replay


@pytest.mark.parametrize(
    "change",
    [
        {"balance": 501},
        {"pending": 0},
        {"available": 261},
        {"debt": 1},
        {"account_id": "acme2"},
        {"unit": "token"},
        {"as_of": None},
    ],
    ids=lambda change: next(iter(change)),
)
def test_answers_differing_in_any_field_are_unequal(change: dict[str, object]) -> None:
    assert balance(**change) != balance()
    assert balance() != balance(**change)


def test_answers_of_two_kinds_are_unequal_even_with_the_same_fields() -> None:
    """An empty page of wallets is not an empty page of a wallet's changes."""
    wallets = AccountPage(items=[], next_cursor=None)
    changes = AccountChangePage(items=[], next_cursor=None)
    assert wallets.__dict__ == changes.__dict__
    assert wallets != changes
    assert changes != wallets


def test_an_answer_compared_with_anything_else_leaves_it_to_the_other() -> None:
    """Not a Result: the other side decides (``NotImplemented``), so a matcher such as
    ``mock.ANY`` matches an answer, and a dict of the same fields does not equal it."""
    view = balance()
    assert view == mock.ANY
    assert view != view.model_dump()
    assert view.__eq__(view.model_dump()) is NotImplemented


def test_an_answer_cannot_be_changed_once_made() -> None:
    """A stored answer is given back as it was: no caller may change one in place."""
    view = balance()
    with pytest.raises(ValidationError, match="frozen"):
        view.balance = 0  # type: ignore[misc]
    assert view == balance()
