"""``megatron-flops relog``'s work: one run's logs relogged, interval by interval.

The jobs are apart, each a module of :mod:`megatron_flops.logs`:

- :mod:`.reading`: the :class:`~.console.LogRecord` of a console log, ``progress.txt`` or a
  TensorBoard run (:func:`~.reading.read_records`), and of one run's files in iteration
  order (:func:`~.reading.read_run`);
- :mod:`.segments`: the model and run shape of each run segment (:func:`~.segments.settle_segment`);
- :mod:`.intervals`: :class:`~.intervals.Relogger` turns records into
  :class:`~.intervals.Interval` objects (the interval maths);
- :mod:`.summary`: :class:`~.summary.Summary` keeps the statistics over intervals;
- this module, the drivers: :func:`relog` (records of one run shape in, intervals out) and
  :func:`relog_run` (files in, segment by segment).

All of it is computation only (no printing, no files written); the outputs (table, JSON,
CSV, TensorBoard, plot) are sinks in :mod:`.outputs`; the command line is
:mod:`megatron_flops.commands.relog`.
"""

import argparse
from typing import Callable, Iterable, Iterator, Optional, Tuple

from ..shapes import ModelShape, RunShape
from .console import LogRecord, ParseStats
from .intervals import Interval, Relogger
from .reading import read_run
from .segments import Segment, settle_segment


def relog(records: Iterable[LogRecord], model: ModelShape, run: RunShape,
          peak_tflops: Optional[float] = None, causal: bool = False,
          fork: Optional[str] = None, log_interval: Optional[int] = None,
          default_fork: Optional[str] = None) -> Iterator[Interval]:
    """Intervals for records of one run shape (the library entry point; the command adds the
    outputs and a new shape per arguments dump); see :class:`Relogger`."""
    relogger = Relogger(model, run, peak_tflops, causal, fork, log_interval, default_fork)
    for record in records:
        interval = relogger.add(record)
        if interval is not None:
            yield interval


def relog_run(paths: Iterable[str], args: argparse.Namespace, given: Iterable[str],
              stats: ParseStats, peak_tflops_for: Callable[[RunShape], Optional[float]],
              causal: bool = False, fork: Optional[str] = None
              ) -> Iterator[Tuple[Relogger, Optional[Segment], Optional[Interval]]]:
    """One run's logs (:func:`read_run`: files or folders, in iteration order) relogged segment
    by segment: ``(relogger, segment, None)`` at the first line and at each restart's new
    arguments dump (the run shape settled by :func:`settle_segment`, the relogger reshaped),
    ``(relogger, None, interval)`` for every interval.  ``peak_tflops_for`` is asked once, with
    the first segment's run shape.  The relog command and ``compare`` both read logs this way."""
    relogger: Optional[Relogger] = None
    dumps_seen = -1
    for record in read_run(paths, stats, fork):
        if stats.argument_dumps != dumps_seen:   # the first line, or a restart's new dump
            dumps_seen = stats.argument_dumps
            segment = settle_segment(args, given, stats, record, path=stats.path)
            if relogger is None:
                relogger = Relogger(segment.model, segment.run, peak_tflops_for(segment.run),
                                    causal, fork, segment.log_interval, segment.fork)
            else:
                relogger.reshape(segment.model, segment.run, segment.log_interval, segment.fork)
            yield relogger, segment, None
        interval = relogger.add(record)
        if interval is not None:
            yield relogger, None, interval
