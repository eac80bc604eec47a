"""The worker image: build it when its inputs changed, and only then.

Every session container runs ``worker_image/Dockerfile``. Building it takes minutes (a
~380 MB CLI download), so the build is idempotent: the image carries the label
``ccq.inputs-hash``, a sha256 over everything that determines it (the files under
``worker_image/``, the build args, the extra CA certificates and the base image's ID), and
an image whose label matches the current inputs is reused as it is.

No registry may be reachable (as on ccq's own build machines). A Debian bookworm base
image is then made locally with ``worker_image/make-base-image.sh`` (debootstrap + docker
import); see :func:`ensure_base_image` and ``docs/worker-image.md``.

Run ``python -m worker_image.builder`` to build from the ``CCQ_*`` settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
import requests

import worker_image
from orchestrator.settings import ConfigError, Settings, load_settings

LogFn = Callable[[str], None]

# Package data (worker_image/__init__.py): a checkout and an installed ccq alike.
WORKER_IMAGE_DIR = worker_image.directory()
MAKE_BASE_IMAGE_SCRIPT = WORKER_IMAGE_DIR / "make-base-image.sh"
# Debian's bundle of the CAs this host trusts; on hosts behind a TLS-inspecting proxy the
# build cannot reach npm without it.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The name the Dockerfile reads the extra CA certificates from, in the assembled context.
EXTRA_CA_NAME = "extra-ca.crt"

LABEL_ROLE = "ccq.role"
LABEL_INPUTS_HASH = "ccq.inputs-hash"
LABEL_CLAUDE_CODE_VERSION = "ccq.claude-code-version"
WORKER_IMAGE_ROLE = "worker-image"

# Left out of the build context and of the hash (worker_image/.dockerignore says the same):
# caches and editor droppings must neither trigger a rebuild nor end up in the image.
IGNORED_DIR_NAMES = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv", "node_modules", ".git"}
)
IGNORED_FILE_NAMES = frozenset({".DS_Store"})
IGNORED_FILE_SUFFIXES = (".pyc", ".pyo", ".swp", "~")

# Names that worker_image/make-base-image.sh can stand in for: Debian 12 in any official spelling.
_BOOKWORM_IMAGE = re.compile(
    r"^(?:(?:docker\.io/)?library/)?debian:(?:bookworm|12(?:\.\d+)*)(?:-\d{8})?(?:-slim)?$"
)
# The classic builder colours a step's stderr with ANSI escapes; logs want plain text.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# What a call to the engine can raise: its own errors, or the HTTP layer's (timeouts).
_ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException)
# The builder's own bookkeeping lines, left out of a failed step's reported output.
_BUILDER_CHATTER = (" ---> ", "Removing intermediate container ")
# How long the build stream may stay silent (npm downloads the CLI without printing).
_BUILD_READ_TIMEOUT_S = 1800
# How much of a failing build step's output goes into the exception message.
_ERROR_TAIL_LINES = 80


class ImageBuildError(Exception):
    """The worker image (or its base image) could not be made; the message says why."""


@dataclass(frozen=True)
class ImageBuildResult:
    """The outcome of :func:`ensure_worker_image`: what is tagged, and whether we built it."""

    tag: str
    image_id: str
    inputs_hash: str
    built: bool


# --- the inputs hash ---------------------------------------------------------------------


def _is_ignored(relative: PurePosixPath) -> bool:
    if len(relative.parts) == 1 and relative.name in worker_image.BUILDER_FILES:
        return True
    if any(part in IGNORED_DIR_NAMES for part in relative.parts[:-1]):
        return True
    return relative.name in IGNORED_FILE_NAMES or relative.name.endswith(IGNORED_FILE_SUFFIXES)


def context_files(context_dir: Path) -> list[PurePosixPath]:
    """The files of ``context_dir`` that go into the image, as sorted relative paths.

    Directories named in :data:`IGNORED_DIR_NAMES` are not descended into, so a large
    ``node_modules`` costs nothing. Symlinks are followed, like ``docker build`` does for
    the files it is given.
    """
    found: list[PurePosixPath] = []
    for root, dirs, files in os.walk(context_dir, followlinks=True):
        dirs[:] = [d for d in dirs if d not in IGNORED_DIR_NAMES]
        base = PurePosixPath(Path(root).relative_to(context_dir).as_posix())
        for name in files:
            relative = base / name if base != PurePosixPath(".") else PurePosixPath(name)
            if not _is_ignored(relative):
                found.append(relative)
    return sorted(found)


def _frame(*fields: bytes) -> Iterator[bytes]:
    # Length-prefixed fields: no choice of names or contents can make two different
    # inputs produce the same byte stream.
    for field in fields:
        yield len(field).to_bytes(8, "big")
        yield field


def build_inputs_hash(
    context_dir: Path, build_args: Mapping[str, str], extra_ca: bytes, base_image_id: str
) -> str:
    """The sha256 (hex) of everything the worker image is built from.

    Covers each file of :func:`context_files` (relative path, whether it is executable,
    bytes), the build args (sorted), the extra CA bytes and the base image's ID. Pure:
    the same directory contents and arguments give the same hash on any machine.
    """
    digest = hashlib.sha256()
    chunks: list[bytes] = [b"ccq-worker-image-inputs/v1"]
    for relative in context_files(context_dir):
        path = context_dir / relative
        executable = b"x" if path.stat().st_mode & stat.S_IXUSR else b"-"
        chunks += [b"file", relative.as_posix().encode(), executable, path.read_bytes()]
    for key, value in sorted(build_args.items()):
        chunks += [b"arg", key.encode(), value.encode()]
    chunks += [b"extra-ca", extra_ca, b"base-image", base_image_id.encode()]
    for part in _frame(*chunks):
        digest.update(part)
    return digest.hexdigest()


# --- the base image ----------------------------------------------------------------------


def can_make_base_image(base_image: str) -> bool:
    """Whether ``worker_image/make-base-image.sh`` can make ``base_image`` (a Debian 12 name)."""
    return _BOOKWORM_IMAGE.match(base_image) is not None


def _engine_message(exc: Exception) -> str:
    """The daemon's own explanation of an error, without the request URL around it."""
    return str(getattr(exc, "explanation", None) or exc)


