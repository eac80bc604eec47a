"""Bounded batch uploads, results streamed without a held connection, pool timeouts.

The memory and slow-reader tests use the real API process (gunicorn, gevent); the
limits' 413s and the pool timeout's 503 use the app in-process with small settings.
"""

from __future__ import annotations

import io
import json
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import create_engine, delete, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from api.app import create_app
from api.extensions import EXTENSION_KEY, Services
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db.engine import make_session_factory
from orchestrator.db.models import Batch, BatchStatus, Run, RunStatus, Session
from orchestrator.domain.batches import BatchItem, BatchService, NewBatch
from orchestrator.settings import Settings
from tests.processes import ApiProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def _descendants(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for child in children for d in _descendants(child)]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _api_rss(server: ApiProcess) -> dict[int, int]:
    """VmRSS (KiB) of the API's processes (gunicorn's arbiter and workers) by pid."""
    pids = [server.process.pid, *_descendants(server.process.pid)]
    return {pid: _rss_kib(pid) for pid in pids}


def _empty_items_json(size: int) -> Iterator[bytes]:
    yield b'{"items": ['
    chunk = b"{}," * (64 * 1024)
    for _ in range(size // len(chunk)):
        yield chunk
    yield b"{}]}"


def _empty_items_ndjson(size: int) -> Iterator[bytes]:
    chunk = b"{}\n" * (64 * 1024)
    for _ in range(size // len(chunk)):
        yield chunk


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/json", _empty_items_json), ("application/x-ndjson", _empty_items_ndjson)],
)
def test_20mb_of_empty_items_is_refused_naming_the_items_limit_in_bounded_memory(
    api_server: ApiProcess, settings: Settings, content_type: str, body: Any
) -> None:
    headers = {
        "Authorization": f"Bearer {mint_token(settings, 'bounded-' + uuid.uuid4().hex[:8])}",
        "Content-Type": content_type,
    }
    url = f"{api_server.url}/api/v1/batches"
    # Warm up the code path once, so what is measured is the upload, not imports.
    assert requests.post(url, data=body(1 * MB), headers=headers, timeout=60).status_code == 413
    before = _api_rss(api_server)

    # A generator: sent chunked, without a Content-Length.
    response = requests.post(url, data=body(20 * MB), headers=headers, timeout=120)

    after = _api_rss(api_server)
    assert response.status_code == 413, response.text
    (detail,) = response.json()["error"]["details"]
    assert detail["field"] == "items"
    assert detail["setting"] == "CCQ_BATCH_MAX_ITEMS"
    assert detail["limit"] == settings.batch_max_items
    growth = {pid: after[pid] - before[pid] for pid in before if pid in after}
    assert max(growth.values()) < 30 * 1024, growth  # KiB


@pytest.fixture
def small_limits(settings: Settings) -> Iterator[FlaskClient]:
    """The API in-process with small body limits."""
    limits = {
        "batch_max_bytes": 64 * 1024,
        "batch_max_items": 50,
        "batch_max_item_bytes": 2048,
        "max_request_bytes": 64 * 1024,
    }
    app = create_app(settings.model_copy(update=limits))
    yield app.test_client()
    app.extensions[EXTENSION_KEY].close()


def _owner_headers(settings: Settings, content_type: str = "application/json") -> dict[str, str]:
    token = mint_token(settings, "bounded-" + uuid.uuid4().hex[:8])
    return {"Authorization": f"Bearer {token}", "Content-Type": content_type}


def _error(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.get_json()["error"]
    return error


def _detail(response: Any) -> dict[str, Any]:
    assert response.status_code == 413, response.get_data(as_text=True)
    error = _error(response)
    assert error["code"] == "too_large"
    (detail,) = error["details"]
    assert detail["setting"] in error["message"]
    return dict(detail)


def test_each_body_limit_is_a_413_naming_its_setting(
    small_limits: FlaskClient, settings: Settings
) -> None:
    headers = _owner_headers(settings)
    # Few items, many bytes: the bytes limit, with a declared length and without one.
    spaces = b'{"items": [' + b" " * (100 * 1024) + b'{"prompt": "x"}]}'
    declared = small_limits.post("/api/v1/batches", data=spaces, headers=headers)
    chunked = small_limits.post("/api/v1/batches", input_stream=io.BytesIO(spaces), headers=headers)
    ndjson = small_limits.post(
        "/api/v1/batches",
        input_stream=io.BytesIO(b'{"prompt": "x"}\n' * 5000),
        headers=_owner_headers(settings, "application/x-ndjson"),
    )
    for response in (declared, chunked, ndjson):
        assert _detail(response) == {
            "field": "(body)",
            "reason": "a batch upload is at most 65536 bytes",
            "setting": "CCQ_BATCH_MAX_BYTES",
            "limit": 64 * 1024,
        }

    big_item = {"items": [{"prompt": "x"}, {"prompt": "y" * 4096}]}
    item = _detail(small_limits.post("/api/v1/batches", json=big_item, headers=headers))
    assert (item["field"], item["setting"]) == ("items.1", "CCQ_BATCH_MAX_ITEM_BYTES")
    big_line = _detail(
        small_limits.post(
            "/api/v1/batches",
            data=b'{"prompt": "x"}\n{"prompt": "' + b"y" * 4096 + b'"}\n',
            headers=_owner_headers(settings, "application/x-ndjson"),
        )
    )
    assert (big_line["field"], big_line["setting"]) == ("items.1", "CCQ_BATCH_MAX_ITEM_BYTES")

    many = {"items": [{"prompt": "x"}] * 51}
    count = _detail(small_limits.post("/api/v1/batches", json=many, headers=headers))
    assert (count["field"], count["setting"], count["limit"]) == (
        "items",
        "CCQ_BATCH_MAX_ITEMS",
        50,
    )

    session = _detail(
        small_limits.post("/api/v1/sessions", json={"prompt": "x" * 70_000}, headers=headers)
    )
    assert (session["setting"], session["limit"]) == ("CCQ_MAX_REQUEST_BYTES", 64 * 1024)


def test_a_batch_body_parsed_in_pieces_keeps_the_whole_body_contract(
    small_limits: FlaskClient, settings: Settings
) -> None:
    headers = _owner_headers(settings)
    not_object = small_limits.post("/api/v1/batches", data=b"[1, 2]", headers=headers)
    trailing = small_limits.post("/api/v1/batches", data=b'{"items": []} []', headers=headers)
    empty = small_limits.post("/api/v1/batches", json={"items": []}, headers=headers)
    unknown = small_limits.post(
        "/api/v1/batches", json={"items": [{"prompt": "x"}], "colour": "red"}, headers=headers
    )

    assert [r.status_code for r in (not_object, trailing, empty, unknown)] == [400] * 4
    assert _error(not_object)["details"][0]["field"] == "(body)"
    assert _error(empty)["details"] == [
        {"field": "items", "reason": "a batch needs at least one item"}
    ]
    assert _error(unknown)["details"][0]["field"] == "colour"


def _finished_batch(
    factory: sessionmaker[DbSession], owner: str, items: int, result_bytes: int
) -> uuid.UUID:
    """A finished batch written straight to PostgreSQL, each result ``result_bytes`` long."""
    with factory() as db:
        spec = NewBatch(items=[BatchItem(prompt=f"p{i}") for i in range(items)])
        batch, _ = BatchService(db, owner).create(spec)
        now = datetime.now(UTC)
        session_ids = select(Session.id).where(Session.batch_id == batch.id)
        db.execute(
            update(Run)
            .where(Run.session_id.in_(session_ids))
            .values(
                status=RunStatus.SUCCEEDED,
                result_text="r" * result_bytes,
                started_at=now,
                finished_at=now,
            )
        )
        batch.status, batch.finished_at = BatchStatus.SUCCEEDED, now
        db.commit()
        return batch.id


def _delete_batch(factory: sessionmaker[DbSession], batch_id: uuid.UUID) -> None:
    with factory() as db:
        session_ids = select(Session.id).where(Session.batch_id == batch_id)
        db.execute(delete(Run).where(Run.session_id.in_(session_ids)))
        db.execute(delete(Session).where(Session.batch_id == batch_id))
        db.execute(delete(Batch).where(Batch.id == batch_id))
        db.commit()


def _open_without_reading(server: ApiProcess, path: str, token: str) -> socket.socket:
    """A GET whose reply is never read, with a small receive buffer that fills at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def test_clients_that_never_read_results_hold_no_database_connection(
    api_server: ApiProcess, settings: Settings, db_factory: sessionmaker[DbSession]
) -> None:
    owner = "results-" + uuid.uuid4().hex[:8]
    token = mint_token(settings, owner)
    # ~8 MB a reply: far more than a socket's buffers hold, in pages of ~1 MiB.
    batch_id = _finished_batch(db_factory, owner, items=48, result_bytes=160 * 1024)
    readers: list[socket.socket] = []
    try:
        path = f"/api/v1/batches/{batch_id}/results"
        readers = [_open_without_reading(api_server, path, token) for _ in range(20)]
        for reader in readers:  # each reply has started: its view has run
            wait_for(partial(_started, reader), timeout=60, what="a results reply to start")

        # With a connection held per reader the pool (15) would be empty: a 503 or 500.
        sessions = requests.get(
            f"{api_server.url}/api/v1/sessions",
            headers={"Authorization": f"Bearer {token}"},
            timeout=20,
        )
        assert sessions.status_code == 200, sessions.text

        # A reader that reads after all gets every item, in order.
        lines = _read_body(readers[0]).splitlines()
        assert [json.loads(line)["index"] for line in lines] == list(range(48))
        assert all(len(json.loads(line)["result"]) == 160 * 1024 for line in lines)
    finally:
        for reader in readers:
            reader.close()
        _delete_batch(db_factory, batch_id)


def _started(sock: socket.socket) -> bool:
    return sock.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"


def _read_body(sock: socket.socket) -> bytes:
    """The chunked body of the reply on ``sock``, read to its end."""
    reader = sock.makefile("rb")
    while reader.readline() not in (b"\r\n", b""):
        pass  # the status line and headers
    body = bytearray()
    while size := int(reader.readline().strip(), 16):
        body += reader.read(size)
        reader.readline()
    return bytes(body)


def test_a_pool_timeout_is_a_503_with_retry_after(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"api_db_pool_timeout": 0.2}))
    services: Services = app.extensions[EXTENSION_KEY]
    services.engine.dispose()
    services.engine = create_engine(
        settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    services.session_factory = make_session_factory(services.engine)
    held = services.engine.connect()  # the pool's only connection
    try:
        client = app.test_client()
        headers = _owner_headers(settings)
        busy = client.get("/api/v1/sessions", headers=headers)
        assert busy.status_code == 503, busy.get_data(as_text=True)
        assert _error(busy)["code"] == "database_busy"
        assert busy.headers["Retry-After"] == "2"
        held.close()
        assert client.get("/api/v1/sessions", headers=headers).status_code == 200
    finally:
        held.close()
        services.close()
