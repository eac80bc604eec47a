"""The isolation policy: what a session may ask for, within the operator's ceilings and
its parent's box."""

from __future__ import annotations

import pytest

from orchestrator.domain.isolation import (
    IsolationError,
    IsolationPolicy,
    ResourceLimits,
    SessionIsolation,
    allows_host,
    check_host_pattern,
    pattern_covered,
)

POLICY = IsolationPolicy(
    egress_allow=("pypi.org", "*.npmjs.org", "*.pythonhosted.org"),
    secret_names=frozenset({"GITHUB_TOKEN", "NPM_TOKEN"}),
    max_memory_mb=4096,
    max_cpus=2.0,
    max_pids=1024,
)


@pytest.mark.parametrize("pattern", ["PyPI.org", "*.npmjs.org", "a-b.c0.example", "x"])
def test_host_patterns(pattern: str) -> None:
    assert check_host_pattern(pattern) == pattern.lower()


@pytest.mark.parametrize(
    "pattern",
    ["*", "http://pypi.org", "pypi.org:443", "a*b.org", "-a.org", "a..org", "10.0.0.0/8", ""],
)
def test_what_is_not_a_host_pattern(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"host name|operator"):
        check_host_pattern(pattern)


def test_only_the_operator_may_allow_any_name() -> None:
    assert check_host_pattern("*", allow_any=True) == "*"


def test_matching_and_coverage() -> None:
    assert allows_host(["*.npmjs.org"], "registry.npmjs.org")
    assert allows_host(["*.npmjs.org"], "REGISTRY.npmjs.org.")
    assert not allows_host(["*.npmjs.org"], "npmjs.org")
    assert not allows_host(["*.npmjs.org"], "evilnpmjs.org")
    assert not allows_host(["pypi.org"], "pypi.org.evil.example")
    assert pattern_covered("registry.npmjs.org", ["*.npmjs.org"])
    assert pattern_covered("*.a.npmjs.org", ["*.npmjs.org"])
    assert not pattern_covered("*.npmjs.org", ["registry.npmjs.org"])
    assert pattern_covered("anything.example", ["*"])


def test_a_root_gets_what_it_asks_for_within_the_ceiling() -> None:
    granted = POLICY.admit(
        egress_allow=["pypi.org", "registry.npmjs.org", "pypi.org"],
        secrets=["GITHUB_TOKEN"],
        limits=ResourceLimits(memory_mb=1024),
    )
    assert granted == SessionIsolation(
        egress_allow=("pypi.org", "registry.npmjs.org"),
        secrets=("GITHUB_TOKEN",),
        limits=ResourceLimits(memory_mb=1024),
    )
    assert SessionIsolation.of(granted.as_options()) == granted


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"egress_allow": ["pypi.org", "example.org"]}, "network.allow.1"),
        ({"egress_allow": ["*"]}, "network.allow.0"),
        ({"secrets": ["GITHUB_TOKEN", "AWS_KEY"]}, "secrets.1"),
        ({"secrets": ["lower"]}, "secrets.0"),
        ({"limits": ResourceLimits(cpus=3)}, "limits.cpus"),
        ({"limits": ResourceLimits(memory_mb=4097)}, "limits.memory_mb"),
        ({"limits": ResourceLimits(pids=2000)}, "limits.pids"),
    ],
)
def test_refusals_name_the_field(request_: dict[str, object], field: str) -> None:
    asked = {"egress_allow": None, "secrets": None, "limits": None, **request_}
    with pytest.raises(IsolationError) as raised:
        POLICY.admit(**asked)  # type: ignore[arg-type]
    assert raised.value.field == field


def test_a_child_inherits_and_cannot_widen() -> None:
    parent = SessionIsolation(
        egress_allow=("*.npmjs.org",), secrets=("NPM_TOKEN",), limits=ResourceLimits(pids=64)
    )
    inherited = POLICY.admit(egress_allow=None, secrets=None, limits=None, parent=parent)
    assert inherited == parent
    narrower = POLICY.admit(
        egress_allow=["registry.npmjs.org"], secrets=[], limits=None, parent=parent
    )
    assert narrower.egress_allow == ("registry.npmjs.org",)
    assert narrower.secrets == ()
    with pytest.raises(IsolationError, match="parent"):
        POLICY.admit(egress_allow=["pypi.org"], secrets=None, limits=None, parent=parent)
    with pytest.raises(IsolationError, match="parent"):
        POLICY.admit(egress_allow=None, secrets=["GITHUB_TOKEN"], limits=None, parent=parent)
