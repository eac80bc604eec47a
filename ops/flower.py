"""How `ccq flower` starts Flower: on loopback unless told otherwise, and never on another
address without a login.

Flower shows every worker's configuration and every task, and its API can revoke tasks
and shut workers down; without a login it serves all of that to whoever reaches it.

Flower 2 reads an option from its command line, a ``FLOWER_<NAME>`` variable or a
``flowerconfig.py`` (the command line wins). So the address is decided here from the
command line, ``FLOWER_ADDRESS`` and ``CCQ_FLOWER_ADDRESS`` (in that order), checked, and
passed last on the command line, where neither the environment nor a config file can
move it. A login counts when it is on the command line or in the environment:
``CCQ_FLOWER_BASIC_AUTH`` (handed on as ``FLOWER_BASIC_AUTH``, out of ``ps``),
``--basic_auth``/``FLOWER_BASIC_AUTH``, or Flower's OAuth, ``--auth``/``FLOWER_AUTH``
(``--auth_provider`` alone protects nothing: Flower asks for a login only when ``auth``
is set). One in a config file is not seen, so it does not count.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.settings import ConfigError, Settings

FLOWER_ENV_PREFIX = "FLOWER_"


@dataclass(frozen=True)
class FlowerLaunch:
    """Flower's arguments and the variables to add to its environment."""

    argv: list[str]
    env: dict[str, str]
    address: str


def plan(settings: Settings, args: Sequence[str], environ: Mapping[str, str]) -> FlowerLaunch:
    """Flower's command line and environment for ``settings`` and the extra ``args``.

    Raises:
        ConfigError: the address is not loopback and no login is set (the message names
            the settings, never a password).
    """
    options = _options(args)
    address = options.get("address", environ.get("FLOWER_ADDRESS", settings.flower_address))
    env: dict[str, str] = {}
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    basic_auth = options.get(
        "basic_auth", env.get("FLOWER_BASIC_AUTH", environ.get("FLOWER_BASIC_AUTH", ""))
    )
    oauth = options.get("auth", environ.get("FLOWER_AUTH", ""))
    if not is_loopback(address) and not (_has_pair(basic_auth) or oauth.strip()):
        raise ConfigError(
            f"Flower would listen on {address or 'every address'!r} without a login: set "
            "CCQ_FLOWER_BASIC_AUTH (user:password) or Flower's OAuth (--auth), or keep "
            "CCQ_FLOWER_ADDRESS (and FLOWER_ADDRESS, --address) on loopback (127.0.0.1)"
        )
    argv = [f"--port={settings.flower_port}", *args, f"--address={address}"]
    return FlowerLaunch(argv=argv, env=env, address=address)


def is_loopback(address: str) -> bool:
    """Whether every address ``address`` names is a loopback one (Tornado listens on each
    address a name resolves to; ``""`` is every interface)."""
    if not address:
        return False
    try:
        infos = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False  # Flower could not listen there either
    found = {info[4][0] for info in infos}
    return bool(found) and all(_loopback_ip(str(ip)) for ip in found)


def _loopback_ip(text: str) -> bool:
    ip = ipaddress.ip_address(text.partition("%")[0])  # drop an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _options(args: Sequence[str]) -> dict[str, str]:
    """The ``--name=value`` options of a Flower command line, as Tornado reads them: any
    number of leading dashes, ``-`` and ``_`` alike, the last one winning."""
    found: dict[str, str] = {}
    for arg in args:
        if not arg.startswith("-"):
            continue
        name, _, value = arg.lstrip("-").partition("=")
        found[name.replace("-", "_")] = value
    return found


def _has_pair(basic_auth: str) -> bool:
    """Whether Flower's ``basic_auth`` list holds a ``user:password`` it would ask for."""
    return any(
        user.strip() and sep and password
        for user, sep, password in (pair.partition(":") for pair in basic_auth.split(","))
    )
