"""A private ccq stack a chaos scenario may hurt: its own Redis server, scratch database,
instance name, gateway, API, worker and beat, beside the shared scripted model server.

Nothing here is shared with the rest of the suite but the PostgreSQL server and the
model server, so killing this stack's worker or restarting its Redis harms no other test.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import docker
import redis

from model_server.server import ModelServer
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db import migrate
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.settings import Settings, load_settings
from tests.http_api import SessionApi
from tests.processes import (
    CCQ,
    ApiProcess,
    CcqProcess,
    GatewayProcess,
    WorkerProcess,
    drop_database,
    gateway_environment,
    recreate_database,
    remove_containers,
    stack_environment,
)
from tests.waiting import free_port, wait_for

# Short, so a lost run is settled in seconds; long enough that two cores busy with six
# CLIs never miss two renewals of a live run.
LEASE_SECONDS = 8
RECONCILE_INTERVAL = 2
REDISPATCH_AFTER = 10
# One pool process per concurrent run of a scenario's load.
CONCURRENCY = 6


class RedisServer:
    """A `redis-server` on a free loopback port with an append-only file in ``data_dir``:
    stopped and started again on the same port and files, it keeps what it had."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
        argv += ["--dir", str(self.data_dir), "--appendonly", "yes", "--save", ""]
        argv += ["--logfile", str(self.data_dir / "redis.log")]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: client.ping(), timeout=30, what=f"redis-server on {self.port}")
        client.close()

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill does (the AOF keeps what was fsynced)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class PostgresServer:
    """A PostgreSQL cluster of its own (initdb, pg_ctl) on a free loopback port, run as the
    ``postgres`` user when the tests run as root; superuser ``ccq``, trusted locally."""

    def __init__(self) -> None:
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        # Not under pytest's tmp_path: that is private to the user running the tests.
        self.data_dir = Path(tempfile.mkdtemp(prefix="ccq-chaos-pg-"))
        self.port = free_port()
        self.url = f"postgresql+psycopg://ccq@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "-U", "ccq", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        argv = [*as_postgres, str(self.bin / tool), *args]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c fsync=off"
        log = str(self.data_dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", log, "-o", options, "-w", "start")

    def kill(self) -> None:
        """Stop at once, no checkpoint: what a crash does (recovery replays the WAL)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with suppress(subprocess.CalledProcessError):  # already stopped
            self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class LoopDisk:
    """A small ext4 filesystem in a file, loop-mounted at ``mount_point`` (needs root):
    a data dir the test can fill to the last byte and free again."""

    def __init__(self, mount_point: Path, size_mb: int = 64) -> None:
        self.image = mount_point.with_name(mount_point.name + ".img")
        self.mount_point = mount_point
        self.filler = mount_point / "filler"
        subprocess.run(["truncate", "-s", f"{size_mb}M", str(self.image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        mount_point.mkdir()
        subprocess.run(["mount", "-o", "loop", str(self.image), str(mount_point)], check=True)

    def fill(self) -> None:
        """Write until the filesystem refuses (ENOSPC): nothing more fits."""
        chunk = b"\0" * (1 << 20)
        with self.filler.open("wb", buffering=0) as fh:
            while len(chunk):
                try:
                    fh.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk = chunk[: len(chunk) // 2]
        assert shutil.disk_usage(self.mount_point).free < 1 << 20, "the disk is full"

    def free(self) -> None:
        self.filler.unlink()

    def remove(self) -> None:
        subprocess.run(["umount", "--lazy", str(self.mount_point)], check=False)
        self.image.unlink(missing_ok=True)


class BeatProcess(CcqProcess):
    """A real `ccq beat` process (Celery beat) of a private stack."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        schedule = log_path.parent / "celerybeat-schedule"
        super().__init__([CCQ, "beat", "--loglevel=INFO", f"--schedule={schedule}"], env, log_path)

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"beat exited: {self.log_path.read_text()[-3000:]}")
            return self.log_path.read_bytes().count(b"beat: Starting") >= self._starts

        wait_for(ready, timeout=timeout, what="beat to start")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), from /proc."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except FileNotFoundError:
            continue
        found += map(int, children)
        pending += map(int, children)
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGKILL)


class PrivateStack:
    """Handles on one private stack's processes, and an API client of one owner."""

    def __init__(
        self,
        settings: Settings,
        redis_server: RedisServer,
        api: ApiProcess,
        worker: WorkerProcess,
        beat: BeatProcess,
        docker_client: docker.DockerClient,
        postgres: PostgresServer | None,
        disk: LoopDisk | None,
    ) -> None:
        self.settings = settings
        self.postgres = postgres
        self.disk = disk
        self.redis = redis_server
        self.api_server = api
        self.worker = worker
        self.beat = beat
        self.docker = docker_client
        self.token = mint_token(settings, "chaos")
        # Set once the stack is torn down: threads following it (tails, watchers) stop.
        self.closing = threading.Event()
        self.api = SessionApi(api, self.token)

    def pool_pids(self) -> list[int]:
        """The worker's pool processes (the main process respawns them)."""
        return descendants(self.worker.process.pid)

    def kill_worker(self) -> None:
        """SIGKILL the whole worker, pool processes with it: a host that died."""
        pids = [self.worker.process.pid, *self.pool_pids()]
        kill(pids)
        self.worker.process.wait(timeout=30)

    def containers(self) -> list[docker.models.containers.Container]:
        """Every container carrying this stack's instance label, running or not."""
        label = f"ccq.instance={self.settings.instance}"
        found: list[docker.models.containers.Container] = self.docker.containers.list(
            all=True, filters={"label": label}
        )
        return found