def _local_image_id(client: docker.DockerClient, image: str) -> str | None:
    try:
        return str(client.images.get(image).id)
    except docker.errors.ImageNotFound:
        return None
    except _ENGINE_ERRORS as exc:
        raise ImageBuildError(f"cannot inspect image {image!r}: {exc}") from exc


def _try_pull(client: docker.DockerClient, image: str) -> tuple[str | None, str]:
    """Pull ``image``; returns its ID, or None and the reason the pull failed."""
    try:
        # The SDK splits off the tag or digest itself and pulls "latest" when there is none.
        pulled = client.images.pull(image)
    except _ENGINE_ERRORS as exc:
        return None, _engine_message(exc)
    return str(pulled.id), ""


def _run_streaming(command: list[str], log: LogFn) -> tuple[int, list[str]]:
    """Run ``command``, passing each output line to ``log``; returns the exit code and lines."""
    lines: list[str] = []
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            log(line)
    return process.returncode, lines


def _make_base_image(base_image: str, pull_error: str, log: LogFn) -> None:
    command = [str(MAKE_BASE_IMAGE_SCRIPT), base_image, "bookworm"]
    if os.geteuid() != 0:
        raise ImageBuildError(
            f"base image {base_image!r} is not present and cannot be pulled ({pull_error}). "
            f"ccq can make it locally with debootstrap, which needs root; run:\n"
            f"    sudo {' '.join(command)}\n"
            f"then run the image build again."
        )
    log(
        f"base image {base_image} is not present and cannot be pulled ({pull_error}); "
        f"making it locally instead: debootstrap --variant=minbase bookworm, then docker "
        f"import as {base_image} ({MAKE_BASE_IMAGE_SCRIPT})"
    )
    returncode, lines = _run_streaming(["bash", *command], log)  # no reliance on the x bit
    if returncode != 0:
        tail = "\n".join(lines[-_ERROR_TAIL_LINES:])
        raise ImageBuildError(
            f"making base image {base_image!r} failed (exit {returncode}):\n{tail}"
        )


