"""The worker image's inputs: the hash that decides whether `ccq image` rebuilds, and the
choice of where the base image comes from (no Docker engine needed here)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from worker_image import builder as image_module
from worker_image.builder import (
    MAKE_BASE_IMAGE_SCRIPT,
    WORKER_IMAGE_DIR,
    ImageBuildError,
    build_inputs_hash,
    can_make_base_image,
    context_files,
    ensure_base_image,
)

ARGS = {"BASE_IMAGE": "debian:bookworm-slim", "CLAUDE_CODE_VERSION": "2.1.329"}
CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
BASE_ID = "sha256:" + "ab" * 32


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A small stand-in for worker_image/: a Dockerfile, a script and a nested file."""
    root = tmp_path / "worker_image"
    (root / "files").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM ${BASE_IMAGE}\n")
    (root / "entry.sh").write_text('#!/bin/sh\nexec "$@"\n')
    (root / "files" / "gitconfig").write_text("[init]\n\tdefaultBranch = main\n")
    return root


def _hash(
    context: Path,
    args: dict[str, str] = ARGS,
    ca: bytes = CA,
    base_id: str = BASE_ID,
) -> str:
    return build_inputs_hash(context, args, ca, base_id)


def test_same_inputs_same_hash(context: Path, tmp_path: Path) -> None:
    first = _hash(context)
    assert first == _hash(context)
    assert len(first) == 64
    assert int(first, 16) >= 0
    # The hash depends on contents, not on where the directory is or how args are ordered.
    moved = shutil.copytree(context, tmp_path / "elsewhere")
    assert _hash(moved, dict(reversed(list(ARGS.items())))) == first


def test_file_bytes_change_the_hash(context: Path) -> None:
    before = _hash(context)
    (context / "files" / "gitconfig").write_text("[init]\n\tdefaultBranch = trunk\n")
    assert _hash(context) != before


def test_file_name_changes_the_hash(context: Path) -> None:
    before = _hash(context)
    (context / "entry.sh").rename(context / "entrypoint.sh")
    assert _hash(context) != before


def test_moving_a_file_between_directories_changes_the_hash(context: Path) -> None:
    before = _hash(context)
    (context / "files" / "gitconfig").rename(context / "gitconfig")
    assert _hash(context) != before


def test_added_file_changes_the_hash(context: Path) -> None:
    before = _hash(context)
    (context / "skills").mkdir()
    (context / "skills" / "SKILL.md").write_text("# a skill\n")
    assert _hash(context) != before


def test_executable_bit_changes_the_hash(context: Path) -> None:
    before = _hash(context)
    (context / "entry.sh").chmod(0o755)
    assert _hash(context) != before


@pytest.mark.parametrize(
    "args",
    [
        {**ARGS, "CLAUDE_CODE_VERSION": "2.1.330"},
        {**ARGS, "BASE_IMAGE": "debian:bookworm"},
        {**ARGS, "EXTRA": "1"},
        {"BASE_IMAGE": ARGS["BASE_IMAGE"]},
    ],
    ids=["version", "base-name", "added-arg", "removed-arg"],
)
def test_build_args_change_the_hash(context: Path, args: dict[str, str]) -> None:
    assert _hash(context, args=args) != _hash(context)


def test_ca_bytes_change_the_hash(context: Path) -> None:
    before = _hash(context)
    assert _hash(context, ca=CA + CA) != before
    assert _hash(context, ca=b"") != before


def test_base_image_id_changes_the_hash(context: Path) -> None:
    assert _hash(context, base_id="sha256:" + "cd" * 32) != _hash(context)


def test_fields_cannot_run_into_each_other(context: Path) -> None:
    # Moving bytes from one input to its neighbour must not give the same stream.
    assert _hash(context, args={"A": "BC"}) != _hash(context, args={"AB": "C"})
    assert _hash(context, ca=b"x", base_id="y") != _hash(context, ca=b"", base_id="xy")


