"""Every Redis connection of a worker or beat process has bounded timeouts.

ccq's own client (``orchestrator.runtime.redis_client``) and Celery's broker and result
backend connections; the hung-Redis behaviour itself is in
``tests/integration/test_redis_timeouts.py``.
"""

from __future__ import annotations

from pathlib import Path

from kombu.transport.redis import Transport

from orchestrator.runtime import locks, redis_client
from orchestrator.settings import Settings
from tasks import celery_app
from tasks.celery_app import make_celery
from tests.waiting import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_worker_client_has_socket_timeouts_and_a_health_check() -> None:
    client = redis_client.worker_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == redis_client.SOCKET_TIMEOUT_SECONDS
        assert kwargs["socket_connect_timeout"] == redis_client.CONNECT_TIMEOUT_SECONDS
        assert kwargs["health_check_interval"] == redis_client.HEALTH_CHECK_INTERVAL_SECONDS
        retry = client.get_retry()
        assert retry is not None
        assert retry.get_retries() == redis_client.RETRIES  # not redis-py's ten
    finally:
        client.close()


def test_a_hung_call_ends_before_the_session_lock_is_renewed_again() -> None:
    # The lock's thread renews every third of its TTL (the run's lease, by default) and the
    # TTL covers two misses: a renewal that hangs on Redis must give up before the next.
    renew_interval_seconds = min(locks.TTL_MS / 1000, Settings().run_lease_seconds) / 3
    assert renew_interval_seconds > redis_client.SOCKET_TIMEOUT_SECONDS
    assert renew_interval_seconds > redis_client.CONNECT_TIMEOUT_SECONDS


def test_celery_broker_and_backend_connections_have_timeouts() -> None:
    app = make_celery(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        broker = app.conf.broker_transport_options
        assert broker["socket_timeout"] == celery_app.CELERY_REDIS_SOCKET_TIMEOUT_SECONDS
        assert broker["socket_connect_timeout"] == celery_app.CELERY_REDIS_CONNECT_TIMEOUT_SECONDS
        assert broker["health_check_interval"] == (
            celery_app.CELERY_REDIS_HEALTH_CHECK_INTERVAL_SECONDS
        )
        # The worker's BRPOP blocks this long on the server; a shorter socket timeout
        # would cut every empty poll short.
        assert broker["socket_timeout"] > broker.get("polling_interval", Transport.brpop_timeout)
        assert app.conf.redis_socket_timeout == celery_app.CELERY_REDIS_SOCKET_TIMEOUT_SECONDS
        assert app.conf.redis_socket_connect_timeout == (
            celery_app.CELERY_REDIS_CONNECT_TIMEOUT_SECONDS
        )
        assert app.conf.redis_backend_health_check_interval == (
            celery_app.CELERY_REDIS_HEALTH_CHECK_INTERVAL_SECONDS
        )
        backend_params = app.backend.connparams
        assert backend_params["socket_timeout"] == celery_app.CELERY_REDIS_SOCKET_TIMEOUT_SECONDS
        assert backend_params["health_check_interval"] == (
            celery_app.CELERY_REDIS_HEALTH_CHECK_INTERVAL_SECONDS
        )
    finally:
        app.close()


def test_worker_side_code_builds_redis_clients_only_through_worker_redis() -> None:
    """A client built elsewhere in tasks/ or orchestrator/ would get redis-py's defaults
    (ten retries of a timed-out command). The API and the gateway build their own."""
    builder = ROOT / "orchestrator" / "runtime" / "redis_client.py"
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("tasks", "orchestrator")
        for path in (ROOT / package).rglob("*.py")
        if path != builder
        and any(
            call in path.read_text()
            for call in ("Redis.from_url(", "Redis(", "ConnectionPool(", "StrictRedis(")
        )
    ]
    assert offenders == []
