"""The HTML statement's chart of daily usage by model (``reports.render.chart_svg``)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, cast

import pandas as pd
import pytest

from reports import render
from reports.queries import period
from reports.statement import Statement

OCTOBER = period("2026-10", "UTC")


def _labels(svg: str) -> list[str]:
    """The chart's legend, in its order (text stays text in the SVG)."""
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    return [t for t in texts if t.startswith("m") or t == "other models"]


def test_the_models_used_most_are_drawn_apart_and_the_rest_together() -> None:
    days = ["2026-10-01", "2026-10-15", "2026-10-31"]
    amounts = {(f"m{i}", day): (i + 1) * 100 for i in range(10) for day in days}
    amounts["m-idle", "2026-10-01"] = 0
    svg = render.chart_svg(OCTOBER, "credit", 2, amounts)
    assert svg.startswith("<svg")
    kept = render.CHART_MODELS - 1
    assert _labels(svg) == [f"m{i}" for i in range(9, 9 - kept, -1)] + ["other models"]
    assert "no usage this month" not in svg


def test_models_used_alike_are_drawn_in_the_order_of_their_names() -> None:
    amounts = {("mb", "2026-10-02"): 5, ("ma", "2026-10-03"): 5, ("mc", "2026-10-02"): 9}
    svg = render.chart_svg(OCTOBER, "token", 0, amounts)
    assert _labels(svg) == ["mc", "ma", "mb"]
    # The same amounts give the same chart, byte for byte (a file made in batches of
    # wallets is the whole statement's).
    assert render.chart_svg(OCTOBER, "token", 0, dict(reversed(amounts.items()))) == svg


def test_a_unit_without_usage_says_so() -> None:
    svg = render.chart_svg(OCTOBER, "usd", 6, {})
    assert "no usage this month" in svg
    assert _labels(svg) == []


def test_the_amounts_drawn_are_summed_exactly_beyond_64_bits() -> None:
    """Across wallets, a day's usage of a model can pass what 64 bits hold: the sum is a
    Python integer, not one wrapped around to a negative."""
    big = 2**62
    rows: dict[str, Any] = {
        "unit": ["credit", "credit", "credit", "token"],
        "model": ["veo3", "veo3", "veo3_fast", "veo3"],
        "day": ["2026-10-01", "2026-10-01", "2026-10-01", "2026-10-01"],
        "amount": pd.array([big, big, 7, 1], dtype="int64"),
    }
    made = cast(Statement, SimpleNamespace(daily=pd.DataFrame(rows)))
    assert render.chart_amounts(made) == {
        "credit": {("veo3", "2026-10-01"): 2**63, ("veo3_fast", "2026-10-01"): 7},
        "token": {("veo3", "2026-10-01"): 1},
    }


def test_past_the_models_drawn_apart_every_other_amount_is_stacked_together() -> None:
    """Nine models: the seven used most apart, the other two (the eighth among them)
    together; each day's bars add up to that day's usage, nothing lost or drawn twice."""
    amounts = {(f"m{i}", "2026-10-0" + str(1 + i % 3)): 10 + i for i in range(9)}
    series = render.chart_series(OCTOBER, amounts)
    assert list(series) == [f"m{i}" for i in range(8, 1, -1)] + ["other models"]
    assert series["other models"][:3] == [10, 11, 0]  # m0 on the 1st, m1 on the 2nd
    assert all(len(bars) == 31 for bars in series.values())
    for day in range(31):
        drawn = sum(bars[day] for bars in series.values())
        assert drawn == sum(a for (_m, d), a in amounts.items() if d == f"2026-10-{day + 1:02d}")


def test_as_many_models_as_are_drawn_apart_are_all_drawn_apart() -> None:
    amounts = {(f"m{i}", "2026-10-05"): 100 - i for i in range(render.CHART_MODELS)}
    series = render.chart_series(OCTOBER, amounts)
    assert list(series) == [f"m{i}" for i in range(render.CHART_MODELS)]
    assert _labels(render.chart_svg(OCTOBER, "credit", 0, amounts)) == list(series)


def _y_texts(svg: str) -> list[str]:
    """The amounts written along the chart's y axis, as written."""
    return re.findall(r'<g id="ytick_\d+">.*?<text[^>]*>([^<]*)</text>', svg, re.S)


def _y_ticks(svg: str) -> list[float]:
    """The values written along the chart's y axis."""
    return [float(t.replace(",", "")) for t in _y_texts(svg)]


@pytest.mark.parametrize(
    ("unit", "scale", "amounts", "top"),
    [
        # $0.04 and $1.25 a day of a unit of six places: dollars, as the page's tables
        # show them, not millionths of one.
        ("usd", 6, {("m1", "2026-10-01"): 40_000, ("m1", "2026-10-02"): 1_250_000}, (1, 1.25)),
        # A busy day of tokens: millions, not 0 to 1.2.
        ("token", 0, {("m1", "2026-10-01"): 250_000, ("m1", "2026-10-02"): 1_250_000},
         (1_000_000, 1_250_000)),
    ],
)  # fmt: skip
def test_the_axis_reads_major_units_as_they_are(
    unit: str, scale: int, amounts: dict[tuple[str, str], int], top: tuple[float, float]
) -> None:
    """Amounts along the axis in the unit's major units, never scaled by a multiplier
    (such as "1e6") written apart from it."""
    svg = render.chart_svg(OCTOBER, unit, scale, amounts)
    ticks = _y_ticks(svg)
    assert ticks[0] == 0
    assert top[0] <= ticks[-1] <= top[1]
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert not [t for t in texts if re.fullmatch(r"[0-9.]*e[+-]?[0-9]+", t)], texts


