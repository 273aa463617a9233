"""Progress of a long loop (sampling, evaluation): how far, how fast, how long still.

    progress = Progress(50_000, label="sample")
    for ...:
        ...
        progress.update(done)
    progress.close()

In a terminal (stderr is a tty) one bar line is redrawn in place with '\\r';
elsewhere (logs, cluster jobs, pipes) plain lines go through the `jaxdiff`
logger, the first and the last update always and others at most every
`interval` seconds. The rate is measured from the first update on, so it
leaves out what came before it: the first call's compilation (the first line
says so). Only process 0 reports.
"""

import logging
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

logger = logging.getLogger("jaxdiff")

# Characters of the terminal bar.
BAR_WIDTH = 20


def duration(seconds: float) -> str:
    """H:MM:SS, as the training log writes time left."""
    seconds = max(round(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Reports `done/total` with percentage, rate and time left after each `update`.

    Args:
      total: how many units the loop does.
      unit: what it counts ("samples").
      label: what the loop is, the head of each line ("sample", "eval").
      initial: units done before this run (e.g. resumed from a file); they count
        towards done/total but not towards the rate.
      interval: plain lines: seconds at least between two lines (first and last
        always shown).
      clock: seconds, monotonic (injectable for tests).
      stream: where the terminal bar goes (stderr if None).
      terminal: draw a bar (True) or log lines (False); None: whether `stream`
        is a tty.
      enabled: report at all; None: only in process 0 of a multi-process run.
    """

    def __init__(
        self,
        total: int,
        unit: str = "samples",
        label: str = "",
        *,
        initial: int = 0,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        enabled: bool | None = None,
    ):
        self.total, self.unit, self.label = total, unit, label
        self.interval, self.clock = interval, clock
        self.stream = sys.stderr if stream is None else stream
        if terminal is None:
            isatty = getattr(self.stream, "isatty", None)
            terminal = bool(isatty and isatty())
        self.terminal = terminal
        if enabled is None:
            import jax  # Only here: the module itself is plain Python.

            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.done = initial
        self._start = clock()
        self._first: tuple[float, int] | None = None  # (time, done) at the first update.
        self._last_line = -float("inf")
        self._drawn = False  # A terminal bar is on screen without its newline.
        self._width = 0  # Of the last bar line, to blank out what a shorter one leaves.

    def rate(self, now: float) -> float | None:
        """Units per second since the first update; None before a second one."""
        if self._first is None or self.done <= self._first[1] or now <= self._first[0]:
            return None
        return (self.done - self._first[1]) / (now - self._first[0])

    def message(self, now: float) -> str:
        """The text of a report at time `now` (without the terminal's bar)."""
        percent = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.done:,}/{self.total:,} {self.unit} ({percent:.0f}%)"
        elapsed = now - self._start
        rate = self.rate(now)
        if rate is not None:
            left = (self.total - self.done) / rate
            text += f", {rate:.3g} {self.unit}/s, {duration(elapsed)} elapsed"
            if self.done < self.total:
                text += f", about {duration(left)} left"
        elif self.done < self.total:
            # Only one measurement: it holds the compilation, so no rate yet.
            text += f", first batch {duration(elapsed)} (with compilation; rate after the next)"
        else:
            text += f", {duration(elapsed)} elapsed"
        return f"{self.label}: {text}" if self.label else text

    def bar(self, now: float) -> str:
        """The terminal's line at time `now`: a bar, then the numbers in short."""
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        fill = round(BAR_WIDTH * fraction)
        text = f"[{'#' * fill}{'.' * (BAR_WIDTH - fill)}] {self.done:,}/{self.total:,}"
        rate = self.rate(now)
        if rate is not None:
            text += f"  {rate:.3g} {self.unit}/s  {duration(now - self._start)}"
            if self.done < self.total:
                text += f"  ETA {duration((self.total - self.done) / rate)}"
        elif self.done < self.total:
            text += f"  1st batch {duration(now - self._start)}, with compiling"
        return f"{self.label} {text}" if self.label else text

    def update(self, done: int) -> None:
        """Records that `done` units (of `total`) are done now, and reports it when due."""
        now = self.clock()
        self.done = done
        first = self._first is None
        if first:
            self._first = (now, done)
        if not self.enabled:
            return
        finished = done >= self.total
        if self.terminal:
            # Cut to the terminal's width: a wrapped line would not be redrawn in place.
            text = self.bar(now)[: shutil.get_terminal_size().columns - 1]
            # Pads over a longer previous line; the newline only when finished.
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            if finished:
                self.stream.write("\n")
            self.stream.flush()
            self._drawn = not finished
        elif first or finished or now - self._last_line >= self.interval:
            logger.info("%s", self.message(now))
            self._last_line = now

    def close(self) -> None:
        """Ends an unfinished terminal bar with a newline (e.g. after an interruption)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
