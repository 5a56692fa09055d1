"""NVIDIA Megatron-LM's ``progress.txt`` (written beside the checkpoints with
``--log-progress``), read as log records for ``relog``.

Megatron-LM (``megatron/training/utils/log_utils.py`` ``append_to_progress_log`` and
``training.py`` ``compute_throughputs_and_append_to_progress_log``, read at d98e8a64) appends one
tab-separated line per event, rank 0 only::

    %Y-%m-%d %H:%M:%S <TAB> Job ID: <SLURM_JOB_ID> <TAB> # GPUs: <world size> <TAB> <event>…

with the events ``Starting job`` (a job's start), ``Saved checkpoint`` / ``Saving async
checkpoint`` followed by ``Iteration: I``, ``Job throughput: X TFLOP/s/GPU`` (Megatron-LM's
model FLOPs since the job started over the wall time since then), ``Cumulative throughput: …``,
``Floating-point operations: F`` (``.2e``) and ``Tokens (in billions): …``, and a few others
(``Saved async checkpoint``, ``Deleted checkpoint``), which are skipped.

Each checkpoint line becomes one :class:`~.console.LogRecord` over the iterations since the
job's previous checkpoint line (the job's first: since the checkpoint the job resumed from —
the latest one saved before its ``Starting job`` — or iteration 0), timed by the lines'
timestamps (whole seconds; the time includes checkpoint saving and evaluation).  Only the
job's first checkpoint line covers the same span as its ``Job throughput``, so only there is
that figure kept as the logged TFLOPs; its span includes the job's start-up (``job_start``).
The world size is the lines' ``# GPUs``.
"""

import datetime
import re
from typing import Iterable, Iterator, Optional

from .console import MEGATRON_LM, CutLine, LogRecord, ParseStats, count_cut_line

_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\tJob ID: [^\t]*\t# GPUs: (\d+)\t(.*)$")
_CHECKPOINT_EVENTS = ("Saved checkpoint", "Saving async checkpoint")
_ITERATION = re.compile(r"\tIteration: (\d+)")
_JOB_THROUGHPUT = re.compile(r"\tJob throughput: ([0-9.eE+-]+|nan|inf) TFLOP/s/GPU")


def is_progress_line(line: str) -> bool:
    return _LINE.match(line.rstrip("\r\n")) is not None


def _seconds(text: str) -> float:
    stamp = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def parse_progress(lines: Iterable[str], stats: Optional[ParseStats] = None
                   ) -> Iterator[LogRecord]:
    """Records of a ``progress.txt``, one per checkpoint line (see the module docstring).

    ``stats`` counts lines like the console parser; the ``# GPUs`` of the first line goes to
    ``stats.arguments['world_size']`` when no arguments dump gave one.
    """
    if stats is None:
        stats = ParseStats()
    job_start = None                   # (seconds, iteration) of the job's start
    previous = None                    # (seconds, iteration) of the job's last checkpoint
    last_saved_iteration = 0           # where a new job resumes
    number = 0
    for number, line in enumerate(lines, 1):
        if type(line) is CutLine:
            count_cut_line(stats, number)
            continue
        match = _LINE.match(line.rstrip("\r\n"))
        if match is None:
            stats.other += 1
            continue
        stamp, gpus, event = match.groups()
        stats.arguments.setdefault("world_size", gpus)
        if event.startswith("Starting job"):
            job_start = previous = (_seconds(stamp), last_saved_iteration)
            stats.other += 1
            continue
        iteration = _ITERATION.search(event)
        if not event.startswith(_CHECKPOINT_EVENTS) or iteration is None:
            stats.other += 1
            continue
        iteration = int(iteration.group(1))
        seconds = _seconds(stamp)
        first_of_job = previous is not None and previous is job_start
        start = previous if previous is not None else (None, 0)
        last_saved_iteration = iteration
        previous = (seconds, iteration)
        iterations = iteration - start[1]
        if start[0] is None or iterations <= 0 or seconds <= start[0]:
            stats.malformed += 1          # no job start before it, or time going back
            continue
        logged = None
        if first_of_job:
            found = _JOB_THROUGHPUT.search(event)
            logged = float(found.group(1)) if found else None
        stats.records += 1
        yield LogRecord(number, MEGATRON_LM, iteration, None,
                        (seconds - start[0]) / iterations, tflops=logged, timestamp=seconds,
                        iterations=iterations, job_start=first_of_job,
                        time_resolution_seconds=0.5 / iterations)
    stats.lines += number
