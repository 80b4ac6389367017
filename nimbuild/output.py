"""The single output sink: human tables on a terminal, or one JSON document.

Every command prints through an :class:`Output`. In ``--json`` mode stdout gets
exactly one JSON document (``emit``), and everything meant for a person
(progress, notes, warnings) goes to stderr so that pipes stay parseable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from nimbuild.fsutil import json_text
from nimbuild.safe_text import printable

if TYPE_CHECKING:
    from rich.console import Console


class Output:
    """Where a command's results, notes and progress go."""

    def __init__(self, json_mode: bool = False, quiet: bool = False):
        self.json_mode = json_mode
        self.quiet = quiet
        self._console: Console | None = None
        self._err_console: Console | None = None

    # rich is imported lazily: `list-model-profiles --json` should not pay for it.
    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # piped into a file or a CI log: no terminal width to fit, so don't fold tables at 80 columns
            width = None if sys.stdout.isatty() else 160
            self._console = Console(highlight=False, soft_wrap=True, width=width)
        return self._console

    @property
    def err_console(self) -> Console:
        if self._err_console is None:
            from rich.console import Console

            width = None if sys.stderr.isatty() else 160
            self._err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=width)
        return self._err_console

    def emit(self, data: Any, human: str | Callable[[Output], None] | None = None) -> None:
        """The command's result: ``data`` as JSON in --json mode, else ``human``.

        ``human`` is a plain string (printed as is, no markup) or a callable that
        renders through this sink (tables, lines). Without it, the JSON is shown.
        """
        if self.json_mode:
            sys.stdout.write(json_text(data) + "\n")
            sys.stdout.flush()
            return
        if human is None:
            sys.stdout.write(json_text(data) + "\n")
        elif isinstance(human, str):
            text = printable(human, multiline=True)  # names from data: shown, never interpreted
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        else:
            human(self)
        sys.stdout.flush()

    def line(self, text: str = "") -> None:
        """A plain line of the human result on stdout (never in --json mode); control characters escaped."""
        if not self.json_mode:
            sys.stdout.write(printable(text) + "\n")

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
        """A human table on stdout (never in --json mode)."""
        if self.json_mode:
            return
        from rich.table import Table
        from rich.text import Text

        table = Table(title=title, show_lines=False, header_style="bold")
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:  # Text, not str: a '[' in a name is text, not rich markup
            table.add_row(*(Text("" if v is None else printable(v)) for v in row))
        self.console.print(table)

    def note(self, text: str) -> None:
        """Information for the person running the command (stderr)."""
        if not self.quiet:
            self.err_console.print(printable(text), markup=False)

    def warn(self, text: str) -> None:
        self.err_console.print(f"warning: {printable(text)}", style="yellow", markup=False)

    def error(self, text: str) -> None:
        """One ``error: ...`` line on stderr (plain text, also in --json mode: stdout stays one document)."""
        sys.stderr.write(f"error: {printable(text)}\n")  # one line: names from data cannot forge more
        sys.stderr.flush()

    @contextmanager
    def progress(self, transient: bool = True) -> Iterator[Any]:
        """A rich Progress on stderr for long work (hidden when quiet or not a terminal)."""
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        disable = self.quiet or not self.err_console.is_terminal
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", style="progress.description", markup=False),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=self.err_console,
            transient=transient,
            disable=disable,
        ) as progress:
            yield progress
