"""A client polling the real API every 2 s keeps one connection (CCQ_API_KEEPALIVE).

gunicorn closes an idle keep-alive connection after its `keepalive` seconds (2 by
default); a client polling as often then races the close and sometimes sends its request
into a socket the server is shutting (``Connection reset by peer``).
"""

from __future__ import annotations

import threading

import pytest
import requests
from requests.adapters import HTTPAdapter

from orchestrator.auth.owner_tokens import mint_token
from orchestrator.settings import Settings
from tests.processes import ApiProcess, WorkerProcess

pytestmark = pytest.mark.integration

POLL_EVERY = 2.0
POLLS = 30  # a minute


def test_a_client_polling_every_2s_for_a_minute_keeps_one_connection(
    api_server: ApiProcess, settings: Settings, worker: WorkerProcess
) -> None:
    headers = {"Authorization": f"Bearer {mint_token(settings, 'keepalive-poller')}"}
    url = f"{api_server.url}/api/v1/batches"
    adapter = HTTPAdapter()
    with requests.Session() as client:
        client.mount("http://", adapter)
        created = client.post(
            url, json={"items": [{"prompt": "polled"}]}, headers=headers, timeout=30
        )
        assert created.status_code == 201, created.text
        batch_url = f"{url}/{created.json()['batch']['id']}"
        opened = _connections(adapter)
        between_polls = threading.Event()  # never set: the wait is the idle time

        for poll in range(POLLS):
            between_polls.wait(POLL_EVERY)
            # A reset raises here; a connection the server closed while idle is replaced
            # by urllib3 without a word, which the count below catches.
            response = client.get(batch_url, headers=headers, timeout=30)
            assert response.status_code == 200, f"poll {poll}: {response.text}"

        assert _connections(adapter) == opened == 1, (
            f"{_connections(adapter)} connections for {POLLS + 1} requests"
        )


def _connections(adapter: HTTPAdapter) -> int:
    """Connections the client has opened so far (urllib3 counts them per pool)."""
    pools = adapter.poolmanager.pools
    return sum(pools[key].num_connections for key in pools.keys())  # noqa: SIM118
