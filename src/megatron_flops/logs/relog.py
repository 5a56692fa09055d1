"""``megatron-flops relog``: the true throughput of every interval a past run logged.

For each logged interval (one ``training_log`` line, or one TensorBoard step with the
iteration-time tags) this computes, from that interval's own numbers:

- ``seconds_per_iteration``: the logged elapsed time per iteration.  The console prints it
  with 2 decimals in seconds (bigscience) or 1 decimal in ms (microsoft); the same line's
  ``global batch size / samples per second`` is the same quantity with more digits, so that
  is used when it agrees with the printed time within the printed precision and is finer.
- ``batch_size``: the mean samples per iteration since the previous logged interval,
  ``Δ consumed samples / Δ iteration`` — exact across a batch-size ramp-up, where the forks
  use the batch size at log time.  The first interval (and any interval after a restart, or
  whose consumed samples are missing or out of the range the logged batch sizes allow) uses
  the logged global batch size instead.
- ``seq_length``: the sequence length printed on the line (microsoft ``actual seqlen``,
  else ``curriculum seqlen``), else ``--seq-length``.
- model and hardware TFLOP/s per GPU = batch_size × FLOPs per sample at seq_length /
  (seconds_per_iteration × world size × 1e12), through the core's ThroughputMeter; MFU/HFU
  against the peak when known; ``error`` = logged TFLOPs / hardware TFLOP/s − 1.
- ``fork_formula_tflops``: what the fork's own formula gives for the flags given, this
  line's logged batch, seq length and time.  When it does not reproduce the logged number,
  the flags (or the world size) do not describe the run, and the summary says so.

This module is the computation only (no printing, no files written), for ``relog`` and any
other reader of past runs:

- :func:`read_records` yields the :class:`~.console.LogRecord` of a console log or a
  TensorBoard run; :func:`settle_run` settles the world size from the log's arguments dump
  and says what contradicts the flags;
- :class:`Relogger` turns records into :class:`Interval` objects one at a time
  (:func:`relog` is the same as a generator);
- :class:`Summary` keeps the statistics over intervals (constant memory).

The outputs (table, JSON, CSV, TensorBoard, plot) are sinks in :mod:`.outputs`; the command
line is :mod:`megatron_flops.commands.relog`.
"""

import argparse
import copy
import math
import os
from typing import Iterable, Iterator, List, NamedTuple, Optional, Tuple

from ..legacy import legacy_error, legacy_tflops_for_shapes
from ..megatron.args import shapes_from_args
from ..meter import ThroughputMeter, ThroughputReport
from ..shapes import ModelShape, RunShape
from .console import LogRecord, ParseStats, open_log, parse_console_log

# the logged TFLOPs are printed with 2 decimals; beyond this the fork's formula with the
# given flags does not reproduce them
FORMULA_TOLERANCE = 0.01


class Interval(NamedTuple):
    """One logged interval, recomputed.

    ``report`` holds the rates (samples/s, tokens/s per GPU, model and hardware TFLOP/s per
    GPU, MFU, HFU) over the interval's ``iterations`` of ``seconds_per_iteration`` each;
    each ``*_source`` says where the value next to it came from.  ``as_dict`` is the
    ``--json`` object (its keys are public: docs/relog.md).
    """

    record: LogRecord
    iterations: int             # iterations the batch size was averaged over
    batch_size: float           # mean samples per iteration used
    batch_source: str
    seq_length: int
    seq_source: str
    seconds_per_iteration: float
    time_source: str
    report: ThroughputReport    # over ``iterations`` iterations of ``seconds_per_iteration``
    fork_formula_tflops: Optional[float]
    error: Optional[float]      # logged TFLOPs / hardware TFLOP/s − 1

    @property
    def iteration(self) -> int:
        return self.record.iteration

    @property
    def logged_tflops(self) -> Optional[float]:
        return self.record.tflops

    def as_dict(self) -> dict:
        r, rep = self.record, self.report
        return {
            "iteration": r.iteration,
            "line": r.line_number or None,
            "fork": r.fork,
            "consumed_samples": r.consumed_samples,
            "consumed_tokens": r.consumed_tokens,
            "logged_global_batch_size": r.global_batch_size,
            "batch_size": self.batch_size,
            "batch_source": self.batch_source,
            "seq_length": self.seq_length,
            "seq_source": self.seq_source,
            "seconds_per_iteration": self.seconds_per_iteration,
            "time_source": self.time_source,
            "skipped_iterations": r.skipped_iterations,
            "logged_samples_per_second": r.samples_per_second,
            "samples_per_second": rep.samples_per_second,
            "tokens_per_second_per_gpu": rep.tokens_per_second_per_gpu,
            "logged_tflops": r.tflops,
            "fork_formula_tflops": self.fork_formula_tflops,
            "tflops_per_gpu": {"model": rep.model_tflops_per_gpu,
                               "hardware": rep.hardware_tflops_per_gpu},
            "mfu": rep.mfu,
            "hfu": rep.hfu,
            "error": self.error,
        }


