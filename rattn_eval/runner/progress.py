"""Progress bars for long runs: samples done, tokens/s and ETA per (task, length)."""

from __future__ import annotations

from typing import Any


class Progress:
    """One rich progress bar per (task, length): samples done, tokens/s, ETA. Silent when disabled."""

    def __init__(self, console: Any, *, enabled: bool):
        self.enabled = enabled
        self._p = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._p = Progress(
                TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[tok_s]:>9} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=console, transient=False,
            )
        self._tokens: dict[int, tuple[int, float]] = {}

    def __enter__(self):
        if self._p is not None:
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)

    def add(self, name: str, *, total: int, completed: int) -> int:
        if self._p is None:
            return 0
        return self._p.add_task(name, total=total, completed=completed, tok_s="-")

    def advance(self, handle: int, samples: int, tokens: int, seconds: float) -> None:
        if self._p is None:
            return
        tok, sec = self._tokens.get(handle, (0, 0.0))
        tok, sec = tok + tokens, sec + seconds
        self._tokens[handle] = (tok, sec)
        self._p.update(handle, advance=samples, tok_s=f"{tok / sec:,.0f}" if sec > 0 else "-")
