"""``megatron-flops relog``: the true throughput of every interval a past run logged.

For each logged interval (one ``training_log`` line, or one TensorBoard step with the
iteration-time tags) this computes, from that interval's own numbers:

- ``seconds_per_iteration``: the logged elapsed time per iteration.  The console prints it
  with 2 decimals in seconds (bigscience) or 1 decimal in ms (microsoft); the same line's
  ``global batch size / samples per second`` is the same quantity with more digits, so that
  is used when it agrees with the printed time within the printed precision and is finer.
- ``batch_size``: the mean samples per iteration of the iterations the logged time covers
  (one log interval).  From consumed samples, ``Δ consumed samples / Δ iteration``, only
  when the previous line is one log interval back (the log interval from the run's arguments
  dump, else the common step of the logged iterations): exact across a batch-size ramp-up,
  where the forks use the batch size at log time.  Across a gap (lines missing, a log cut
  and pasted), on the first line and after a restart, the consumed samples say nothing
  about the last interval: the ramp-up schedule (``--rampup-batch-size``, walked back from
  the line's consumed samples) when it reproduces the logged batch, else the line's logged
  batch size.  ``batch_source`` says which decided.
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
  TensorBoard run, :func:`read_run` those of several files (one run's logs) in iteration
  order; :func:`settle_segment` settles the model and run shape of a run segment from the
  flags typed and the log's arguments dump (flags override; ``sources`` says where each
  value came from) and the world size (flag, dump, launcher environment, else assumed);
  :func:`settle_run` is the same for flags that all count as typed;
- :class:`Relogger` turns records into :class:`Interval` objects one at a time
  (:func:`relog` is the same as a generator);
- :class:`Summary` keeps the statistics over intervals (constant memory).

The outputs (table, JSON, CSV, TensorBoard, plot) are sinks in :mod:`.outputs`; the command
line is :mod:`megatron_flops.commands.relog`.
"""

import argparse
import itertools
import math
import os
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple

from ..hardware import implausible_utilisation_warning
from ..legacy import legacy_error, legacy_tflops_for_shapes
from ..megatron.args import shapes_from_args
from ..meter import ThroughputMeter, ThroughputReport
from ..shapes import ModelShape, RunShape
from . import arguments as dump_arguments
from .console import MEGATRON_LM, LogRecord, ParseStats, open_log, parse_console_log

# what each framework's logged TFLOPs figure counts: the forks add recomputation (their
# number is an HFU numerator), Megatron-LM's num_floating_point_operations never does
LOGGED_COUNTS = {"bigscience": "hardware", "microsoft": "hardware", MEGATRON_LM: "model"}
# the convention (megatron_flops.conventions) Megatron-LM lines are checked against
MEGATRON_LM_CONVENTION = "megatron-lm"

# the logged TFLOPs are printed with 2 decimals; beyond this the fork's formula with the
# given flags does not reproduce them
FORMULA_TOLERANCE = 0.01


def reproduces(logged: float, formula: float) -> bool:
    """Does a framework's formula give the logged figure, within its printing?"""
    return abs(logged - formula) <= max(FORMULA_TOLERANCE * formula, 0.01)


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
    error: Optional[float]      # logged TFLOPs / true TFLOP/s − 1 (what the fork counts)
    fork: Optional[str] = None  # the line's fork, else the segment's (its arguments dump)
    startup: bool = False       # Megatron-LM: its time includes start-up (not in statistics)

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
            "fork": self.fork or r.fork,
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
            "logged_counts": LOGGED_COUNTS.get(self.fork or r.fork),
            "startup": self.startup,
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


# how many (iteration × candidate batch) steps the ramp-up walk-back may take for one line
MAX_SCHEDULE_STEPS = 1_000_000