def ensure_base_image(client: docker.DockerClient, base_image: str, log: LogFn) -> str:
    """The ID of ``base_image``: local if present, else pulled, else made with debootstrap.

    The last resort exists because ccq's build hosts reach no registry but do reach
    Debian's mirror; it applies only to Debian bookworm names (see
    :func:`can_make_base_image`) and needs root.

    Raises:
        ImageBuildError: the image is neither present, pullable nor makeable here.
    """
    image_id = _local_image_id(client, base_image)
    if image_id is not None:
        return image_id
    log(f"base image {base_image} is not present locally; trying docker pull")
    image_id, pull_error = _try_pull(client, base_image)
    if image_id is not None:
        log(f"pulled {base_image} ({image_id})")
        return image_id
    if not can_make_base_image(base_image):
        raise ImageBuildError(
            f"base image {base_image!r} is not present locally and cannot be pulled "
            f"({pull_error}). Load it (docker load / docker pull on a connected host), or "
            f"set CCQ_BASE_IMAGE=debian:bookworm-slim, which ccq can make locally."
        )
    _make_base_image(base_image, pull_error, log)
    image_id = _local_image_id(client, base_image)
    if image_id is None:
        raise ImageBuildError(f"{MAKE_BASE_IMAGE_SCRIPT.name} ran but {base_image!r} is missing")
    log(f"made base image {base_image} locally ({image_id})")
    return image_id


# --- the worker image --------------------------------------------------------------------


def _assemble_context(source: Path, target: Path, extra_ca: bytes) -> None:
    """Copy the image's files to ``target`` and add ``extra-ca.crt`` (possibly empty)."""
    for relative in context_files(source):
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, destination)
    (target / EXTRA_CA_NAME).write_bytes(extra_ca)


class _BuildLog:
    """Splits the engine's build stream into lines and remembers the current step's output.

    The stream arrives in arbitrary chunks (npm progress bars and all); a failed build
    should report the step that failed, not the whole log.
    """

    def __init__(self, log: LogFn) -> None:
        self._log = log
        self._pending = ""
        self.step = ""
        self.step_output: list[str] = []

    def feed(self, text: str) -> None:
        self._pending += text
        *complete, self._pending = self._pending.split("\n")
        for line in complete:
            self._line(line)

    def flush(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = ""

    def _line(self, line: str) -> None:
        # Keep the last frame of a progress bar, without colour codes.
        line = _ANSI_ESCAPE.sub("", line.rstrip("\r").rsplit("\r", 1)[-1])
        if line.startswith("Step ") and " : " in line:
            self.step, self.step_output = line, []
        elif line and not line.startswith(_BUILDER_CHATTER):
            self.step_output.append(line)
        if line:
            self._log(line)


def _build(
    client: docker.DockerClient,
    context: Path,
    *,
    tag: str,
    build_args: Mapping[str, str],
    labels: Mapping[str, str],
    no_cache: bool,
    log: LogFn,
) -> str:
    """Build ``context`` with the low-level API, streaming its log; returns the image ID."""
    build_log = _BuildLog(log)
    image_id: str | None = None
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs=dict(build_args),
            labels=dict(labels),
            rm=True,
            forcerm=True,  # no intermediate containers left behind, also after a failure
            nocache=no_cache,
            pull=False,
            decode=True,
            timeout=_BUILD_READ_TIMEOUT_S,
        )
        for chunk in stream:
            image_id = _handle_build_chunk(chunk, build_log, tag) or image_id
    except _ENGINE_ERRORS as exc:
        raise ImageBuildError(f"building {tag} failed: {exc}") from exc
    build_log.flush()
    # The engine names the image it built; older engines only tag it.
    image_id = image_id or _local_image_id(client, tag)
    if image_id is None:
        raise ImageBuildError(f"the build of {tag} finished but no image is tagged {tag}")
    return image_id