def test_the_axis_writes_thousands_apart_as_the_tables_do() -> None:
    amounts = {("m1", "2026-10-01"): 250_000, ("m1", "2026-10-02"): 1_250_000}
    texts = _y_texts(render.chart_svg(OCTOBER, "token", 0, amounts))
    assert texts[0] == "0"
    assert "1,000,000" in texts, texts
    # Every tick with the same decimals, none more than its spacing needs.
    assert _y_texts(render.chart_svg(OCTOBER, "usd", 6, {("m1", "2026-10-02"): 1_250_000}))[:3] == [
        "0.0",
        "0.2",
        "0.4",
    ]


@pytest.mark.parametrize(
    ("unit", "scale", "amounts", "texts"),
    [
        # One token: nothing between none and one.
        ("token", 0, {("m1", "2026-10-01"): 1}, ["0", "1"]),
        ("credit", 0, {("m1", "2026-10-01"): 3}, ["0", "1", "2", "3"]),
        # Cents: in steps of a cent, not of a tenth of one.
        ("credit", 2, {("m1", "2026-10-01"): 3}, ["0.00", "0.01", "0.02", "0.03"]),
        # Nothing used (or nothing but zero): an axis of one major unit.
        ("token", 0, {}, ["0", "1"]),
        ("token", 0, {("m1", "2026-10-01"): 0}, ["0", "1"]),
        ("usd", 6, {}, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
    ],
)  # fmt: skip
def test_the_axis_marks_only_whole_minor_units(
    unit: str, scale: int, amounts: dict[tuple[str, str], int], texts: list[str]
) -> None:
    """A minor unit is not divided: no tick of a fraction of a token or of a cent."""
    assert _y_texts(render.chart_svg(OCTOBER, unit, scale, amounts)) == texts


@pytest.mark.parametrize("month", ["2026-02", "2026-10"])
def test_each_day_of_the_month_is_marked_along_the_x_axis(month: str) -> None:
    shown = period(month, "UTC")
    svg = render.chart_svg(shown, "token", 0, {("m1", f"{month}-01"): 5})
    marks = re.findall(r'<g id="xtick_\d+">.*?<text[^>]*>([^<]*)</text>', svg, re.S)
    assert marks == [f"{day:02d}" for day in range(1, len(shown.days) + 1)]
    assert f"day of {month} (UTC)" in svg


def test_the_models_of_a_day_are_stacked_one_on_another() -> None:
    """1.00, 2.00 and 4.00 credits on one day: each bar on top of those before it, so the
    axis runs from 0 up to the day's 7.00 (bars drawn over each other would reach 4.00,
    one on the last bar alone 6.00; one drawn down from the others would take the axis
    below 0)."""
    amounts = {("m1", "2026-10-01"): 100, ("m2", "2026-10-01"): 200, ("m3", "2026-10-01"): 400}
    ticks = _y_ticks(render.chart_svg(OCTOBER, "credit", 2, amounts))
    assert ticks[0] == 0
    assert 7 <= ticks[-1] < 8, ticks


@pytest.mark.parametrize(
    ("ticks", "decimals"),
    [
        ([0.0, 200_000.0, 400_000.0], 0),
        ([0.0, 0.1, 0.2, 0.30000000000000004], 1),
        ([0.0, 0.25, 0.5], 2),
        # A tick off the others' step keeps its decimal (a float's error is a millionth
        # of the spacing, not a hundredth).
        ([0.0, 100.0, 200.0, 300.5], 1),
        ([0.0, 0.0000005, 0.000001], 7),
        ([-2.0, 0.0, 2.0], 0),
        ([1e15, 2e15], 0),
        ([0.0, 1e-13], 12),  # finer than an axis is ever drawn: cut at 12
        ([1.5], 1),
        ([0.0], 0),
        ([], 0),
    ],
)
def test_ticks_are_written_with_the_fewest_decimals_that_hold_them_all(
    ticks: list[float], decimals: int
) -> None:
    assert render.tick_decimals(ticks) == decimals


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [
        (1_250_000.0, 0, "1,250,000"),
        (0.30000000000000004, 1, "0.3"),
        (-0.0, 0, "0"),
        (-0.0000001, 2, "0.00"),
        (-1500.5, 1, "-1,500.5"),
        (1e15, 0, "1,000,000,000,000,000"),
    ],
)
def test_a_tick_is_written_with_thousands_apart_and_never_as_minus_zero(
    value: float, decimals: int, text: str
) -> None:
    assert render.tick_text(value, decimals) == text
