"""Interval maths: the true throughput of every interval a past run logged.

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
  against the peak when known; ``error`` = logged TFLOPs / hardware TFLOP/s − 1, with
  ``error_bound`` from the logged figure's printed digits (n/a when it was printed as zero).
- ``fork_formula_tflops``: what the fork's own formula gives for the flags given, this
  line's logged batch, seq length and time.  When it does not reproduce the logged number,
  the flags (or the world size) do not describe the run, and the summary says so.

:class:`Relogger` turns records into :class:`Interval` objects one at a time; the statistics
over them are :class:`~.summary.Summary`, the drivers (records of files in, intervals out)
:mod:`.relog`.
"""

import datetime
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

from ..conventions import MEGATRON_LM_DISTINCT_ERAS, MEGATRON_LM_ERAS, RunFacts, convention
from ..errors import UsageError
from ..legacy import legacy_error, legacy_tflops_for_shapes
from ..meter import ThroughputMeter, ThroughputReport
from ..shapes import ModelShape, RunShape
from .console import MEGATRON_LM, LogRecord

# what each framework's logged TFLOPs figure counts: the forks add recomputation (their
# number is an HFU numerator), Megatron-LM's num_floating_point_operations never does
LOGGED_COUNTS = {"bigscience": "hardware", "microsoft": "hardware", MEGATRON_LM: "model",
                 "megatron-bridge": "model"}  # Bridge's flop_utils never counts recompute
# the convention (megatron_flops.conventions) Megatron-LM lines are checked against
MEGATRON_LM_CONVENTION = "megatron-lm"

# the first Megatron-LM checkouts whose iteration line starts with a date stamp
# (" [%Y-%m-%d %H:%M:%S]", f427c6f0) and with one to the microsecond (".%f", 6cf285b2):
# tests/data/megatron_lm/README.md
STAMP_SINCE = "2024-03-09"
PRECISE_STAMP_SINCE = "2026-01-27"


def megatron_lm_eras_allowed(record: LogRecord) -> Tuple[str, ...]:
    """The distinct eras of Megatron-LM's formula (conventions.MEGATRON_LM_DISTINCT_ERAS,
    oldest first) a line can have been logged by: its checkout is no newer than the line's
    date stamp (the day it ran) and, by the stamp's format, no older than that format; a
    line without a stamp (or a stamp that contradicts the eras) bounds nothing."""
    since = {era.name: era.since for era in MEGATRON_LM_ERAS}
    high = low = None
    if record.timestamp is not None:
        high = datetime.datetime.fromtimestamp(record.timestamp, datetime.timezone.utc
                                               ).strftime("%Y-%m-%d")
        if record.iterations is None:   # a console line's stamp (progress.txt: no format)
            low = PRECISE_STAMP_SINCE if record.stamp_precise else STAMP_SINCE
    allowed = []
    for index, name in enumerate(MEGATRON_LM_DISTINCT_ERAS):
        until = (since[MEGATRON_LM_DISTINCT_ERAS[index + 1]]
                 if index + 1 < len(MEGATRON_LM_DISTINCT_ERAS) else None)
        if (high is None or since[name] <= high) and (low is None or until is None
                                                     or until > low):
            allowed.append(name)
    return tuple(allowed) or MEGATRON_LM_DISTINCT_ERAS


# the logged TFLOPs are printed with 2 decimals; beyond this the fork's formula with the
# given flags does not reproduce them
FORMULA_TOLERANCE = 0.01


def reproduces(logged: float, formula: float) -> bool:
    """Does a framework's formula give the logged figure, within its printing?"""
    return abs(logged - formula) <= max(FORMULA_TOLERANCE * formula, 0.01)


# issue 24: a logged figure printed as 0.00 (a small run, the forks' {:.2f}) carries no
# digit: its error would read −100 % whatever the run did
ROUNDED_TO_ZERO = "logged TFLOPs printed as zero: no digits to compare"
# the exact figure rounds to the logged one: the difference is the printing's, not the formula's
WITHIN_DIGITS = "within the printed digits"


