"""Host firewall rules that leave a session network's containers only ccq's gateway.

The session network is an *internal* Docker bridge with inter-container traffic off, so
Docker's own FORWARD rules already drop what a container sends beyond the bridge (the
internet, other networks, the cloud metadata address) and to its neighbours. What they
do not cover is the host itself: a packet for one of the host's own addresses is
delivered locally (INPUT), where Docker adds nothing, so a container could reach every
port the host listens on (Redis, PostgreSQL, Flower, a listener on 0.0.0.0, a link-local
address).

ccq adds one chain per session network, jumped to from INPUT for packets that arrive on
the network's bridge. It accepts replies to connections the host made, and new TCP
connections to the gateway's ports on the host's address on the bridge; it rejects
everything else (TCP with a reset, the rest with ICMP, so a blocked call fails at once
instead of hanging). IPv6 arriving on the bridge is rejected whole. The chain carries a
comment with a digest of its rules, so an unchanged chain is left alone and a changed one
is replaced in one ``iptables-restore`` transaction (never an empty, open chain between).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.runtime.containers.errors import NetworkError

CHAIN_PREFIX = "CCQ-IN-"
# A chain checked this recently is trusted without asking iptables again (container
# creation must stay cheap); a host reboot or a hand-made flush is repaired within it.
VERIFIED_FOR_SECONDS = 10.0
_TIMEOUT = 30


@dataclass(frozen=True)
class GatewayRule:
    """What containers on one bridge may reach on the host: TCP ``ports`` at ``address``."""

    interface: str
    address: str
    ports: tuple[int, ...]

    @property
    def chain(self) -> str:
        return CHAIN_PREFIX + self.interface  # interface names are at most 15 bytes

    def rules(self) -> list[list[str]]:
        """The chain's rules, as iptables arguments after ``-A CHAIN``."""
        accept = [
            ["-p", "tcp", "-d", f"{self.address}/32", "--dport", str(port), "-j", "ACCEPT"]
            for port in self.ports
        ]
        return [
            [
                "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                "-m", "comment", "--comment", f"ccq:{self.digest()}",
                "-j", "ACCEPT",
            ],
            *accept,
            ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
            ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
        ]  # fmt: skip

    def digest(self) -> str:
        text = f"{self.interface}|{self.address}|{','.join(map(str, self.ports))}|v1"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_lock = threading.Lock()
_verified: dict[GatewayRule, float] = {}


def ensure_firewall(rule: GatewayRule) -> None:
    """Install (or repair) the chain for ``rule`` and the INPUT jump to it.

    Raises:
        NetworkError: iptables is missing or refuses (ccq must run as root on the host
            for an isolated session network).
    """
    now = time.monotonic()
    with _lock:
        if _verified.get(rule, 0.0) > now:
            return
        iptables = _tool("iptables")
        listing = _run([iptables, "-w", "-S", rule.chain], check=False)
        if f"ccq:{rule.digest()}" not in listing.stdout:
            _restore(iptables, rule.chain, rule.rules())
        _ensure_jump(iptables, rule.interface, rule.chain)
        ip6tables = shutil.which("ip6tables")
        if ip6tables is not None:
            # Containers on the network get no IPv6 address, but the bridge has a
            # link-local one: nothing of the host is reachable that way either.
            v6 = [["-m", "comment", "--comment", f"ccq:{rule.digest()}", "-j", "REJECT"]]
            listing = _run([ip6tables, "-w", "-S", rule.chain], check=False)
            if f"ccq:{rule.digest()}" not in listing.stdout:
                _restore(ip6tables, rule.chain, v6)
            _ensure_jump(ip6tables, rule.interface, rule.chain)
        _verified[rule] = now + VERIFIED_FOR_SECONDS


def remove_firewall(interface: str) -> None:
    """Remove the chain of a bridge ccq no longer uses (quietly, if there is none)."""
    chain = CHAIN_PREFIX + interface
    with _lock:
        for name in ("iptables", "ip6tables"):
            tool = shutil.which(name)
            if tool is None:
                continue
            while _run([tool, "-w", "-D", "INPUT", "-i", interface, "-j", chain], check=False).ok:
                pass
            _run([tool, "-w", "-F", chain], check=False)
            _run([tool, "-w", "-X", chain], check=False)
        for rule in [r for r in _verified if r.interface == interface]:
            del _verified[rule]


def remove_stale_firewalls() -> list[str]:
    """Remove every ccq chain whose bridge no longer exists (a network removed by hand,
    or by `docker network rm`); the interfaces whose chains went."""
    iptables = shutil.which("iptables")
    if iptables is None:
        return []
    listing = _run([iptables, "-w", "-S"], check=False).stdout.splitlines()
    chains = [line.split()[1] for line in listing if line.startswith(f"-N {CHAIN_PREFIX}")]
    stale = [
        chain.removeprefix(CHAIN_PREFIX)
        for chain in chains
        if not os.path.exists(f"/sys/class/net/{chain.removeprefix(CHAIN_PREFIX)}")
    ]
    for interface in stale:
        remove_firewall(interface)
    return stale


def forget_verified() -> None:
    """Check every chain again at its next use (tests that break a chain on purpose)."""
    with _lock:
        _verified.clear()


def _restore(tool: str, chain: str, rules: Sequence[Sequence[str]]) -> None:
    # Declaring a chain in a --noflush restore creates it, or empties it, and the new
    # rules land in the same commit: nobody sees it empty.
    lines = ["*filter", f":{chain} - [0:0]"]
    lines += [" ".join(["-A", chain, *map(_quoted, r)]) for r in rules]
    lines.append("COMMIT\n")
    _run([tool + "-restore", "-w", "--noflush"], stdin="\n".join(lines))


def _ensure_jump(tool: str, interface: str, chain: str) -> None:
    if not _run([tool, "-w", "-C", "INPUT", "-i", interface, "-j", chain], check=False).ok:
        # First in INPUT: ahead of any rule that would accept the packet.
        _run([tool, "-w", "-I", "INPUT", "1", "-i", interface, "-j", chain])


def _quoted(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None or shutil.which(name + "-restore") is None:
        raise NetworkError(
            f"{name} is not installed: an isolated session network needs it "
            "(apt-get install iptables), or set CCQ_NETWORK_MODE=open on a trusted host"
        )
    return path


@dataclass(frozen=True)
class _Result:
    ok: bool
    stdout: str


def _run(argv: list[str], *, check: bool = True, stdin: str | None = None) -> _Result:
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"cannot run {argv[0]}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetworkError(
            f"{' '.join(argv[:4])} ... failed ({done.returncode}): {done.stderr.strip()}; "
            "an isolated session network needs ccq to run as root on the host "
            "(or CCQ_NETWORK_MODE=open on a trusted host)"
        )
    return _Result(done.returncode == 0, done.stdout)
