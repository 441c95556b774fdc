"""A report's month: the UTC interval its local days cover, and whether a wallet's own
days (the days its rollups are kept by) are the report's days.

A December that ended on the 31st at 00:00 would leave the year's last day out of every
December statement. A wallet whose midnights part from the report's only at the month's
end would be read from rollups cut at the wrong instant.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from ledger.errors import InvalidInput
from reports.queries import aligned, period


def test_december_runs_to_the_first_of_january() -> None:
    december = period("2026-12", "UTC")
    assert (december.first_day, december.next_first_day) == (date(2026, 12, 1), date(2027, 1, 1))
    assert len(december.days) == 31
    assert december.days[-1] == date(2026, 12, 31)
    assert december.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert december.end == datetime(2027, 1, 1, tzinfo=UTC)
    # The next month starts where it ends.
    assert period("2027-01", "UTC").start == december.end


@pytest.mark.parametrize(
    ("month", "days"),
    [("2024-02", 29), ("2026-02", 28), ("2100-02", 28), ("2000-02", 29), ("2026-11", 30)],
)
def test_a_month_has_its_calendar_days(month: str, days: int) -> None:
    report = period(month, "UTC")
    assert len(report.days) == days
    assert report.days[0] == report.first_day
    assert (report.end - report.start).days == days


def test_a_month_in_a_timezone_is_cut_at_its_local_midnights() -> None:
    # Berlin: UTC+2 on October 1 (summer time), UTC+1 from October 25, 2026.
    october = period("2026-10", "Europe/Berlin")
    assert october.start == datetime(2026, 9, 30, 22, tzinfo=UTC)
    assert october.end == datetime(2026, 10, 31, 23, tzinfo=UTC)
    # Tokyo, ahead of UTC: December ends at 15:00 UTC on the 31st.
    assert period("2026-12", "Asia/Tokyo").end == datetime(2026, 12, 31, 15, tzinfo=UTC)


@pytest.mark.parametrize("month", ["1970-01", "9998-12"])
@pytest.mark.parametrize("timezone", ["UTC", "Pacific/Kiritimati", "Etc/GMT+12"])
def test_the_first_and_last_months_taken(month: str, timezone: str) -> None:
    report = period(month, timezone)
    assert report.start < report.end
    assert report.month == month


@pytest.mark.parametrize(
    "month",
    ["1969-12", "9999-01", "2026-13", "2026-00", "2026-1", "10-2026", " 2026-10", "2026-10 ", ""],
)
def test_a_month_outside_the_calendar_or_not_written_yyyy_mm_is_refused(month: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        period(month, "UTC")
    assert refused.value.field == "month"
    assert refused.value.allowed == "YYYY-MM"


@pytest.mark.parametrize("month", [202610, None, ["2026-10"]])
def test_a_month_that_is_not_text_is_refused(month: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        period(month, "UTC")
    assert refused.value.field == "month"


@pytest.mark.parametrize("timezone", ["Mars/Olympus", "", None, 1])
def test_a_timezone_that_is_not_an_iana_name_is_refused(timezone: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        period("2026-10", timezone)
    assert refused.value.field == "timezone"


@pytest.mark.parametrize(
    ("timezone", "month", "report_timezone", "expected"),
    [
        ("UTC", "2026-10", "UTC", True),
        # Another name of the same midnights, all year.
        ("Etc/UTC", "2026-07", "UTC", True),
        ("Africa/Abidjan", "2026-07", "UTC", True),
        # London keeps UTC's midnights in winter, not in summer.
        ("Europe/London", "2027-01", "UTC", True),
        ("Europe/London", "2026-07", "UTC", False),
        # March 2024: London's clocks moved at 01:00 UTC on the 31st, so every March
        # midnight is UTC's, but April 1 began at 23:00 UTC on March 31: the rollup's
        # last March day ends an hour before the report's.
        ("Europe/London", "2024-03", "UTC", False),
        ("Europe/Berlin", "2026-10", "UTC", False),
        # Berlin's and Paris's clocks move together.
        ("Europe/Paris", "2026-10", "Europe/Berlin", True),
        ("Asia/Tokyo", "2026-10", "Europe/Berlin", False),
    ],
)
def test_a_wallet_reads_its_rollups_only_where_its_days_are_the_reports(
    timezone: str, month: str, report_timezone: str, expected: bool
) -> None:
    assert aligned(timezone, period(month, report_timezone)) is expected