def interval_seconds(record: LogRecord) -> Tuple[float, str]:
    """(seconds per iteration, source): the finer of the printed time and batch / samples/s."""
    printed = record.seconds_per_iteration
    batch, sps = record.global_batch_size, record.samples_per_second
    if not (batch and sps and sps > 0):
        return printed, "elapsed time"
    derived = batch / sps
    # samples per second is printed with 3 decimals
    derived_uncertainty = derived * 0.0005 / sps
    if (abs(derived - printed) <= (record.time_resolution_seconds + derived_uncertainty) * 1.001
            and derived_uncertainty < record.time_resolution_seconds):
        return derived, "batch / samples per second"
    return printed, "elapsed time"


class Relogger:
    """Turns log records into :class:`Interval` objects, one at a time (constant memory).

    ``add(record)`` returns the record's interval, or None for a line printed twice.  The
    counters say what was seen: ``duplicates`` (skipped), ``restarts`` (the iteration went
    back: a resumed run starts over), ``inconsistent_samples`` (consumed samples that the
    logged batch sizes cannot explain: the logged batch was used).
    """

    def __init__(self, model: ModelShape, run: RunShape, peak_tflops: Optional[float] = None,
                 causal: bool = False, fork: Optional[str] = None):
        self.model, self.run, self.fork = model, run, fork
        self._meter = ThroughputMeter.for_run(model, run, peak_tflops, causal)
        self._previous: Optional[LogRecord] = None
        self.duplicates = 0
        self.restarts = 0
        self.inconsistent_samples = 0
        self._formula_at_one_second = {}

    def _fork_formula(self, fork: str, batch: float, seq_length: int, seconds: float) -> float:
        """The fork's TFLOPs: its FLOPs for (batch, seq) / (seconds × world × 1e12), memoised
        at 1 s (a log has few distinct batch sizes and sequence lengths)."""
        key = (fork, batch, seq_length)
        at_one_second = self._formula_at_one_second.get(key)
        if at_one_second is None:
            if len(self._formula_at_one_second) > 4096:
                self._formula_at_one_second.clear()
            at_one_second = legacy_tflops_for_shapes(self.model, self.run, batch, seq_length,
                                                     1.0)[fork]
            self._formula_at_one_second[key] = at_one_second
        return at_one_second / seconds

    def _batch(self, record: LogRecord):
        previous = self._previous
        logged = record.global_batch_size
        if (previous is not None and record.consumed_samples is not None
                and previous.consumed_samples is not None
                and record.consumed_samples > previous.consumed_samples):
            iterations = record.iteration - previous.iteration
            samples = record.consumed_samples - previous.consumed_samples
            low = min(filter(None, (previous.global_batch_size, logged)), default=None)
            high = max(filter(None, (previous.global_batch_size, logged)), default=None)
            if low is None or low * iterations <= samples <= high * iterations:
                return iterations, samples, "consumed samples"
            self.inconsistent_samples += 1
        if logged:
            return 1, logged, "logged batch size"
        return 1, self.run.global_batch_size, "--global-batch-size"

    def add(self, record: LogRecord) -> Optional[Interval]:
        previous = self._previous
        if previous is not None:
            if record.iteration == previous.iteration:
                self.duplicates += 1          # the same line printed twice (tee, two ranks)
                return None
            if record.iteration < previous.iteration:
                self.restarts += 1            # a resumed run: start over
                previous = self._previous = None
        iterations, samples, batch_source = self._batch(record)
        self._previous = record
        seq_length = record.seq_length
        seq_source = "actual seqlen" if record.actual_seqlen is not None else "curriculum seqlen"
        if seq_length is None:
            seq_length, seq_source = self.run.seq_length, "--seq-length"
        seconds, time_source = interval_seconds(record)
        self._meter.add_iterations(iterations, samples, seq_length)
        report = self._meter.report(seconds * iterations)
        fork = self.fork or record.fork
        formula = None
        if fork is not None:
            formula = self._fork_formula(fork, record.global_batch_size or samples / iterations,
                                         seq_length, seconds)
        error = legacy_error(record.tflops, report.hardware_tflops_per_gpu)
        return Interval(record, iterations, samples / iterations, batch_source, seq_length,
                        seq_source, seconds, time_source, report, formula, error)


