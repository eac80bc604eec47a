"""Characters PostgreSQL cannot store, on the real stack.

At the API (NUL, lone surrogates, NaN) they are refused with a 400 naming the field,
and nothing is created. In a CLI's output they are kept as U+FFFD, in the events' Redis
and PostgreSQL copies alike and in the run's result, and the run ends as it would have.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from orchestrator.auth.owner_tokens import mint_token
from orchestrator.settings import Settings
from orchestrator.storable import REPLACEMENT
from orchestrator.streams.events import stream_key
from tests.http_api import SessionApi, tool
from tests.processes import ApiProcess
from tests.stream_helpers import run_history

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]

CCQ = str(Path(sys.executable).with_name("ccq"))
NUL_REASON = "contains U+0000 (NUL), which cannot be stored"
_JSON = {"Content-Type": "application/json"}


@pytest.fixture
def api(api_server: ApiProcess, settings: Settings) -> SessionApi:
    """A new owner each test, so "nothing was created" is that owner's empty lists."""
    return SessionApi(api_server, mint_token(settings, f"bytes-{uuid.uuid4().hex[:8]}"))


def _refused(api: SessionApi, path: str, body: Any, **kwargs: Any) -> dict[str, Any]:
    """POST ``body`` (a JSON value, or raw bytes as ``data=``): the 400's error object."""
    response = requests.post(
        api.url + path,
        json=body,
        headers={**api.headers, **kwargs.pop("headers", {})},
        timeout=30,
        **kwargs,
    )
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "invalid_input"  # the code of every validation error
    return error


def _nothing_created(api: SessionApi) -> None:
    assert api.get("/sessions")["sessions"] == []
    assert api.get("/batches")["batches"] == []


def test_a_nul_in_a_prompt_is_refused_naming_it(api: SessionApi) -> None:
    error = _refused(api, "/sessions", {"prompt": "before\x00after"})

    assert error["message"] == f"prompt: {NUL_REASON}"
    assert error["details"] == [{"field": "prompt", "reason": NUL_REASON}]
    _nothing_created(api)


def test_a_lone_surrogate_is_refused_however_it_is_written(api: SessionApi) -> None:
    escaped = _refused(api, "/sessions", None, data=b'{"prompt": "a\\ud800b"}', headers=_JSON)
    # The bytes of an encoded surrogate, which Python's JSON parser lets through.
    raw = _refused(api, "/sessions", None, data=b'{"prompt": "a\xed\xb3\xbfb"}', headers=_JSON)

    assert escaped["details"] == [
        {"field": "prompt", "reason": "contains U+D800 (a lone surrogate), which cannot be stored"}
    ]
    assert raw["details"][0]["field"] == "prompt"
    assert "U+DCFF" in raw["details"][0]["reason"]
    _nothing_created(api)


def test_a_nul_in_a_metadata_value_or_key_is_refused_naming_it(api: SessionApi) -> None:
    value = _refused(api, "/sessions", {"prompt": "hi", "metadata": {"team": ["ok", "a\x00"]}})
    key = _refused(api, "/sessions", {"prompt": "hi", "metadata": {"a\x00b": "ok"}})
    nan = _refused(api, "/sessions", None, data=b'{"metadata": {"x": NaN}}', headers=_JSON)

    assert value["details"] == [{"field": "metadata.team.1", "reason": NUL_REASON}]
    # A key is named as pydantic names one, its NUL written as an escape.
    assert key["details"] == [{"field": "metadata.a\\u0000b.[key]", "reason": NUL_REASON}]
    assert key["message"] == f"metadata.a\\u0000b.[key]: {NUL_REASON}"
    assert nan["details"][0]["field"] == "metadata.x"
    _nothing_created(api)


def test_every_string_of_every_body_is_checked(api: SessionApi) -> None:
    session_id = api.post("/sessions", {}, 201)["session"]["id"]  # no prompt: no run

    bad_option = _refused(api, "/sessions", {"append_system_prompt": "x\x00"})
    bad_key = _refused(api, "/sessions", {"idempotency_key": "k\x00"})
    bad_run = _refused(api, f"/sessions/{session_id}/runs", {"prompt": "\x00"})
    bad_child = _refused(api, f"/sessions/{session_id}/children", {"prompt": "\x00"})
    bad_fanout = _refused(api, f"/sessions/{session_id}/fanout", {"prompts": ["ok", "\x00"]})

    assert [e["details"][0]["field"] for e in (bad_option, bad_key, bad_run, bad_child)] == [
        "append_system_prompt",
        "idempotency_key",
        "prompt",
        "prompt",
    ]
    assert bad_fanout["details"][0]["field"] == "prompts.1"
    (only,) = api.get("/sessions")["sessions"]
    assert only["id"] == session_id
    assert only["runs_count"] == 0
    assert only["children_count"] == 0


