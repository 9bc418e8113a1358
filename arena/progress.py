"""The progress bar of every long-running job (export, decontamination, MT-bench judging), and the
commands' error line.

rich's, on stderr so that piped output stays clean; transient when stderr is not a terminal.
A disabled bar (``--no-progress``, tests) costs nothing and shows nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text


class ProgressBar:
    """Handle on one bar: :meth:`advance` by some units, :meth:`describe` to change its label."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, units: float = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, units)

    def describe(self, description: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description)


@contextmanager
def progress_bar(description: str, total: int | None = None, enabled: bool = True) -> Iterator[ProgressBar]:
    """A bar counting up to ``total`` (None: unknown, a count without a bar end)."""
    if not enabled:
        yield ProgressBar(None, None)
        return
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=not sys.stderr.isatty()) as progress:
        yield ProgressBar(progress, progress.add_task(description, total=total))


# Libraries that log routine chatter at INFO (font cache scans, every HTTP request): a CLI's
# output shows only their warnings.
QUIET_LIBRARIES = ("matplotlib", "PIL", "fontTools", "httpx", "httpcore", "urllib3", "filelock")


def configure_cli_logging(fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """INFO logging for a command's own work, without the INFO lines of chatty libraries."""
    logging.basicConfig(level=logging.INFO, format=fmt)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def print_error(console: Console, message: str, label: str = "error") -> None:
    """One error line as the user must read it: unwrapped (a file path stays whole, whatever the terminal's
    width) and verbatim (brackets in a row's values are not taken for rich markup)."""
    console.print(Text.assemble((f"{label}: ", "red"), message), soft_wrap=True, highlight=False)
