"""Rows of cells as aligned text, laid out by rich.

rich measures cells as a terminal shows them (a wide character takes two columns), so
styled and wide cells line up where padding by ``len()`` would not. Columns are two
spaces apart, lines end without padding, and without ``color`` the text is plain: the
same lines in a terminal and in a log.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.color import ColorSystem
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

# Wide enough that a table never wraps: the caller cuts long cells itself.
NO_WRAP_WIDTH = 10_000


def styled(text: str, color: bool, style: str | None) -> str:
    """``text`` with a rich style as ANSI codes, only when colors are on."""
    if not (color and style and text):
        return text
    return Style.parse(style).render(text, color_system=ColorSystem.STANDARD)


def render_table(rows: Sequence[Sequence[Text]], color: bool = False) -> str:
    """The rows as lines, each column as wide as its widest cell, two spaces between."""
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    for _ in range(max((len(row) for row in rows), default=0)):
        table.add_column(no_wrap=True)
    for row in rows:
        table.add_row(*row)
    out = io.StringIO()
    console = Console(
        file=out,
        width=NO_WRAP_WIDTH,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        highlight=False,
        legacy_windows=False,
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