def _handle_build_chunk(chunk: dict[str, Any], build_log: _BuildLog, tag: str) -> str | None:
    """Process one decoded message of the build stream; returns the image ID if it has one."""
    if "stream" in chunk:
        build_log.feed(str(chunk["stream"]))
    if "status" in chunk:
        build_log.feed(f"{chunk['status']}\n")
    if "error" in chunk or "errorDetail" in chunk:
        build_log.flush()
        detail = chunk.get("errorDetail") or {}
        message = str(chunk.get("error") or detail.get("message") or chunk)
        output = "\n".join(build_log.step_output[-_ERROR_TAIL_LINES:])
        raise ImageBuildError(
            f"building {tag} failed at {build_log.step or 'the start'}: {message}\n"
            f"--- output of that step (last {_ERROR_TAIL_LINES} lines) ---\n{output}"
        )
    aux = chunk.get("aux")
    if isinstance(aux, dict) and "ID" in aux:
        return str(aux["ID"])
    return None


def _remove_superseded(client: docker.DockerClient, old_id: str, log: LogFn) -> None:
    """Drop the image a rebuild replaced, unless something (a container, a tag) still uses it."""
    try:
        client.images.remove(old_id, noprune=False)
    except _ENGINE_ERRORS as exc:
        log(f"kept the previous image {old_id[:19]}: {_engine_message(exc)}")
    else:
        log(f"removed the previous image {old_id[:19]}")


def ensure_worker_image(
    client: docker.DockerClient,
    *,
    tag: str,
    base_image: str,
    claude_code_version: str,
    extra_ca_file: Path | None,
    log: LogFn,
    force: bool = False,
) -> ImageBuildResult:
    """Make ``tag`` the worker image for these inputs, building only when they changed.

    An image already tagged ``tag`` whose ``ccq.inputs-hash`` label equals the hash of the
    current inputs is kept as it is ("up to date"). Otherwise the context (the files of
    ``worker_image/`` plus ``extra-ca.crt``) is assembled in a temporary directory, built,
    labelled and tagged; the image it replaces is removed if nothing uses it.
    ``force`` rebuilds without the layer cache (e.g. to pick up Debian security updates,
    which the inputs do not capture).

    Raises:
        ImageBuildError: the base image or the build failed; the message has the failing
            step's output.
    """
    if not (WORKER_IMAGE_DIR / "Dockerfile").is_file():
        raise ImageBuildError(
            f"no Dockerfile in {WORKER_IMAGE_DIR} (ccq is installed incompletely)"
        )
    if (WORKER_IMAGE_DIR / EXTRA_CA_NAME).exists():
        raise ImageBuildError(
            f"{WORKER_IMAGE_DIR / EXTRA_CA_NAME}: this name is reserved for the extra CA "
            f"certificates; set CCQ_EXTRA_CA_FILE instead"
        )
    extra_ca = extra_ca_file.read_bytes() if extra_ca_file is not None else b""
    with _build_lock(tag, log):
        return _ensure_locked(
            client,
            tag=tag,
            base_image=base_image,
            claude_code_version=claude_code_version,
            extra_ca=extra_ca,
            log=log,
            force=force,
        )


@contextlib.contextmanager
def _build_lock(tag: str, log: LogFn) -> Iterator[None]:
    """Serialise builds of one tag on this host (``make image``, a test fixture, a worker).

    Without it, two callers that both see stale inputs build the same image twice and the
    tag flips between two IDs; with it, the second waits and then finds it up to date.
    The lock is an flock on a small file in the temp dir, released when the fd closes.
    """
    key = hashlib.sha256(tag.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"ccq-image-build-{key}.lock"
    try:
        fd = _open_lock_file(path)
    except OSError as exc:
        log(f"building without the build lock ({path}: {exc.strerror})")
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build of {tag} is running on this host; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_lock_file(path: Path) -> int:
    # Open before creating: with fs.protected_regular, O_CREAT on another user's file in
    # a sticky /tmp fails even for root. Read-only is enough for flock.
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)


