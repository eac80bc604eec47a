"""`make down` stops the worker as Celery means it to be stopped.

SIGTERM goes to the worker's main process alone (Celery's warm shutdown: its pool
processes reset SIGTERM to the default action, so a TERM to the whole group would kill the
runs they execute), `down` waits for it up to CCQ_WORKER_STOP_GRACE, and only then kills
the process group.

The "worker" is a stand-in this test starts in a process group of its own, as `make up`
starts the real one (setsid): a main process and one pool child, each recording the
signals it gets. `down` runs on a private state directory and instance, so it finds no
other pid file and no container or network of anyone else's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack.sh"
BIN = Path(sys.executable).parent

# The pool child: notes a SIGTERM (which would kill a real pool process and its run).
CHILD = """
import signal, sys
from pathlib import Path
here = Path(sys.argv[1])
def on_term(*_):
    (here / "child-term").touch()
    sys.exit(1)
signal.signal(signal.SIGTERM, on_term)
(here / "child.pid").write_text(str(__import__("os").getpid()))
while True:
    signal.pause()
"""

# The main process: on SIGTERM it notes it, then either finishes its "running task" (when
# the test closes its stdin) and exits 0, or ignores the signal (a task that outlasts
# the grace period).
MAIN = """
import signal, subprocess, sys
from pathlib import Path
here, mode, child = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
pool = subprocess.Popen([sys.executable, "-c", child, str(here)])
def on_term(*_):
    (here / "main-term").touch()
    if mode == "finish":
        sys.stdin.read()  # the running task, until the test ends it
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(here / "main-ready").touch()
while True:
    signal.pause()
"""


@dataclass
class FakeWorker:
    process: subprocess.Popen[bytes]
    here: Path

    def child_pid(self) -> int:
        return int((self.here / "child.pid").read_text())


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    (tmp_path / "state" / "run").mkdir(parents=True)
    return tmp_path / "state"


@pytest.fixture
def env(state: Path) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CCQ_") and k not in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")
    }
    return {
        **base,
        "CCQ_STATE_DIR": str(state),
        "CCQ_BIN": str(BIN),
        "CCQ_INSTANCE": f"test-stop-{uuid.uuid4().hex[:8]}",
    }


def _start_worker(state: Path, here: Path, mode: str) -> Iterator[FakeWorker]:
    here.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", MAIN, str(here), mode, CHILD],
        stdin=subprocess.PIPE,
        start_new_session=True,  # its own process group, as `make up`'s setsid gives
    )
    worker = FakeWorker(process, here)
    try:
        wait_for(
            lambda: (here / "main-ready").exists() and (here / "child.pid").exists(),
            timeout=30,
            what="the stand-in worker to start",
        )
        (state / "run" / "worker.pid").write_text(f"{process.pid}\n")
        yield worker
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)  # only if `down` failed to: its group, made above
        process.wait(timeout=30)
        if process.stdin is not None:
            process.stdin.close()


@pytest.fixture
def finishing_worker(state: Path, tmp_path: Path) -> Iterator[FakeWorker]:
    yield from _start_worker(state, tmp_path / "worker", "finish")


@pytest.fixture
def stuck_worker(state: Path, tmp_path: Path) -> Iterator[FakeWorker]:
    yield from _start_worker(state, tmp_path / "worker", "ignore")


def _down(env: dict[str, str], **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", str(STACK), "down"],
        env={**env, **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_down_lets_the_worker_finish_its_tasks_and_terms_only_its_main_process(
    env: dict[str, str], finishing_worker: FakeWorker
) -> None:
    down = _down(env, CCQ_WORKER_STOP_GRACE="10m")
    try:
        wait_for(
            lambda: (finishing_worker.here / "main-term").exists(),
            timeout=60,
            what="the worker's main process to get SIGTERM",
        )
        # The task is still running: `down` waits for it, and the pool was left alone.
        assert down.poll() is None
        assert not _gone(finishing_worker.child_pid())
        assert not (finishing_worker.here / "child-term").exists()

        assert finishing_worker.process.stdin is not None
        finishing_worker.process.stdin.close()  # the task ends; the warm shutdown completes
        output, _ = down.communicate(timeout=120)
    finally:
        if down.poll() is None:
            down.kill()
            down.wait(timeout=30)
    assert down.returncode == 0, output
    assert "worker: warm shutdown: it finishes its running tasks, for up to 600 s" in output
    assert "grace period" not in output
    assert "worker: stopped" in output
    assert finishing_worker.process.wait(timeout=30) == 0  # it exited; it was not killed
    wait_for(
        lambda: _gone(finishing_worker.child_pid()),
        timeout=30,
        what="what was left of the group to be killed",
    )
    assert not (finishing_worker.here / "child-term").exists()
    assert not (Path(env["CCQ_STATE_DIR"]) / "run" / "worker.pid").exists()


def test_down_kills_a_worker_still_running_after_the_grace_period(
    env: dict[str, str], stuck_worker: FakeWorker
) -> None:
    down = subprocess.run(
        ["bash", str(STACK), "down"],
        env={**env, "CCQ_WORKER_STOP_GRACE": "1s"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert (stuck_worker.here / "main-term").exists()
    assert "worker: still running after the 1 s grace period: killed" in down.stdout
    assert stuck_worker.process.wait(timeout=30) == -9
    wait_for(lambda: _gone(stuck_worker.child_pid()), timeout=30, what="the pool child to die")
    assert not (stuck_worker.here / "child-term").exists()  # KILLed with the group, not TERMed


def test_down_refuses_a_grace_period_it_cannot_read(env: dict[str, str]) -> None:
    down = subprocess.run(
        ["bash", str(STACK), "down"],
        env={**env, "CCQ_WORKER_STOP_GRACE": "1m30s"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert down.returncode == 2
    assert "CCQ_WORKER_STOP_GRACE=1m30s" in down.stdout
