"""The Docker engine behind a small interface: one labelled container per session.

Containers are found again by their ``ccq.session`` label after any restart of the worker,
so nothing here keeps state in memory. Callers hold :class:`SessionContainer` handles and
catch :class:`ContainerError`; docker-py's objects and errors stay in this package.
"""

from __future__ import annotations

from collections.abc import Mapping

import docker
import docker.errors
import requests
from docker.models.containers import Container

from orchestrator.runtime.containers.client import docker_client, engine_errors
from orchestrator.runtime.containers.errors import ContainerError, EngineUnavailable, ImageMissing
from orchestrator.runtime.containers.exec_process import ExecProcess
from orchestrator.runtime.containers.network import (
    OPEN,
    NetworkPolicy,
    SessionNetwork,
    ensure_network,
    probe_from_container,
    remove_networks,
)
from orchestrator.runtime.containers.spec import (
    CONTAINER_CHILDREN,
    CONTAINER_CLAUDE_HOME,
    CONTAINER_HOME,
    CONTAINER_PATH,
    CONTAINER_UID,
    CONTAINER_WORKSPACE,
    SessionContainer,
    SessionContainerSpec,
)
from orchestrator.runtime.labels import LABEL_INSTANCE, LABEL_MANAGED, LABEL_SESSION

CONTAINER_LOOPBACK_DNS = "127.0.0.1"


