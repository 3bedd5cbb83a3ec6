"""Pull progress on the terminal: a rich progress bar on a TTY, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import Any, TextIO


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class PlainProgress:
    """One line per status change and per 10% of each file."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last: dict[str, int] = {}
        self._status: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        status = event.get("status", "")
        if "total" not in event:
            if status != self._status:
                print(status, file=self.out, flush=True)
                self._status = status
            return
        total = max(int(event["total"]), 1)
        done = int(event["completed"])
        tenth = done * 10 // total
        if self._last.get(status) == tenth:
            return
        self._last[status] = tenth
        self._status = status
        print(
            f"{status}: {tenth * 10}% ({human_size(done)} of {human_size(total)})",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        pass


class RichProgress:
    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        self.progress.start()
        self._tasks: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        status = event.get("status", "")
        if "total" not in event:
            self.progress.console.print(status)
            return
        task = self._tasks.get(status)
        if task is None:
            task = self.progress.add_task(status, total=event["total"])
            self._tasks[status] = task
        self.progress.update(task, completed=event["completed"])

    def close(self) -> None:
        self.progress.stop()


def make_progress(out: TextIO | None = None) -> PlainProgress | RichProgress:
    out = out or sys.stdout
    if out.isatty():
        return RichProgress()
    return PlainProgress(out)
