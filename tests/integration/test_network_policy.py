"""The isolated session network on the real stack: a session reaches the gateway, and
through its egress proxy the names its session may use; nothing else of the host, no
link-local address, no other session.

Every target is on this machine and made by the test: a listener on the host's 0.0.0.0,
a listener on a link-local address of a dummy interface the test adds, a listener in
another session's container, and a web server on loopback that the proxy reaches through
a name the stack pins to it (tests/egress.py). Each refusal has a control: the same
probe from a container on Docker's default bridge (no ccq policy) does reach the host's
listeners, so a failure inside a session is the policy's doing.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from orchestrator.auth.owner_tokens import mint_token
from orchestrator.runtime.containers.network import HOST_ALIAS
from orchestrator.settings import Settings
from tests.egress import ORIGIN_BODY, ORIGIN_NAME, UNLISTED_NAME, Origin
from tests.http_api import SessionApi, bash
from tests.processes import ApiProcess, GatewayProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("worker")

# Prints one `name=ok` or `name=refused: why` line per target given as name=host:port.
PROBE = """
import socket, sys
for spec in sys.argv[1:]:
    name, _, target = spec.partition("=")
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(f"{name}=ok")
    except OSError as exc:
        print(f"{name}=refused: {exc}")
"""


def _probe_command(targets: dict[str, str]) -> str:
    args = " ".join(f"{name}={target}" for name, target in targets.items())
    return f"python3 - {args} <<'PROBE'\n{PROBE}\nPROBE"


def _probe_lines(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        name, sep, verdict = line.partition("=")
        if sep and name.strip().isidentifier():
            found[name.strip()] = verdict
    return found


class Listener:
    """A TCP listener the test owns, accepting (and closing) connections in a thread."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def api(api_server: ApiProcess, settings: Settings) -> SessionApi:
    return SessionApi(api_server, mint_token(settings, f"net-{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="module")
def host_listener() -> Iterator[Listener]:
    listener = Listener("0.0.0.0")  # noqa: S104 - the point: every interface of the host
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def link_local_listener() -> Iterator[Listener]:
    """A listener on a link-local address of a veth pair made for this test (the
    metadata service's kind of address, on this host)."""
    name = "ccqt" + secrets.token_hex(4)
    address = f"169.254.{secrets.randbelow(200) + 20}.{secrets.randbelow(200) + 20}"
    subprocess.run(
        ["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True
    )
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        listener = Listener(address)
        yield listener
        listener.close()
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def _run_bash(api: SessionApi, command: str, body: dict[str, Any] | None = None) -> str:
    """A new session runs ``command`` with Bash; what the tool printed."""
    reply = api.post("/sessions", {"prompt": bash(command), **(body or {})}, 201)
    run = api.wait_run(reply["run"]["id"])
    assert run["status"] == "succeeded", run
    text: str = run["result"]
    assert text.startswith("tool result: "), text
    return text.removeprefix("tool result: ")


def _control_probe(
    docker_client: docker.DockerClient, image: str, targets: dict[str, str]
) -> dict[str, str]:
    """The probe from a container on Docker's default bridge, outside any ccq policy."""
    output = docker_client.containers.run(
        image,
        ["python3", "-c", PROBE, *(f"{n}={t}" for n, t in targets.items())],
        network="bridge",
        extra_hosts={HOST_ALIAS: "host-gateway"},
        labels={"ccq.test": "network-control"},
        remove=True,
    )
    return _probe_lines(output.decode())


def test_a_session_reaches_the_gateway_and_nothing_else_of_the_host(
    api: SessionApi,
    settings: Settings,
    gateway: GatewayProcess,
    host_listener: Listener,
    link_local_listener: Listener,
    docker_client: docker.DockerClient,
) -> None:
    link_local = f"{link_local_listener.sock.getsockname()[0]}:{link_local_listener.port}"
    host = f"{HOST_ALIAS}:{host_listener.port}"
    control = _control_probe(
        docker_client, settings.worker_image, {"host": host, "link_local": link_local}
    )
    assert control == {"host": "ok", "link_local": "ok"}, control
    accepted = host_listener.accepted

    seen = _probe_lines(
        _run_bash(
            api,
            _probe_command(
                {
                    "gateway": f"{HOST_ALIAS}:{gateway.port}",
                    "host": host,
                    "link_local": link_local,
                    "redis": f"{HOST_ALIAS}:6379",
                    "postgres": f"{HOST_ALIAS}:5432",
                    "flower": f"{HOST_ALIAS}:{settings.flower_port}",
                    "ssh": f"{HOST_ALIAS}:22",
                }
            ),
        )
    )
    assert seen.pop("gateway") == "ok"
    assert seen.keys() == {"host", "link_local", "redis", "postgres", "flower", "ssh"}
    assert all(verdict.startswith("refused") for verdict in seen.values()), seen
    assert host_listener.accepted == accepted


def test_sessions_cannot_reach_each_other(
    api: SessionApi, settings: Settings, docker_client: docker.DockerClient
) -> None:
    other_id = api.post("/sessions", {"prompt": "hello"}, 201)["session"]["id"]
    reply = api.get(f"/sessions/{other_id}")["session"]
    api.wait_run(reply["last_run"]["id"])
    container = docker_client.containers.get(f"ccq-session-{other_id}")
    container.exec_run(["python3", "-m", "http.server", "8000"], detach=True, user="1000")
    address = container.attrs["NetworkSettings"]["Networks"][settings.session_network_name][
        "IPAddress"
    ]

    def serving() -> bool:
        # The host (the bridge's gateway) reaches it: the listener is there.
        with contextlib.suppress(OSError):
            socket.create_connection((address, 8000), timeout=1).close()
            return True
        return False

    wait_for(serving, timeout=30, what="the other session's listener")
    seen = _probe_lines(_run_bash(api, _probe_command({"peer": f"{address}:8000"})))
    assert seen["peer"].startswith("refused"), seen


# urllib honours HTTP_PROXY: a plain request forwarded by the proxy.
FETCH = (
    'python3 -c "import urllib.request,sys;'
    'print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())" {url} 2>&1'
    " | tail -n 1"
)
# A CONNECT tunnel by hand (what https clients do), then plain HTTP inside it.
TUNNEL = """
import base64, os, socket, sys, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
host, port = sys.argv[1], sys.argv[2]
auth = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
line = f"CONNECT {host}:{port} HTTP/1.1\\r\\n"
s.sendall(f"{line}Proxy-Authorization: Basic {auth}\\r\\n\\r\\n".encode())
head = s.recv(4096).decode()
print("connect:", head.splitlines()[0])
if " 200 " in head:
    s.sendall(f"GET /tunnel HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n".encode())
    reply = b""  # the origin writes head and body apart: read to the end
    while chunk := s.recv(65536):
        reply += chunk
    print("body:", reply.decode().split("\\r\\n\\r\\n", 1)[-1])
"""


def _tunnel_command(host: str, port: int) -> str:
    return f"python3 - {host} {port} <<'TUNNEL'\n{TUNNEL}\nTUNNEL"


def _egress_events(api: SessionApi, run_id: str) -> list[dict[str, Any]]:
    events = api.get(f"/runs/{run_id}/events")["events"]
    return [e for e in events if e["type"].startswith("ccq.gateway.egress")]


def test_the_egress_proxy_lets_through_listed_names_only_and_records_both(
    api: SessionApi, egress_origin: Origin
) -> None:
    allowed_url = f"http://{ORIGIN_NAME}:{egress_origin.port}/allowed"
    unlisted_url = f"http://{UNLISTED_NAME}:{egress_origin.port}/unlisted"
    command = " ; ".join(
        [
            FETCH.format(url=allowed_url),
            FETCH.format(url=unlisted_url),
            _tunnel_command(ORIGIN_NAME, egress_origin.port),
        ]
    )
    reply = api.post(
        "/sessions",
        {"prompt": bash(command), "network": {"allow": [ORIGIN_NAME, "localhost"]}},
        201,
    )
    assert reply["session"]["options"]["network"] == {"allow": [ORIGIN_NAME, "localhost"]}
    run = api.wait_run(reply["run"]["id"])
    assert run["status"] == "succeeded", run
    output = run["result"]
    assert output.count(ORIGIN_BODY) == 2, output  # the plain request and the tunnel
    assert "HTTP Error 403" in output, output
    assert "connect: HTTP/1.1 200 Connection established" in output, output
    assert "/allowed" in egress_origin.paths
    assert "/tunnel" in egress_origin.paths
    assert "/unlisted" not in egress_origin.paths

    events = _egress_events(api, run["id"])
    allowed = [e["data"] for e in events if e["type"] == "ccq.gateway.egress_allowed"]
    refused = [e["data"] for e in events if e["type"] == "ccq.gateway.egress_refused"]
    assert {(e["host"], e["method"]) for e in allowed} == {
        (ORIGIN_NAME, "GET"),
        (ORIGIN_NAME, "CONNECT"),
    }
    assert [e["host"] for e in refused] == [UNLISTED_NAME]
    assert "network.allow" in refused[0]["reason"]


def test_an_allowed_name_that_resolves_to_this_host_is_still_refused(
    api: SessionApi, host_listener: Listener
) -> None:
    """`localhost` is within the stack's ceiling and on the session's list, but the
    proxy never connects to a private address it was not pinned to."""
    accepted = host_listener.accepted
    output = _run_bash(
        api,
        # Through the proxy, although NO_PROXY names localhost (for the gateway).
        "export NO_PROXY= no_proxy=; "
        + FETCH.format(url=f"http://localhost:{host_listener.port}/"),
        {"network": {"allow": ["localhost"]}},
    )
    assert "HTTP Error 403" in output, output
    assert host_listener.accepted == accepted


def test_a_session_without_an_allow_list_gets_no_egress(
    api: SessionApi, egress_origin: Origin
) -> None:
    output = _run_bash(api, FETCH.format(url=f"http://{ORIGIN_NAME}:{egress_origin.port}/none"))
    assert "HTTP Error 403" in output, output
    assert "/none" not in egress_origin.paths


def test_the_proxy_wants_the_runs_token(api: SessionApi, egress_origin: Origin) -> None:
    url = f"http://{ORIGIN_NAME}:{egress_origin.port}/stolen"
    command = (
        'export HTTP_PROXY="$(echo "$HTTP_PROXY" | sed "s/:ccqs_[^@]*@/:ccqs_forged@/")"; '
        "export http_proxy=$HTTP_PROXY; " + FETCH.format(url=url)
    )
    output = _run_bash(api, command, {"network": {"allow": [ORIGIN_NAME]}})
    assert "HTTP Error 407" in output, output
    assert "/stolen" not in egress_origin.paths


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"network": {"allow": ["example.org"]}}, "network.allow.0"),
        ({"network": {"allow": [ORIGIN_NAME, "*"]}}, "network.allow.1"),
        ({"network": {"allow": ["http://pkgs.egress.test/"]}}, "network.allow.0"),
    ],
)
def test_asking_for_names_beyond_the_ceiling_is_a_400_naming_the_field(
    api: SessionApi, body: dict[str, Any], field: str
) -> None:
    reply = api.post("/sessions", body, 400)
    assert reply["error"]["details"][0]["field"] == field, json.dumps(reply)


