"""Secrets by name: values the operator gives workers, handed to the sessions that ask.

``CCQ_SECRET_<NAME>=value`` in the environment, and ``NAME=value`` lines in
``CCQ_SECRETS_FILE``; the environment wins. Only names travel (session options, task
arguments, events); values stay in this store until a run's CLI gets them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from orchestrator.domain.isolation import SECRET_NAME
from orchestrator.settings import ConfigError, Settings

ENV_PREFIX = "CCQ_SECRET_"


@dataclass(frozen=True)
class SecretStore:
    _values: Mapping[str, str] = field(repr=False)

    @classmethod
    def load(cls, settings: Settings, environ: Mapping[str, str] = os.environ) -> SecretStore:
        """Raises ConfigError naming a malformed line or name."""
        values: dict[str, str] = {}
        if settings.secrets_file is not None:
            values.update(_read_file(settings.secrets_file))
        for key, value in environ.items():
            if key.startswith(ENV_PREFIX):
                values[_checked(key.removeprefix(ENV_PREFIX), key)] = value
        return cls(values)

    def names(self) -> frozenset[str]:
        return frozenset(self._values)

    def values_for(self, names: Iterable[str]) -> dict[str, str]:
        """Raises KeyError naming a secret no longer configured."""
        missing = [n for n in names if n not in self._values]
        if missing:
            raise KeyError(f"secret(s) no longer configured: {', '.join(missing)}")
        return {n: self._values[n] for n in names}


def _checked(name: str, where: str) -> str:
    if not SECRET_NAME.match(name):
        raise ConfigError(f"{where}: {name!r} is not a secret name (A-Z, 0-9, _)")
    return name


def _read_file(path: os.PathLike[str]) -> dict[str, str]:
    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115 - read at once
    except OSError as exc:
        raise ConfigError(f"CCQ_SECRETS_FILE: cannot read {path}: {exc}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        if not sep:
            raise ConfigError(f"CCQ_SECRETS_FILE line {number}: not NAME=value")
        values[_checked(name.strip(), f"CCQ_SECRETS_FILE line {number}")] = value
    return values
