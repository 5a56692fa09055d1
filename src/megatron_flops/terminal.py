"""Progress on a terminal: one line rewritten in place, nothing at all when output is piped.

A long command (the demo between its log lines, ``peak`` between sizes) says where it is and
how long is left, the way ``tqdm`` does, but only where a person watches: when stdout and
stderr are both terminals.  A log file, a pipe or a test's captured output never sees it.
"""

import shutil
import sys
from typing import Optional, TextIO

__all__ = ["ProgressLine", "format_duration", "on_terminal"]


def on_terminal(*streams: TextIO) -> bool:
    """True when every stream is an interactive terminal."""
    for stream in streams:
        try:
            if not stream.isatty():
                return False
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False
    return True


def format_duration(seconds: float) -> str:
    """``42.0`` -> ``"42s"``, ``200`` -> ``"3m20s"``, ``7300`` -> ``"2h01m"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLine:
    """One status line on ``stream`` (stderr), redrawn by :meth:`show` and erased by
    :meth:`clear` before anything else is printed.  Disabled (every call a no-op) unless
    ``enabled``, by default: stdout and stderr are both terminals."""

    def __init__(self, stream: Optional[TextIO] = None, enabled: Optional[bool] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = on_terminal(sys.stdout, self.stream) if enabled is None else enabled
        self.shown = False

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r" + text[:width] + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