def test_a_batch_names_the_bad_item_s_field(api: SessionApi) -> None:
    items = [
        {"prompt": "fine"},
        {"prompt": "bad\x00"},
        {"prompt": "fine", "metadata": {"k": {"deep\x00": 1}}},
    ]

    error = _refused(api, "/batches", {"items": items})

    assert error["details"] == [
        {"index": 1, "field": "items.1.prompt", "reason": NUL_REASON},
        {"index": 2, "field": "items.2.metadata.k.deep\\u0000.[key]", "reason": NUL_REASON},
    ]
    assert error["message"] == (
        f"2 invalid item(s), nothing was created; first: item 1: items.1.prompt: {NUL_REASON}"
    )
    batch_metadata = _refused(
        api, "/batches", {"items": [{"prompt": "x"}], "metadata": {"a": "\x00"}}
    )
    assert batch_metadata["details"] == [{"field": "metadata.a", "reason": NUL_REASON}]
    _nothing_created(api)


def test_an_ndjson_upload_names_the_bad_item_and_query_parameter(api: SessionApi) -> None:
    ndjson = {"Content-Type": "application/x-ndjson"}
    lines = "\n".join(json.dumps(item) for item in ({"prompt": "ok"}, {"prompt": "a\x00"})) + "\n"

    item = _refused(api, "/batches", None, data=lines.encode(), headers=ndjson)
    query = _refused(
        api,
        "/batches",
        None,
        data=b'{"prompt": "ok"}\n',
        headers=ndjson,
        params={"idempotency_key": "k\x00"},
    )

    assert item["details"] == [{"index": 1, "field": "items.1.prompt", "reason": NUL_REASON}]
    assert query["details"] == [{"field": "idempotency_key", "reason": NUL_REASON}]
    _nothing_created(api)


def test_the_ccq_client_shows_the_refusal(api: SessionApi) -> None:
    env = {**os.environ, "CCQ_API_URL": api.server.url, "CCQ_TOKEN": api.token}
    for name in ("CCQ_JWT_SECRET", "CCQ_API_PORT", "CCQ_API_HOST"):
        env.pop(name, None)

    result = subprocess.run(
        [CCQ, "run", "-"],
        input="piped\x00prompt\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert f"ccq: prompt: {NUL_REASON}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    _nothing_created(api)


def test_nul_and_lone_surrogates_in_cli_output_are_stored_replaced(
    api: SessionApi, settings: Settings
) -> None:
    # The tool call's input carries a NUL and a lone surrogate (the scripted model sends
    # them as JSON escapes, the CLI prints them back in its events), and the command
    # prints a NUL byte, which the tool's result and the model's answer carry on.
    prompt = tool(
        "Bash",
        {"command": "printf 'a\\000b'", "description": "nul \u0000 and \ud800 here"},
    )
    session_id, run_id = api.session(prompt)

    run = api.wait_run(run_id)

    assert run["status"] == "succeeded", run
    events = run_history(api.server, run_id, api.token)
    stored = json.dumps([e["data"] for e in events], ensure_ascii=False)
    assert "nul \ufffd and \ufffd here" in stored  # the tool call's input, as the CLI printed it
    assert "\x00" not in stored
    assert run["result"] == f"tool result: a{REPLACEMENT}b"
    finished = events[-1]["data"]
    assert finished["result"] == run["result"]

    # The live stream's copies are the stored ones: a tail and the history agree.
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        entries: Any = client.xrange(stream_key(session_id))
    finally:
        client.close()
    live = {sid: json.loads(fields["e"]) for sid, fields in entries}
    assert [(e["type"], e["data"]) for e in events] == [
        (live[e["id"]]["type"], live[e["id"]]["data"]) for e in events
    ]

    # The session takes its next prompt.
    following = api.wait_run(api.prompt(session_id, "still here"))
    assert following["status"] == "succeeded", following
    assert following["result"].endswith(": still here")