def _copy(settings: Settings, **overrides: object) -> Settings:
    """``settings`` with ``overrides``, validated again (a copy keeps no derived state)."""
    fields = {name: getattr(settings, name) for name in Settings.model_fields}
    return load_settings(env_file=None, **{**fields, **overrides})


@contextmanager
def private_stack(
    settings: Settings,
    model_server: ModelServer,
    docker_client: docker.DockerClient,
    tmp: Path,
    *,
    own_postgres: bool = False,
    own_disk: bool = False,
) -> Iterator[PrivateStack]:
    """A whole stack of its own, built from the suite's ``settings`` (egress policy,
    secret, tree limits) with a Redis server, database, instance and data dir of its own;
    with ``own_postgres`` the database is on a PostgreSQL cluster of its own too, with
    ``own_disk`` the data dir is a small loop-mounted filesystem."""
    instance = f"chaos-{uuid.uuid4().hex[:10]}"
    database = "ccq_" + instance.replace("-", "_")
    with ExitStack() as stack:
        (tmp / "redis").mkdir()
        redis_server = RedisServer(tmp / "redis")
        stack.callback(redis_server.stop)
        redis_server.start()
        postgres = None
        server_url = settings.database_url
        if own_postgres:
            postgres = PostgresServer()
            stack.callback(postgres.remove)
            postgres.start()
            server_url = postgres.url
        disk = None
        if own_disk:
            disk = LoopDisk(tmp / "data")
            stack.callback(disk.remove)
        database_url = recreate_database(server_url, database)
        stack.callback(drop_database, server_url, database)
        migrate.upgrade(database_url)
        private = _copy(
            settings,
            database_url=database_url,
            redis_url=redis_server.url,
            data_dir=tmp / "data",
            instance=instance,
            gateway_proxy_port=free_port(),
            run_lease_seconds=LEASE_SECONDS,
            reconcile_interval=RECONCILE_INTERVAL,
            redispatch_after=REDISPATCH_AFTER,
        )
        runtime = ContainerRuntime(docker_client)
        stack.callback(runtime.remove_networks, instance)
        stack.callback(remove_containers, docker_client, f"ccq.instance={instance}")
        api_port, gateway_port = free_port(), free_port()
        env = {
            **stack_environment(private, model_server, api_port, gateway_port),
            "CCQ_RECONCILE_INTERVAL": str(RECONCILE_INTERVAL),
            "CCQ_REDISPATCH_AFTER": str(REDISPATCH_AFTER),
        }
        for name in ("gateway", "api", "worker", "beat"):
            (tmp / name).mkdir()
        gateway_env = gateway_environment(private, model_server, api_port, gateway_port)
        # Started together, then waited for: four cold starts at once, not one by one.
        processes: list[CcqProcess] = []
        for start in (
            lambda: GatewayProcess(gateway_env, tmp / "gateway" / "gateway.log"),
            lambda: ApiProcess(env, tmp / "api" / "api.log"),
            lambda: WorkerProcess(env, instance, tmp / "worker" / "worker.log", CONCURRENCY),
            lambda: BeatProcess(env, tmp / "beat" / "beat.log"),
        ):
            processes.append(start())
            stack.callback(processes[-1].stop)
        for process in processes:
            process.wait_ready()
        _, api, worker, beat = processes
        assert isinstance(api, ApiProcess)
        assert isinstance(worker, WorkerProcess)
        assert isinstance(beat, BeatProcess)
        built = PrivateStack(
            private, redis_server, api, worker, beat, docker_client, postgres, disk
        )
        stack.callback(built.closing.set)
        yield built


def restart_docker_engine(client: docker.DockerClient, timeout: float = 120) -> None:
    """Stop the host's Docker engine (SIGTERM: it stops every container) and start it
    again as it was started: through systemd, or with the same command line.

    ``client`` (this process's) drops its connections, which the restart broke."""
    if Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=timeout)
    else:
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=timeout, what="dockerd to stop")
        log = Path("/var/log/ccq/dockerd.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            # setsid -f: the engine runs on in a session of its own, as bootstrap's does,
            # and this process has no child left to reap.
            subprocess.run(
                ["setsid", "-f", *(a.decode() for a in argv)],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=timeout,
            )

    def answers() -> bool:
        return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0

    wait_for(answers, timeout=timeout, what="the Docker engine to answer again")
    client.close()
