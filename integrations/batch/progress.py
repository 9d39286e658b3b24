"""A progress line with rate and ETA on stderr: redrawn in place on a terminal, one line per study
in a log file (a cron job's output stays readable)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


@dataclass
class Progress:
    total: int
    stream: TextIO | None = None
    enabled: bool = True
    width: int = 24
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.stream = self.stream or sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    @property
    def rate_per_min(self) -> float:
        elapsed = time.monotonic() - self.started
        return 60.0 * self.done / elapsed if elapsed > 0 and self.done else 0.0

    @property
    def eta_seconds(self) -> float | None:
        rate = self.rate_per_min
        return None if rate <= 0 else (self.total - self.done) * 60.0 / rate

    def line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        eta = self.eta_seconds
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} studies"
                f" ({self.failed} failed), {self.rate_per_min:.1f}/min,"
                f" elapsed {format_duration(time.monotonic() - self.started)},"
                f" ETA {format_duration(eta) if eta is not None else '?'}")

    def update(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += int(failed)
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r" + self.line())
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def start(self) -> None:
        self.started = time.monotonic()
        self._draw()
