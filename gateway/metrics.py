"""The gateway's counters, served as Prometheus text at ``GET /metrics`` (loopback only:
sessions must not read the fleet's figures)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

PREFIX = "ccq_gateway_"


class Metrics:
    """Monotonic counters, plus gauges read from their owners when rendered."""

    def __init__(self) -> None:
        self._counters: dict[str, float] = {}
        self._gauges: list[Callable[[], Mapping[str, float]]] = []

    def count(self, name: str, by: float = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + by

    def add_gauges(self, read: Callable[[], Mapping[str, float]]) -> None:
        self._gauges.append(read)

    def snapshot(self) -> dict[str, float]:
        values: dict[str, float] = dict(self._counters)
        for read in self._gauges:
            values.update(read())
        return values

    def render(self) -> str:
        return "".join(
            f"{PREFIX}{name} {value:g}\n" for name, value in sorted(self.snapshot().items())
        )