def logged_error(logged: Optional[float], resolution: float, true_tflops: float
                 ) -> Tuple[Optional[float], Optional[float], Optional[str]]:
    """(error, its bound, note) of a logged TFLOPs figure printed to ± ``resolution`` (half
    a unit of its last digit; 0.0: not rounded) against the true figure: ``error`` =
    logged / true − 1, ``bound`` = resolution / true (the unrounded figure's error is within
    error ± bound); the error is None for nothing logged, a non-finite figure or one printed
    as zero (:data:`ROUNDED_TO_ZERO`); the note is :data:`WITHIN_DIGITS` when the true figure
    rounds to the logged one (|logged − true| ≤ resolution)."""
    if logged is None or not math.isfinite(logged) or not true_tflops > 0:
        return None, None, None
    if logged == 0 and resolution > 0:
        return None, None, ROUNDED_TO_ZERO
    bound = resolution / true_tflops
    note = WITHIN_DIGITS if resolution and abs(logged - true_tflops) <= resolution * (
        1 + 1e-9) else None
    return logged / true_tflops - 1.0, bound, note


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
    formula: Optional[str] = None  # the formula of fork_formula_tflops (Megatron-LM: its era)
    # issue 24: the error's half-width from the logged figure's printed digits (the fork's
    # unrounded figure is within logged ± tflops_resolution), and why the error is n/a or
    # says nothing (ROUNDED_TO_ZERO, WITHIN_DIGITS)
    error_bound: Optional[float] = None
    error_note: Optional[str] = None

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
            "fork_formula": self.formula,
            "tflops_per_gpu": {"model": rep.model_tflops_per_gpu,
                               "hardware": rep.hardware_tflops_per_gpu},
            "mfu": rep.mfu,
            "hfu": rep.hfu,
            "error": self.error,
            "error_bound": self.error_bound,
            "error_note": self.error_note,
            "logged_counts": LOGGED_COUNTS.get(self.fork or r.fork),
            "startup": self.startup,
        }