def schedule_batch(run: RunShape, consumed_samples: int, iterations: int) -> Optional[int]:
    """Samples of the last ``iterations`` iterations before ``consumed_samples`` by the run's
    ramp-up schedule (:meth:`RunShape.batch_size_at`), walked back one iteration at a time:
    the iteration that ended at ``c`` started at the unique ``c − b`` with
    ``batch_size_at(c − b) = b``.  None when no batch size fits (the schedule does not
    describe the run) or the walk would be too long."""
    start, increment, _ = run.rampup_batch_size
    candidates = sorted({run.batch_size_at(0), run.global_batch_size,
                         *(run.batch_size_at(0) + k * increment
                           for k in range((run.global_batch_size - start) // increment + 1))})
    if iterations * len(candidates) > MAX_SCHEDULE_STEPS:
        return None
    consumed, total = consumed_samples, 0
    for _ in range(iterations):
        batch = next((b for b in candidates if b <= consumed
                      and run.batch_size_at(consumed - b) == b), None)
        if batch is None:
            return None
        consumed -= batch
        total += batch
    return total


class Relogger:
    """Turns log records into :class:`Interval` objects, one at a time (constant memory).

    ``add(record)`` returns the record's interval, or None for a line printed twice.  The
    counters say what was seen: ``duplicates`` (skipped), ``restarts`` (the iteration went
    back: a resumed run starts over), ``inconsistent_samples`` (consumed samples that the
    logged batch sizes cannot explain: the logged batch was used), ``gaps`` (lines more than
    one log interval after the previous one), ``segments`` (run shapes: 1 + re-shapes).

    ``log_interval`` is the run's ``--log-interval`` when known (its arguments dump), else it
    is inferred as the common step (greatest common divisor) of the logged iterations.
    ``default_fork`` labels lines whose own fields do not name their fork.
    """

    def __init__(self, model: ModelShape, run: RunShape, peak_tflops: Optional[float] = None,
                 causal: bool = False, fork: Optional[str] = None,
                 log_interval: Optional[int] = None, default_fork: Optional[str] = None):
        self.fork = fork
        self.peak_tflops, self.causal = peak_tflops, causal
        self.megatron_lm_convention = MEGATRON_LM_CONVENTION
        self.megatron_lm_era_checks = 0
        self.megatron_lm_era_matches: Dict[str, int] = {}
        self.duplicates = 0
        self.restarts = 0
        self.inconsistent_samples = 0
        self.gaps = 0
        self.segments = 0
        self.reshape(model, run, log_interval, default_fork)

    def reshape(self, model: ModelShape, run: RunShape, log_interval: Optional[int] = None,
                default_fork: Optional[str] = None) -> None:
        """A new run segment (a restart with its own arguments dump, maybe re-shaped): its
        shapes from now on, and nothing carried over from the previous line."""
        self.model, self.run = model, run
        self.log_interval, self.default_fork = log_interval, default_fork
        self._meter = ThroughputMeter.for_run(model, run, self.peak_tflops, self.causal)
        self._formula_at_one_second = {}
        self._previous: Optional[LogRecord] = None
        self._unreset: Optional[Tuple[LogRecord, int]] = None  # Megatron-LM's iteration 1
        self._step = 0            # gcd of the segment's logged iterations
        self._lines = 0
        self.segments += 1

    def _fork_formula(self, fork: str, batch: float, seq_length: int, seconds: float) -> float:
        """The fork's TFLOPs: its FLOPs for (batch, seq) / (seconds × world × 1e12), memoised
        at 1 s (a log has few distinct batch sizes and sequence lengths).  ``fork`` may also
        be a Megatron-LM era's convention name (``megatron-lm@2024-04``)."""
        if fork == MEGATRON_LM:
            fork = self.megatron_lm_convention
        key = (fork, batch, seq_length)
        at_one_second = self._formula_at_one_second.get(key)
        if at_one_second is None:
            if len(self._formula_at_one_second) > 4096:
                self._formula_at_one_second.clear()
            if fork.startswith(MEGATRON_LM):
                from ..conventions import RunFacts, convention
                facts = RunFacts(self.model, batch, seq_length, self.run.recompute,
                                 self.run.pipeline_model_parallel_size)
                at_one_second = (convention(fork).flops(facts) / (self.run.world_size * 1e12))
            else:
                at_one_second = legacy_tflops_for_shapes(self.model, self.run, batch,
                                                         seq_length, 1.0)[fork]
            self._formula_at_one_second[key] = at_one_second
        return at_one_second / seconds

    def _interval_length(self) -> Optional[int]:
        """Iterations in one log interval: the dump's, else the common step of two lines
        or more (one line alone says nothing)."""
        if self.log_interval:
            return self.log_interval
        return self._step if self._lines >= 2 else None

    def _batch(self, record: LogRecord) -> Tuple[int, int, str]:
        """(iterations the logged time covers, their samples, where the batch came from)."""
        previous = self._previous
        logged = record.global_batch_size
        length = self._interval_length()
        if previous is not None:
            iterations = record.iteration - previous.iteration
            if length is not None and iterations != length:
                self.gaps += 1
            elif (record.consumed_samples is not None and previous.consumed_samples is not None
                    and record.consumed_samples > previous.consumed_samples):
                samples = record.consumed_samples - previous.consumed_samples
                low = min(filter(None, (previous.global_batch_size, logged)), default=None)
                high = max(filter(None, (previous.global_batch_size, logged)), default=None)
                if low is None or low * iterations <= samples <= high * iterations:
                    return iterations, samples, "consumed samples"
                self.inconsistent_samples += 1
        iterations = length or 1
        run = self.run
        # over one iteration the schedule can only agree with the logged batch: that decides
        if (iterations > 1 and run.rampup_batch_size is not None
                and record.consumed_samples is not None):
            samples = schedule_batch(run, record.consumed_samples, iterations)
            # the schedule's last batch must be the logged one (the batch at log time)
            if samples is not None and (not logged or schedule_batch(
                    run, record.consumed_samples, 1) == logged):
                return iterations, samples, "ramp-up schedule"
        if logged:
            return iterations, logged * iterations, "logged batch size"
        return iterations, run.global_batch_size * iterations, "--global-batch-size"

    def add(self, record: LogRecord) -> Optional[Interval]:
        previous = self._previous
        if previous is not None:
            if record.iteration == previous.iteration:
                self.duplicates += 1          # the same line printed twice (tee, two ranks)
                return None
            if record.iteration < previous.iteration:
                self.restarts += 1            # a resumed run: start over
                previous = self._previous = None
        fork = self.fork or record.fork or self.default_fork
        unreset, self._unreset = self._unreset, None
        startup = True
        if record.iterations is not None:  # progress.txt: the record says its span
            startup = record.job_start
            iterations = record.iterations
            samples, batch_source = self._samples_by_iteration(record.iteration, iterations)
        elif unreset is not None and previous is unreset[0]:
            iterations, samples, batch_source = self._after_first_iteration(record, *unreset)
        elif fork == MEGATRON_LM and previous is None and self._first_iteration_line(record):
            iterations, batch_source = 1, "logged batch size"
            samples = record.global_batch_size or self.run.batch_size_at(0)
            self._unreset = (record, samples)
        else:
            startup = False
            if record.iteration > 0:
                self._step = math.gcd(self._step, record.iteration)
                self._lines += 1
            iterations, samples, batch_source = self._batch(record)
        self._previous = record
        seq_length = record.seq_length
        seq_source = "actual seqlen" if record.actual_seqlen is not None else "curriculum seqlen"
        if seq_length is None:
            seq_length, seq_source = self.run.seq_length, "--seq-length"
        seconds, time_source = interval_seconds(record)
        self._meter.add_iterations(iterations, samples, seq_length)
        report = self._meter.report(seconds * iterations)
        formula = None
        if fork is not None:
            batch = record.global_batch_size or samples / iterations
            formula = self._fork_formula(fork, batch, seq_length, seconds)
            if fork == MEGATRON_LM and record.tflops is not None and math.isfinite(record.tflops):
                self._check_megatron_lm_eras(record.tflops, batch, seq_length, seconds)
        true_tflops = (report.model_tflops_per_gpu if LOGGED_COUNTS.get(fork) == "model"
                       else report.hardware_tflops_per_gpu)
        error = legacy_error(record.tflops, true_tflops)
        return Interval(record, iterations, samples / iterations, batch_source, seq_length,
                        seq_source, seconds, time_source, report, formula, error, fork, startup)

    def _check_megatron_lm_eras(self, logged: float, batch: float, seq_length: int,
                                seconds: float) -> None:
        """Which eras of Megatron-LM's formula (conventions.MEGATRON_LM_DISTINCT_ERAS)
        reproduce this logged figure: ``megatron_lm_era_matches`` counts per era over the
        ``megatron_lm_era_checks`` lines checked.  A logged 0.0 (a tiny run's
        ``{throughput:.1f}``) tells no era apart — every formula rounds to it — so it is not
        a check: an era "reproduces" only non-zero figures."""
        from ..conventions import MEGATRON_LM_DISTINCT_ERAS
        if not logged > 0:
            return
        self.megatron_lm_era_checks += 1
        for era in MEGATRON_LM_DISTINCT_ERAS:
            if reproduces(logged, self._fork_formula(era, batch, seq_length, seconds)):
                self.megatron_lm_era_matches[era] = self.megatron_lm_era_matches.get(era, 0) + 1

    def megatron_lm_eras_reproducing(self) -> List[str]:
        """The eras whose formula reproduced every checked Megatron-LM line."""
        from ..conventions import MEGATRON_LM_DISTINCT_ERAS
        checks = self.megatron_lm_era_checks
        return [era for era in MEGATRON_LM_DISTINCT_ERAS
                if checks and self.megatron_lm_era_matches.get(era) == checks]

    def _samples_by_iteration(self, iteration: int, iterations: int) -> Tuple[int, str]:
        """Samples of the ``iterations`` iterations ending at ``iteration`` when only
        iteration numbers are known (progress.txt): the ramp-up schedule walked from
        iteration 0, else ``--global-batch-size`` each."""
        run = self.run
        if run.rampup_batch_size is None:
            return run.global_batch_size * iterations, "--global-batch-size"
        if iteration > MAX_SCHEDULE_STEPS:
            raise ValueError(f"iteration {iteration}: too far to walk the ramp-up schedule")
        consumed = before = 0
        for index in range(iteration):
            if index == iteration - iterations:
                before = consumed
            consumed += run.batch_size_at(consumed)
        return consumed - before, "ramp-up schedule from iteration 0"

    def _first_iteration_line(self, record: LogRecord) -> bool:
        """Is this segment's first Megatron-LM line the one ``training_log`` prints after the
        first iteration (``is_first_iteration``, since 2026-01) whatever the log interval?
        Its interval timer and iteration counts are not reset, so the next line covers this
        iteration again.  Known when the iteration is not a multiple of the log interval
        (from the dump), else assumed for iteration 1 (a log interval of 1 is not told
        apart: that line is then read as an ordinary one)."""
        if self.log_interval:
            return record.iteration % self.log_interval != 0
        return record.iteration == 1

    def _after_first_iteration(self, record: LogRecord, first: LogRecord, first_samples: int
                               ) -> Tuple[int, int, str]:
        """The line after Megatron-LM's first-iteration line: its time and counts run from
        the segment's start, the first iteration included."""
        iterations = record.iteration - first.iteration + 1
        if (record.consumed_samples is not None and first.consumed_samples is not None
                and record.consumed_samples > first.consumed_samples):
            return (iterations, record.consumed_samples - first.consumed_samples + first_samples,
                    "consumed samples")
        batch = record.global_batch_size or self.run.global_batch_size
        return iterations, batch * iterations, "logged batch size"


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
        self.max_mfu = self.max_hfu = 0.0
        self.gpu_seconds = 0.0
        self.forks = set()
        self.segments: List[dict] = []
        self.startup_iterations: List[Tuple[int, int]] = []  # (first, last) left out
        self.sum_true_where_logged = 0.0
        self.logged_counts = set()
        self._shape_totals = [0, 0.0, 0.0, 0.0]   # the last segment's iterations, s, samples, tokens

    def add_segment(self, segment: "Segment") -> None:
        """A run segment's shape and sources (the first, and one per re-shaped restart)."""
        self.segments.append(segment.as_dict())
        self._shape_totals = [0, 0.0, 0.0, 0.0]   # the conventions are of the last shape

    def add(self, interval: Interval) -> None:
        if interval.startup:  # Megatron-LM's first-iteration line and the next: start-up
            if len(self.startup_iterations) < 100:
                self.startup_iterations.append(
                    (interval.iteration - interval.iterations + 1, interval.iteration))
            return
        rep = interval.report
        self.intervals += 1
        if self.first_iteration is None:
            self.first_iteration = interval.iteration
        self.last_iteration = interval.iteration
        self.seconds += rep.elapsed_seconds
        totals = self._shape_totals
        totals[0] += rep.iterations
        totals[1] += rep.elapsed_seconds
        totals[2] += rep.samples
        totals[3] += rep.tokens
        self.model_flops += rep.model_flops
        self.hardware_flops += rep.hardware_flops
        self.sum_model += rep.model_tflops_per_gpu
        self.sum_hardware += rep.hardware_tflops_per_gpu
        if rep.mfu is not None:
            self.sum_mfu += rep.mfu
            self.sum_hfu += rep.hfu
        if interval.fork:
            self.forks.add(interval.fork)
        self.gpu_seconds += rep.elapsed_seconds * rep.world_size
        if rep.mfu is not None:
            self.max_mfu = max(self.max_mfu, rep.mfu)
            self.max_hfu = max(self.max_hfu, rep.hfu)
        if interval.error is None:    # nothing logged, or not a finite number
            return
        logged = interval.logged_tflops
        self.logged += 1
        self.sum_logged += logged
        self.sum_hardware_where_logged += rep.hardware_tflops_per_gpu
        counts = LOGGED_COUNTS.get(interval.fork, "hardware")
        self.logged_counts.add(counts)
        self.sum_true_where_logged += (rep.model_tflops_per_gpu if counts == "model"
                                       else rep.hardware_tflops_per_gpu)
        self.sum_error += interval.error
        self.min_error = min(self.min_error, interval.error)
        self.max_error = max(self.max_error, interval.error)
        formula = interval.fork_formula_tflops
        if formula:
            self.formula_checked += 1
            deviation = abs(logged - formula) / formula
            self.worst_formula_deviation = max(self.worst_formula_deviation, deviation)
            if not reproduces(logged, formula):
                self.formula_mismatches += 1

    def conventions(self, relogger: Relogger, peak_tflops: Optional[float],
                    headline: Optional[str] = None) -> Tuple[Optional[dict], Optional[dict], str]:
        """(the ``conventions`` object, the headline's entry, why there is none): what each
        convention reports for the last run shape's intervals, at their iteration-weighted
        mean — seconds per iteration = time / iterations, batch = samples / iterations,
        sequence length = tokens / samples (rounded) — on that shape's world size."""
        from ..conventions import convention, conventions_with_headline
        if headline is not None:
            convention(headline)      # an unknown name is the caller's error, never swallowed
        iterations, seconds, samples, tokens = self._shape_totals
        if not iterations or not samples:
            return None, None, "no interval of the last run shape"
        try:
            objects, head = conventions_with_headline(
                relogger.model, relogger.run, seconds / iterations, peak_tflops, headline,
                samples / iterations, round(tokens / samples))
        except ValueError as error:   # a shape a convention cannot read (no position count)
            return None, None, str(error)
        return objects, head, ""

    def as_dict(self, world_size: int, stats: ParseStats, relogger: Relogger, peak,
                convention: Optional[str] = None) -> dict:
        """The summary object (``--json``'s ``{"summary": …}``); needs one interval at least.

        ``world_size`` is the (last) segment's; the overall rates use each interval's own.
        ``convention`` (a name for :func:`megatron_flops.conventions.convention`) adds its
        ``headline`` entry to the ``conventions`` object every summary has."""
        n = self.intervals
        if n == 0:
            raise ValueError("a summary needs at least one interval")
        overall = self.gpu_seconds * 1e12
        first = self.segments[0] if self.segments else {}
        warning = implausible_utilisation_warning(
            self.max_mfu if peak.tflops else None, self.max_hfu if peak.tflops else None,
            world_size_assumed=any(s["world_size_source"] == ASSUMED for s in self.segments),
            dtype=first.get("dtype"), peak_source=peak.source)
        logged = self.logged
        conventions, headline, unavailable = self.conventions(relogger, peak.tflops, convention)
        return {
            "intervals": n,
            "first_iteration": self.first_iteration,
            "last_iteration": self.last_iteration,
            "forks": sorted(self.forks),
            "world_size": world_size,
            "world_size_source": first.get("world_size_source"),
            "sources": first.get("sources", {}),
            "segments": self.segments,
            "peak": {"tflops": peak.tflops, "source": peak.source},
            "mean_tflops_per_gpu": {"model": self.sum_model / n,
                                    "hardware": self.sum_hardware / n},
            "overall_tflops_per_gpu": {"model": self.model_flops / overall,
                                       "hardware": self.hardware_flops / overall},
            "mean_mfu": self.sum_mfu / n if peak.tflops else None,
            "mean_hfu": self.sum_hfu / n if peak.tflops else None,
            "max_mfu": self.max_mfu if peak.tflops else None,
            "max_hfu": self.max_hfu if peak.tflops else None,
            "intervals_with_logged_tflops": logged,
            "mean_logged_tflops": self.sum_logged / logged if logged else None,
            "mean_hardware_tflops_where_logged": (self.sum_hardware_where_logged / logged
                                                  if logged else None),
            "mean_true_tflops_where_logged": (self.sum_true_where_logged / logged
                                              if logged else None),
            "logged_counts": sorted(self.logged_counts),
            "startup_intervals": [list(pair) for pair in self.startup_iterations],
            "mean_error": self.sum_error / logged if logged else None,
            "min_error": self.min_error if logged else None,
            "max_error": self.max_error if logged else None,
            "fork_formula_mismatches": self.formula_mismatches,
            "fork_formula_checked": self.formula_checked,
            "worst_fork_formula_deviation": self.worst_formula_deviation,
            "megatron_lm_eras": {"lines_checked": relogger.megatron_lm_era_checks,
                                 "reproducing": relogger.megatron_lm_eras_reproducing()},
            "duplicate_lines": relogger.duplicates,
            "restarts": relogger.restarts,
            "gaps": relogger.gaps,
            "inconsistent_consumed_samples": relogger.inconsistent_samples,
            "parse": stats.as_dict(),
            "warnings": [warning] if warning else [],
            "conventions": conventions,
            "conventions_unavailable": unavailable or None,
            "headline": headline,
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


WORLD_SIZE_ENVIRONMENT = "WORLD_SIZE"   # set by torchrun, deepspeed and the like
FROM_ENVIRONMENT = f"launcher environment ({WORLD_SIZE_ENVIRONMENT})"
ASSUMED = "assumed (tensor × pipeline parallel size, one replica)"


class Segment(NamedTuple):
    """One run shape: the whole log, or the part after a restart's new arguments dump.

    ``sources`` maps each value that shapes the count to where it came from (the command
    line, the log's arguments, its padded vocab line, a default; the world size also the
    launcher environment or assumed); ``notes`` are one line each (``warning: …`` where
    something contradicts or is assumed)."""

    model: ModelShape
    run: RunShape
    notes: List[str]
    sources: Dict[str, str]
    namespace: argparse.Namespace
    log_interval: Optional[int]
    fork: Optional[str]             # from the dump (lines that do not name theirs)
    first_iteration: Optional[int]  # None: a shape read without iteration lines
    path: Optional[str] = None

    @property
    def world_size_source(self) -> str:
        return self.sources["world_size"]

    @property
    def world_size_assumed(self) -> bool:
        return self.world_size_source == ASSUMED

    def world_size_line(self) -> str:
        """``world size 64 (log arguments); TP 4, PP 8, DP 2``."""
        run = self.run
        return (f"world size {run.world_size} ({self.world_size_source}); TP "
                f"{run.tensor_model_parallel_size}, PP {run.pipeline_model_parallel_size}, "
                f"DP {run.data_parallel_size}")

    def provenance_lines(self) -> List[str]:
        """The short block that says which values came from where."""
        return dump_arguments.sources_lines(self.namespace, self.sources)

    def as_dict(self) -> dict:
        run = self.run
        return {"first_iteration": self.first_iteration, "path": self.path,
                "world_size": run.world_size, "world_size_source": self.world_size_source,
                "tensor_model_parallel_size": run.tensor_model_parallel_size,
                "pipeline_model_parallel_size": run.pipeline_model_parallel_size,
                "global_batch_size": run.global_batch_size, "dtype": run.dtype,
                "log_interval": self.log_interval,
                "fork": self.fork, "sources": dict(self.sources)}


def argument_warnings(args: argparse.Namespace, arguments: dict,
                      given: Optional[Iterable[str]] = None) -> List[str]:
    """Flags given (all of ``args``' set values, or just the names in ``given``) that
    contradict the arguments dump the log holds."""
    given = None if given is None else set(given)
    out = []
    for name, logged in sorted(arguments.items()):
        if given is not None and name not in given:
            continue
        given_value = getattr(args, name, None)
        if (name == "world_size" or given_value is None or given_value is False
                or logged == "None"):
            continue
        if isinstance(given_value, list):
            given_value = "[" + ", ".join(map(str, given_value)) + "]"
        if str(given_value) != logged:
            out.append(f"the log's arguments say {name} = {logged} but "
                       f"--{name.replace('_', '-')} is {given_value}")
    return out


def settle_segment(args: argparse.Namespace, given: Iterable[str], stats: ParseStats,
                   first: Optional[LogRecord], environ: Optional[Mapping[str, str]] = None,
                   path: Optional[str] = None) -> Segment:
    """The run shape for the records from ``first`` on (None: the shape alone, as ``profile
    --arguments-from`` reads it): the log's arguments dump (and its
    padded vocab line) with the flags typed (``given``: their ``dest`` names) laid over it;
    the world size from ``--world-size``, else the dump, else the launcher's environment
    (``WORLD_SIZE``), else assumed (TP × PP, one replica) with a warning."""
    from ..shapes import ShapeError
    given = set(given)
    environ = os.environ if environ is None else environ
    arguments = stats.arguments
    namespace, sources = dump_arguments.merge_flags(args, given, arguments, stats.padded_vocab)
    notes = []
    logged_world = arguments.get("world_size")
    if "world_size" in given and args.world_size is not None:
        if logged_world is not None and logged_world != str(args.world_size):
            notes.append(f"warning: the log's arguments say world_size = {logged_world} but "
                         f"--world-size {args.world_size} was given")
    elif isinstance(namespace.world_size, int) and namespace.world_size > 0:
        sources["world_size"] = dump_arguments.FROM_DUMP
    else:
        text = str(environ.get(WORLD_SIZE_ENVIRONMENT, "")).strip()
        if text.isdigit() and int(text) > 0:
            namespace.world_size = int(text)
            sources["world_size"] = FROM_ENVIRONMENT
        else:
            namespace.world_size = None
            sources["world_size"] = ASSUMED
    from ..megatron.flags import UNSUPPORTED
    for flag, value, why in dump_arguments.unsupported_features(arguments, UNSUPPORTED):
        raise ShapeError(f"not supported yet: {flag} (the log's arguments: {value}): {why}", flag)
    try:
        model, run = shapes_from_args(namespace)
    except ShapeError as error:
        if arguments:
            raise
        raise ShapeError(f"{error} (the log has no arguments dump to read it from)",
                         getattr(error, "flag", None)) from None
    source = sources["world_size"]
    if source == ASSUMED:
        notes.append(f"warning: --world-size not given, not in the log's arguments and not in "
                     f"the launcher's environment ({WORLD_SIZE_ENVIRONMENT}); assuming "
                     f"{run.world_size} (tensor × pipeline parallel size, one replica)")
    elif source == dump_arguments.FROM_DUMP:
        notes.append(f"world size {run.world_size} from the log's arguments")
    elif source == FROM_ENVIRONMENT:
        notes.append(f"world size {run.world_size} from the {FROM_ENVIRONMENT}")
    notes += [f"warning: {warning}" for warning in argument_warnings(args, arguments, given)]
    if (arguments and sources["padded_vocab_size"] == dump_arguments.FROM_DEFAULT
            and getattr(namespace, "vocab_size", None) is None):
        notes.append(f"warning: no padded vocab line in the log and no --padded-vocab-size or "
                     f"--vocab-size: assuming GPT-2's vocabulary, padded to {model.vocab_size}")
    tgs = first.tokens_per_gpu_per_second if first is not None else None
    if tgs and first.samples_per_second and first.seq_length:
        implied = first.samples_per_second * first.seq_length / tgs
        if abs(implied - run.world_size) > 0.01 * run.world_size:
            notes.append(f"warning: line {first.line_number} implies a world size of "
                         f"{implied:.1f} (samples per second × seqlen / tgs) but "
                         f"{run.world_size} is used")
    log_interval = getattr(namespace, "log_interval", None)
    if not (isinstance(log_interval, int) and not isinstance(log_interval, bool)
            and log_interval > 0):
        log_interval = None
    return Segment(model, run, notes, sources, namespace, log_interval,
                   dump_arguments.fork_from_arguments(arguments),
                   first.iteration if first is not None else None, path)


def segment_from_log(args: argparse.Namespace, given: Iterable[str], path: str) -> Segment:
    """The run shape of one run's logs (a console log or a folder of them) as their arguments
    dump gives it, the flags typed (``given``) laid over it: :func:`settle_segment`, for a
    command that needs the shape but not the iteration lines.  With several dumps (restarts)
    the last one is used and a note says so.  Raises ValueError where there is none."""
    if path != "-" and not os.path.exists(path):
        raise ValueError(f"{path!r} does not exist")
    stats = ParseStats()
    for _ in read_run([path], stats):
        pass
    if not stats.argument_dumps:
        raise ValueError(f"{path!r} has no arguments dump (the '{dump_arguments.DUMP_START}' "
                         "block Megatron prints at start-up): give the model flags instead")
    segment = settle_segment(args, given, stats, None, path=path)
    if stats.argument_dumps > 1:
        segment.notes.append(f"{stats.argument_dumps} arguments dumps in {path!r} (restarts): "
                             "the last one is used")
    return segment


def settle_run(args: argparse.Namespace, model: ModelShape, run: RunShape, stats: ParseStats,
               first: LogRecord) -> Tuple[ModelShape, RunShape, List[str]]:
    """(model, run, notes) once the first record is read, every flag set in ``args`` counted
    as typed (the log's dump fills only what they leave unset): :func:`settle_segment`."""
    given = {name for name, value in vars(args).items()
             if value is not None and not name.startswith("_")}
    segment = settle_segment(args, given, stats, first)
    return segment.model, segment.run, segment.notes


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