def test_caches_and_editor_files_do_not_count(context: Path) -> None:
    before = _hash(context)
    (context / "__pycache__").mkdir()
    (context / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (context / "files" / "gitconfig.swp").write_bytes(b"\0")
    (context / "files" / "gitconfig~").write_bytes(b"\0")
    (context / "node_modules" / "x").mkdir(parents=True)
    (context / "node_modules" / "x" / "index.js").write_text("1\n")
    (context / ".DS_Store").write_bytes(b"\0")
    assert _hash(context) == before
    assert [p.as_posix() for p in context_files(context)] == [
        "Dockerfile",
        "entry.sh",
        "files/gitconfig",
    ]


def test_the_package_boilerplate_beside_the_inputs_does_not_count(context: Path) -> None:
    """worker_image/ is a Python package: its __init__.py and the base-image script sit
    beside the inputs, so a checkout and an installed copy hash alike with or without them."""
    before = _hash(context)
    (context / "__init__.py").write_text('"""package data"""\n')
    (context / "make-base-image.sh").write_text("#!/bin/sh\n")
    (context / "__pycache__").mkdir()
    (context / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    assert _hash(context) == before
    # Only at the top: a package inside the image would be an input like any file.
    (context / "files" / "__init__.py").write_text("")
    assert _hash(context) != before


def test_the_real_worker_image_directory_hashes() -> None:
    files = [p.as_posix() for p in context_files(WORKER_IMAGE_DIR)]
    assert "Dockerfile" in files
    assert "files/gitconfig" in files
    assert not [f for f in files if f.startswith("mcp/")]  # ccq's tools live in the gateway
    assert "__init__.py" not in files
    assert "make-base-image.sh" not in files
    assert "extra-ca.crt" not in files  # the name is reserved for the assembled context
    assert _hash(WORKER_IMAGE_DIR) == _hash(WORKER_IMAGE_DIR)


@pytest.mark.parametrize(
    ("name", "makeable"),
    [
        ("debian:bookworm-slim", True),
        ("debian:bookworm", True),
        ("debian:12", True),
        ("debian:12-slim", True),
        ("debian:12.8-slim", True),
        ("debian:bookworm-20241111-slim", True),
        ("docker.io/library/debian:bookworm-slim", True),
        ("debian:trixie-slim", False),
        ("debian:11", False),
        ("debian", False),
        ("ubuntu:24.04", False),
        ("example.com:5000/debian:bookworm-slim", False),
    ],
)
def test_which_base_images_can_be_made_locally(name: str, makeable: bool) -> None:
    assert can_make_base_image(name) is makeable


class _FakeImages:
    """Just enough of ``DockerClient.images`` for :func:`ensure_base_image`."""

    def __init__(self, local: dict[str, str], pullable: dict[str, str]) -> None:
        self.local = local
        self.pullable = pullable
        self.pulls: list[str] = []

    def get(self, name: str) -> Any:
        if name not in self.local:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return SimpleNamespace(id=self.local[name])

    def pull(self, name: str) -> Any:
        self.pulls.append(name)
        if name not in self.pullable:
            raise docker.errors.APIError("registry unreachable")
        self.local[name] = self.pullable[name]
        return SimpleNamespace(id=self.pullable[name])


def _client(local: dict[str, str] | None = None, pullable: dict[str, str] | None = None) -> Any:
    return SimpleNamespace(images=_FakeImages(local or {}, pullable or {}))


def test_a_local_base_image_is_used_without_pulling() -> None:
    client = _client(local={"debian:bookworm-slim": BASE_ID})
    assert ensure_base_image(client, "debian:bookworm-slim", print) == BASE_ID
    assert client.images.pulls == []


def test_a_missing_base_image_is_pulled() -> None:
    client = _client(pullable={"example.com:5000/base:1": BASE_ID})
    assert ensure_base_image(client, "example.com:5000/base:1", print) == BASE_ID
    assert client.images.pulls == ["example.com:5000/base:1"]


def test_an_unpullable_non_debian_image_is_a_clear_error() -> None:
    with pytest.raises(ImageBuildError, match=r"cannot be pulled \(registry unreachable\)"):
        ensure_base_image(_client(), "ubuntu:24.04", print)


def test_making_a_bookworm_image_without_root_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageBuildError) as caught:
        ensure_base_image(_client(), "debian:bookworm-slim", print)
    assert f"sudo {MAKE_BASE_IMAGE_SCRIPT} debian:bookworm-slim bookworm" in str(caught.value)


def test_a_bookworm_image_is_made_locally_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client()
    ran: list[list[str]] = []

    def fake_run(command: list[str], log: Any) -> tuple[int, list[str]]:
        ran.append(command)
        client.images.local["debian:bookworm-slim"] = BASE_ID
        return 0, ["made"]

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(image_module, "_run_streaming", fake_run)
    lines: list[str] = []
    assert ensure_base_image(client, "debian:bookworm-slim", lines.append) == BASE_ID
    assert ran == [["bash", str(MAKE_BASE_IMAGE_SCRIPT), "debian:bookworm-slim", "bookworm"]]
    assert any("debootstrap" in line and "cannot be pulled" in line for line in lines), lines


def test_a_failed_base_image_script_raises_with_its_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(image_module, "_run_streaming", lambda c, log: (1, ["E: no network"]))
    with pytest.raises(ImageBuildError, match="E: no network"):
        ensure_base_image(_client(), "debian:12", print)


def test_builds_of_one_tag_wait_for_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second caller blocks on the build lock until the first is done."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the lock file goes here
    tag = "ccq-unit-lock:latest"
    waiting = threading.Event()
    acquired = threading.Event()

    def second() -> None:
        with image_module._build_lock(tag, lambda line: waiting.set()):
            acquired.set()

    with image_module._build_lock(tag, print):
        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        assert waiting.wait(timeout=10), "the second caller did not notice the lock"
        assert not acquired.is_set()
    assert acquired.wait(timeout=10), "the second caller never got the lock"
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(list(tmp_path.glob("ccq-image-build-*.lock"))) == 1
