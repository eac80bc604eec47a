"""`make up` as a user runs it (scripts/stack.sh), on a private stack beside any other.

The stack gets its own state directory, instance, ports, database and Redis database, so
it never meets the user's `make up` stack or the test suite's own processes. What it
proves is what a new user meets first: session containers reach the gateway whatever
the engine reports, and when they cannot, `make up` says so in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from orchestrator.runtime.containers.network import gateway_address
from orchestrator.settings import Settings
from tests.processes import drop_database, recreate_database, redis_url_with_db
from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack.sh"
BIN = Path(sys.executable).parent
STACK_REDIS_DB = 13  # bench uses 14, the suite 15
# `up` must fail within this when containers cannot reach the gateway (it checks in seconds).
FAIL_FAST_LIMIT_S = 60


class Stack:
    """One private `scripts/stack.sh` stack; `down` removes all it made."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, command: str, timeout: float, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(STACK), command],
            env={**self.env, **extra},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['CCQ_API_PORT']}"


@pytest.fixture
def stack(
    base_settings: Settings, tmp_path: Path, docker_client: docker.DockerClient
) -> Iterator[Stack]:
    instance = f"test-stack-{uuid.uuid4().hex[:8]}"
    database = instance.replace("-", "_")
    database_url = recreate_database(base_settings.database_url, database)
    # A user's environment: no test-stack variables, no Claude credential (the stack
    # starts its own scripted model server).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CCQ_") and k not in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")
    }
    env.update(
        CCQ_STATE_DIR=str(tmp_path / "state"),
        CCQ_BIN=str(BIN),
        CCQ_INSTANCE=instance,
        CCQ_DATABASE_URL=database_url,
        CCQ_REDIS_URL=redis_url_with_db(base_settings.redis_url, STACK_REDIS_DB),
        CCQ_DATA_DIR=str(tmp_path / "data"),
        CCQ_API_PORT=str(free_port()),
        CCQ_GATEWAY_PORT=str(free_port()),
        CCQ_FLOWER_PORT=str(free_port()),
        CCQ_MODEL_SERVER_PORT=str(free_port()),
    )
    stack = Stack(env)
    try:
        yield stack
    finally:
        down = stack.run("down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        drop_database(base_settings.database_url, database)
        assert not docker_client.containers.list(
            all=True, filters={"label": f"ccq.instance={instance}"}
        ), "`down` left containers of the stack"
        assert not docker_client.networks.list(filters={"label": f"ccq.instance={instance}"}), (
            "`down` left the stack's network"
        )


def test_down_before_any_up_succeeds(stack: Stack) -> None:
    """`make down` on a fresh clone (no state, no dotenv file yet) stops nothing, cleanly."""
    down = stack.run("down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stack: down" in down.stdout
    assert not (Path(stack.env["CCQ_STATE_DIR"]) / "ccq.env").exists()


def test_up_works_on_a_network_whose_inspect_names_no_gateway(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    """The engine's default bridge on Docker 20.10 inspects without a gateway (only its
    subnet): the address sessions reach the host on comes from the bridge interface."""
    bridge = docker_client.networks.get("bridge").attrs
    if any(c.get("Gateway") for c in bridge["IPAM"]["Config"]):
        pytest.skip(
            "this engine names the default bridge's gateway: the case needs one that doesn't"
        )
    gateway = gateway_address(bridge)

    up = stack.run("up", timeout=300, CCQ_SESSION_NETWORK="bridge")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"host address {gateway}" in up.stdout
    assert f"127.0.0.1,{gateway}" in up.stdout
    assert requests.get(stack.api_url + "/readyz", timeout=10).status_code == 200

    # The whole demo, as `make demo` runs it, delegation (tools calling the API) included.
    demo = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env={**stack.env, "CCQ_SESSION_NETWORK": "bridge", "CCQ_ENV_FILE": _env_file(stack)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "[4] the parent, resumed once with all three results" in demo.stdout


def test_up_fails_fast_naming_the_address_when_containers_cannot_reach_the_gateway(
    stack: Stack,
) -> None:
    # The gateway on loopback alone: nothing on the session network can call it.
    up = stack.run("up", timeout=FAIL_FAST_LIMIT_S, CCQ_GATEWAY_HOST="127.0.0.1")
    output = up.stdout + up.stderr
    assert up.returncode == 1, output
    assert "cannot reach http://host.docker.internal:" in output
    assert "Connection refused" in output
    gateway = next(
        line.split("host address ")[1].rstrip(")")
        for line in up.stdout.splitlines()
        if "host address " in line
    )
    assert f"cannot reach ccq's gateway at {gateway}" in output
    assert "CCQ_GATEWAY_HOST=127.0.0.1" in output
    assert "stack: ready" not in up.stdout

    # The worker's heartbeat finds the same, and /readyz says it.
    def readiness_names_the_network() -> str | None:
        response = requests.get(stack.api_url + "/readyz", timeout=10)
        problems = response.json()["error"]["details"] if response.status_code == 503 else {}
        return problems.get("session_network")

    problem = wait_for(readiness_names_the_network, timeout=60, what="/readyz to name it")
    assert "cannot reach http://host.docker.internal:" in problem

    # A user who runs the demo anyway is told why at once, not after minutes.
    demo = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env={**stack.env, "CCQ_ENV_FILE": _env_file(stack)},
        capture_output=True,
        text=True,
        timeout=FAIL_FAST_LIMIT_S,
        check=False,
    )
    assert demo.returncode == 1, demo.stdout + demo.stderr
    assert "is not ready" in demo.stderr
    assert "session_network" in demo.stderr


def _env_file(stack: Stack) -> str:
    return str(Path(stack.env["CCQ_STATE_DIR"]).resolve() / "ccq.env")
