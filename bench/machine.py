"""The machine the figures came from (ratios only mean something next to it), and the one
limit of it a benchmark raises."""

from __future__ import annotations

import os
import platform
import resource
import signal
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def _docker_version() -> str:
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def describe(claude_code_version: str) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "os": platform.system(),
        "python": platform.python_version(),
        "docker": _docker_version(),
        "claude_code": claude_code_version,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def one_line(machine: dict[str, Any]) -> str:
    """E.g. ``AMD EPYC, 2 cores, 23.4 GiB, Linux 6.1, Docker 24.0.7, Claude Code 2.1.3``."""
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"{machine['os']} {machine['kernel']}, Python {machine['python']}, "
        f"Docker {machine['docker']}, Claude Code {machine['claude_code']}"
    )


def process_tree_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) used so far by ``pid`` and every descendant still alive:
    how much of the machine the API spends on tails. None where /proc is missing."""
    tick = os.sysconf("SC_CLK_TCK")
    if not Path(f"/proc/{pid}/stat").exists():
        return None
    total = 0.0
    pending = [pid]
    while pending:
        proc = Path(f"/proc/{pending.pop()}")
        try:
            # After the command name (which may hold spaces): utime and stime are the
            # 12th and 13th fields (14 and 15 of the whole line).
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in (proc / "task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # the process exited meanwhile
    return total


def prepare_run(interrupt: Callable[[int, FrameType | None], None]) -> None:
    """Before a benchmark starts anything: the open-file limit raised, and SIGINT and
    SIGTERM handled by ``interrupt`` (which unwinds, so what was started is stopped).
    SIGINT explicitly too: a shell starting a job in the background ignores SIGINT in it,
    and Python then never turns Ctrl-C into KeyboardInterrupt."""
    raise_open_file_limit()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def raise_open_file_limit() -> None:
    """Hundreds of streams or tails are a socket each (two in a proxy or the API), and the
    default soft limit is 1024. Raised before any process starts, so they inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
