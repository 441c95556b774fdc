"""The file readers of ``creditledger topup-batch`` (CSV) and ``usage-import`` (JSON Lines);
the commands themselves: tests/e2e."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from api.batch import Row, UsageRow, default_batch_id, read_rows, read_usage


def test_rows_read_from_a_spreadsheet_export() -> None:
    text = (
        "account_id, amount ,kind,expires_at,priority,reference\r\n"
        'acme,100,promo,2027-01-01T00:00:00+00:00,-5,"order 7, spring"\r\n'
        "\r\n"
        " zeta ,7,,,,\r\n"  # cells padded with spaces, as hand-edited files are
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
    # What is wrong with the header is of line 1, each column by its name.
    header = read_rows("account_id,amont\nacme,5\n")[1]
    assert [(p.line, p.field) for p in header] == [(1, "amont"), (1, "amount")]
    assert [(p.line, p.field) for p in read_rows('"account_id\n')[1]] == [(1, "file")]
    rows, problems = read_rows(
        "account_id,amount,priority\n"
        ",5,\n"
        "acme,1_000,\n"
        "acme,٣,\n"  # digits Python's int() reads, a file should not hold
        "acme,5,high\n"
        "acme,,\n"  # no amount: a problem, never a row left out unseen
        "acme,5,1,extra\n"  # a value more than the header has columns
        "acme\n"  # one fewer
        'acme,"5\n'
    )
    assert rows == []
    assert [(p.line, p.field, p.message) for p in problems] == [
        (2, "account_id", "account_id is empty"),
        (3, "amount", "amount must be a whole number, not '1_000'"),
        (4, "amount", "amount must be a whole number, not '٣'"),
        (5, "priority", "priority must be a whole number, not 'high'"),
        (6, "amount", "amount must be a whole number, not ''"),
        (7, "file", "the row has 4 values; the header has 3"),
        (8, "file", "the row has 1 value; the header has 3"),
        (9, "file", "not CSV: unexpected end of data"),  # a quote never closed
    ]


def test_a_number_past_pythons_digits_is_read_as_far_past_64_bits() -> None:
    """Python reads at most 4,300 digits into an int and raises past them: the command
    died with a traceback. Such a number (and any past 40 digits) is read as 10**40,
    with its sign, which the ledger refuses by name as it does any number past 64 bits."""
    many = "9" * 5000
    rows, problems = read_rows(
        "account_id,amount,priority\n"
        f"acme,{many},-{many}\n"
        f"acme,{'0' * 60}{'9' * 40},{'2' + '0' * 40}\n"  # 40 digits, and 41
    )
    assert problems == []
    assert [(r.amount, r.priority) for r in rows] == [
        (10**40, -(10**40)),
        (10**40 - 1, 10**40),
    ]


def test_usage_lines_keep_fractions_exact_and_skip_blank_lines() -> None:
    text = (
        '{"account_id": "acme", "catalog": "fal", "operation": "image_to_video", '
        '"params": {"image_url": "u", "fps": 24}, "status": "COMPLETED", '
        '"usage": {"seconds": 5.125}, "occurred_at": "2026-11-01T00:00:00+01:00"}\r\n'
        "\r\n"
        '{"account_id": "zeta", "catalog": "veo3", "operation": "video", "status": "ERROR",'
        ' "params": null, "usage": null, "request_id": "r-9"}\n'
    )
    rows, problems = read_usage(text)
    assert problems == []
    assert rows == [
        UsageRow(
            1,
            "acme",
            {
                "catalog": "fal",
                "operation": "image_to_video",
                "params": {"image_url": "u", "fps": 24},
            },
            "COMPLETED",
            {"seconds": Decimal("5.125")},
            None,
            datetime(2026, 10, 31, 23, 0, tzinfo=UTC),
        ),
        UsageRow(
            3,
            "zeta",
            {"catalog": "veo3", "operation": "video", "params": {}},
            "ERROR",
            None,
            "r-9",
            None,
        ),
    ]
    assert type(rows[0].usage["seconds"]) is Decimal  # type: ignore[index]
    assert rows[0].key("b1") == "usage:b1:1"
    assert rows[1].key("b1") == "usage:request:r-9"  # the request's own id, in any batch


def test_every_usage_line_problem_is_named_with_its_line_and_field() -> None:
    assert [(p.line, p.field) for p in read_usage("\n \n")[1]] == [(None, "file")]
    good = '"account_id": "a", "catalog": "veo3", "operation": "video", "status": "COMPLETED"'
    rows, problems = read_usage(
        "\n".join(
            [
                "{" + good + "}",
                '{"account_id": "a", "usage": {"seconds": NaN}}',
                '"a line"',
                "{" + good + ', "extra": 1}',
                '{"account_id": "", "catalog": 5, "operation": "video", "status": "COMPLETED"}',
                "{" + good + ', "params": [], "usage": "all", "occurred_at": "yesterday"}',
                "{" + good + ', "usage": {"seconds": 5, "seconds": 500}}',
                "{" + good + ', "status": "ERROR"}',
                '{"account_id": null, "catalog": "veo3", "operation": "video", "status": null}',
            ]
        )
    )
    assert [r.line for r in rows] == [1]
    assert [(p.line, p.field) for p in problems] == [
        (2, "line"),
        (3, "line"),
        (4, "extra"),
        (5, "account_id"),
        (5, "catalog"),
        (6, "params"),
        (6, "usage"),
        (6, "occurred_at"),
        (7, "usage.seconds"),
        (8, "status"),
        (9, "account_id"),  # a required field given as null is not given
        (9, "status"),
    ]
    assert problems[-4].message == "given 2 times: give it once"
    assert problems[-2].message == "account_id must be a wallet's id (text)"


def test_the_warning_of_usage_lines_without_a_request_id_names_the_first_ten(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from api.cli import _warn_unkeyed

    _warn_unkeyed([])
    assert capsys.readouterr() == ("", "")
    _warn_unkeyed(list(range(3, 15)))
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("warning: 12 line(s) without a request_id (line 3, 4, 5, 6, 7, 8, ")
    assert "11, 12, ...) are recognised only as lines of this file" in err
    # Ten lines are all named, with nothing more to say.
    _warn_unkeyed(list(range(1, 11)))
    assert "(line 1, 2, 3, 4, 5, 6, 7, 8, 9, 10) are recognised" in capsys.readouterr().err


def test_a_line_of_empty_cells_is_a_blank_line() -> None:
    """A spreadsheet saves the empty rows below its table as commas only."""
    rows, problems = read_rows("account_id,amount\nacme,5\n,\n  ,  \nzeta,6\n")
    assert problems == []
    assert [(r.line, r.account_id, r.amount) for r in rows] == [(2, "acme", 5), (5, "zeta", 6)]


def test_an_instant_without_a_timezone_is_refused() -> None:
    """2027-01-01T00:00:00 is a different instant in every timezone: the file must say
    which it means."""
    rows, problems = read_rows("account_id,amount,expires_at\nacme,5,2027-01-01T00:00:00\n")
    assert rows == []
    assert [(p.line, p.field) for p in problems] == [(2, "expires_at")]
    assert "with a timezone" in problems[0].message
    good = '"account_id": "a", "catalog": "veo3", "operation": "video", "status": "COMPLETED"'
    usage, problems = read_usage("{" + good + ', "occurred_at": "2026-11-01T00:00:00"}')
    assert usage == []
    assert [(p.line, p.field) for p in problems] == [(1, "occurred_at")]
    assert "with a timezone" in problems[0].message


def test_a_usage_line_without_a_required_field_says_which() -> None:
    rows, problems = read_usage('{"catalog": "veo3", "operation": "video"}')
    assert rows == []
    assert [(p.line, p.field, p.message) for p in problems] == [
        (1, "account_id", "the line has no 'account_id'"),
        (1, "status", "the line has no 'status'"),
    ]


def test_a_request_id_on_two_lines_is_a_problem_and_only_its_first_line_a_row() -> None:
    good = '"account_id": "a", "catalog": "veo3", "operation": "video", "status": "COMPLETED"'
    rows, problems = read_usage(
        "{" + good + ', "request_id": "r-1"}\n'
        "{" + good + ', "request_id": "r-2"}\n'
        "{" + good + ', "request_id": "r-1"}\n'
    )
    assert [(r.line, r.request_id) for r in rows] == [(1, "r-1"), (2, "r-2")]
    assert [(p.line, p.field, p.message) for p in problems] == [
        (3, "request_id", "request_id 'r-1' is on line 1 too: a request is reported once")
    ]


def test_a_usage_line_nested_past_64_deep_is_a_problem_of_its_line() -> None:
    good = '"account_id": "a", "catalog": "veo3", "operation": "video", "status": "COMPLETED"'
    deep = "[" * 100_000 + "]" * 100_000
    rows, problems = read_usage(f'{{{good}}}\n{{{good}, "usage": {deep}}}\n')
    assert [r.line for r in rows] == [1]
    assert [(p.line, p.field, p.message) for p in problems] == [
        (2, "line", "arrays and objects nest more than 64 deep"),
    ]
