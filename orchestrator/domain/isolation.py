"""What a session may reach and hold beyond its own box: egress names, secrets by name,
and its container's resource limits.

A session asks for them when it is made (``network``, ``secrets``, ``limits`` in its
options) and gets them only within what the operator allows (``CCQ_EGRESS_ALLOW``, the
secrets the workers hold, ``CCQ_CONTAINER_MAX_*``). A child never gets more than its
parent: a session that makes children through ccq's tools cannot widen its own box.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ANY_HOST = "*"
# A DNS name, by labels (no trailing dot), lower-cased before it is checked.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
MAX_NAME_LENGTH = 253
SECRET_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class IsolationError(ValueError):
    """A requested name or limit is malformed or beyond what is allowed.

    ``field`` is the option's path within the request (``network.allow.2``).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def check_host_pattern(pattern: str, *, allow_any: bool = False) -> str:
    """``pattern`` lower-cased if it is a host name, ``*.name`` or (if ``allow_any``) ``*``.

    Raises:
        ValueError: anything else (a URL, a port, an address range, ``a*b``).
    """
    value = pattern.strip().lower()
    if value == ANY_HOST:
        if allow_any:
            return value
        raise ValueError("'*' is the operator's alone (CCQ_EGRESS_ALLOW); name the hosts")
    name = value[2:] if value.startswith("*.") else value
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise ValueError(f"{pattern!r} is not a host name or *.name")
    return value


def host_matches(host: str, pattern: str) -> bool:
    """Whether ``host`` (lower-case, no port) is covered by one pattern."""
    if pattern == ANY_HOST:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def pattern_covered(pattern: str, ceiling: Iterable[str]) -> bool:
    """Whether every host ``pattern`` matches is matched by some pattern of ``ceiling``."""
    for outer in ceiling:
        if outer in (ANY_HOST, pattern):
            return True
        if outer.startswith("*.") and pattern.removeprefix("*.").endswith(outer[1:]):
            return True
    return False


def allows_host(allow: Iterable[str], host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host_matches(host, pattern) for pattern in allow)


@dataclass(frozen=True)
class ResourceLimits:
    """A session's container limits; None: the operator's default."""

    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None

    def as_options(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class SessionIsolation:
    """The parts of a session's options that widen its box."""

    egress_allow: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    limits: ResourceLimits = ResourceLimits()

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> SessionIsolation:
        """From a session's stored options (``network``, ``secrets``, ``limits`` keys)."""
        network = options.get("network") or {}
        limits = options.get("limits") or {}
        return cls(
            egress_allow=tuple(network.get("allow") or ()),
            secrets=tuple(options.get("secrets") or ()),
            limits=ResourceLimits(
                memory_mb=limits.get("memory_mb"),
                cpus=limits.get("cpus"),
                pids=limits.get("pids"),
            ),
        )

    def as_options(self) -> dict[str, Any]:
        """The stored form: only what was asked for."""
        options: dict[str, Any] = {}
        if self.egress_allow:
            options["network"] = {"allow": list(self.egress_allow)}
        if self.secrets:
            options["secrets"] = list(self.secrets)
        if limits := self.limits.as_options():
            options["limits"] = limits
        return options


@dataclass(frozen=True)
class IsolationPolicy:
    """The operator's ceilings, from the settings and the secrets the workers hold."""

    egress_allow: tuple[str, ...]
    secret_names: frozenset[str]
    max_memory_mb: int
    max_cpus: float
    max_pids: int

    def admit(
        self,
        *,
        egress_allow: Sequence[str] | None,
        secrets: Sequence[str] | None,
        limits: ResourceLimits | None,
        parent: SessionIsolation | None = None,
    ) -> SessionIsolation:
        """What a new session gets: what it asked for, checked; a child inherits what it
        leaves out from its parent and may ask for no more than its parent holds.

        Raises:
            IsolationError: naming the first offending field.
        """
        inherited = parent or SessionIsolation()
        allow = (
            tuple(self._egress(egress_allow, parent))
            if egress_allow is not None
            else inherited.egress_allow
        )
        names = tuple(self._secrets(secrets, parent)) if secrets is not None else inherited.secrets
        return SessionIsolation(
            egress_allow=allow,
            secrets=names,
            limits=self._limits(limits) if limits is not None else inherited.limits,
        )

    def _egress(self, requested: Sequence[str], parent: SessionIsolation | None) -> list[str]:
        allowed: list[str] = []
        for index, raw in enumerate(requested):
            field = f"network.allow.{index}"
            try:
                pattern = check_host_pattern(raw)
            except ValueError as exc:
                raise IsolationError(field, str(exc)) from None
            if not pattern_covered(pattern, self.egress_allow):
                raise IsolationError(
                    field,
                    f"{pattern!r} is outside what this ccq allows (CCQ_EGRESS_ALLOW: "
                    f"{', '.join(self.egress_allow) or 'nothing'})",
                )
            if parent is not None and not pattern_covered(pattern, parent.egress_allow):
                raise IsolationError(field, f"{pattern!r} is not allowed to the parent session")
            if pattern not in allowed:
                allowed.append(pattern)
        return allowed

    def _secrets(self, requested: Sequence[str], parent: SessionIsolation | None) -> list[str]:
        names: list[str] = []
        for index, name in enumerate(requested):
            field = f"secrets.{index}"
            if not SECRET_NAME.match(name):
                raise IsolationError(field, f"{name!r} is not a secret name (A-Z, 0-9, _)")
            if name not in self.secret_names:
                raise IsolationError(field, f"no secret named {name!r} is configured")
            if parent is not None and name not in parent.secrets:
                raise IsolationError(field, f"the parent session does not hold {name!r}")
            if name not in names:
                names.append(name)
        return names

    def _limits(self, limits: ResourceLimits) -> ResourceLimits:
        for name, value, ceiling in (
            ("memory_mb", limits.memory_mb, self.max_memory_mb),
            ("cpus", limits.cpus, self.max_cpus),
            ("pids", limits.pids, self.max_pids),
        ):
            if value is not None and value > ceiling:
                raise IsolationError(
                    f"limits.{name}", f"{value} is above this ccq's maximum of {ceiling}"
                )
        return limits
