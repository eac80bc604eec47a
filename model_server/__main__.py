"""``python -m model_server [HOST] [PORT] [RECORD_PATH]``: serve without the ccq CLI."""

from __future__ import annotations

import sys
from pathlib import Path

from model_server.server import serve


def main(argv: list[str]) -> None:
    host = argv[0] if argv else "127.0.0.1"
    port = int(argv[1]) if len(argv) > 1 else 8765
    serve(host, port, Path(argv[2]) if len(argv) > 2 else None)


if __name__ == "__main__":
    main(sys.argv[1:])
