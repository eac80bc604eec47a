"""The worker image for real: the build is idempotent, and a container of it is what ccq expects.

`make image` builds the image before the integration suite; the module fixture calls
`ensure_from_settings` anyway (a no-op then), so this file also runs on its own. Each
`docker exec` is bounded by the client's read timeout; nothing here sleeps.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from orchestrator.settings import Settings, load_settings
from worker_image.builder import (
    LABEL_CLAUDE_CODE_VERSION,
    LABEL_INPUTS_HASH,
    LABEL_ROLE,
    ImageBuildResult,
    ensure_from_settings,
    ensure_worker_image,
    resolve_extra_ca_file,
)

# A first build downloads ~450 MB; the fixture that does it counts toward one test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

# Upper bound, in seconds, on any single call to the engine (each exec included).
ENGINE_TIMEOUT_S = 120
TEST_LABELS = {"ccq.test": "1"}
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env(timeout=ENGINE_TIMEOUT_S)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def image(settings: Settings) -> ImageBuildResult:
    return ensure_from_settings(settings, log=print)


@pytest.fixture(scope="module")
def container(client: docker.DockerClient, image: ImageBuildResult) -> Iterator[Any]:
    """One container of the image with its default command, removed whatever happens."""
    box = client.containers.create(image.image_id, labels=TEST_LABELS, detach=True)
    try:
        box.start()
        box.reload()
        assert box.status == "running"
        yield box
    finally:
        box.remove(force=True)


def run(container: Any, *command: str) -> str:
    """Exec ``command`` (no shell unless asked for) as the image's user; its stripped output."""
    result = container.exec_run(list(command))
    output = bytes(result.output).decode(errors="replace").strip()
    assert result.exit_code == 0, f"{command} exited {result.exit_code}: {output}"
    return output


def _pem_bodies(data: bytes) -> set[bytes]:
    return {b"".join(block.split()) for block in _PEM_BLOCK.findall(data)}


def test_a_second_ensure_builds_nothing(
    client: docker.DockerClient, settings: Settings, image: ImageBuildResult
) -> None:
    lines: list[str] = []
    again = ensure_worker_image(
        client,
        tag=settings.worker_image,
        base_image=settings.base_image,
        claude_code_version=settings.claude_code_version,
        extra_ca_file=resolve_extra_ca_file(settings, lines.append),
        log=lines.append,
    )
    assert again.built is False
    assert again.image_id == image.image_id
    assert again.inputs_hash == image.inputs_hash
    assert any("up to date" in line for line in lines), lines


def test_the_image_carries_its_labels(
    client: docker.DockerClient, settings: Settings, image: ImageBuildResult
) -> None:
    labels = client.images.get(settings.worker_image).labels
    assert labels[LABEL_ROLE] == "worker-image"
    assert labels[LABEL_INPUTS_HASH] == image.inputs_hash
    assert labels[LABEL_CLAUDE_CODE_VERSION] == settings.claude_code_version


def test_claude_prints_the_pinned_version(container: Any, settings: Settings) -> None:
    output = run(container, "claude", "--version")
    assert output.split()[0] == settings.claude_code_version, output


def test_runs_as_uid_1000_in_workspace(container: Any) -> None:
    assert run(container, "id", "-u") == "1000"
    assert run(container, "id", "-g") == "1000"
    assert run(container, "id", "-un") == "claude"
    assert run(container, "pwd") == "/workspace"
    assert run(container, "sh", "-c", 'echo "$HOME"') == "/home/claude"
    owners = run(container, "stat", "-c", "%n %u:%g", "/workspace", "/home/claude/.claude")
    assert owners.splitlines() == ["/workspace 1000:1000", "/home/claude/.claude 1000:1000"]


def test_pid_1_is_tini_running_sleep(container: Any) -> None:
    assert run(container, "cat", "/proc/1/comm") == "tini"
    assert run(container, "ps", "-o", "comm=", "--ppid", "1") == "sleep"


def test_tools_are_present(container: Any) -> None:
    assert run(container, "node", "--version").startswith("v")
    assert run(container, "npm", "--version")
    assert run(container, "npx", "--version")
    assert run(container, "python3", "--version").startswith("Python 3")
    run(container, "python3", "-m", "venv", "--help")
    run(container, "python3", "-m", "pip", "--version")
    assert run(container, "git", "--version").startswith("git version")
    assert run(container, "pkill", "--version").startswith("pkill from procps")


def test_environment(container: Any) -> None:
    env = dict(line.split("=", 1) for line in run(container, "env").splitlines() if "=" in line)
    assert env["DISABLE_TELEMETRY"] == "1"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["CLAUDE_CONFIG_DIR"] == "/home/claude/.claude"
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    assert env["NODE_EXTRA_CA_CERTS"] == bundle
    assert env["PIP_CERT"] == bundle


def test_extra_ca_is_trusted(container: Any, settings: Settings) -> None:
    ca_file: Path | None = resolve_extra_ca_file(settings, lambda _line: None)
    if ca_file is None:
        pytest.skip("no extra CA configured and no host CA bundle")
    wanted = _pem_bodies(ca_file.read_bytes())
    assert wanted, f"{ca_file} holds no PEM certificate"
    trusted = _pem_bodies(run(container, "cat", "/etc/ssl/certs/ca-certificates.crt").encode())
    missing = len(wanted - trusted)
    assert missing == 0, f"{missing} of {len(wanted)} certificates of {ca_file} not trusted"
    # Node reads NODE_EXTRA_CA_CERTS at start-up and warns on stderr if it cannot.
    assert run(container, "node", "-e", "process.exitCode = 0") == ""
