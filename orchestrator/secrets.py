"""Secrets by name: values the operator gives workers, which sessions ask for by name.

The operator sets ``CCQ_SECRET_<NAME>=value`` in a worker's environment, or lists
``NAME=value`` lines in the file ``CCQ_SECRETS_FILE`` names (``#`` comments and blank
lines allowed; the environment wins over the file). A session asks for names
(``secrets: ["GITHUB_TOKEN"]``); the API checks them against :meth:`SecretStore.names`,
and the worker puts the values of exactly those names into the environment of that
session's CLI, nowhere else. Every value a run holds is redacted from what leaves the
worker (:mod:`orchestrator.redaction`).

Values never appear in a repr, a log line or an error message: errors name the
variable or the file's line, never what was on it. The settings object does not hold
them either (pydantic-settings ignores ``CCQ_SECRET_*``), so what a worker reports
about its configuration (Celery's ``conf``, Flower) carries none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from dotenv import dotenv_values

from orchestrator.domain.isolation import SECRET_NAME
from orchestrator.redaction import MIN_REDACTED_LENGTH
from orchestrator.settings import ConfigError, Settings, find_env_file

log = logging.getLogger(__name__)

ENV_PREFIX = "CCQ_SECRET_"
# Names ccq or the CLI set themselves in a run's environment: a secret may not shadow
# them (ccq's own values would win, and the session would silently not get the secret).
RESERVED_PREFIXES = ("CCQ_", "ANTHROPIC_")
RESERVED_NAMES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "PATH", "HOME"})


class SecretsConfigError(ConfigError):
    """A ``CCQ_SECRET_*`` variable or a line of ``CCQ_SECRETS_FILE`` is malformed; the
    message names the variable or the line, never its value."""


class SecretMissing(KeyError):
    """A session holds a name this worker has no value for (the operator removed it
    after the session was made, or this worker was configured differently)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return (
            f"the secret {self.name} this session holds is not configured on this worker "
            f"({ENV_PREFIX}{self.name} or CCQ_SECRETS_FILE)"
        )


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a secret's name, or None."""
    if not SECRET_NAME.match(name):
        return f"must match {SECRET_NAME.pattern}"
    if name.startswith(RESERVED_PREFIXES) or name in RESERVED_NAMES:
        return "is a variable ccq sets in a run's environment itself"
    return None


class SecretStore:
    """The secrets this process was given, by name. Loaded once per process."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        for name in values:
            if (problem := _name_problem(name)) is not None:
                raise SecretsConfigError(f"secret name {name!r} {problem}")
        self._values: dict[str, str] = dict(values)

    @classmethod
    def load(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> SecretStore:
        """From ``environ`` and ``settings.secrets_file``; by default ``environ`` is the
        process's environment over the dotenv file the settings were read from
        (``.ccq/ccq.env`` under ``make up``), so a secret can live beside the other
        settings. The environment wins over that file, and both over the secrets file.

        Raises:
            SecretsConfigError: a bad variable name, or a bad line in the file (by number).
        """
        env = _environment_with_env_file() if environ is None else environ
        values: dict[str, str] = {}
        if settings.secrets_file is not None:
            values.update(read_secrets_file(settings.secrets_file))
        for variable, value in env.items():
            if not variable.startswith(ENV_PREFIX):
                continue
            name = variable.removeprefix(ENV_PREFIX)
            if (problem := _name_problem(name)) is not None:
                raise SecretsConfigError(f"{variable}: the secret's name {problem}")
            if value == "":
                values.pop(name, None)  # `VAR=` means unset, as for every CCQ_ variable
                continue
            values[name] = value
        store = cls(values)
        short = sorted(n for n, v in values.items() if len(v) < MIN_REDACTED_LENGTH)
        if short:
            log.warning(
                "secrets shorter than %d characters are not redacted from events and logs: %s",
                MIN_REDACTED_LENGTH,
                ", ".join(short),
            )
        return store

    def names(self) -> frozenset[str]:
        return frozenset(self._values)

    def values_for(self, names: Iterable[str]) -> dict[str, str]:
        """``{name: value}`` for each of ``names``.

        Raises:
            SecretMissing: a name this store does not hold.
        """
        found: dict[str, str] = {}
        for name in names:
            if name not in self._values:
                raise SecretMissing(name)
            found[name] = self._values[name]
        return found

    def present(self, names: Iterable[str]) -> dict[str, str]:
        """Like :meth:`values_for`, leaving out names it does not hold (for redaction,
        which must work even when the run is about to fail for a missing one)."""
        return {name: self._values[name] for name in names if name in self._values}

    def __repr__(self) -> str:
        return f"SecretStore(names={sorted(self._values)})"

    __str__ = __repr__


def read_secrets_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines; ``#`` comments and blank lines are skipped.

    Whitespace around the name and the value is dropped, and one pair of matching
    quotes around the value (``"..."`` or ``'...'``) is removed; nothing else is
    interpreted (no escapes, no variable expansion).

    Raises:
        SecretsConfigError: the file cannot be read, or a line is malformed, empty of a
            value or repeats a name; the message names the line by number only.
    """
    where = f"CCQ_SECRETS_FILE ({path})"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretsConfigError(f"{where}: cannot read it: {type(exc).__name__}") from None
    values: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        name, value = name.strip(), value.strip()
        if not sep:
            raise SecretsConfigError(f"{where}, line {number}: not NAME=value")
        # The name is not echoed: a malformed line may be a value pasted on its own.
        if (problem := _name_problem(name)) is not None:
            raise SecretsConfigError(f"{where}, line {number}: the name before '=' {problem}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if not value:
            raise SecretsConfigError(f"{where}, line {number}: {name} has no value")
        if name in values:
            raise SecretsConfigError(
                f"{where}, line {number}: {name} is set twice (also on line {first_line[name]})"
            )
        values[name] = value
        first_line[name] = number
    return values


def _environment_with_env_file() -> dict[str, str]:
    """``os.environ`` over the ``CCQ_SECRET_*`` lines of the settings' dotenv file."""
    found = find_env_file(os.environ, Path.cwd())
    from_file = {
        key: value
        for key, value in (dotenv_values(found) if found is not None else {}).items()
        if key.startswith(ENV_PREFIX) and value is not None
    }
    return {**from_file, **os.environ}
