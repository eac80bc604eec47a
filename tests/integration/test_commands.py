"""The `ccq` command and the Makefile's scripts, run as a user runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CCQ = str(Path(sys.executable).with_name("ccq"))


def _ccq(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CCQ, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize("command", ["api", "worker", "beat", "flower", "token --sub x"])
def test_a_bad_setting_stops_start_up_naming_the_variable(command: str) -> None:
    result = _ccq(*command.split(), env={"CCQ_REDIS_URL": "http://not-redis"})
    assert result.returncode == 2
    assert "CCQ_REDIS_URL" in result.stderr
    assert "redis://" in result.stderr  # the reason, not just the name
    assert "Traceback" not in result.stderr


def test_token_prints_a_jwt_the_stack_accepts(settings: Settings) -> None:
    from orchestrator.auth.owner_tokens import verify_token

    secret = settings.jwt_secret
    assert secret is not None
    result = _ccq("token", "--sub", "alice", env={"CCQ_JWT_SECRET": secret.get_secret_value()})
    assert result.returncode == 0, result.stderr
    assert verify_token(settings, result.stdout.strip()).owner == "alice"


def test_ccq_image_twice_rebuilds_nothing_the_second_time(settings: Settings) -> None:
    first = _ccq("image", timeout=3600)
    assert first.returncode == 0, first.stdout + first.stderr
    second = _ccq("image", timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "up to date" in second.stdout
    assert "Step " not in second.stdout  # no build step ran


def test_bootstrap_on_an_unsupported_system_says_what_to_install(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=plan9\nNAME="Plan 9"\n')
    empty_path = tmp_path / "bin"  # nothing installed: every requirement is missing
    empty_path.mkdir()
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run(
        [bash, str(ROOT / "scripts/bootstrap.sh")],
        env={"PATH": str(empty_path), "CCQ_BOOTSTRAP_OS_RELEASE": str(os_release)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "unsupported system (plan9)" in result.stdout
    for requirement in ("Docker Engine", "Redis", "PostgreSQL", "debootstrap"):
        assert requirement in result.stdout


def test_bootstrap_is_idempotent_on_this_machine() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/bootstrap.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already installed" in result.stdout
    assert "Docker engine: running" in result.stdout
    assert "ready:" in result.stdout
