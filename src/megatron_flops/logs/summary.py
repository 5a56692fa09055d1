"""Statistics over relogged intervals (:class:`Summary`, constant memory): the ``--json``
summary object of ``relog`` (its keys are public: docs/relog.md)."""

import math
from typing import Dict, List, Optional, Set, Tuple

from ..conventions import convention, conventions_with_headline
from ..errors import UsageError
from ..hardware import implausible_utilisation_warning
from .console import ParseStats
from .intervals import (FORMULA_TOLERANCE, LOGGED_COUNTS, ROUNDED_TO_ZERO, WITHIN_DIGITS,
                        Interval, Relogger)
from .segments import ASSUMED, Segment


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
        self.segments: List[dict] = []
        self.startup_iterations: List[Tuple[int, int]] = []  # (first, last) left out
        self.sum_true_where_logged = 0.0
        # intervals per (fork, fork formula, logged a figure): forks, formulas, logged_counts
        self._kinds: Dict[Tuple[Optional[str], Optional[str], bool], int] = {}
        self._shape_totals = [0, 0.0, 0.0, 0.0]   # the last segment's iterations, s, samples, tokens
        # issue 24: logged figures printed as zero (no error), errors within the printed
        # digits, the widest error bound from the printing
        self.rounded_to_zero = 0
        self.within_digits = 0
        self.max_error_bound = 0.0

    @property
    def forks(self) -> Set[str]:
        """The forks of the intervals (their own, else their segment's)."""
        return {fork for fork, _, _ in self._kinds if fork}

    @property
    def formulas(self) -> Dict[str, int]:
        """Intervals per fork formula (Megatron-LM: its era)."""
        counts: Dict[str, int] = {}
        for (_, formula, _), count in self._kinds.items():
            if formula is not None:
                counts[formula] = counts.get(formula, 0) + count
        return counts

    @property
    def logged_counts(self) -> Set[str]:
        """What the logged figures count ("model", "hardware"), over intervals that logged one."""
        return {LOGGED_COUNTS.get(fork, "hardware") for fork, _, logged in self._kinds
                if logged}

    def add_segment(self, segment: Segment) -> None:
        """A run segment's shape and sources (the first, and one per re-shaped restart)."""
        self.segments.append(segment.as_dict())
        self._shape_totals = [0, 0.0, 0.0, 0.0]   # the conventions are of the last shape

    def add(self, interval: Interval) -> None:
        # one line of the log each: the same sums in the same order as ever, with the
        # report's fields read once (relog's per-line path)
        if interval.startup:  # Megatron-LM's first-iteration line and the next: start-up
            if len(self.startup_iterations) < 100:
                self.startup_iterations.append(
                    (interval.iteration - interval.iterations + 1, interval.iteration))
            return
        (iterations, elapsed, samples, tokens, model_flops, hardware_flops, world_size,
         _, _, _, model, hardware, mfu, hfu, _) = interval.report
        iteration = interval.record.iteration
        self.intervals += 1
        if self.first_iteration is None:
            self.first_iteration = iteration
        self.last_iteration = iteration
        self.seconds += elapsed
        totals = self._shape_totals
        totals[0] += iterations
        totals[1] += elapsed
        totals[2] += samples
        totals[3] += tokens
        self.model_flops += model_flops
        self.hardware_flops += hardware_flops
        self.sum_model += model
        self.sum_hardware += hardware
        if mfu is not None:
            self.sum_mfu += mfu
            self.sum_hfu += hfu
        fork, error = interval.fork, interval.error
        # forks, formulas and logged counts: one count per kind of line (few kinds)
        kind = (fork, interval.formula, error is not None)
        kinds = self._kinds
        kinds[kind] = kinds.get(kind, 0) + 1
        self.gpu_seconds += elapsed * world_size
        if mfu is not None:
            if mfu > self.max_mfu:     # max(), the first of equals kept
                self.max_mfu = mfu
            if hfu > self.max_hfu:
                self.max_hfu = hfu
        if error is None:    # nothing logged, not a finite number, or printed as zero
            if interval.error_note == ROUNDED_TO_ZERO:
                self.rounded_to_zero += 1
            return
        if interval.error_note == WITHIN_DIGITS:
            self.within_digits += 1
        if interval.error_bound > self.max_error_bound:
            self.max_error_bound = interval.error_bound
        logged = interval.record.tflops
        self.logged += 1
        self.sum_logged += logged
        self.sum_hardware_where_logged += hardware
        self.sum_true_where_logged += (model if LOGGED_COUNTS.get(fork, "hardware") == "model"
                                       else hardware)
        self.sum_error += error
        if error < self.min_error:
            self.min_error = error
        if error > self.max_error:
            self.max_error = error
        formula = interval.fork_formula_tflops
        if formula:
            self.formula_checked += 1
            deviation = abs(logged - formula) / formula
            if deviation > self.worst_formula_deviation:
                self.worst_formula_deviation = deviation
            if not abs(logged - formula) <= max(FORMULA_TOLERANCE * formula, 0.01):
                self.formula_mismatches += 1    # not reproduces(), inline

    def conventions(self, relogger: Relogger, peak_tflops: Optional[float],
                    headline: Optional[str] = None) -> Tuple[Optional[dict], Optional[dict], str]:
        """(the ``conventions`` object, the headline's entry, why there is none): what each
        convention reports for the last run shape's intervals, at their iteration-weighted
        mean — seconds per iteration = time / iterations, batch = samples / iterations,
        sequence length = tokens / samples (rounded) — on that shape's world size."""
        if headline is not None:
            convention(headline)      # an unknown name is the caller's error, never swallowed
        iterations, seconds, samples, tokens = self._shape_totals
        if not iterations or not samples:
            return None, None, "no interval of the last run shape"
        try:
            objects, head = conventions_with_headline(
                relogger.model, relogger.run, seconds / iterations, peak_tflops, headline,
                samples / iterations, round(tokens / samples))
        except UsageError as error:   # a shape a convention cannot read (no position count)
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
            "max_error_bound": self.max_error_bound if logged else None,
            "errors_within_printed_digits": self.within_digits,
            "logged_tflops_rounded_to_zero": self.rounded_to_zero,
            "fork_formula_mismatches": self.formula_mismatches,
            "fork_formula_checked": self.formula_checked,
            "worst_fork_formula_deviation": self.worst_formula_deviation,
            "fork_formulas": dict(sorted(self.formulas.items())),
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
