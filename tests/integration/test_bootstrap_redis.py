"""`make bootstrap` leaves Redis durable: appendonly on, whether it started Redis or found it.

The first test checks the machine's own Redis (127.0.0.1:6379), which bootstrap only
reconfigures with CONFIG SET (never a restart: other processes use it). The others point
bootstrap at a Redis of their own on a free port, so starting, restarting and rewriting a
config file happen to nothing but what the test made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"


def _bootstrap(**env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(BOOTSTRAP)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _config(client: redis.Redis, name: str) -> str:
    value: dict[str, str] = client.config_get(name)  # type: ignore[assignment]
    return value[name]


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_the_running_redis_has_appendonly_after_bootstrap() -> None:
    result = _bootstrap()
    assert "Redis: running on 127.0.0.1:6379" in result.stdout
    assert "appendonly" in result.stdout  # it says what it found or did
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        assert client.info("persistence")["aof_enabled"] == 1
        assert _config(client, "appendonly") == "yes"
    finally:
        client.close()


@pytest.fixture
def own_redis_port() -> Iterator[int]:
    """A port for a Redis this test makes; whatever answers there at the end is shut down."""
    port = free_port()
    yield port
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        client.shutdown(nosave=True)
    except redis.RedisError:
        pass  # never started, or already gone
    finally:
        client.close()


def test_a_redis_bootstrap_starts_keeps_its_data_across_a_restart(
    own_redis_port: int, tmp_path: Path
) -> None:
    data_dir = tmp_path / "redis-data"  # bootstrap creates it
    env = {
        "CCQ_BOOTSTRAP_REDIS_PORT": str(own_redis_port),
        "CCQ_BOOTSTRAP_REDIS_DIR": str(data_dir),
        "CCQ_BOOTSTRAP_LOG_DIR": str(tmp_path / "log"),
    }
    started = _bootstrap(**env)
    assert f"Redis: started on 127.0.0.1:{own_redis_port}" in started.stdout
    assert "appendonly already on (appendfsync everysec" in started.stdout

    client = redis.Redis(host="127.0.0.1", port=own_redis_port, socket_timeout=5)
    try:
        assert _config(client, "dir") == str(data_dir)
        assert client.info("persistence")["aof_enabled"] == 1
        client.set("ccq:test:durable", "kept")
        client.shutdown(nosave=True)  # no RDB snapshot: only the AOF can bring the key back
        wait_for(lambda: not _answers(client), timeout=30, what="the test's Redis to stop")

        restarted = _bootstrap(**env)
        assert f"Redis: started on 127.0.0.1:{own_redis_port}" in restarted.stdout
        assert client.get("ccq:test:durable") == b"kept"
    finally:
        client.close()


def test_bootstrap_turns_appendonly_on_in_a_running_redis_and_its_config_file(
    own_redis_port: int, tmp_path: Path
) -> None:
    redis_server = shutil.which("redis-server")
    assert redis_server is not None
    config = tmp_path / "redis.conf"
    config.write_text(
        f'port {own_redis_port}\nbind 127.0.0.1\ndir {tmp_path}\nappendonly no\nsave ""\n'
    )
    server = subprocess.Popen(
        [redis_server, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = redis.Redis(host="127.0.0.1", port=own_redis_port, socket_timeout=5)
    try:
        wait_for(lambda: _answers(client), timeout=30, what="the test's Redis")
        env = {"CCQ_BOOTSTRAP_REDIS_PORT": str(own_redis_port)}

        first = _bootstrap(**env)
        assert f"Redis: running on 127.0.0.1:{own_redis_port}" in first.stdout
        assert "turned appendonly on (appendfsync everysec) with CONFIG SET" in first.stdout
        assert f"saved appendonly in its config file {config}" in first.stdout
        assert client.info("persistence")["aof_enabled"] == 1
        assert _config(client, "appendfsync") == "everysec"
        assert "appendonly yes" in config.read_text().splitlines()

        second = _bootstrap(**env)  # idempotent: nothing left to do
        assert "appendonly already on" in second.stdout
        assert "turned appendonly on" not in second.stdout
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=30)
