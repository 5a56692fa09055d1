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
"""

import argparse
import copy
import csv
import json
import math
import os
import sys
from array import array
from typing import Iterable, Iterator, List, NamedTuple, Optional, TextIO

from ..commands.common import (EXIT_OK, UsageError, add_peak_arguments, command_parser, parse_command)
from ..hardware import resolve_peak
from ..legacy import legacy_tflops_for_shapes
from ..megatron.args import shapes_from_args
from ..meter import ThroughputMeter, ThroughputReport
from ..shapes import ModelShape, RunShape
from .console import FORKS, LogRecord, ParseStats, open_log, parse_console_log

# the logged TFLOPs are printed with 2 decimals; beyond this the fork's formula with the
# given flags does not reproduce them
FORMULA_TOLERANCE = 0.01


class Interval(NamedTuple):
    """One logged interval, recomputed."""

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


def _seconds(record: LogRecord):
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
    """Turns log records into :class:`Interval` objects, one at a time (constant memory)."""

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
        seconds, time_source = _seconds(record)
        self._meter.add_iteration(samples, seq_length)
        report = self._meter.report(seconds * iterations)
        report = ThroughputReport(iterations, *report[1:])
        fork = self.fork or record.fork
        formula = None
        if fork is not None:
            formula = self._fork_formula(fork, record.global_batch_size or samples / iterations,
                                         seq_length, seconds)
        error = None
        if (record.tflops is not None and math.isfinite(record.tflops)
                and report.hardware_tflops_per_gpu > 0):
            error = record.tflops / report.hardware_tflops_per_gpu - 1.0
        return Interval(record, iterations, samples / iterations, batch_source, seq_length,
                        seq_source, seconds, time_source, report, formula, error)


class Summary:
    """Running totals over intervals (constant memory)."""

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
        logged = interval.logged_tflops
        if logged is not None and interval.error is not None:
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
        n = self.intervals
        overall = self.seconds * world_size * 1e12
        return {
            "intervals": n,
            "first_iteration": self.first_iteration,
            "last_iteration": self.last_iteration,
            "forks": sorted(self.forks),
            "world_size": world_size,
            "peak": {"tflops": peak.tflops, "source": peak.source},
            "mean_tflops_per_gpu": {"model": self.sum_model / n if n else None,
                                    "hardware": self.sum_hardware / n if n else None},
            "overall_tflops_per_gpu": {"model": self.model_flops / overall if overall else None,
                                       "hardware": self.hardware_flops / overall if overall else None},
            "mean_mfu": self.sum_mfu / n if n and peak.tflops else None,
            "mean_hfu": self.sum_hfu / n if n and peak.tflops else None,
            "intervals_with_logged_tflops": self.logged,
            "mean_logged_tflops": self.sum_logged / self.logged if self.logged else None,
            "mean_hardware_tflops_where_logged": (self.sum_hardware_where_logged / self.logged
                                                  if self.logged else None),
            "mean_error": self.sum_error / self.logged if self.logged else None,
            "min_error": self.min_error if self.logged else None,
            "max_error": self.max_error if self.logged else None,
            "fork_formula_mismatches": self.formula_mismatches,
            "fork_formula_checked": self.formula_checked,
            "worst_fork_formula_deviation": self.worst_formula_deviation,
            "duplicate_lines": relogger.duplicates if relogger else 0,
            "restarts": relogger.restarts if relogger else 0,
            "inconsistent_consumed_samples": relogger.inconsistent_samples if relogger else 0,
            "parse": stats.as_dict(),
        }


# ---- outputs -----------------------------------------------------------------------------

def _fmt(value: Optional[float], spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, spec)


TABLE_HEADER = ("iteration", "batch", "seq", "s/iter", "logged TFLOPs", "model TFLOP/s",
                "hardware TFLOP/s", "MFU", "HFU", "error")
_TABLE_FORMAT = "{:>10} {:>8} {:>6} {:>9} {:>13} {:>13} {:>16} {:>6} {:>6} {:>8}"


def table_row(interval: Interval) -> str:
    rep = interval.report
    batch = interval.batch_size
    batch_text = f"{batch:.0f}" if batch == int(batch) else f"{batch:.1f}"
    return _TABLE_FORMAT.format(
        interval.iteration, batch_text, interval.seq_length,
        f"{interval.seconds_per_iteration:.4g}", _fmt(interval.logged_tflops, ".2f"),
        f"{rep.model_tflops_per_gpu:.2f}", f"{rep.hardware_tflops_per_gpu:.2f}",
        _fmt(rep.mfu, ".1f", 100), _fmt(rep.hfu, ".1f", 100), _fmt(interval.error, "+.1%"))


def summary_lines(summary: dict) -> List[str]:
    def pct(value):
        return _fmt(value, "+.1%")

    parse = summary["parse"]
    lines = [
        f"intervals: {summary['intervals']} (iterations {summary['first_iteration']}"
        f"–{summary['last_iteration']}; fork {', '.join(summary['forks']) or 'unknown'}; "
        f"world size {summary['world_size']})",
        f"mean model / hardware TFLOP/s per GPU: "
        f"{_fmt(summary['mean_tflops_per_gpu']['model'], '.2f')} / "
        f"{_fmt(summary['mean_tflops_per_gpu']['hardware'], '.2f')} "
        f"(over the whole time: {_fmt(summary['overall_tflops_per_gpu']['model'], '.2f')} / "
        f"{_fmt(summary['overall_tflops_per_gpu']['hardware'], '.2f')})",
    ]
    if summary["mean_mfu"] is not None:
        lines.append(f"mean MFU / HFU: {_fmt(summary['mean_mfu'], '.1%')} / "
                     f"{_fmt(summary['mean_hfu'], '.1%')} (peak: {summary['peak']['source']})")
    else:
        lines.append(f"MFU / HFU: n/a ({summary['peak']['source']})")
    if summary["intervals_with_logged_tflops"]:
        lines.append(
            f"mean logged TFLOPs: {summary['mean_logged_tflops']:.2f} vs true (hardware) "
            f"{summary['mean_hardware_tflops_where_logged']:.2f} over "
            f"{summary['intervals_with_logged_tflops']} intervals: mean error "
            f"{pct(summary['mean_error'])} (from {pct(summary['min_error'])} to "
            f"{pct(summary['max_error'])})")
    else:
        lines.append("no logged TFLOPs to compare")
    if summary["fork_formula_mismatches"]:
        lines.append(
            f"warning: in {summary['fork_formula_mismatches']} of "
            f"{summary['fork_formula_checked']} intervals the fork's own formula with these "
            f"flags does not reproduce the logged TFLOPs (worst "
            f"{summary['worst_fork_formula_deviation']:.1%} off): the model flags or "
            "--world-size probably do not describe this run")
    lines.append(
        f"lines: {parse['lines']} read, {parse['records']} iteration lines, "
        f"{parse['malformed']} unparsed"
        + (f" (first at line {', '.join(map(str, parse['malformed_line_numbers']))})"
           if parse["malformed_line_numbers"] else "")
        + f", {parse['truncated']} truncated (used), {parse['other']} other; "
        f"{summary['duplicate_lines']} duplicates skipped, {summary['restarts']} restarts")
    if summary["inconsistent_consumed_samples"]:
        lines.append(f"{summary['inconsistent_consumed_samples']} intervals whose consumed "
                     "samples disagree with the logged batch sizes used the logged batch size")
    return lines


CSV_COLUMNS = ("iteration", "fork", "consumed_samples", "consumed_tokens",
               "logged_global_batch_size", "batch_size", "seq_length", "seconds_per_iteration",
               "logged_tflops", "fork_formula_tflops", "model_tflops_per_gpu",
               "hardware_tflops_per_gpu", "mfu", "hfu", "error")


def csv_row(interval: Interval) -> list:
    r, rep = interval.record, interval.report
    return [r.iteration, r.fork or "", r.consumed_samples, r.consumed_tokens,
            r.global_batch_size, interval.batch_size, interval.seq_length,
            interval.seconds_per_iteration, r.tflops, interval.fork_formula_tflops,
            rep.model_tflops_per_gpu, rep.hardware_tflops_per_gpu, rep.mfu, rep.hfu,
            interval.error]


LOGGED_TFLOPS_TAG = "relog/logged_tflops_per_gpu"
LOGGED_ERROR_TAG = "relog/logged_tflops_error"


def write_interval_tensorboard(writer, interval: Interval) -> None:
    """The hook's tags (through sinks.write_tensorboard), plus the logged figure and error."""
    from ..sinks import write_tensorboard
    r = interval.record
    write_tensorboard(writer, interval.report, r.iteration, r.consumed_samples,
                      r.consumed_tokens)
    if r.tflops is not None:
        writer.add_scalar(LOGGED_TFLOPS_TAG, r.tflops, r.iteration)
    if interval.error is not None:
        writer.add_scalar(LOGGED_ERROR_TAG, interval.error, r.iteration)


