"""ccq installed from its wheel, run outside the checkout: what `pip install .`, the app
image and compose get.

The wheel is built from this checkout and installed without its dependencies into a new
virtual environment in a temporary directory; the dependencies come from the project's
own environment through a `.pth` path line (path lines add a directory to `sys.path`
without processing the `.pth` files in it, so the checkout's editable install stays
off). Every command then runs from a directory that is not the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from orchestrator.settings import Settings, find_env_file
from worker_image.builder import WORKER_IMAGE_DIR, build_inputs_hash

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# What a checkout holds beside its sources: environments, state, caches, build output.
NOT_SOURCE = (".git", ".venv", ".ccq", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bin` directory of a fresh virtualenv holding the ccq wheel."""
    base = tmp_path_factory.mktemp("installed")
    # Built from a copy: setuptools leaves build/ in the source tree, and a stale one there
    # could put files in the wheel that the checkout no longer has.
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = base / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels)]
    subprocess.run(
        [*pip_wheel, str(source)],
        check=True,
        timeout=300,
        cwd=base,
    )
    (wheel,) = wheels.glob("ccq-*.whl")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
        cwd=base,
    )
    return env_dir / "bin"


def _run(
    bin_dir: Path, *argv: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("CCQ_")}
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_installed_package_is_the_wheels_not_the_checkouts(
    installed: Path, tmp_path: Path
) -> None:
    where = _run(
        installed,
        "python",
        "-c",
        "import cli, migrations, orchestrator, worker_image; "
        "print(orchestrator.__file__); print(cli.__file__); print(migrations.__file__); "
        "print(worker_image.directory())",
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    for line in where.stdout.splitlines():
        assert line.startswith(str(installed.parent)), line
        assert not line.startswith(str(ROOT)), line


def test_the_checkouts_editable_install_stays_off(installed: Path, tmp_path: Path) -> None:
    """The `.pth` path line adds the project's site-packages without processing the `.pth`
    files in it, so the checkout's editable-install hook (a meta path finder installed by
    `__editable__.ccq-*.pth`) is never imported and the checkout is not on `sys.path`."""
    script = (
        "import json, sys, docker, sqlalchemy\n"  # the dependencies do come through
        "print(json.dumps({\n"
        "    'modules': [m for m in sys.modules if m.startswith('__editable__')],\n"
        "    'finders': [type(f).__module__ + repr(f) for f in sys.meta_path],\n"
        "    'path': sys.path,\n"
        "}))\n"
    )
    result = _run(installed, "python", "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["modules"] == []
    assert not [f for f in seen["finders"] if "editable" in f.lower()]
    assert str(ROOT) not in seen["path"]
    # Without the path line's care the hook would be there: the project's own environment
    # (where the dependencies come from) holds it.
    assert list(Path(sysconfig.get_path("purelib")).glob("__editable__*ccq*.pth"))


def test_ccq_image_from_an_install_finds_the_image_up_to_date(
    installed: Path, tmp_path: Path, settings: Settings
) -> None:
    """The installed inputs hash as the checkout's do: `make image` built the same image."""
    # Compared first, so a difference fails here instead of rebuilding the shared image.
    probe = "from worker_image.builder import WORKER_IMAGE_DIR as d, build_inputs_hash as h"
    installed_hash = _run(
        installed, "python", "-c", f"{probe}; print(h(d, {{}}, b'', ''))", cwd=tmp_path
    )
    assert installed_hash.returncode == 0, installed_hash.stderr
    assert installed_hash.stdout.strip() == build_inputs_hash(WORKER_IMAGE_DIR, {}, b"", "")

    # The settings `make image` read: this environment and the checkout's dotenv file.
    checkout_env_file = find_env_file(os.environ, ROOT)
    env = {k: v for k, v in os.environ.items() if k.startswith("CCQ_")}
    if checkout_env_file is not None:
        env["CCQ_ENV_FILE"] = str(checkout_env_file)
    result = _run(installed, "ccq", "image", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{settings.worker_image}: up to date" in result.stdout
    assert "Step " not in result.stdout  # nothing was built


def test_an_install_sets_up_a_sessions_files(installed: Path, tmp_path: Path) -> None:
    home = tmp_path / "claude-home"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from orchestrator.runtime.session_setup import SessionContext, write_session_files\n"
        "ctx = SessionContext(session_id='s-1', parent_id=None, depth=0, max_depth=3)\n"
        "write_session_files(Path(sys.argv[1]), ctx, gateway_url='http://gw:8090')\n"
    )
    result = _run(installed, "python", "-c", script, str(home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "s-1" in (home / "CLAUDE.md").read_text()
    assert json.loads((home / "settings.json").read_text())
    assert "ccq" in json.loads((home / "ccq" / "mcp.json").read_text())["mcpServers"]
    skills = sorted(p.parent.name for p in (home / "skills").glob("*/SKILL.md"))
    assert skills == ["child-status", "coordinate-children", "delegate-task"]


def test_an_installed_ccq_token_finds_its_configuration_outside_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "somewhere"
    outside.mkdir()
    config = tmp_path / "config"
    no_secret = {"XDG_CONFIG_HOME": str(config), "CCQ_JWT_SECRET": ""}
    missing = _run(installed, "ccq", "token", "--sub", "x", cwd=outside, env=no_secret)
    assert missing.returncode != 0
    assert "CCQ_JWT_SECRET" in missing.stderr

    # The user's config file, found from any directory.
    (config / "ccq").mkdir(parents=True)
    (config / "ccq" / "ccq.env").write_text("CCQ_JWT_SECRET=" + "u" * 32 + "\n")
    env = {k: v for k, v in no_secret.items() if k != "CCQ_JWT_SECRET"}
    found = _run(installed, "ccq", "token", "--sub", "x", cwd=outside, env=env)
    assert found.returncode == 0, found.stderr
    assert found.stdout.count(".") == 2  # a JWT

    # A `make up` stack's file, named by CCQ_ENV_FILE as `make up` prints it.
    stack_file = tmp_path / "stack.env"
    stack_file.write_text("CCQ_JWT_SECRET=" + "s" * 32 + "\n")
    named = _run(
        installed, "ccq", "token", "--sub", "x", cwd=outside, env={"CCQ_ENV_FILE": str(stack_file)}
    )
    assert named.returncode == 0, named.stderr
    assert named.stdout != found.stdout  # signed with the other secret
