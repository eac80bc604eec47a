"""Summaries of latency samples: the figures the report compares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks.

    The same definition as numpy's default, so figures can be checked elsewhere.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Seconds: how many samples, and their median, 99th percentile, maximum and mean."""

    count: int
    p50: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(
            count=len(values),
            p50=percentile(values, 50),
            p99=percentile(values, 99),
            max=max(values),
            mean=sum(values) / len(values),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ratio(ccq: float, baseline: float) -> float | None:
    """ccq's figure over its baseline's; None when the baseline is zero."""
    return ccq / baseline if baseline > 0 else None
