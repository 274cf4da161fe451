"""What `switchboard build-runners` shows while it compiles: a progress bar per variant on a
terminal (ninja's ``[n/m]``), and on anything else (CI logs, a pipe) a line each tenth of the
way, so a ten-minute compile is never silent and never floods."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

log = logging.getLogger("runner.build")


class BuildProgress:
    """A ``runner.build.Progress``; use it as a context manager around the build."""

    def __init__(self, console: Console) -> None:
        self._bars: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._tenths: dict[str, int] = {}
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bars = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=console)

    def __call__(self, variant: str, done: int, total: int) -> None:
        if self._bars is None:
            tenth = done * 10 // max(total, 1)
            if tenth > self._tenths.get(variant, 0):
                self._tenths[variant] = tenth
                log.info("%s: compiled %d of %d steps (%d%%)", variant, done, total,
                         done * 100 // max(total, 1))
            return
        task = self._tasks.get(variant)
        if task is None:
            task = self._tasks[variant] = self._bars.add_task(f"compiling {variant}",
                                                              total=total)
        self._bars.update(task, completed=done, total=total)

    def __enter__(self) -> BuildProgress:
        if self._bars is not None:
            self._bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bars is not None:
            self._bars.stop()
