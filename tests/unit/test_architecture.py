"""The layout's rules, checked on the source: the arrows of docs/architecture.md.

- ``orchestrator`` never imports the edges that use it (``api``, ``tasks``, ``gateway``,
  ``cli``).
- ``gateway`` (which holds the Claude credential) loads neither Celery, Docker nor the
  worker runtime.
- ``api`` reaches Celery only through ``tasks.enqueue``.
- ``cli`` and ``client`` import nothing of the server.
- No import cycle between ccq's modules (late imports included).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "api",
    "tasks",
    "gateway",
    "orchestrator",
    "cli",
    "client",
    "ops",
    "model_server",
    "worker_image",
)
SERVER = ("orchestrator", "api", "tasks", "gateway", "ops", "model_server", "worker_image")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(package: str) -> Iterator[Path]:
    base = ROOT / package
    if base.is_dir():
        yield from base.rglob("*.py")


def _imports(path: Path) -> set[str]:
    """Every module the file imports, at any depth (late imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


GRAPH = {_module_name(path): _imports(path) for package in PACKAGES for path in _sources(package)}


def _offences(
    importer_prefix: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module == importer_prefix or module.startswith(importer_prefix + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in forbidden)
        and not any(target == a or target.startswith(a + ".") for a in allowed)
    )


def test_the_graph_saw_the_packages() -> None:
    assert "orchestrator.runtime.executor" in GRAPH
    assert "tasks.enqueue" in GRAPH["api.extensions"]


def test_orchestrator_never_imports_its_edges() -> None:
    assert _offences("orchestrator", ("api", "tasks", "gateway", "cli", "ops")) == []


def test_the_gateway_uses_neither_celery_nor_docker_nor_the_other_edges() -> None:
    """The gateway holds the Claude credential: it runs as little as it can."""
    forbidden = ("api", "tasks", "cli", "ops", "celery", "docker", "orchestrator.runtime")
    assert _offences("gateway", forbidden) == []


def test_the_api_reaches_celery_only_through_the_enqueue_module() -> None:
    assert _offences("api", ("tasks",), allowed=("tasks.enqueue",)) == []
    assert _offences("api", ("celery",)) == []


@pytest.mark.parametrize("package", ["cli", "client"])
def test_the_client_side_imports_nothing_of_the_server(package: str) -> None:
    assert _offences(package, SERVER) == []


def test_no_import_cycles() -> None:
    local = {
        module: {t for t in targets if t in GRAPH and t != module}
        for module, targets in GRAPH.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(local[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(local):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_api_process_loads_neither_the_worker_runtime_nor_docker() -> None:
    """What the web process imports at start (a fresh interpreter, not this test run's)."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, api.app, api.serve; print('\\n'.join(sorted(sys.modules)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert "api.app" in loaded
    assert [m for m in loaded if m == "docker" or m.startswith("orchestrator.runtime")] == []
    assert [m for m in loaded if m.startswith("tasks.")] == [
        "tasks.celery_app",
        "tasks.enqueue",
        "tasks.names",
    ]
