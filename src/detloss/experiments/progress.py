"""Progress of long commands: a bar on a terminal, plain lines in a log file.

:func:`progress_bar` returns a :class:`rich.progress.Progress` when its stream is a terminal.
Elsewhere (output redirected to a file, a CI log, a pipe) a bar cannot redraw itself: rich
would print it once, elided, at the end, so a long run would log nothing until it finishes.
There it returns a :class:`PlainProgress` instead, which takes the same calls and prints one
plain line per task every :data:`INTERVAL_S` seconds and when the task completes::

    train ciou/binary_cross_entropy: 300/1500 (20%), 62 s, about 248 s left; loss 5.412 box 0.622 ...
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["INTERVAL_S", "PlainProgress", "progress_bar"]

#: Seconds between two plain lines of one task.
INTERVAL_S = 30.0


@dataclass
class _Task:
    description: str
    total: float
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    printed: float = field(default_factory=time.perf_counter)
    done: bool = False


class PlainProgress:
    """The part of :class:`rich.progress.Progress` that detloss uses, as plain lines.

    ``{fields}`` that a task carries (``terms="loss 5.4 ..."``) are printed after the counts.
    """

    def __init__(self, stream: IO[str] | None = None, interval: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.interval = INTERVAL_S if interval is None else interval
        self.tasks: dict[int, _Task] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Nothing to draw before the first line."""

    def stop(self) -> None:
        """Nothing to clear: every line is final."""

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = _Task(description, float(total or 0), float(completed), dict(fields))
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self, task_id: int, *, advance: float | None = None, completed: float | None = None, **fields: Any
    ) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task.completed = float(completed)
        if advance is not None:
            task.completed += advance
        task.fields.update(fields)
        now = time.perf_counter()
        finished = task.total > 0 and task.completed >= task.total
        if (finished and not task.done) or (not finished and now - task.printed >= self.interval):
            task.done = finished
            task.printed = now
            self.stream.write(self.line(task, now) + "\n")
            self.stream.flush()

    @staticmethod
    def line(task: _Task, now: float) -> str:
        """``description: k/n (p%), elapsed, left; fields``."""
        elapsed = now - task.started
        text = f"{task.description}: {task.completed:g}"
        if task.total > 0:
            text += f"/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
        text += f", {elapsed:.0f} s"
        if 0 < task.completed < task.total:
            text += f", about {elapsed * (task.total - task.completed) / task.completed:.0f} s left"
        extra = " ".join(str(v) for v in task.fields.values() if str(v))
        return text + (f"; {extra}" if extra else "")


def progress_bar(*columns: Any, enabled: bool = True, stderr: bool = False, transient: bool = False) -> Any:
    """A rich progress bar with ``columns`` on a terminal, :class:`PlainProgress` elsewhere;
    a disabled one (it shows nothing) unless ``enabled``."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=stderr)
    if not enabled:
        return Progress(*columns, console=console, disable=True)
    if console.is_terminal:
        return Progress(*columns, console=console, transient=transient)
    return PlainProgress(sys.stderr if stderr else sys.stdout)