def _ensure_locked(
    client: docker.DockerClient,
    *,
    tag: str,
    base_image: str,
    claude_code_version: str,
    extra_ca: bytes,
    log: LogFn,
    force: bool,
) -> ImageBuildResult:
    """The body of :func:`ensure_worker_image`, run while holding the build lock."""
    base_image_id = ensure_base_image(client, base_image, log)
    build_args = {"BASE_IMAGE": base_image, "CLAUDE_CODE_VERSION": claude_code_version}
    inputs_hash = build_inputs_hash(WORKER_IMAGE_DIR, build_args, extra_ca, base_image_id)

    current = _current_image(client, tag)
    if current is not None and current[1] == inputs_hash and not force:
        log(f"{tag} is up to date (image {current[0][:19]}, inputs {inputs_hash[:12]})")
        return ImageBuildResult(tag=tag, image_id=current[0], inputs_hash=inputs_hash, built=False)
    log(_rebuild_reason(tag, current, inputs_hash, force))

    labels = {
        LABEL_ROLE: WORKER_IMAGE_ROLE,
        LABEL_INPUTS_HASH: inputs_hash,
        LABEL_CLAUDE_CODE_VERSION: claude_code_version,
    }
    with tempfile.TemporaryDirectory(prefix="ccq-image-context-") as tmp:
        _assemble_context(WORKER_IMAGE_DIR, Path(tmp), extra_ca)
        image_id = _build(
            client,
            Path(tmp),
            tag=tag,
            build_args=build_args,
            labels=labels,
            no_cache=force,
            log=log,
        )
    log(f"built {tag} (image {image_id[:19]}, inputs {inputs_hash[:12]})")
    if current is not None and current[0] != image_id:
        _remove_superseded(client, current[0], log)
    return ImageBuildResult(tag=tag, image_id=image_id, inputs_hash=inputs_hash, built=True)


def _current_image(client: docker.DockerClient, tag: str) -> tuple[str, str | None] | None:
    """The ID and inputs-hash label of the image tagged ``tag``, if there is one."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    except _ENGINE_ERRORS as exc:
        raise ImageBuildError(f"cannot inspect image {tag!r}: {exc}") from exc
    labels = image.labels or {}
    return str(image.id), labels.get(LABEL_INPUTS_HASH)


def _rebuild_reason(
    tag: str, current: tuple[str, str | None] | None, inputs_hash: str, force: bool
) -> str:
    if current is None:
        return f"building {tag}: no such image yet (inputs {inputs_hash[:12]})"
    if force:
        return f"building {tag}: forced rebuild without cache"
    previous = (current[1] or "none")[:12]
    return f"building {tag}: inputs changed ({previous} -> {inputs_hash[:12]})"


# --- entry points ------------------------------------------------------------------------


def resolve_extra_ca_file(settings: Settings, log: LogFn) -> Path | None:
    """``CCQ_EXTRA_CA_FILE``, or else the host's CA bundle when there is one.

    Defaulting to the host bundle makes the build trust whatever this host trusts, which
    is what a TLS-inspecting proxy between the build and npm requires.
    """
    if settings.extra_ca_file is not None:
        return settings.extra_ca_file
    if HOST_CA_BUNDLE.is_file():
        log(
            f"CCQ_EXTRA_CA_FILE is not set; handing the host's CA bundle {HOST_CA_BUNDLE} to "
            f"the build so npm and pip trust the same CAs as this host"
        )
        return HOST_CA_BUNDLE
    return None


def ensure_from_settings(
    settings: Settings, log: LogFn = print, *, force: bool = False
) -> ImageBuildResult:
    """:func:`ensure_worker_image` with the image, base, CLI version and CAs from settings.

    ``force`` is for a ``--force`` flag: rebuild without the layer cache.
    """
    extra_ca_file = resolve_extra_ca_file(settings, log)
    try:
        client = docker.from_env()
    except _ENGINE_ERRORS as exc:
        raise ImageBuildError(f"cannot reach the Docker engine: {exc}") from exc
    try:
        return ensure_worker_image(
            client,
            tag=settings.worker_image,
            base_image=settings.base_image,
            claude_code_version=settings.claude_code_version,
            extra_ca_file=extra_ca_file,
            log=log,
            force=force,
        )
    finally:
        client.close()


def main() -> int:
    """``python -m worker_image.builder``: build the worker image if needed; 1 on failure."""
    log = functools.partial(print, flush=True)
    try:
        result = ensure_from_settings(load_settings(), log)
    except (ConfigError, ImageBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    state = "built" if result.built else "up to date"
    log(f"{result.tag}: {state} ({result.image_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
