"""The gateway's notices to runs (see :mod:`orchestrator.streams.gateway_notices`).

A notice is best effort: Redis being away must not fail a model call, so errors are
logged and dropped.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis.asyncio

from orchestrator.streams import gateway_notices

log = logging.getLogger(__name__)


class Notices:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    async def push(self, run_id: uuid.UUID, kind: str, data: dict[str, Any]) -> None:
        try:
            await gateway_notices.push(self.client, run_id, kind, data)
        except (redis.RedisError, OSError):
            log.warning("could not leave a %s notice for run %s", kind, run_id)
