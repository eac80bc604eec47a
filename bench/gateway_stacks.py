"""`python -m bench.gateway_stacks` (`make bench-gateway`): which stack should serve the
session gateway (issue 14)? Two minimal streaming reverse proxies in front of the
scripted model server, measured side by side in one run against direct access:

* A: Starlette + uvicorn + httpx2 (``bench.gateway_proxy_asgi``), the `mcp` SDK's stack;
* B: Flask under gunicorn's gevent worker + requests (``bench.gateway_proxy_flask``),
  how ccq's API runs.

Each proxy forwards ``POST /v1/messages`` with the operator's key added and must not
buffer. Measured: time to first byte, spacing of a paced stream's chunks, 50 and 200
concurrent streams (throughput, latency, bursts, CPU) and the proxy's resident memory.
The upstream, each proxy and this client are separate processes on 127.0.0.1; every
process started here is stopped on the way out, Ctrl-C and failures included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench import BenchError
from bench.gateway_client import Timing, request_body, stream_once
from bench.gateway_wire import Fidelity, chunk_arrivals, gaps
from bench.machine import describe, prepare_run, process_tree_cpu_seconds
from bench.report import format_seconds
from bench.stats import percentile

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "gateway.json"
LOG_DIR = RESULTS / "logs"
HOST = "127.0.0.1"
UPSTREAM_KEY = "bench-operator-key"  # not a secret: the scripted server accepts any key

CHUNKS, DELAY = 20, 0.05  # the paced stream: `[[stream 20 0.05]]`, ~0.95 s
PACED = f"[[stream {CHUNKS} {DELAY}]]"
QUICK = "[[stream 1]]"  # answers at once: time to first byte is all proxy and server


@dataclass
class Target:
    key: str  # "direct", "asgi", "flask"
    title: str
    port: int
    pid: int | None = None  # the proxy's process (its tree: gunicorn's arbiter + worker)


@dataclass
class Results:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        label: str,
        values: dict[str, float | None],
        unit: str,
        *,
        compare: bool = True,
    ) -> None:
        """One figure per target; ``compare``: also the ratio to direct access."""
        base = values.get("direct")
        ratios = {
            key: (value / base if compare and value is not None and base else None)
            for key, value in values.items()
        }
        self.rows.append({"label": label, "unit": unit, "values": values, "ratios": ratios})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_stacks", description=__doc__)
    parser.add_argument("--ttfb", type=int, default=500, help="first-byte samples per target")
    parser.add_argument("--paced", type=int, default=20, help="paced streams per target")
    parser.add_argument(
        "--concurrency", default="50,200", help="concurrent stream counts (default 50,200)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="streams per concurrent client")
    # The CLI sends its system prompt and ~12 tool schemas on every call: tens of KiB.
    parser.add_argument("--padding", type=int, default=64 * 1024, help="request bytes to pad")
    parser.add_argument(
        "--upstream-nagle",
        action="store_true",
        help="leave Nagle's algorithm on in the model server (see bench.gateway_upstream)",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="also A on uvloop + httptools (needs both installed; ccq does not install them)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    try:
        args.concurrency = [int(part) for part in args.concurrency.split(",") if part.strip()]
    except ValueError:
        parser.error("--concurrency takes numbers, e.g. 50,200")
    if min([args.ttfb, args.paced, args.rounds, *args.concurrency]) < 1:
        parser.error("counts must be positive")
    return args


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _ready(port: int, path: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{process.args!r} exited; see {log}")
        url = f"http://{HOST}:{port}{path}"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"port {port} did not answer {path} within 30 s; see {log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group this benchmark started (gunicorn's worker included),
    then SIGKILL if it is still there after 5 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def start(
    stack: ExitStack, module: str, args: Sequence[str], health: str, port: int, name: str
) -> int:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"gateway-{name}.log"
    env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
    with log.open("wb") as out:
        # A session of its own: Ctrl-C reaches only this process, which then stops the
        # whole group itself (no proxy dies mid-measurement and fails it first).
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    stack.callback(_stop, process)
    _ready(port, health, process, log)
    return process.pid


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its live descendants, from /proc."""
    total = 0
    pending = [pid]
    while pending:
        proc = Path(f"/proc/{pending.pop()}")
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in (proc / "task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # exited meanwhile
    return total


@contextlib.contextmanager
def running_targets(nagle: bool, uvloop: bool) -> Iterator[list[Target]]:
    with ExitStack() as stack:
        upstream_port = free_port()
        upstream_args = [str(upstream_port), *(["--nagle"] if nagle else [])]
        start(
            stack,
            "bench.gateway_upstream",
            upstream_args,
            "/_ccq/healthz",
            upstream_port,
            "upstream",
        )
        upstream = f"http://{HOST}:{upstream_port}"
        targets = [Target("direct", "direct", upstream_port)]
        proxies: list[tuple[str, str, str, list[str]]] = [
            ("asgi", "bench.gateway_proxy_asgi", "A starlette+uvicorn+httpx2", []),
            ("flask", "bench.gateway_proxy_flask", "B flask+gunicorn/gevent", []),
        ]
        if uvloop:
            proxies.append(("asgi_fast", "bench.gateway_proxy_asgi", "A on uvloop", ["--fast"]))
        for key, module, title, extra in proxies:
            port = free_port()
            pid = start(stack, module, [str(port), upstream, *extra], "/healthz", port, key)
            targets.append(Target(key, title, port, pid))
        yield targets


# -- measurements ---------------------------------------------------------------------------


def _events(body: bytes) -> list[str]:
    return [line[7:] for line in body.decode().splitlines() if line.startswith("event: ")]


def _recorded_keys(upstream_port: int) -> list[bool]:
    """Whether each request the upstream recorded carried an x-api-key (it redacts them)."""
    url = f"http://{HOST}:{upstream_port}/_ccq/requests"
    with urllib.request.urlopen(url, timeout=10) as answer:
        entries = json.load(answer)["requests"]
    return ["x-api-key" in entry["headers"] for entry in entries]


async def verify(targets: list[Target], body: bytes) -> None:
    """Each proxy answers what direct access does, with the operator's key added."""
    direct = await stream_once(HOST, targets[0].port, body)
    for target in targets[1:]:
        proxied = await stream_once(HOST, target.port, body)
        if _events(proxied.body) != _events(direct.body):
            raise BenchError(f"{target.title} changed the stream: {_events(proxied.body)}")
    # The client sends no key: only the proxies' requests carry one.
    if _recorded_keys(targets[0].port)[-len(targets) :] != [False] + [True] * (len(targets) - 1):
        raise BenchError("a proxy did not add the operator's key upstream")


async def interleaved(
    targets: list[Target], body: bytes, rounds: int, progress: Callable[[str], None]
) -> dict[str, list[Timing]]:
    """``rounds`` sequential requests per target, targets in a fresh random order each
    round, so drift in the machine's load falls on every target alike."""
    timings: dict[str, list[Timing]] = {target.key: [] for target in targets}
    order = list(targets)
    for done in range(rounds):
        random.shuffle(order)
        for target in order:
            timings[target.key].append(await stream_once(HOST, target.port, body))
        if rounds >= 10 and (done + 1) % max(1, rounds // 4) == 0:
            progress(f"  {done + 1}/{rounds}")
    return timings


def paced_gaps(timing: Timing) -> list[float]:
    return gaps(chunk_arrivals(timing.body, timing.arrivals, CHUNKS))


@dataclass
class LoadResult:
    wall: float
    timings: list[Timing]
    failures: list[str]
    peak_rss: int | None
    cpu_seconds: float | None


async def load(target: Target, body: bytes, clients: int, rounds: int) -> LoadResult:
    """``clients`` concurrent connections, each streaming ``rounds`` paced replies one
    after another; the proxy's memory sampled every 50 ms meanwhile."""
    peak = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            if target.pid is not None:
                peak = max(peak, tree_rss_bytes(target.pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    timings: list[Timing] = []
    failures: list[str] = []

    async def client() -> None:
        for _ in range(rounds):
            try:
                timings.append(await stream_once(HOST, target.port, body, timeout=120))
            except (OSError, TimeoutError, BenchError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    cpu_before = process_tree_cpu_seconds(target.pid) if target.pid else None
    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    stop.set()
    await sampler
    cpu_after = process_tree_cpu_seconds(target.pid) if target.pid else None
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return LoadResult(wall, timings, failures, peak or None, cpu)


# -- the run --------------------------------------------------------------------------------


def _p(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def _per(total: float | None, count: int) -> float | None:
    return total / count if total is not None and count else None


def _growth(peak: int | None, idle: int | None) -> float | None:
    return float(peak - idle) if peak and idle else None


async def measure(
    args: argparse.Namespace, targets: list[Target], progress: Callable[[str], None]
) -> tuple[Results, dict[str, Any]]:
    results = Results()
    raw: dict[str, Any] = {}
    quick = request_body(QUICK, args.padding)
    paced = request_body(PACED, args.padding)
    keys = [target.key for target in targets]

    await verify(targets, quick)
    progress("verified: same events through both proxies, operator key added upstream")
    await interleaved(targets, quick, 20, lambda _: None)  # warm pools, caches, code paths
    idle_rss = {t.key: (tree_rss_bytes(t.pid) if t.pid else None) for t in targets}

    progress(f"time to first byte: {args.ttfb} `{QUICK}` requests per target, interleaved")
    ttfb = await interleaved(targets, quick, args.ttfb, progress)
    first = {k: [t.first_byte for t in ttfb[k]] for k in keys}
    heads = {k: [t.headers for t in ttfb[k]] for k in keys}
    results.add("first byte p50", {k: _p(first[k], 50) for k in keys}, "s")
    results.add("first byte p95", {k: _p(first[k], 95) for k in keys}, "s")
    results.add("headers p50", {k: _p(heads[k], 50) for k in keys}, "s")
    raw["first_byte"] = first

    progress(f"pacing: {args.paced} `{PACED}` streams per target, interleaved")
    pacing = await interleaved(targets, paced, args.paced, progress)
    all_gaps = {k: [g for t in pacing[k] for g in paced_gaps(t)] for k in keys}
    fidelity = {k: Fidelity.of(all_gaps[k], DELAY) for k in keys}
    results.add("paced: chunk gap p50", {k: _p(all_gaps[k], 50) for k in keys}, "s")
    results.add("paced: chunk gap min", {k: min(all_gaps[k]) for k in keys}, "s")
    results.add("paced: chunk gap max", {k: max(all_gaps[k]) for k in keys}, "s")
    results.add(
        "paced: bursted chunks",
        {k: float(fidelity[k].bursted) for k in keys},
        "count",
        compare=False,
    )
    results.add(
        "paced: whole stream p50",
        {k: _p([t.done for t in pacing[k]], 50) for k in keys},
        "s",
    )
    raw["paced_gaps"] = all_gaps

    for clients in args.concurrency:
        progress(f"{clients} concurrent clients x {args.rounds} `{PACED}` streams per target")
        outcome: dict[str, LoadResult] = {}
        for target in targets:
            outcome[target.key] = await load(target, paced, clients, args.rounds)
            await asyncio.sleep(1)  # let the previous target's connections wind down
        label = f"c={clients}:"
        done = {k: len(outcome[k].timings) for k in keys}
        results.add(
            f"{label} streams/s",
            {k: done[k] / outcome[k].wall for k in keys},
            "1/s",
        )
        firsts = {k: [t.first_byte for t in outcome[k].timings] for k in keys}
        wholes = {k: [t.done for t in outcome[k].timings] for k in keys}
        load_gaps = {k: [g for t in outcome[k].timings for g in paced_gaps(t)] for k in keys}
        results.add(f"{label} first byte p50", {k: _p(firsts[k], 50) for k in keys}, "s")
        results.add(f"{label} first byte p95", {k: _p(firsts[k], 95) for k in keys}, "s")
        results.add(f"{label} whole stream p95", {k: _p(wholes[k], 95) for k in keys}, "s")
        results.add(f"{label} chunk gap p99", {k: _p(load_gaps[k], 99) for k in keys}, "s")
        # Observations, not comparisons with the direct baseline (which has no proxy).
        observed: list[tuple[str, dict[str, float | None], str]] = [
            (
                "bursted chunks",
                {k: float(Fidelity.of(load_gaps[k], DELAY).bursted) for k in keys},
                "count",
            ),
            ("failed streams", {k: float(len(outcome[k].failures)) for k in keys}, "count"),
            (
                "proxy CPU per stream",
                {k: _per(outcome[k].cpu_seconds, done[k]) for k in keys},
                "s",
            ),
            (
                "proxy RSS peak",
                {k: (float(v) if (v := outcome[k].peak_rss) else None) for k in keys},
                "bytes",
            ),
            # What the streams themselves cost: the peak over the same process idle.
            (
                "proxy RSS growth",
                {k: _growth(outcome[k].peak_rss, idle_rss[k]) for k in keys},
                "bytes",
            ),
        ]
        for name, values, unit in observed:
            results.add(f"{label} {name}", values, unit, compare=False)
        raw[f"failures_{clients}"] = {k: outcome[k].failures[:5] for k in keys}
    results.add(
        "proxy RSS idle",
        {k: (float(v) if (v := idle_rss[k]) else None) for k in keys},
        "bytes",
        compare=False,
    )
    return results, raw


# -- the report -----------------------------------------------------------------------------


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return format_seconds(value)
    if unit == "bytes":
        return f"{value / 1024**2:.1f} MiB"
    if unit == "1/s":
        return f"{value:.1f}"
    return f"{value:.0f}"


def table(results: Results, targets: list[Target]) -> list[list[str]]:
    lines = [["", *(target.title for target in targets)]]
    for row in results.rows:
        cells = [row["label"]]
        for target in targets:
            text = format_value(row["values"][target.key], row["unit"])
            if (ratio := row["ratios"][target.key]) is not None and target.key != "direct":
                text += f" ({ratio:.2f}x)"
            cells.append(text)
        lines.append(cells)
    return lines


def format_table(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            [line[0].ljust(widths[0])]
            + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        ).rstrip()
        for line in lines
    )


def format_markdown(lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(lines[0]) + " |", "|---|" + "---:|" * (len(lines[0]) - 1)]
    out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    # Neither Docker nor the CLI takes part here.
    described = describe(claude_code_version="-")
    return {k: v for k, v in described.items() if k not in ("docker", "claude_code")}


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: the processes are stopped


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_run(_interrupt)
    started = time.monotonic()
    try:
        progress("starting the scripted model server and both proxies on 127.0.0.1")
        with running_targets(args.upstream_nagle, args.uvloop) as targets:
            results, raw = asyncio.run(measure(args, targets, progress))
    except KeyboardInterrupt:
        print("bench-gateway: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench-gateway: {exc} (logs in {LOG_DIR})", file=sys.stderr)
        return 1
    described = machine() | {"bench_seconds": round(time.monotonic() - started, 1)}
    lines = table(results, targets)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "machine": described,
        "args": vars(args) | {"json": str(args.json)},
        "rows": results.rows,
        "samples": raw,
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print()
    print(format_table(lines))
    print()
    print("(ratio) = proxy / direct. 'direct' is the client talking to the model server itself.")
    print(
        f"{described['cpu']}, {described['cores']} cores, {described['memory_gib']} GiB, "
        f"Linux {described['kernel']}, Python {described['python']}"
    )
    if args.markdown:
        print()
        print(format_markdown(lines))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
