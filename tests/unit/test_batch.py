"""The CSV reader of ``creditledger topup-batch`` (the command itself: tests/e2e)."""

from __future__ import annotations

from datetime import UTC, datetime

from api.batch import Row, default_batch_id, read_rows


def test_rows_read_from_a_spreadsheet_export() -> None:
    text = (
        "account_id, amount ,kind,expires_at,priority,reference\r\n"
        'acme,100,promo,2027-01-01T00:00:00+00:00,-5,"order 7, spring"\r\n'
        "\r\n"
        "zeta,7,,,,\r\n"
    )
    rows, problems = read_rows(text)
    assert problems == []
    assert rows == [
        Row(2, "acme", 100, "promo", datetime(2027, 1, 1, tzinfo=UTC), -5, "order 7, spring"),
        Row(4, "zeta", 7, "pack", None, 0, None),
    ]
    assert rows[0].key("b1") == "batch:b1:2"
    assert default_batch_id(text) == default_batch_id(text) != default_batch_id(text + "\n")


def test_every_problem_is_named_with_its_line_and_field() -> None:
    assert [(p.line, p.field) for p in read_rows("")[1]] == [(None, "file")]
    assert [(p.line, p.field) for p in read_rows("account_id,amount\n")[1]] == [(None, "file")]
    twice = read_rows("account_id,amount,amount\n")[1]
    assert [(p.line, p.field) for p in twice] == [(1, "file")]
    rows, problems = read_rows(
        "account_id,amount,priority\n"
        ",5,\n"
        "acme,1_000,\n"
        "acme,٣,\n"  # digits Python's int() reads, a file should not hold
        "acme,5,high\n"
        'acme,"5\n'
    )
    assert rows == []
    assert [(p.line, p.field) for p in problems] == [
        (2, "account_id"),
        (3, "amount"),
        (4, "amount"),
        (5, "priority"),
        (6, "file"),  # a quote never closed
    ]