class PlotSeries:
    """Compact per-interval columns for the plot (8 bytes a value)."""

    def __init__(self):
        self.iteration = array("d")
        self.logged = array("d")
        self.model = array("d")
        self.hardware = array("d")
        self.mfu = array("d")
        self.hfu = array("d")

    def add(self, interval: Interval) -> None:
        rep = interval.report
        nan = math.nan
        self.iteration.append(interval.iteration)
        self.logged.append(nan if interval.logged_tflops is None else interval.logged_tflops)
        self.model.append(rep.model_tflops_per_gpu)
        self.hardware.append(rep.hardware_tflops_per_gpu)
        self.mfu.append(nan if rep.mfu is None else rep.mfu)
        self.hfu.append(nan if rep.hfu is None else rep.hfu)


def draw_plot(series: PlotSeries, path: str, title: str, peak_tflops: Optional[float],
              forks: Iterable[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fork_label = "/".join(sorted(forks)) or "fork"
    has_peak = peak_tflops is not None
    rows = 2 if has_peak else 1
    figure, axes = plt.subplots(rows, 1, sharex=True, figsize=(10, 3.6 * rows + 0.6),
                                squeeze=False)
    top = axes[0][0]
    x = series.iteration
    if any(not math.isnan(v) for v in series.logged):
        top.plot(x, series.logged, color="tab:red", linestyle="--", marker=".",
                 label=f"logged TFLOPs ({fork_label} formula)")
    # without recompute the two counts are the same: one line, said so
    same = all(m == hw for m, hw in zip(series.model, series.hardware))
    if same:
        top.plot(x, series.model, color="tab:green", marker=".",
                 label="true TFLOP/s per GPU (model = hardware: no recompute)")
    else:
        top.plot(x, series.hardware, color="tab:blue", marker=".",
                 label="true hardware TFLOP/s per GPU")
        top.plot(x, series.model, color="tab:green", marker=".", label="true model TFLOP/s per GPU")
    top.set_ylabel("TFLOP/s per GPU")
    top.set_ylim(bottom=0)
    top.grid(True, alpha=0.3)
    top.legend(loc="lower right")
    top.set_title(title, fontsize=9)
    if has_peak:
        bottom = axes[1][0]
        if same:
            bottom.plot(x, [100 * v for v in series.mfu], color="tab:green", marker=".",
                        label="MFU = HFU")
        else:
            bottom.plot(x, [100 * v for v in series.hfu], color="tab:blue", marker=".",
                        label="HFU")
            bottom.plot(x, [100 * v for v in series.mfu], color="tab:green", marker=".",
                        label="MFU")
        if any(not math.isnan(v) for v in series.logged):
            bottom.plot(x, [100 * v / peak_tflops for v in series.logged], color="tab:red",
                        linestyle="--", marker=".", label="logged TFLOPs / peak")
        bottom.set_ylabel(f"% of {peak_tflops:g} TFLOP/s peak")
        bottom.set_ylim(bottom=0)
        bottom.grid(True, alpha=0.3)
        bottom.legend(loc="lower right")
    axes[-1][0].set_xlabel("iteration")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---- the command -------------------------------------------------------------------------

def _argument_warnings(args: argparse.Namespace, arguments: dict) -> List[str]:
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


def _records(path: str, stats: ParseStats, fork: Optional[str]) -> Iterator[LogRecord]:
    from .tensorboard import is_event_file, read_tensorboard_run
    if path != "-" and (os.path.isdir(path) or is_event_file(path)):
        try:
            yield from read_tensorboard_run(path, stats, fork)
        except ImportError as error:
            raise UsageError(str(error)) from None
        return
    with open_log(path) as stream:
        yield from parse_console_log(stream, stats, fork)


def relog(records: Iterable[LogRecord], model: ModelShape, run: RunShape,
          peak_tflops: Optional[float] = None, causal: bool = False,
          fork: Optional[str] = None) -> Iterator[Interval]:
    """Intervals for records (the library entry point; the CLI adds the outputs)."""
    relogger = Relogger(model, run, peak_tflops, causal, fork)
    for record in records:
        interval = relogger.add(record)
        if interval is not None:
            yield interval


def _check_outputs(args) -> None:
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            from matplotlib.figure import Figure
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'megatron-flops[plot]'") from None
        extension = os.path.splitext(args.plot)[1].lstrip(".").lower()
        supported = Figure().canvas.get_supported_filetypes()
        if extension not in supported:
            raise UsageError(f"--plot {args.plot!r}: the file name must end in one of "
                             f"{', '.join('.' + e for e in sorted(supported))} (e.g. .png)")
    for flag, target in (("--csv", args.csv), ("--plot", args.plot)):
        if target:
            folder = os.path.dirname(os.path.abspath(target))
            if not os.path.isdir(folder):
                raise UsageError(f"{flag} {target!r}: folder {folder!r} does not exist")
    if args.tensorboard_dir:
        if os.path.abspath(args.tensorboard_dir) == os.path.abspath(args.path):
            raise UsageError("--tensorboard-dir must differ from PATH: the corrected run is "
                             "written beside the original, not into it")
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError("--tensorboard-dir needs tensorboard: "
                             "pip install 'megatron-flops[tensorboard]'") from None


def relog_main(argv: List[str]) -> int:
    parser = command_parser(
        "relog", "Recompute the true TFLOP/s per GPU, MFU and HFU of every interval a "
        "Megatron-DeepSpeed run logged (console log or TensorBoard run directory), and the "
        "logged TFLOPs' error.")
    parser.add_argument("path", metavar="PATH",
                        help="console log of either fork ('-' reads stdin), or a TensorBoard "
                             "run directory / event file")
    add_peak_arguments(parser)
    parser.add_argument("--fork", choices=("auto",) + FORKS, default="auto",
                        help="which fork wrote the log (default: from the time unit per line)")
    parser.add_argument("--causal", action="store_true",
                        help="count half of the attention score and A·V products")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per interval on stdout; summary (JSON) on stderr")
    parser.add_argument("--csv", metavar="OUT", help="write one CSV row per interval")
    parser.add_argument("--tensorboard-dir", metavar="OUT",
                        help="write the corrected curves as a new TensorBoard run")
    parser.add_argument("--plot", metavar="OUT.png",
                        help="draw logged vs corrected TFLOP/s (and MFU/HFU) over iterations")
    args, model, run = parse_command(parser, argv)
    if args.path != "-" and not os.path.exists(args.path):
        raise UsageError(f"PATH {args.path!r} does not exist")
    _check_outputs(args)
    try:
        return _relog_command(args, model, run, sys.stdout, sys.stderr)
    except BrokenPipeError:  # `relog log | head`: stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK


def _relog_command(args, model: ModelShape, run: RunShape, out: TextIO, err: TextIO) -> int:
    fork = None if args.fork == "auto" else args.fork
    peak = resolve_peak(args.gpu, run.dtype, args.peak_tflops)
    stats = ParseStats()

    relogger: Optional[Relogger] = None
    summary = Summary()
    csv_file = csv_writer = tb_writer = None
    series = PlotSeries() if args.plot else None
    try:
        if args.csv:
            csv_file = open(args.csv, "w", newline="", encoding="utf-8")
            csv_writer = csv.writer(csv_file)
            csv_writer.writerow(CSV_COLUMNS)
        if args.tensorboard_dir:
            from .tensorboard import EventWriter
            tb_writer = EventWriter(args.tensorboard_dir)
        for record in _records(args.path, stats, fork):
            if relogger is None:
                relogger = _start(args, model, run, peak, stats, record, fork, err)
                run = relogger.run
                if not args.json:
                    print(_TABLE_FORMAT.format(*TABLE_HEADER), file=out)
            interval = relogger.add(record)
            if interval is None:
                continue
            summary.add(interval)
            if args.json:
                out.write(json.dumps(interval.as_dict()) + "\n")
            else:
                out.write(table_row(interval) + "\n")
            if csv_writer is not None:
                csv_writer.writerow(csv_row(interval))
            if tb_writer is not None:
                write_interval_tensorboard(tb_writer, interval)
            if series is not None:
                series.add(interval)
    finally:
        if csv_file is not None:
            csv_file.close()
        if tb_writer is not None:
            tb_writer.close()
    if summary.intervals == 0:
        raise UsageError(
            f"no training_log iteration lines in {args.path!r} ({stats.lines} lines read, "
            f"{stats.malformed} unparsed iteration lines)")
    result = summary.as_dict(run.world_size, stats, relogger, peak)
    if args.json:
        print(json.dumps({"summary": result}), file=err)
    else:
        print(file=out)
        for line in summary_lines(result):
            print(line, file=out)
    if series is not None:
        from ..report import describe_model
        title = (f"{describe_model(model)}\nrecompute {run.recompute.label}; "
                 f"{run.world_size} GPUs; "
                 f"{os.path.basename(args.path.rstrip('/'))}")
        draw_plot(series, args.plot, title, peak.tflops, summary.forks)
        print(f"plot written to {args.plot}", file=err)
    return EXIT_OK


def _start(args, model, run, peak, stats: ParseStats, record: LogRecord, fork, err) -> Relogger:
    """Settle the world size (flag, else the log's arguments dump) and check the flags."""
    logged_world = stats.arguments.get("world_size")
    if args.world_size is None:
        if logged_world is not None and logged_world.isdigit():
            namespace = copy.copy(args)
            namespace.world_size = int(logged_world)
            model, run = shapes_from_args(namespace)
            print(f"megatron-flops: world size {run.world_size} from the log's arguments",
                  file=err)
        else:
            print(f"megatron-flops: warning: --world-size not given and not in the log; "
                  f"assuming {run.world_size} (tensor × pipeline parallel size, one replica)",
                  file=err)
    elif logged_world is not None and logged_world != str(args.world_size):
        print(f"megatron-flops: warning: the log's arguments say world_size = {logged_world} "
              f"but --world-size {args.world_size} was given", file=err)
    for warning in _argument_warnings(args, stats.arguments):
        print(f"megatron-flops: warning: {warning}", file=err)
    tgs = record.tokens_per_gpu_per_second
    if tgs and record.samples_per_second and record.seq_length:
        implied = record.samples_per_second * record.seq_length / tgs
        if abs(implied - run.world_size) > 0.01 * run.world_size:
            print(f"megatron-flops: warning: line {record.line_number} implies a world size of "
                  f"{implied:.1f} (samples per second × seqlen / tgs) but {run.world_size} is "
                  "used", file=err)
    return Relogger(model, run, peak.tflops, args.causal, fork)
