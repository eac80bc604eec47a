"""The report: one row per benchmark, ccq against its baseline, as a table and as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import Summary, ratio


@dataclass(frozen=True)
class Comparison:
    """One benchmark: ccq's samples and its baseline's, measured in the same run."""

    key: str  # stable name in the JSON, e.g. "delivery_100"
    title: str  # what the table shows, e.g. "delivery, 100 tails"
    baseline_name: str  # what ccq is compared with, e.g. "docker exec + claude -p"
    ccq: Summary
    baseline: Summary
    # Tail latencies matter for delivery; a few turns have no meaningful 99th percentile.
    show_p99: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio_p50(self) -> float | None:
        return ratio(self.ccq.p50, self.baseline.p50)

    @property
    def ratio_p99(self) -> float | None:
        return ratio(self.ccq.p99, self.baseline.p99)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "baseline_name": self.baseline_name,
            "ccq": self.ccq.to_json(),
            "baseline": self.baseline.to_json(),
            "ratio_p50": self.ratio_p50,
            "ratio_p99": self.ratio_p99,
            "details": self.details,
        }


def format_seconds(seconds: float) -> str:
    """A duration at a precision a reader can compare: 1.23 s, 123 ms, 12.3 ms, 1.23 ms."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


HEADERS = ("benchmark", "ccq p50", "baseline p50", "ratio", "ccq p99", "baseline p99", "ratio")


def rows(comparisons: Sequence[Comparison]) -> list[tuple[str, ...]]:
    out = []
    for c in comparisons:
        p99: tuple[str, ...] = ("-", "-", "-")
        if c.show_p99:
            p99 = (
                format_seconds(c.ccq.p99),
                format_seconds(c.baseline.p99),
                format_ratio(c.ratio_p99),
            )
        p50 = (format_seconds(c.ccq.p50), format_seconds(c.baseline.p50), format_ratio(c.ratio_p50))
        out.append((c.title, *p50, *p99))
    return out


def format_table(comparisons: Sequence[Comparison]) -> str:
    """A plain-text table, the first column left-aligned and the figures right-aligned."""
    table = [HEADERS, *rows(comparisons)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_markdown(comparisons: Sequence[Comparison]) -> str:
    """The same table in Markdown (for the README)."""
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|---|" + "---:|" * (len(HEADERS) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(comparisons)]
    return "\n".join(lines)
