"""docker-py stays behind the container runtime: the source tree is read with ``ast`` and
any ``import docker`` / ``from docker ...`` (late and ``TYPE_CHECKING`` imports included)
outside the allowed places fails.

Allowed, and why:
- ``orchestrator/runtime/containers/``: the boundary itself, the only code that talks to
  the engine for ccq (session containers, the session network, probes);
- ``worker_image/builder.py``: build tooling, not the runtime; it builds and tags images
  in a process of its own (``ccq image``, ``make image``) and never handles a container;
- ``tests/``: fixtures look at and clean up what ccq made, as an operator would.

Everything else, ``bench/`` included, goes through ``ContainerRuntime`` and its handles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = (
    Path("orchestrator/runtime/containers"),
    Path("worker_image/builder.py"),
    Path("tests"),
)
SKIPPED_DIRS = {".venv", "venv", ".git", "build", "dist", "node_modules", "__pycache__"}


def _sources() -> Iterator[Path]:
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if any(part in SKIPPED_DIRS or part.startswith(".") for part in relative.parts[:-1]):
            continue
        if "egg-info" in str(relative.parts[0]):
            continue
        yield relative


def _docker_imports(source: str, filename: str) -> list[int]:
    """Lines of ``source`` that import docker-py (any of its modules)."""
    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "docker" or name.startswith("docker.") for name in names):
            lines.append(node.lineno)
    return lines


def _allowed(relative: Path) -> bool:
    return any(relative == place or place in relative.parents for place in ALLOWED)


def test_only_the_container_runtime_imports_docker() -> None:
    offenders = [
        f"{relative}:{line}"
        for relative in _sources()
        if not _allowed(relative)
        for line in _docker_imports((ROOT / relative).read_text(), str(relative))
    ]
    assert offenders == [], "docker-py imported outside the container runtime"


def test_the_check_sees_every_kind_of_docker_import() -> None:
    source = (
        "import docker\n"
        "import docker.errors as e\n"
        "from docker.models.containers import Container\n"
        "def late():\n"
        "    from docker import DockerClient\n"
        "import dockerfile_parse\n"  # another library, not docker-py
        "from . import docker\n"  # a relative module of that name, not docker-py
    )
    assert _docker_imports(source, "<test>") == [1, 2, 3, 5]


def test_the_boundary_itself_is_where_docker_is_used() -> None:
    # Not vacuous: the scan does find the runtime's own imports.
    runtime = ROOT / "orchestrator/runtime/containers/runtime.py"
    assert _docker_imports(runtime.read_text(), str(runtime))
    assert sum(1 for _ in _sources()) > 50
