"""Schemathesis against the real API: thousands of generated requests, both owners' tokens,
no server error and every answer as the OpenAPI document says.

The API is a real `ccq api` process (gunicorn, gevent) on the real PostgreSQL and Redis,
with a database and a task queue of its own that no worker takes from: the prompts the
fuzzer sends are queued and never start containers. WebSocket tails are left out (the
fuzzer speaks HTTP only; tests/integration/test_tail_limits.py and test_streams.py cover
them). The run is seeded, so CI repeats the same cases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from model_server.server import ModelServer
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db import migrate
from orchestrator.settings import Settings
from tests.processes import (
    ApiProcess,
    drop_database,
    recreate_database,
    running,
    stack_environment,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OWNERS = ("fuzz-alice", "fuzz-mallory")
# Examples per operation and phase; with the coverage phase's cases, each owner's run
# makes well over 1,000 requests (the test checks the total).
MAX_EXAMPLES = 40
MIN_CASES = 2000
SEED = 17
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


@pytest.fixture(scope="module")
def fuzz_settings(settings: Settings) -> Iterator[Settings]:
    """The test stack's settings on a scratch database and a queue no worker reads."""
    name = f"{settings.instance}-fuzz"
    database = "ccq_" + name.replace("-", "_")
    url = recreate_database(settings.database_url, database)
    migrate.upgrade(url)
    yield settings.model_copy(update={"database_url": url, "instance": name})
    drop_database(settings.database_url, database)
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def fuzz_api(
    fuzz_settings: Settings, model_server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    env = stack_environment(fuzz_settings, model_server)
    env["CCQ_MAX_WAIT_SECONDS"] = "1"  # no worker runs the fuzzer's prompts
    with running(ApiProcess(env, tmp_path_factory.mktemp("fuzz-api") / "api.log")) as api:
        yield api


def _fuzz(api: ApiProcess, token: str, report: Path) -> dict[str, object]:
    argv = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(REPO / "tests" / "fuzz_schemathesis.toml"),
        "run",
        f"http://127.0.0.1:{api.port}/api/v1/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--header",
        f"Authorization: Bearer {token}",
        "--exclude-path-regex",
        "/stream$",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--workers",
        "2",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(REPO)}
    # Run beside the report, so nothing it might write lands in the checkout.
    done = subprocess.run(
        argv, cwd=report.parent, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    return {"code": done.returncode, "output": done.stdout[-20000:] + done.stderr[-5000:]}


def _cases(report: Path) -> int:
    """Requests sent, counted from the run's event log (one interaction per case)."""
    total = 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        for kind, data in event.items():
            if kind == "ScenarioFinished":
                total += len(data.get("recorder", {}).get("interactions", {}))
    return total


def test_the_fuzzed_api_answers_as_documented_for_both_owners(
    fuzz_api: ApiProcess, fuzz_settings: Settings, tmp_path: Path
) -> None:
    cases = 0
    for owner in OWNERS:
        report = tmp_path / f"{owner}.ndjson"
        outcome = _fuzz(fuzz_api, mint_token(fuzz_settings, owner), report)
        assert outcome["code"] == 0, outcome["output"]
        cases += _cases(report)
    assert cases >= MIN_CASES


def test_a_request_line_over_the_servers_limit_is_the_documented_414(fuzz_api: ApiProcess) -> None:
    """The fuzzer's first find: gunicorn answers it before the API, and the document said
    nothing of it. Now it does (as HTML: the API never sees the request)."""
    url = f"http://127.0.0.1:{fuzz_api.port}/api/v1/sessions?cursor={'x' * 5000}"
    answer = requests.get(url, timeout=30)
    assert answer.status_code == 414
    document = requests.get(f"http://127.0.0.1:{fuzz_api.port}/api/v1/openapi.json", timeout=30)
    documented = document.json()["paths"]["/api/v1/sessions"]["get"]["responses"]["414"]
    assert "text/html" in documented["content"]
    assert answer.headers["Content-Type"].startswith("text/html")