class Summary:
    """Statistics over intervals (constant memory): ``add(interval)`` each, then ``as_dict``.

    ``mean_*`` are plain means over intervals; ``overall_tflops_per_gpu`` is all FLOPs over
    all the time.  The logged-TFLOPs statistics (mean, error mean/min/max, the fork-formula
    check) are over the intervals that logged a finite TFLOPs figure only.
    """

    def __init__(self):
        self.intervals = 0
        self.first_iteration = self.last_iteration = None
        self.seconds = 0.0
        self.model_flops = 0
        self.hardware_flops = 0
        self.sum_model = self.sum_hardware = 0.0
        self.logged = 0
        self.sum_logged = self.sum_hardware_where_logged = 0.0
        self.sum_error = 0.0
        self.min_error = math.inf
        self.max_error = -math.inf
        self.formula_checked = 0
        self.formula_mismatches = 0
        self.worst_formula_deviation = 0.0
        self.sum_mfu = self.sum_hfu = 0.0
        self.forks = set()

    def add(self, interval: Interval) -> None:
        rep = interval.report
        self.intervals += 1
        if self.first_iteration is None:
            self.first_iteration = interval.iteration
        self.last_iteration = interval.iteration
        self.seconds += rep.elapsed_seconds
        self.model_flops += rep.model_flops
        self.hardware_flops += rep.hardware_flops
        self.sum_model += rep.model_tflops_per_gpu
        self.sum_hardware += rep.hardware_tflops_per_gpu
        if rep.mfu is not None:
            self.sum_mfu += rep.mfu
            self.sum_hfu += rep.hfu
        if interval.record.fork:
            self.forks.add(interval.record.fork)
        if interval.error is None:    # nothing logged, or not a finite number
            return
        logged = interval.logged_tflops
        self.logged += 1
        self.sum_logged += logged
        self.sum_hardware_where_logged += rep.hardware_tflops_per_gpu
        self.sum_error += interval.error
        self.min_error = min(self.min_error, interval.error)
        self.max_error = max(self.max_error, interval.error)
        formula = interval.fork_formula_tflops
        if formula:
            self.formula_checked += 1
            deviation = abs(logged - formula) / formula
            self.worst_formula_deviation = max(self.worst_formula_deviation, deviation)
            if deviation > FORMULA_TOLERANCE and abs(logged - formula) > 0.01:
                self.formula_mismatches += 1

    def as_dict(self, world_size: int, stats: ParseStats, relogger: Relogger, peak) -> dict:
        """The summary object (``--json``'s ``{"summary": …}``); needs one interval at least."""
        n = self.intervals
        if n == 0:
            raise ValueError("a summary needs at least one interval")
        overall = self.seconds * world_size * 1e12
        logged = self.logged
        return {
            "intervals": n,
            "first_iteration": self.first_iteration,
            "last_iteration": self.last_iteration,
            "forks": sorted(self.forks),
            "world_size": world_size,
            "peak": {"tflops": peak.tflops, "source": peak.source},
            "mean_tflops_per_gpu": {"model": self.sum_model / n,
                                    "hardware": self.sum_hardware / n},
            "overall_tflops_per_gpu": {"model": self.model_flops / overall,
                                       "hardware": self.hardware_flops / overall},
            "mean_mfu": self.sum_mfu / n if peak.tflops else None,
            "mean_hfu": self.sum_hfu / n if peak.tflops else None,
            "intervals_with_logged_tflops": logged,
            "mean_logged_tflops": self.sum_logged / logged if logged else None,
            "mean_hardware_tflops_where_logged": (self.sum_hardware_where_logged / logged
                                                  if logged else None),
            "mean_error": self.sum_error / logged if logged else None,
            "min_error": self.min_error if logged else None,
            "max_error": self.max_error if logged else None,
            "fork_formula_mismatches": self.formula_mismatches,
            "fork_formula_checked": self.formula_checked,
            "worst_fork_formula_deviation": self.worst_formula_deviation,
            "duplicate_lines": relogger.duplicates,
            "restarts": relogger.restarts,
            "inconsistent_consumed_samples": relogger.inconsistent_samples,
            "parse": stats.as_dict(),
        }


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
        yield from parse_console_log(stream, stats, fork)


