"""The benchmark report's pure parts: percentiles, ratios and the printed table."""

from __future__ import annotations

import json

import pytest

from bench.delivery import TICK, WARMUP, latencies
from bench.report import Comparison, format_markdown, format_seconds, format_table
from bench.stats import Summary, percentile, ratio


def test_percentiles_interpolate_between_closest_ranks_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def test_a_percentile_of_nothing_or_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile([1.0], 101)


def test_a_summary_and_its_ratio() -> None:
    summary = Summary.of([0.1, 0.2, 0.3, 0.4, 1.0])
    assert (summary.count, summary.p50, summary.max) == (5, 0.3, 1.0)
    assert summary.mean == pytest.approx(0.4)
    assert ratio(0.3, 0.2) == pytest.approx(1.5)
    assert ratio(0.3, 0.0) is None


def test_durations_are_shown_at_a_readable_precision() -> None:
    assert format_seconds(1.234) == "1.23 s"
    assert format_seconds(0.1234) == "123 ms"
    assert format_seconds(0.01234) == "12.3 ms"
    assert format_seconds(0.001234) == "1.23 ms"


def _comparison(key: str, ccq: list[float], base: list[float], p99: bool) -> Comparison:
    return Comparison(key, key.replace("_", " "), "raw", Summary.of(ccq), Summary.of(base), p99)


def test_the_table_lines_up_and_shows_p99_only_where_it_means_something() -> None:
    table = format_table(
        [
            _comparison("warm_turn", [1.5, 2.5], [1.0, 2.0], p99=False),
            _comparison("delivery_500", [0.004, 0.002], [0.001, 0.001], p99=True),
        ]
    )
    header, warm, delivery = table.splitlines()
    assert header.split()[:3] == ["benchmark", "ccq", "p50"]
    assert warm.split() == ["warm", "turn", "2.00", "s", "1.50", "s", "1.33x", "-", "-", "-"]
    assert delivery.split() == [
        *("delivery", "500"),
        *("3.00", "ms", "1.00", "ms", "3.00x"),
        *("3.98", "ms", "1.00", "ms", "3.98x"),
    ]
    assert len({len(line) for line in (header, delivery)}) == 1  # aligned columns


def test_the_markdown_table_has_one_row_per_benchmark() -> None:
    markdown = format_markdown([_comparison("cold_session", [2.0], [1.0], p99=False)])
    lines = markdown.splitlines()
    assert lines[0].startswith("| benchmark | ccq p50 |")
    assert lines[2] == "| cold session | 2.00 s | 1.00 s | 2.00x | - | - | - |"


def test_delivery_latency_counts_measured_events_only() -> None:
    def event(type_: str, t: float) -> str:
        return json.dumps({"id": "1-0", "type": type_, "data": {"t": t}})

    arrivals: list[tuple[float, str | bytes]] = [
        (10.5, event(WARMUP, 10.0)),
        (11.25, event(TICK, 11.0)),
        (12.0, event(TICK, 11.5).encode()),  # raw readers hand over bytes
    ]
    assert latencies(arrivals) == [0.25, 0.5]
