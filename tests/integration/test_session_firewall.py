"""The isolated session network on the real engine and the host's iptables: how it is
made, replaced when the mode changed, refused when it cannot be isolated, and repaired
when its chain is lost."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from orchestrator.runtime.containers import ContainerRuntime, NetworkError, NetworkPolicy
from orchestrator.runtime.containers.firewall import CHAIN_PREFIX, forget_verified
from orchestrator.runtime.containers.network import bridge_interface_name
from orchestrator.settings import Settings

ISOLATED = NetworkPolicy(gateway_ports=(18090, 18091))


@pytest.fixture
def instance() -> str:
    return f"ccq-fw-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def runtime(docker_client: docker.DockerClient, instance: str) -> Iterator[ContainerRuntime]:
    runtime = ContainerRuntime(docker_client)
    yield runtime
    runtime.remove_instance(instance)
    runtime.remove_networks(instance)


def _chain(name: str) -> str:
    chain = CHAIN_PREFIX + bridge_interface_name(name)
    done = subprocess.run(["iptables", "-w", "-S", chain], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def _jumps_to(name: str) -> bool:
    chain = CHAIN_PREFIX + bridge_interface_name(name)
    rules = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True)
    return f"-j {chain}" in rules.stdout


def test_an_isolated_network_is_internal_without_icc_and_has_its_chain(
    runtime: ContainerRuntime, docker_client: docker.DockerClient, instance: str
) -> None:
    name = f"{instance}-sessions"
    found = runtime.ensure_network(name, instance, ISOLATED)
    attrs = docker_client.networks.get(name).attrs
    assert attrs["Internal"] is True
    assert attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    chain = _chain(name)
    assert f"-d {found.gateway}/32 -p tcp -m tcp --dport 18090 -j ACCEPT" in chain
    assert f"-d {found.gateway}/32 -p tcp -m tcp --dport 18091 -j ACCEPT" in chain
    assert "-j REJECT --reject-with tcp-reset" in chain
    assert _jumps_to(name)

    runtime.remove_networks(instance)
    assert _chain(name) == ""
    assert not _jumps_to(name)


def test_a_lost_chain_is_put_back(runtime: ContainerRuntime, instance: str) -> None:
    name = f"{instance}-sessions"
    runtime.ensure_network(name, instance, ISOLATED)
    chain = CHAIN_PREFIX + bridge_interface_name(name)
    subprocess.run(
        ["iptables", "-w", "-D", "INPUT", "-i", bridge_interface_name(name), "-j", chain],
        check=True,
    )
    subprocess.run(["iptables", "-w", "-F", chain], check=True)
    forget_verified()  # as after the cache's few seconds
    runtime.ensure_network(name, instance, ISOLATED)
    assert "--dport 18090" in _chain(name)
    assert _jumps_to(name)


def test_an_open_network_an_older_ccq_made_is_replaced(
    runtime: ContainerRuntime, docker_client: docker.DockerClient, instance: str
) -> None:
    name = f"{instance}-sessions"
    runtime.ensure_network(name, instance)  # open, as before isolation
    old_id = docker_client.networks.get(name).id
    runtime.ensure_network(name, instance, ISOLATED)
    network = docker_client.networks.get(name)
    assert network.id != old_id
    assert network.attrs["Internal"] is True


def test_an_open_network_in_use_is_refused_not_used(
    runtime: ContainerRuntime,
    docker_client: docker.DockerClient,
    instance: str,
    settings: Settings,
) -> None:
    name = f"{instance}-sessions"
    runtime.ensure_network(name, instance)
    holder = docker_client.containers.run(
        settings.worker_image,
        ["sleep", "60"],
        network=name,
        detach=True,
        labels={"ccq.instance": instance},
    )
    try:
        with pytest.raises(NetworkError, match="still in use"):
            runtime.ensure_network(name, instance, ISOLATED)
    finally:
        holder.remove(force=True)


def test_a_network_ccq_did_not_make_must_already_be_isolated(
    runtime: ContainerRuntime, docker_client: docker.DockerClient, instance: str
) -> None:
    name = f"{instance}-foreign"
    foreign = docker_client.networks.create(name, driver="bridge")
    try:
        with pytest.raises(NetworkError, match="ccq did not make it"):
            runtime.ensure_network(name, instance, ISOLATED)
        assert runtime.ensure_network(name, instance).name == name  # open mode: as it is
    finally:
        foreign.remove()


def test_a_network_removed_behind_ccqs_back_loses_its_chain_at_the_next_cleanup(
    runtime: ContainerRuntime, docker_client: docker.DockerClient, instance: str
) -> None:
    name = f"{instance}-sessions"
    runtime.ensure_network(name, instance, ISOLATED)
    docker_client.networks.get(name).remove()  # as `docker network rm` would
    assert "--dport 18090" in _chain(name)  # the chain outlived its bridge

    runtime.remove_networks(instance)
    assert _chain(name) == ""
    assert not _jumps_to(name)