def relog(records: Iterable[LogRecord], model: ModelShape, run: RunShape,
          peak_tflops: Optional[float] = None, causal: bool = False,
          fork: Optional[str] = None) -> Iterator[Interval]:
    """Intervals for records (the library entry point; the command adds the outputs)."""
    relogger = Relogger(model, run, peak_tflops, causal, fork)
    for record in records:
        interval = relogger.add(record)
        if interval is not None:
            yield interval


def argument_warnings(args: argparse.Namespace, arguments: dict) -> List[str]:
    """Flags given that contradict the arguments dump the log holds."""
    out = []
    for name, logged in sorted(arguments.items()):
        given = getattr(args, name, None)
        if name == "world_size" or given is None or given is False or logged == "None":
            continue
        if isinstance(given, list):
            given = "[" + ", ".join(map(str, given)) + "]"
        if str(given) != logged:
            out.append(f"the log's arguments say {name} = {logged} but "
                       f"--{name.replace('_', '-')} is {given}")
    return out


def settle_run(args: argparse.Namespace, model: ModelShape, run: RunShape, stats: ParseStats,
               first: LogRecord) -> Tuple[ModelShape, RunShape, List[str]]:
    """(model, run, notes) once the first record is read: the world size from the flag, else
    from the log's arguments dump; the notes (one line each, ``warning: …`` where something
    contradicts) say where it came from and which flags the log contradicts."""
    notes = []
    logged_world = stats.arguments.get("world_size")
    if args.world_size is None:
        if logged_world is not None and logged_world.isdigit():
            namespace = copy.copy(args)
            namespace.world_size = int(logged_world)
            model, run = shapes_from_args(namespace)
            notes.append(f"world size {run.world_size} from the log's arguments")
        else:
            notes.append(f"warning: --world-size not given and not in the log; assuming "
                         f"{run.world_size} (tensor × pipeline parallel size, one replica)")
    elif logged_world is not None and logged_world != str(args.world_size):
        notes.append(f"warning: the log's arguments say world_size = {logged_world} but "
                     f"--world-size {args.world_size} was given")
    notes += [f"warning: {warning}" for warning in argument_warnings(args, stats.arguments)]
    tgs = first.tokens_per_gpu_per_second
    if tgs and first.samples_per_second and first.seq_length:
        implied = first.samples_per_second * first.seq_length / tgs
        if abs(implied - run.world_size) > 0.01 * run.world_size:
            notes.append(f"warning: line {first.line_number} implies a world size of "
                         f"{implied:.1f} (samples per second × seqlen / tgs) but "
                         f"{run.world_size} is used")
    return model, run, notes
