"""A stand-in for the few Redis calls a run's event sink makes, for unit tests of what
the sink does to events (the real stream is tested against Redis elsewhere)."""

from __future__ import annotations

import json
from typing import Any


class StreamRecorder:
    """XADD numbers entries and keeps each one's payload; pipelines run at ``execute``."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def xadd(self, key: str, fields: dict[str, Any], **_: Any) -> str:
        self.entries.append(json.loads(fields["e"]))
        return f"{len(self.entries)}-0"

    def expire(self, key: str, seconds: int) -> bool:
        return True

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)


class _Pipeline:
    def __init__(self, client: StreamRecorder) -> None:
        self._client = client
        self._results: list[Any] = []

    def xadd(self, key: str, fields: dict[str, Any], **kwargs: Any) -> None:
        self._results.append(self._client.xadd(key, fields, **kwargs))

    def expire(self, key: str, seconds: int) -> None:
        self._results.append(self._client.expire(key, seconds))

    def execute(self) -> list[Any]:
        return self._results
