"""What a worker host's services share: settings, the database, Redis and Docker."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.settings import Settings


@dataclass(frozen=True)
class HostResources:
    """Built once per worker process (after the fork) and handed to each service."""

    settings: Settings
    session_factory: sessionmaker[DbSession]
    redis: redis.Redis
    runtime: ContainerRuntime
