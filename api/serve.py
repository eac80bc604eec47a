"""Serve the API: gunicorn with gevent workers, so one process holds many live tails.

Run as ``python -m api.serve`` (``ccq api`` does): gevent must patch the standard library
before anything else imports ``socket``, ``ssl`` or ``threading``, which is why this module
patches first and is started as a fresh interpreter rather than imported by the CLI.

Why gevent: a tail is a socket that waits in a blocking Redis read almost all the time.
On gevent that costs a greenlet (a few KiB); on threads it costs an OS thread and the GIL
hand-offs between hundreds of them, which is where threaded tails run out (see
docs/decisions.md and ``make bench``). psycopg 3 and redis-py cooperate with gevent.
"""

from gevent import monkey

monkey.patch_all()

# ruff: noqa: E402 - everything below must come after the patching above.
import argparse
import sys

from api.app import create_app
from api.gunicorn_app import GunicornApp
from api.server_options import gunicorn_options
from orchestrator.settings import ConfigError, load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ccq api", description="Serve the ccq API.")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ccq: {exc}", file=sys.stderr)
        sys.exit(2)
    options = gunicorn_options(settings, workers=args.workers, connections=args.connections)
    GunicornApp(lambda: create_app(settings), options).run()


if __name__ == "__main__":
    main()
