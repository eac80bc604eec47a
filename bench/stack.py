"""An isolated ccq stack for one benchmark run, removed afterwards whatever happens.

Built like the integration tests' stack, from the same helpers (``tests.processes``): a
scratch PostgreSQL database, Redis database 14, an instance name of its own (its
containers and its Celery queue carry it, so a `make up` stack on the same machine is
never touched), the scripted model server, and real `ccq gateway`, `ccq api` and
`ccq worker` processes. Sessions reach the model and ccq's MCP tools through the gateway,
as under `make up`: the gateway holds the scripted model server's key as the operator's
credential and calls the model server on loopback. The raw baselines call the model
server directly from their containers (so it listens on every interface), with no
gateway and no MCP server. The API runs as `ccq api` does by default: one gevent process.

A stack may also run without a worker (``with_worker=False``): then nothing consumes its
Celery queues and no run can ever start, for benchmarks that only submit work.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from bench import BenchError
from model_server.server import ModelServer
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db import migrate
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.settings import ENV_PREFIX, Settings, load_settings
from tests.processes import (
    SCRIPTED_MODEL_KEY,
    ApiProcess,
    GatewayProcess,
    WorkerProcess,
    container_base_url,
    drop_database,
    gateway_environment,
    recreate_database,
    redis_url_with_db,
    stack_environment,
)
from tests.waiting import free_port

BENCH_REDIS_DB = 14
# Kept after the run (git-ignored): what to read when a figure looks wrong.
LOG_DIR = Path(__file__).resolve().parent / "results" / "logs"


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str] = field(repr=False)  # holds the JWT secret and the model key
    api: ApiProcess
    gateway: GatewayProcess
    worker: WorkerProcess | None  # None: nothing consumes the queues, nothing runs
    model: ModelServer
    runtime: ContainerRuntime  # on the process's shared Docker client
    redis: redis.Redis
    token: str = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(
            f"{self.api.url}{path}", json=body, headers=self.headers, timeout=30
        )
        if response.status_code not in (200, 201, 202):
            raise BenchError(f"POST {path}: {response.status_code} {response.text[:500]}")
        reply: dict[str, Any] = response.json()
        return reply

    def delete(self, path: str) -> None:
        response = requests.delete(f"{self.api.url}{path}", headers=self.headers, timeout=30)
        if response.status_code not in (200, 202, 204):
            raise BenchError(f"DELETE {path}: {response.status_code} {response.text[:500]}")

    def ws_url(self, path: str) -> str:
        return f"{self.api.ws_url}{path}"

    def baseline_environment(self) -> dict[str, str]:
        """The raw CLI's environment, "the CLI alone": straight at the model server where
        the baseline's containers reach it, with the scripted server's key. Not
        ``cli_environment``, which points a run at the gateway with its session token:
        no gateway and no session token here, and no MCP config in the baseline's argv
        either (``bench.cli_baseline.cli_argv``). Never printed."""
        return {
            "ANTHROPIC_BASE_URL": container_base_url(self.model),
            "ANTHROPIC_API_KEY": SCRIPTED_MODEL_KEY,
        }

    def log_problems(self) -> dict[str, list[str]]:
        """Warnings, errors and tracebacks each process logged (last 20 each)."""
        found: dict[str, list[str]] = {}
        processes = {"api": self.api, "gateway": self.gateway, "worker": self.worker}
        for name, process in processes.items():
            if process is None:
                continue
            path = process.log_path
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            bad = [
                line
                for line in lines
                if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
            ]
            found[name] = bad[-20:]
        return found


def clear_logs() -> None:
    """Remove the previous run's logs (once per run: a run may start several stacks)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    for old in LOG_DIR.glob("*.log"):
        old.unlink()


@contextmanager
def running_stack(
    *,
    worker_concurrency: int = 2,
    with_worker: bool = True,
    overrides: Mapping[str, int | str] | None = None,
    log_prefix: str = "",
) -> Iterator[Stack]:
    """Start the stack; on the way out (an error and Ctrl-C included) stop the API, the
    worker and then the gateway (the worker's runs call it until they end), stop the
    model server, remove the instance's containers and network, drop the database, flush
    the Redis database and delete the data directory, in that order.

    ``overrides`` are settings (``max_pending_runs_per_owner=...``) given to the stack's
    processes as their ``CCQ_`` variables; ``log_prefix`` names its logs apart from
    another stack's of the same run (``submit-`` gives ``submit-api.log``).
    """
    base = load_settings(env_file=None)
    suffix = secrets.token_hex(6)
    instance = f"bench-{suffix}"
    database = f"ccq_bench_{suffix}"
    overrides = dict(overrides or {})
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    logs = {name: LOG_DIR / f"{log_prefix}{name}.log" for name in ("api", "gateway", "worker")}
    for path in logs.values():  # a stale log would look like a ready process
        path.unlink(missing_ok=True)
    with ExitStack() as cleanup:  # callbacks run last-registered first
        workdir = Path(tempfile.mkdtemp(prefix=f"ccq-{instance}-"))
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)

        redis_url = redis_url_with_db(base.redis_url, BENCH_REDIS_DB)
        redis_client = redis.Redis.from_url(redis_url)
        cleanup.callback(redis_client.close)
        redis_client.flushdb()
        cleanup.callback(redis_client.flushdb)

        cleanup.callback(drop_database, base.database_url, database)
        database_url = recreate_database(base.database_url, database)
        migrate.upgrade(database_url)

        runtime = ContainerRuntime()
        # Callbacks run last-in first-out: the network goes after the containers on it.
        cleanup.callback(runtime.remove_networks, instance)
        cleanup.callback(runtime.remove_instance, instance)

        # Every interface: the raw baselines' containers call it (container_base_url).
        # ccq's sessions never do: only the gateway calls it, on loopback.
        model = ModelServer(host="0.0.0.0", port=0).start()  # noqa: S104
        cleanup.callback(model.stop)
        settings = load_settings(
            env_file=None,
            database_url=database_url,
            redis_url=redis_url,
            data_dir=workdir / "data",
            jwt_secret=secrets.token_hex(20),
            instance=instance,
            **overrides,
        )
        ports = (free_port(), free_port())  # the API's, the gateway's
        extra = {(ENV_PREFIX + name).upper(): str(v) for name, v in overrides.items()}
        # No Claude credential here: only the gateway gets one, as under `make up`.
        env = {**stack_environment(settings, model, *ports), **extra}
        # The operator's credential is the scripted model server's key (it ignores it).
        operator = {"ANTHROPIC_API_KEY": SCRIPTED_MODEL_KEY}
        gateway = GatewayProcess(
            {**gateway_environment(settings, model, *ports, credential=operator), **extra},
            logs["gateway"],
        )
        cleanup.callback(gateway.stop)  # after the worker's and the API's: registered first
        gateway.wait_ready()

        worker = None
        if with_worker:
            worker = WorkerProcess(env, "bench-worker", logs["worker"], worker_concurrency)
            cleanup.callback(worker.stop)
        api = ApiProcess(env, logs["api"])
        cleanup.callback(api.stop)
        if worker is not None:
            worker.wait_ready()
        api.wait_ready()

        yield Stack(
            settings=settings,
            env=env,
            api=api,
            gateway=gateway,
            worker=worker,
            model=model,
            runtime=runtime,
            redis=redis_client,
            token=mint_token(settings, "bench"),
        )
