"""How a session container reaches beyond itself: the network it is made on, and the
proxy its programs are pointed at.

Under ``CCQ_NETWORK_MODE=isolated`` (the default) a container reaches only the gateway's
ports on the host (its model API, ccq's tools and the egress proxy); every program in it
that honours ``HTTP(S)_PROXY`` goes out through the gateway's proxy, which lets through
only the names the session may use. Under ``open`` the container is on a plain bridge
and no proxy is set.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from orchestrator.runtime.containers import NetworkPolicy
from orchestrator.settings import Settings

# The proxy's user name in the URL; the password is the run's session token.
PROXY_USER = "ccq"
# Programs must reach the gateway itself directly, not through its proxy.
NO_PROXY = "host.docker.internal,localhost,127.0.0.1"


def session_network_policy(settings: Settings) -> NetworkPolicy:
    if settings.network_mode == "open":
        return NetworkPolicy()
    gateway = urlsplit(settings.gateway_url_for_containers)
    port = gateway.port or (443 if gateway.scheme == "https" else 80)
    return NetworkPolicy(gateway_ports=tuple(sorted({port, settings.gateway_proxy_port})))


def proxy_url_for_containers(settings: Settings) -> str:
    """The egress proxy as a container sees it (without credentials)."""
    host = urlsplit(settings.gateway_url_for_containers).hostname or "host.docker.internal"
    return f"http://{host}:{settings.gateway_proxy_port}"


def proxy_environment(settings: Settings, session_token: str) -> dict[str, str]:
    """The proxy variables of a run's processes (none on an open network).

    The session token is the proxy password: it names the run, and so the session whose
    allow list applies. It is already in the CLI's environment as its API key.
    """
    if settings.network_mode == "open":
        return {}
    url = proxy_url_for_containers(settings).replace("://", f"://{PROXY_USER}:{session_token}@", 1)
    variables = {"HTTP_PROXY": url, "HTTPS_PROXY": url, "NO_PROXY": NO_PROXY}
    # Both spellings: curl reads only the lower-case http_proxy, others the upper.
    return {**variables, **{name.lower(): value for name, value in variables.items()}}
