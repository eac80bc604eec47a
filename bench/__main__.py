"""`python -m bench` (`make bench`): every benchmark against its baseline, on a stack of its
own (submit on one without a worker, where nothing runs); prints the ratios and writes
everything (samples, machine) as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench import BenchError
from bench.delivery import Plan, delivery
from bench.machine import describe, one_line, prepare_run
from bench.report import Comparison, format_markdown, format_table
from bench.stack import LOG_DIR, clear_logs, running_stack
from bench.submit import PENDING_LIMIT, submit
from orchestrator.domain.batches import MAX_ITEMS
from orchestrator.settings import load_settings

BENCHMARKS = ("warm", "cold", "delivery", "submit")
# The benchmarks that run sessions, on a stack with a worker.
RUNNING = ("warm", "cold", "delivery")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("needs numbers of 1 or more")
    return values


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BENCHMARKS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--iterations", type=int, default=10, help="turns per side (default 10)")
    parser.add_argument(
        "--tails", type=_int_list, default=[1, 100, 500], help="tail counts (default 1,100,500)"
    )
    parser.add_argument(
        "--only",
        type=_names,
        default=list(BENCHMARKS),
        help="warm,cold,delivery,submit (default all)",
    )
    parser.add_argument(
        "--events", type=int, default=200, help="events per delivery phase (default 200)"
    )
    # 10/s: 500 tails then take 5,000 deliveries a second, about what one API process
    # sustains on a 2-core machine; faster, it is measuring a saturated process.
    parser.add_argument("--rate", type=float, default=10.0, help="events per second (default 10)")
    parser.add_argument(
        "--items", type=int, default=1000, help="prompts per submission (default 1000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="submissions per side (default 3)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.events < 1 or args.rate <= 0 or args.rounds < 1:
        parser.error("--iterations, --events, --rate and --rounds must be positive")
    if not 1 <= args.items <= MAX_ITEMS:
        parser.error(f"--items must be from 1 to {MAX_ITEMS} (a batch's limit)")
    return args


_interrupted = threading.Event()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so the stack is removed on the way out. Ctrl-C also
    # reaches the API and the worker (same process group), which may fail a measurement
    # before this signal lands: the flag tells that failure from a real one.
    _interrupted.set()
    raise KeyboardInterrupt


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> tuple[list[Comparison], dict[str, list[str]], list[str]]:
    """The comparisons, the stacks' logged problems and the stacks' instance names."""
    comparisons: list[Comparison] = []
    problems: dict[str, list[str]] = {}
    instances: list[str] = []
    clear_logs()
    if any(name in args.only for name in RUNNING):
        progress(
            "starting an isolated stack (database, Redis db 14, model server, gateway, api, worker)"
        )
        # One owner opens up to 500 tails here: past the default CCQ_MAX_TAILS_PER_OWNER.
        with running_stack(overrides={"max_tails_per_owner": max(args.tails)}) as stack:
            progress(f"stack up: instance {stack.settings.instance}, logs in {LOG_DIR}")
            if "warm" in args.only:
                from bench.turns import warm_turn

                comparisons.append(warm_turn(stack, args.iterations, progress))
            if "cold" in args.only:
                from bench.turns import cold_session

                comparisons.append(cold_session(stack, args.iterations, progress))
            if "delivery" in args.only:
                plan = Plan(events=args.events, rate=args.rate)
                comparisons += delivery(stack, args.tails, plan, progress)
            problems.update(stack.log_problems())
            instances.append(stack.settings.instance)
        progress(f"stack {instances[-1]} removed")
    if "submit" in args.only:
        progress("starting an isolated stack without a worker for submit (nothing runs)")
        overrides = {"max_pending_runs_per_owner": PENDING_LIMIT}
        with running_stack(with_worker=False, overrides=overrides, log_prefix="submit-") as stack:
            progress(f"stack up: instance {stack.settings.instance}, logs in {LOG_DIR}")
            comparisons.append(submit(stack, args.items, args.rounds, progress))
            problems.update({f"submit-{k}": v for k, v in stack.log_problems().items()})
            instances.append(stack.settings.instance)
        progress(f"stack {instances[-1]} removed")
    return comparisons, problems, instances


def document(
    comparisons: list[Comparison], machine: dict[str, Any], problems: dict[str, list[str]]
) -> dict[str, Any]:
    return {
        "machine": machine,
        "results": [c.to_json() for c in comparisons],
        "ratios": {c.key: c.ratio_p50 for c in comparisons},
        "log_problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_run(_interrupt)
    started = time.monotonic()
    try:
        comparisons, problems, _ = run(args)
    except (Exception, KeyboardInterrupt) as exc:
        if _interrupted.is_set():
            print("bench: interrupted; the stack was removed", file=sys.stderr)
            return 130
        if isinstance(exc, BenchError):
            print(f"bench: {exc} (logs in {LOG_DIR})", file=sys.stderr)
            return 1
        raise
    machine = describe(load_settings(env_file=None).claude_code_version)
    machine["bench_seconds"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document(comparisons, machine, problems), indent=2) + "\n")

    print()
    print(format_table(comparisons))
    print()
    print(f"ratio = ccq / baseline (lower is better, 1.00x = no overhead); {one_line(machine)}")
    if args.markdown:
        print()
        print(format_markdown(comparisons))
    for name, lines in problems.items():
        if lines:
            print(f"{name} log: {len(lines)} warning/error lines (last ones in the JSON)")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
