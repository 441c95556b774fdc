"""Helpers of ``reports.render`` and ``reports.statement`` that no statement of the ledger
reaches alone: the CSV formula guard, totals merged across batches, and a JSON file
assembled from batches of which some added nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from reports import render, statement
from reports.queries import period

# Every text column of the CSV: wallet ids are the operator's (checked for control
# characters by the ledger), models come from an operator's catalog (not checked).
TEXT = ["account_id", "unit", "section", "item", "day", "catalog", "operation", "model"]


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1+1", "@SUM(A1)", "\t=1+1", "\r=1+1"])
def test_a_cell_a_spreadsheet_would_run_is_text_in_every_text_column(cell: str) -> None:
    frame = pd.DataFrame({column: [cell, "plain"] for column in TEXT} | {"amount": [-5, 5]})
    guarded = render._inert(frame)
    for column in TEXT:
        assert list(guarded[column]) == ["'" + cell, "plain"], column
    assert list(guarded["amount"]) == [-5, 5]  # a negative number stays a number
    assert list(frame["model"]) == [cell, "plain"]  # the statement's own frame unchanged


def test_totals_made_in_batches_add_up_per_unit_and_keep_its_scale() -> None:
    def line(unit: str, scale: int, n: int) -> dict[str, object]:
        return {"unit": unit, "scale": scale, "accounts": 1, "opening": n, "credits": 2 * n}

    merged = statement.merge_totals(
        [
            [line("usd", 6, 1), line("credit", 0, 10)],
            [line("usd", 6, 100)],
            [],
            [line("usd", 6, 2**63)],
        ]
    )
    assert merged == [
        {"unit": "credit", "scale": 0, "accounts": 1, "opening": 10, "credits": 20},
        {"unit": "usd", "scale": 6, "accounts": 3, "opening": 2**63 + 101, "credits": 2**64 + 202},
    ]


def test_a_json_batch_that_added_no_account_adds_no_separator() -> None:
    """The job leaves out a batch's empty part before it assembles; ``assemble`` does not
    count on it: an empty part between two batches' accounts, or before or after them,
    is no element of the array (``[{...}, , {...}]`` would be no JSON)."""
    batches = [b"", b'{"account_id": "a"}', b"", b'{"account_id": "b"}, {"account_id": "c"}', b""]
    generated = datetime(2026, 12, 1, tzinfo=UTC)
    text = b"".join(render.assemble("json", period("2026-11"), None, generated, [], [batches]))
    document = json.loads(text)
    assert [a["account_id"] for a in document["accounts"]] == ["a", "b", "c"]
    none = b"".join(render.assemble("json", period("2026-11"), None, generated, [], [[b""]]))
    assert json.loads(none)["accounts"] == []
