"""Reading one run's logs: the :class:`~.console.LogRecord` of a console log, Megatron-LM's
``progress.txt`` or a TensorBoard run (:func:`read_records`), and of several files of one run
in iteration order (:func:`read_run`, :func:`console_logs`), streaming."""

import itertools
import os
from typing import Iterable, Iterator, List, Optional

from .console import LogRecord, ParseStats, open_log, parse_console_log


def read_records(path: str, stats: ParseStats, fork: Optional[str] = None
                 ) -> Iterator[LogRecord]:
    """The records of a console log (``-`` is stdin) or a TensorBoard run directory / event
    file, streaming; ``stats`` is updated as they go.  Raises ValueError for a TensorBoard
    run without the ``tensorboard`` extra or without the iteration-time tags."""
    from .tensorboard import is_event_file, read_tensorboard_run
    if path != "-" and (os.path.isdir(path) or is_event_file(path)):
        try:
            yield from read_tensorboard_run(path, stats, fork)
        except ImportError as error:
            raise ValueError(str(error)) from None
        return
    with open_log(path) as stream:
        yield from _console_or_progress(stream, stats, fork)


def _console_or_progress(stream, stats: ParseStats, fork: Optional[str]) -> Iterator[LogRecord]:
    """A console log, or Megatron-LM's progress.txt (told by its first line)."""
    from .progress import is_progress_line, parse_progress
    first = stream.readline()
    lines = itertools.chain((first,) if first else (), stream)
    if is_progress_line(first):
        yield from parse_progress(lines, stats)
    else:
        yield from parse_console_log(lines, stats, fork)


def first_iteration(path: str) -> Optional[int]:
    """The first logged iteration of a console log (read up to that line), else None."""
    from .console import _ANCHOR
    with open_log(path) as stream:
        for line in stream:
            if "iteration" in line:
                match = _ANCHOR.search(line)
                if match is not None and "elapsed time per iteration" in line:
                    return int(match.group(1))
    return None


CONSOLE_LOG_SUFFIXES = (".log", ".txt", ".out")


def console_logs(paths: Iterable[str]) -> List[str]:
    """One run's console logs in iteration order: each PATH, a folder standing for its
    ``*.log`` / ``*.txt`` / ``*.out`` files; ordered by their first logged iteration (files
    without an iteration line last, by name).  Raises ValueError for a folder without
    such files."""
    files = []
    for path in paths:
        if path != "-" and os.path.isdir(path):
            found = sorted(os.path.join(path, name) for name in os.listdir(path)
                           if name.endswith(CONSOLE_LOG_SUFFIXES)
                           and os.path.isfile(os.path.join(path, name)))
            if not found:
                raise ValueError(f"PATH {path!r}: no TensorBoard event files and no console "
                                 f"logs (*.log, *.txt, *.out) in it")
            files += found
        else:
            files.append(path)
    if len(files) < 2 or "-" in files:
        return files
    keyed = []
    for path in files:
        first = first_iteration(path)
        keyed.append((first is None, first or 0, path))
    return [path for _, _, path in sorted(keyed)]


def is_tensorboard(path: str) -> bool:
    """A TensorBoard run directory (event files in it or below) or an event file."""
    from .tensorboard import find_runs, is_event_file
    if path == "-":
        return False
    if os.path.isdir(path):
        return bool(find_runs(path))
    return is_event_file(path)


def read_run(paths: Iterable[str], stats: ParseStats, fork: Optional[str] = None
             ) -> Iterator[LogRecord]:
    """The records of one run's logs: a TensorBoard run (one PATH), or console logs and
    folders of them in iteration order (:func:`console_logs`); ``stats`` counts over all
    of them and ``stats.path`` is the file being read."""
    paths = list(paths)
    if len(paths) == 1 and is_tensorboard(paths[0]):
        yield from read_records(paths[0], stats, fork)
        return
    if any(is_tensorboard(path) for path in paths):
        raise ValueError("several PATHs must all be console logs (a TensorBoard run is read "
                         "alone)")
    for path in console_logs(paths):
        stats.path = path
        with open_log(path) as stream:
            yield from _console_or_progress(stream, stats, fork)
