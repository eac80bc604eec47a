"""Fixtures of the chaos suite: a private stack per scenario, and the numbers it saw.

Each scenario hurts its own stack (tests/chaos/stack.py), never the suite's shared
worker, API or Redis, so the rest of the suite runs on unharmed before and after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from model_server.server import ModelServer
from orchestrator.settings import Settings
from tests.chaos.stack import PrivateStack, private_stack

RESULTS = Path(__file__).with_name("results.json")


@pytest.fixture
def stack(
    settings: Settings,
    model_server: ModelServer,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> Iterator[PrivateStack]:
    """A whole private stack (Redis server, database, gateway, API, worker, beat)."""
    with private_stack(settings, model_server, docker_client, tmp_path) as built:
        yield built


@pytest.fixture
def pg_stack(
    settings: Settings,
    model_server: ModelServer,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> Iterator[PrivateStack]:
    """A private stack whose database is on a PostgreSQL cluster of its own."""
    with private_stack(settings, model_server, docker_client, tmp_path, own_postgres=True) as built:
        yield built


@pytest.fixture
def disk_stack(
    settings: Settings,
    model_server: ModelServer,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> Iterator[PrivateStack]:
    """A private stack whose data dir is a small loop-mounted filesystem (root only)."""
    if os.geteuid() != 0:
        pytest.skip("a loop-mounted filesystem needs root (mount -o loop)")
    with private_stack(settings, model_server, docker_client, tmp_path, own_disk=True) as built:
        yield built


@pytest.fixture(scope="session")
def chaos_results() -> Iterator[dict[str, Any]]:
    """Each scenario's numbers, printed and written to tests/chaos/results.json."""
    results: dict[str, Any] = {}
    yield results
    if results:  # merged: a run of one scenario updates only its own numbers
        kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        RESULTS.write_text(json.dumps({**kept, **results}, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def record(chaos_results: dict[str, Any], request: pytest.FixtureRequest) -> Any:
    """``record(numbers)``: keep this scenario's numbers under its test's name."""

    def keep(numbers: dict[str, Any]) -> None:
        name = request.node.name.removeprefix("test_")
        chaos_results[name] = numbers
        print(f"\nchaos {name}: {json.dumps(numbers, sort_keys=True)}")

    return keep