_new_interval = tuple.__new__


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
        self._eras_allowed: Dict[tuple, Tuple[str, ...]] = {}
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
            if fork.startswith(MEGATRON_LM) or fork.startswith("megatron-bridge"):
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
        length = self.log_interval or (self._step if self._lines >= 2 else None)
        if previous is not None:
            iterations = record.iteration - previous.iteration
            consumed, before = record.consumed_samples, previous.consumed_samples
            if length is not None and iterations != length:
                self.gaps += 1
            elif consumed is not None and before is not None and consumed > before:
                samples = consumed - before
                # the range the two logged batch sizes allow (a batch printed as 0: none)
                earlier = previous.global_batch_size
                if earlier and logged:
                    low, high = (earlier, logged) if earlier <= logged else (logged, earlier)
                else:
                    low = high = earlier or logged or None
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
        iteration = record.iteration
        if previous is not None:
            if iteration == previous.iteration:
                self.duplicates += 1          # the same line printed twice (tee, two ranks)
                return None
            if iteration < previous.iteration:
                self.restarts += 1            # a resumed run: start over
                previous = self._previous = None
        fork = self.fork or record.fork or self.default_fork
        unreset = self._unreset
        startup = True
        if unreset is None and record.iterations is None and (
                fork != MEGATRON_LM or previous is not None):
            # the common line: one log interval after the previous (or the first)
            startup = False
            if iteration > 0:
                self._step = math.gcd(self._step, iteration)
                self._lines += 1
            iterations, samples, batch_source = self._batch(record)
        else:
            self._unreset = None
            if record.iterations is not None:  # progress.txt: the record says its span
                startup = record.job_start
                iterations = record.iterations
                samples, batch_source = self._samples_by_iteration(iteration, iterations)
            elif unreset is not None and previous is unreset[0]:
                iterations, samples, batch_source = self._after_first_iteration(record, *unreset)
            elif fork == MEGATRON_LM and previous is None and self._first_iteration_line(record):
                iterations, batch_source = 1, "logged batch size"
                samples = record.global_batch_size or self.run.batch_size_at(0)
                self._unreset = (record, samples)
            else:
                startup = False
                if iteration > 0:
                    self._step = math.gcd(self._step, iteration)
                    self._lines += 1
                iterations, samples, batch_source = self._batch(record)
        self._previous = record
        if record.actual_seqlen is not None:
            seq_length, seq_source = record.actual_seqlen, "actual seqlen"
        elif record.curriculum_seqlen is not None:
            seq_length, seq_source = record.curriculum_seqlen, "curriculum seqlen"
        else:
            seq_length, seq_source = self.run.seq_length, "--seq-length"
        seconds, time_source = interval_seconds(record)
        report = self._meter.interval_report(iterations, samples, seq_length,
                                             seconds * iterations)
        formula = formula_name = None
        logged = record.tflops
        if fork == MEGATRON_LM:
            batch = record.global_batch_size or samples / iterations
            formula_name, formula = self._megatron_lm_formula(record, logged, batch,
                                                              seq_length, seconds)
        elif fork is not None:
            formula_name = fork
            batch = record.global_batch_size or samples / iterations
            at_one_second = self._formula_at_one_second.get((fork, batch, seq_length))
            formula = (at_one_second / seconds if at_one_second is not None
                       else self._fork_formula(fork, batch, seq_length, seconds))
        true_tflops = (report.model_tflops_per_gpu if LOGGED_COUNTS.get(fork) == "model"
                       else report.hardware_tflops_per_gpu)
        error, bound, note = logged_error(logged, record.tflops_resolution, true_tflops)
        return _new_interval(Interval, (
            record, iterations, samples / iterations, batch_source, seq_length, seq_source,
            seconds, time_source, report, formula, error, fork, startup, formula_name,
            bound, note))

    def _megatron_lm_formula(self, record: LogRecord, logged: Optional[float], batch: float,
                             seq_length: int, seconds: float) -> Tuple[str, float]:
        """(era, its TFLOPs) for a Megatron-LM line: of the eras the line can come from
        (:func:`megatron_lm_eras_allowed`: its date stamp and the stamp's format), the newest
        that reproduces the logged figure, else the newest of them; every era is checked
        too, for the summary (:meth:`_check_megatron_lm_eras`)."""
        key = (record.timestamp is not None and int(record.timestamp // 86400),
               record.stamp_precise, record.iterations is None)
        allowed = self._eras_allowed.get(key)
        if allowed is None:
            allowed = self._eras_allowed[key] = megatron_lm_eras_allowed(record)
        chosen = None
        if logged is not None and math.isfinite(logged):
            for era in self._check_megatron_lm_eras(logged, batch, seq_length, seconds):
                if era in allowed:
                    chosen = era          # oldest first: the newest that reproduces stays
        if chosen is None:
            chosen = allowed[-1]
        return chosen, self._fork_formula(chosen, batch, seq_length, seconds)

    def _check_megatron_lm_eras(self, logged: float, batch: float, seq_length: int,
                                seconds: float) -> List[str]:
        """Which eras of Megatron-LM's formula (conventions.MEGATRON_LM_DISTINCT_ERAS)
        reproduce this logged figure: ``megatron_lm_era_matches`` counts per era over the
        ``megatron_lm_era_checks`` lines checked.  A logged 0.0 (a tiny run's
        ``{throughput:.1f}``) tells no era apart — every formula rounds to it — so it is not
        a check: an era "reproduces" only non-zero figures."""
        if not logged > 0:
            return []
        self.megatron_lm_era_checks += 1
        found = []
        for era in MEGATRON_LM_DISTINCT_ERAS:
            if reproduces(logged, self._fork_formula(era, batch, seq_length, seconds)):
                self.megatron_lm_era_matches[era] = self.megatron_lm_era_matches.get(era, 0) + 1
                found.append(era)
        return found

    def megatron_lm_eras_reproducing(self) -> List[str]:
        """The eras whose formula reproduced every checked Megatron-LM line."""
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
            raise UsageError(f"iteration {iteration}: too far to walk the ramp-up schedule")
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