class ContainerRuntime:
    """Session containers (and the session network) on one Docker engine."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        """``client``: a given one (tests); by default the process's shared client,
        looked up at each call so that a runtime made before a fork still works after."""
        self._client = client

    @classmethod
    def connected(cls) -> ContainerRuntime:
        """A runtime on the process's shared client, connected now rather than at its
        first call.

        Raises:
            EngineUnavailable: the engine does not answer.
        """
        docker_client()
        return cls()

    @property
    def _docker(self) -> docker.DockerClient:
        return self._client if self._client is not None else docker_client()

    # --- session containers ------------------------------------------------------------

    def find(self, session_id: str) -> SessionContainer | None:
        """The session's container, running or not; None if it has none."""
        found = self._find(session_id)
        return None if found is None else _handle(found)

    def ensure_running(self, spec: SessionContainerSpec) -> SessionContainer:
        """The session's container, running; created anew over the same directories if
        it is gone or not running.

        A container that is not running is never started again but replaced: everything
        a session keeps lives in its directories, and a new container picks up the
        current image, network and limits.
        """
        container = self._find(spec.session_id)
        if container is not None and container.status != "running":
            self._remove(container.id)
            container = None
        if container is None:
            spec.dirs.create()
            container = self._create(spec)
        if container.status != "running":
            with engine_errors(f"cannot start container {spec.name}"):
                container.start()
                container.reload()
        return _handle(container)

    def exec(
        self,
        container: SessionContainer,
        argv: list[str],
        *,
        env: Mapping[str, str],
        workdir: str = CONTAINER_WORKSPACE,
    ) -> ExecProcess:
        """Start ``argv`` in the container with stdin attached; nothing passes a shell.

        ``PATH`` is always ccq's own (system directories first), whatever ``env`` says.

        Raises:
            ContainerMissing: the container is gone.
        """
        api = self._docker.api
        with engine_errors(f"cannot exec in container {container.name}"):
            exec_id = api.exec_create(
                container.id,
                argv,
                stdin=True,
                stdout=True,
                stderr=True,
                tty=False,
                environment={**env, "PATH": CONTAINER_PATH},
                workdir=workdir,
                user=f"{CONTAINER_UID}:{CONTAINER_UID}",
            )["Id"]
            sock = api.exec_start(exec_id, socket=True, demux=False)
        return ExecProcess(api, exec_id, sock)

    def commands(self, container: SessionContainer) -> list[str]:
        """The command line of every process in the container (the engine's ``top``,
        read from the host: nothing runs inside the container for it).

        Raises:
            ContainerMissing: the container is gone.
        """
        with engine_errors(f"cannot list the processes of container {container.name}"):
            top = self._docker.api.top(container.id)
        titles = [str(t) for t in top.get("Titles") or []]
        column = titles.index("CMD") if "CMD" in titles else len(titles) - 1
        return [str(row[column]) for row in top.get("Processes") or [] if len(row) > column]

    def remove(self, session_id: str) -> bool:
        """Remove the session's container, running or not (its directories stay)."""
        container = self._find(session_id)
        if container is None:
            return False
        return self._remove(container.id)

    def remove_container(self, container: SessionContainer) -> bool:
        """Remove one container, running or not; False if it was already gone (or going)."""
        return self._remove(container.id)

    def managed(self, instance: str) -> list[SessionContainer]:
        """Every session container of this ccq instance, running or not (one list call,
        no inspect per container: a host may hold thousands)."""
        with engine_errors("cannot list containers"):
            listed = self._docker.api.containers(
                all=True,
                filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_INSTANCE}={instance}"]},
            )
        return [
            SessionContainer(
                id=c["Id"],
                name=(c.get("Names") or ["?"])[0].lstrip("/"),
                session_id=(c.get("Labels") or {}).get(LABEL_SESSION, ""),
                status=c.get("State", ""),
            )
            for c in listed
        ]

    def remove_instance(self, instance: str) -> int:
        """Remove every container of a ccq instance, sessions' and probes', running or not
        (what ``make down`` removes; a benchmark's stack when it ends)."""
        with engine_errors("cannot list containers"):
            listed = self._docker.api.containers(
                all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
            )
        return sum(self._remove(c["Id"]) for c in listed)

    # --- the engine and the session network ---------------------------------------------

    def check_engine(self, image: str, timeout: float = 5.0) -> None:
        """Whether the engine answers within ``timeout`` seconds and has ``image``.

        Raises:
            EngineUnavailable: no answer.
            ImageMissing: the engine answers, without the image.
        """
        api = self._docker.api
        with engine_errors("no answer to ping"):
            # The unversioned ping, with a short timeout of its own (the client's is long).
            api.get(f"{api.base_url}/_ping", timeout=timeout).raise_for_status()
        with engine_errors(f"image {image}"):
            self._docker.images.get(image)

    def ensure_network(
        self, name: str, instance: str, policy: NetworkPolicy = OPEN
    ) -> SessionNetwork:
        """The session network ``name``, made if missing (isolated under ``policy``, with
        its firewall), and the host's address on it.

        Raises:
            NetworkError: the engine refused to make it, the address cannot be found, or
                it cannot be isolated.
        """
        return ensure_network(self._docker, name, instance, policy)

    def remove_networks(self, instance: str) -> int:
        """Remove the session networks ccq made for ``instance`` (those in use stay)."""
        return remove_networks(self._docker, instance)

    def probe_from_container(
        self, image: str, network: SessionNetwork, url: str, instance: str, timeout: float = 5.0
    ) -> str | None:
        """Whether a throw-away container on ``network`` gets a 200 from ``url``: None if
        so, else a sentence naming the address and the cause."""
        return probe_from_container(self._docker, image, network, url, instance, timeout)

    # --- docker-py ------------------------------------------------------------------------

    def _find(self, session_id: str) -> Container | None:
        with engine_errors("cannot list containers"):
            found = self._docker.containers.list(
                all=True, filters={"label": f"{LABEL_SESSION}={session_id}"}
            )
        return found[0] if found else None

    def _create(self, spec: SessionContainerSpec) -> Container:
        network = ensure_network(
            self._docker, spec.network or "bridge", spec.instance, spec.network_policy
        )
        try:
            return self._docker.containers.create(
                spec.image,
                name=spec.name,
                labels=spec.labels(),
                user=f"{CONTAINER_UID}:{CONTAINER_UID}",
                working_dir=CONTAINER_WORKSPACE,
                # Docker mounts by depth: /workspace, then its children mount on top;
                # /home/claude's tmpfs, then the Claude home on top.
                volumes={
                    str(spec.dirs.workspace): {"bind": CONTAINER_WORKSPACE, "mode": "rw"},
                    str(spec.dirs.children): {"bind": CONTAINER_CHILDREN, "mode": "rw"},
                    str(spec.dirs.claude_home): {"bind": CONTAINER_CLAUDE_HOME, "mode": "rw"},
                },
                read_only=True,
                tmpfs=_tmpfs(spec.limits.tmpfs_bytes),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                mem_limit=spec.limits.memory_bytes,
                nano_cpus=spec.limits.nano_cpus,
                pids_limit=spec.limits.pids,
                network=network.name,
                extra_hosts=network.extra_hosts(),
                # Docker's embedded resolver forwards names it does not know from the
                # host's namespace, even on an internal network (engines before 26): a
                # way out. A resolver on the container's own loopback answers nothing;
                # programs reach names through the egress proxy, which resolves them.
                dns=[CONTAINER_LOOPBACK_DNS] if spec.network_policy.isolated else None,
                detach=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise ImageMissing(f"worker image {spec.image} not found; run `make image`") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # created concurrently under the same name
                existing = self._find(spec.session_id)
                if existing is not None:
                    return existing
            raise ContainerError(f"cannot create container: {exc.explanation}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(f"cannot create container: {exc}") from exc

    def _remove(self, container_id: str) -> bool:
        try:
            self._docker.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another removal of it is under way
                return False
            raise ContainerError(f"cannot remove container: {exc.explanation}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(f"cannot remove container: {exc}") from exc
        return True


def _tmpfs(size_bytes: int) -> dict[str, str]:
    """The writable places of a read-only root: /tmp and the home (``~/.local`` for
    ``pip --user`` and ``npm -g``, caches), both executable (builds run from them)."""
    options = f"rw,exec,nosuid,nodev,size={size_bytes}"
    return {
        "/tmp": options,  # noqa: S108 - the container's own /tmp
        CONTAINER_HOME: f"{options},uid={CONTAINER_UID},gid={CONTAINER_UID},mode=0755",
    }


def _handle(container: Container) -> SessionContainer:
    return SessionContainer(
        id=str(container.id),
        name=str(container.name),
        session_id=str(container.labels.get(LABEL_SESSION, "")),
        status=str(container.status),
    )
