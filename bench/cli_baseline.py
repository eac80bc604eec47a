"""The baselines for turns: the real CLI started by hand with the docker command line,
as ccq starts it (same argv, same user, directory and environment), timed until its
``result`` line.

Credentials pass as ``-e NAME`` with the value in the docker client's environment, so
they never appear in an argv (``ps`` shows argvs to every user).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from bench import BenchError
from orchestrator.runtime.claude_cli import CliOptions, build_command, parse_line
from orchestrator.runtime.containers import (
    CONTAINER_CLAUDE_HOME,
    CONTAINER_UID,
    CONTAINER_WORKSPACE,
    ContainerLimits,
    SessionDirs,
)
from orchestrator.runtime.labels import LABEL_INSTANCE

USER = f"{CONTAINER_UID}:{CONTAINER_UID}"


def check_result(data: dict[str, Any], who: str) -> None:
    """A turn only counts if the CLI answered: timing an error would flatter it."""
    if data.get("is_error") or data.get("subtype") != "success":
        raise BenchError(f"{who}: the CLI's result is an error: {str(data)[:500]}")


def _env_flags(env: Mapping[str, str]) -> list[str]:
    return [flag for name in sorted(env) for flag in ("-e", name)]


def cli_argv(session_id: str, *, resume: bool) -> list[str]:
    """ccq's own argv for a session with default options."""
    return build_command(session_id, resume=resume, options=CliOptions())


def exec_command(
    container_id: str, session_id: str, *, resume: bool, env: Mapping[str, str]
) -> list[str]:
    """``docker exec`` of the CLI in a running container, as the worker does it."""
    return [
        "docker",
        "exec",
        "-i",
        "-u",
        USER,
        "-w",
        CONTAINER_WORKSPACE,
        *_env_flags(env),
        container_id,
        *cli_argv(session_id, resume=resume),
    ]


def _container_flags(instance: str, dirs: SessionDirs) -> list[str]:
    """A baseline container configured like a session's before ccq isolated sessions:
    the same mounts, user, limits and host alias, on Docker's default bridge (the model
    server must be reachable: ccq's own session network admits only the gateway).
    Labelled with the bench instance, so cleanup finds what ``--rm`` never removed."""
    limits = ContainerLimits()
    return [
        "--label",
        f"{LABEL_INSTANCE}={instance}",
        "-u",
        USER,
        "-w",
        CONTAINER_WORKSPACE,
        "-v",
        f"{dirs.workspace}:{CONTAINER_WORKSPACE}",
        "-v",
        f"{dirs.claude_home}:{CONTAINER_CLAUDE_HOME}",
        "--add-host",
        "host.docker.internal:host-gateway",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--memory",
        str(limits.memory_bytes),
        "--cpus",
        str(limits.nano_cpus / 10**9),
        "--pids-limit",
        str(limits.pids),
    ]


def run_command(
    image: str, instance: str, dirs: SessionDirs, session_id: str, env: Mapping[str, str]
) -> list[str]:
    """``docker run`` of the CLI in a new baseline container."""
    return [
        "docker",
        "run",
        "--rm",
        "-i",
        *_container_flags(instance, dirs),
        *_env_flags(env),
        image,
        *cli_argv(session_id, resume=False),
    ]


def start_idle_container(image: str, instance: str, dirs: SessionDirs) -> str:
    """A baseline container idling as a session's does (the image's ``sleep``); its ID,
    for ``docker exec`` (:func:`exec_command`)."""
    command = ["docker", "run", "-d", *_container_flags(instance, dirs), image]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BenchError(f"docker run -d: {done.stderr.strip()[:500]}")
    return done.stdout.strip()


def time_to_result(command: list[str], prompt: str, env: Mapping[str, str]) -> float:
    """Seconds from starting ``command`` until the CLI prints its ``result`` line.

    The prompt goes on stdin, as ccq sends it. Waits for the process to exit (untimed) so
    the next measurement starts on a quiet machine.
    """
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **env},
        )
        assert process.stdin is not None
        assert process.stdout is not None
        elapsed: float | None = None
        result: dict[str, Any] | None = None
        try:
            process.stdin.write(prompt.encode())
            process.stdin.close()
            for line in process.stdout:
                event = parse_line(line.decode("utf-8", errors="replace"))
                if event is not None and event.type == "result":
                    elapsed = time.perf_counter() - started
                    result = event.data
                    break
            process.stdout.read()  # the rest, so the CLI never blocks on a full pipe
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if elapsed is None or result is None:
            stderr.seek(0)
            tail = stderr.read()[-2000:].decode(errors="replace")
            raise BenchError(f"{command[1]}: no result line (exit {process.returncode}): {tail}")
        check_result(result, f"docker {command[1]}")
        return elapsed