def test_a_child_cannot_widen_its_parents_list(api: SessionApi) -> None:
    parent = api.post("/sessions", {"network": {"allow": [ORIGIN_NAME]}}, 201)["session"]
    reply = api.post(
        f"/sessions/{parent['id']}/children",
        {"prompt": "hi", "network": {"allow": [UNLISTED_NAME]}},
        400,
    )
    assert reply["error"]["details"][0]["field"] == "network.allow.0"
    child = api.post(f"/sessions/{parent['id']}/children", {"prompt": "hi"}, 201)["session"]
    assert child["options"]["network"] == {"allow": [ORIGIN_NAME]}


# Answers nothing; records the names it was asked for, from inside the container.
DNS_LISTENER = """
import socket, subprocess, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 53))
sock.settimeout(10)
subprocess.Popen(["getent", "hosts", sys.argv[1]])
try:
    data, _ = sock.recvfrom(4096)
    print("asked:", sys.argv[1].split(".")[0].encode() in data)
except socket.timeout:
    print("asked: never")
"""


def test_names_are_resolved_inside_the_container_or_not_at_all(
    api: SessionApi, settings: Settings, docker_client: docker.DockerClient
) -> None:
    """Docker's embedded resolver forwards unknown names from the host's namespace
    (engines before 26, internal networks included); session containers name their own
    loopback as the resolver instead. Shown with a root container on the session network
    configured the same way, whose listener on 127.0.0.1:53 receives the forwarded query
    (so nothing is asked of the host's resolvers)."""
    session_id = api.post("/sessions", {"prompt": "hello"}, 201)["session"]["id"]
    api.wait_run(api.get(f"/sessions/{session_id}")["session"]["last_run"]["id"])
    session = docker_client.containers.get(f"ccq-session-{session_id}")
    assert session.attrs["HostConfig"]["Dns"] == ["127.0.0.1"]

    name = f"ccq{secrets.token_hex(6)}.invalid"
    output = docker_client.containers.run(
        settings.worker_image,
        ["python3", "-c", DNS_LISTENER, name],
        network=settings.session_network_name,
        dns=["127.0.0.1"],
        user="0",
        labels={"ccq.test": "network-dns"},
        remove=True,
    )
    assert output.decode().strip() == "asked: True"


def test_a_batch_item_beyond_the_ceiling_is_named_and_nothing_is_made(api: SessionApi) -> None:
    body = {
        "items": [{"prompt": "a"}, {"prompt": "b", "network": {"allow": ["example.org"]}}],
        "defaults": {"network": {"allow": [ORIGIN_NAME]}},
    }
    reply = api.post("/batches", body, 400)
    detail = reply["error"]["details"][0]
    assert (detail["index"], detail["field"]) == (1, "items.1.network.allow.0"), reply
    assert api.get("/batches")["batches"] == []
