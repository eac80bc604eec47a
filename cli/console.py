"""Where output goes and how it looks: rich decides whether a stream is a terminal and
whether colors are wanted (``NO_COLOR``, ``FORCE_COLOR``, ``TERM=dumb``).

Consoles are made per call on the current ``sys.stdout``/``sys.stderr``, so a test's
captured streams (click's runner) are the ones asked.
"""

from __future__ import annotations

import sys

from rich.console import Console


def stdout_console() -> Console:
    return Console(file=sys.stdout, soft_wrap=True, highlight=False)


def stderr_console() -> Console:
    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


def _colored(console: Console) -> bool:
    return console.is_terminal and not console.no_color and console.color_system is not None


def stdout_color() -> bool:
    """Styles on stdout: a terminal that wants colors."""
    return _colored(stdout_console())


def stderr_color() -> bool:
    return _colored(stderr_console())


def stdout_tty() -> bool:
    """Whether stdout is a terminal (lines fit its width; a bar is redrawn in place)."""
    return stdout_console().is_terminal


def stderr_tty() -> bool:
    return stderr_console().is_terminal
