"""Where ``relog``'s intervals go: each output is a sink with ``add(interval)``, ``close()``
(the output complete: a file is renamed into place) and ``discard()`` (the command failed:
a file's previous content stays, the temporary file goes; see :mod:`.pending`).

- :class:`TableOutput`: one aligned text row per interval (the header before the first);
- :class:`JsonOutput`: one JSON object per interval (:meth:`.intervals.Interval.as_dict`);
- :class:`CsvOutput`: one CSV row per interval (:data:`CSV_COLUMNS`);
- :class:`TensorBoardOutput`: the hook's tags (through ``sinks.write_tensorboard``) plus the
  logged figure and its error, as a new TensorBoard run;
- :class:`PlotOutput`: logged vs true TFLOP/s (and MFU/HFU with a peak), drawn on ``close``.

:func:`summary_lines` renders :meth:`.summary.Summary.as_dict` for people, and
:func:`convention_lines` its ``conventions`` (``--conventions``, ``--convention NAME``).  Optional
dependencies (tensorboard, matplotlib) are imported by the output that needs them.
"""

import csv
import json
import math
import os
from array import array
from typing import List, Optional, TextIO

from ..conventions import conventions_table, headline_line
from ..errors import UsageError
from ..report import format_optional as _number
from ..report import format_percent, format_tflops
from ..sinks import write_tensorboard
from .intervals import LOGGED_COUNTS, WITHIN_DIGITS, Interval
from .tensorboard import EventWriter, event_files


TABLE_HEADER = ("iteration", "batch", "seq", "s/iter", "logged TFLOPs", "model TFLOP/s",
                "hardware TFLOP/s", "MFU", "HFU", "error")
_TABLE_FORMAT = "{:>10} {:>8} {:>6} {:>9} {:>13} {:>13} {:>16} {:>6} {:>6} {:>8}"


# the row of the common interval by one format call: each TFLOP/s figure at least 1 and
# finite, so format_tflops is ".2f" (report.format_significant); a missing logged figure
# (then no error) or peak (no MFU, HFU) is its "n/a"; the error's "%" after its width-7
# field pads as format_percent's text right-justified to 8.  Other rows: _table_row_general
# A logged figure prints with the digits the run printed it with (logged_text: its decimals
# from the printed resolution, cached per resolution; 2 for a figure not printed rounded),
# and its error with the bound from those digits where the bound shows (error_text): the
# error then goes in as error_text's string.
_TABLE_FAST = {(logged, peak, bound): (
    "{:>10} {:>8} {:>6} {:>9.4g} " + ("{:>13.{}f}" if logged else "{:>13}{}")
    + " {:>13.2f} {:>16.2f} " + ("{:>6.1f} {:>6.1f}" if peak else "{:>6} {:>6}")
    + (" {:>+7.1f}%" if logged and not bound else " {:>8}"))
    for logged in (False, True) for peak in (False, True) for bound in (False, True)}
_INF = math.inf
_LOGGED_DECIMALS = {0.0: 2}


def _logged_decimals(resolution: float) -> int:
    decimals = _LOGGED_DECIMALS.get(resolution)
    if decimals is None:
        decimals = max(0, round(-math.log10(2.0 * resolution))) if resolution > 0 else 2
        if len(_LOGGED_DECIMALS) < 64:
            _LOGGED_DECIMALS[resolution] = decimals
    return decimals


def table_row(interval: Interval) -> str:
    rep = interval.report
    logged, error, mfu, hfu = interval.record.tflops, interval.error, rep.mfu, rep.hfu
    model, hardware = rep.model_tflops_per_gpu, rep.hardware_tflops_per_gpu
    shown_bound = False
    if logged is None:
        fast = error is None
        logged = error = "n/a"
        decimals = ""
        has_logged = False
    else:
        fast = error is not None and 1.0 <= logged < _INF
        if fast:
            bound = interval.error_bound
            if bound is not None and bound >= SHOWN_BOUND:
                shown_bound = True
                error = error_text(interval)
            else:
                error *= 100.0
            decimals = _logged_decimals(interval.record.tflops_resolution)
        has_logged = True
    if mfu is None:
        fast = fast and hfu is None
        mfu = hfu = "n/a"
        has_peak = False
    else:
        fast = fast and hfu is not None
        if fast:
            mfu *= 100.0
            hfu *= 100.0
        has_peak = True
    if fast and 1.0 <= model < _INF and 1.0 <= hardware < _INF:
        batch = interval.batch_size
        return _TABLE_FAST[has_logged, has_peak, shown_bound].format(
            interval.record.iteration,
            f"{batch:.0f}" if batch == int(batch) else f"{batch:.1f}", interval.seq_length,
            interval.seconds_per_iteration, logged, decimals, model, hardware, mfu, hfu, error)
    return _table_row_general(interval)


def _table_row_general(interval: Interval) -> str:
    rep = interval.report
    batch = interval.batch_size
    batch_text = f"{batch:.0f}" if batch == int(batch) else f"{batch:.1f}"
    return _TABLE_FORMAT.format(
        interval.iteration, batch_text, interval.seq_length,
        f"{interval.seconds_per_iteration:.4g}",
        logged_text(interval.logged_tflops, interval.record.tflops_resolution),
        format_tflops(rep.model_tflops_per_gpu), format_tflops(rep.hardware_tflops_per_gpu),
        format_percent(rep.mfu, unit=""), format_percent(rep.hfu, unit=""),
        error_text(interval))


def logged_text(logged: Optional[float], resolution: float) -> str:
    """The logged TFLOPs with the digits the run printed (``0.01`` stays ``0.01``, not
    ``0.0100``); a figure not printed rounded (a TensorBoard scalar) by ``format_tflops``."""
    if logged is None or not resolution > 0 or not math.isfinite(logged):
        return format_tflops(logged)
    return f"{logged:.{max(0, round(-math.log10(2.0 * resolution)))}f}"


# issue 24: an error bound from the printed digits is shown from ±0.1 % (the table's last digit)
SHOWN_BOUND = 0.001


def error_text(interval: Interval) -> str:
    """The table's error: ``+33.3%``; with its bound from the logged figure's printed
    digits when that shows at one decimal (``-32.9±33.6%``: a logged 0.01 vs a true 0.0149);
    ``n/a`` without one (nothing logged, or printed as zero: the summary says which)."""
    error, bound = interval.error, interval.error_bound
    if error is None:
        return "n/a"
    if bound is not None and bound >= SHOWN_BOUND:
        return f"{100.0 * error:+.1f}±{100.0 * bound:.1f}%"
    return format_percent(error, "+.1f")


# rows are written to the stream in batches of this many (one write call, not one a row)
BATCH_ROWS = 512


class _BatchedLines:
    """Lines gathered and written to ``stream`` ``BATCH_ROWS`` at a time; ``flush()`` writes
    what is gathered (before anything else is printed to the stream, and at the end)."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lines: List[str] = []

    def _append(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            self._stream.write("".join(self._lines))
            self._lines = []

    def close(self) -> None:
        self.flush()


class TableOutput(_BatchedLines):
    """The human table on ``stream``: the header before the first row."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self._header_written = False

    def add(self, interval: Interval) -> None:
        if not self._header_written:
            self._append(_TABLE_FORMAT.format(*TABLE_HEADER) + "\n")
            self._header_written = True
        lines = self._lines      # _append, inline: the per-line path
        lines.append(table_row(interval) + "\n")
        if len(lines) >= BATCH_ROWS:
            self.flush()

    def discard(self) -> None:
        pass


# ``json.dumps(interval.as_dict())`` by the C encoder on a list of the values, joined by a
# separator no encoded value can hold (the encoder escapes a NUL in a string as \u0000), then
# put into the object's text: the same bytes, several times faster (tests/logs check both)
try:
    from _json import make_encoder as _make_encoder   # the encoder json.dumps uses
except ImportError:  # pragma: no cover - CPython always has it
    _make_encoder = None
if _make_encoder is not None:
    _encode_values = _make_encoder(None, None, json.encoder.encode_basestring_ascii, None,
                                   ": ", "\0", False, False, True)
else:  # pragma: no cover
    _encoder = json.JSONEncoder(separators=("\0", ": "))

    def _encode_values(values, _level):
        return (_encoder.encode(values),)
_JSON_KEYS = ("iteration", "line", "fork", "consumed_samples", "consumed_tokens",
              "logged_global_batch_size", "batch_size", "batch_source", "seq_length",
              "seq_source", "seconds_per_iteration", "time_source", "skipped_iterations",
              "logged_samples_per_second", "samples_per_second", "tokens_per_second_per_gpu",
              "logged_tflops", "fork_formula_tflops", "fork_formula", "tflops_per_gpu", "mfu",
              "hfu", "error", "error_bound", "error_note", "logged_counts", "startup")
_JSON_TEMPLATE = ("{" + ", ".join(
    f'"{key}": ' + ('{"model": %s, "hardware": %s}' if key == "tflops_per_gpu" else "%s")
    for key in _JSON_KEYS) + "}\n")


def interval_json(interval: Interval) -> str:
    """One interval's ``--json`` line: ``json.dumps(interval.as_dict())`` and a newline."""
    r, rep = interval.record, interval.report
    fork = interval.fork or r.fork
    values = [r.iteration, r.line_number or None, fork, r.consumed_samples,
              r.consumed_tokens, r.global_batch_size, interval.batch_size,
              interval.batch_source, interval.seq_length, interval.seq_source,
              interval.seconds_per_iteration, interval.time_source, r.skipped_iterations,
              r.samples_per_second, rep.samples_per_second, rep.tokens_per_second_per_gpu,
              r.tflops, interval.fork_formula_tflops, interval.formula,
              rep.model_tflops_per_gpu, rep.hardware_tflops_per_gpu, rep.mfu, rep.hfu,
              interval.error, interval.error_bound, interval.error_note,
              LOGGED_COUNTS.get(fork), interval.startup]
    return _JSON_TEMPLATE % tuple("".join(_encode_values(values, 0))[1:-1].split("\0"))


class JsonOutput(_BatchedLines):
    """One JSON object per interval on ``stream``, a line each."""

    def add(self, interval: Interval) -> None:
        lines = self._lines      # _append, inline: the per-line path
        lines.append(interval_json(interval))
        if len(lines) >= BATCH_ROWS:
            self.flush()

    def discard(self) -> None:
        pass


CSV_COLUMNS = ("iteration", "fork", "consumed_samples", "consumed_tokens",
               "logged_global_batch_size", "batch_size", "seq_length", "seconds_per_iteration",
               "logged_tflops", "fork_formula_tflops", "model_tflops_per_gpu",
               "hardware_tflops_per_gpu", "mfu_percent", "hfu_percent", "error_percent",
               # issue 24: the error's bound from the logged figure's printed digits, and why
               # the error is empty or says nothing (intervals.ROUNDED_TO_ZERO, WITHIN_DIGITS)
               "error_bound_percent", "error_note")


def _percent(fraction: Optional[float]) -> Optional[float]:
    """A fraction as the percentage the screen shows (the CSV's ``*_percent`` columns)."""
    return None if fraction is None else 100.0 * fraction


def csv_row(interval: Interval) -> list:
    r, rep = interval.record, interval.report
    return [r.iteration, interval.fork or "", r.consumed_samples, r.consumed_tokens,
            r.global_batch_size, interval.batch_size, interval.seq_length,
            interval.seconds_per_iteration, r.tflops, interval.fork_formula_tflops,
            rep.model_tflops_per_gpu, rep.hardware_tflops_per_gpu, _percent(rep.mfu),
            _percent(rep.hfu), _percent(interval.error), _percent(interval.error_bound),
            interval.error_note or ""]


class CsvOutput:
    """A CSV file, the header first; empty cells mean unknown.  Written beside ``path`` and
    renamed onto it by ``close()`` (:class:`.pending.PendingFile`)."""

    def __init__(self, path: str, flag: str = "--csv"):
        from .pending import PendingFile
        self._file = PendingFile(flag, path)
        self._writer = csv.writer(self._file)
        self._writer.writerow(CSV_COLUMNS)

    def add(self, interval: Interval) -> None:
        self._writer.writerow(csv_row(interval))

    def close(self) -> None:
        self._file.commit()

    def discard(self) -> None:
        self._file.discard()


LOGGED_TFLOPS_TAG = "relog/logged_tflops_per_gpu"
LOGGED_ERROR_TAG = "relog/logged_tflops_error"


def write_interval_tensorboard(writer, interval: Interval) -> None:
    """The hook's tags (through sinks.write_tensorboard), plus the logged figure and error."""
    r = interval.record
    write_tensorboard(writer, interval.report, r.iteration, r.consumed_samples,
                      r.consumed_tokens)
    if r.tflops is not None:
        writer.add_scalar(LOGGED_TFLOPS_TAG, r.tflops, r.iteration)
    if interval.error is not None:
        writer.add_scalar(LOGGED_ERROR_TAG, interval.error, r.iteration)


class TensorBoardOutput:
    """A new event file in ``directory`` (needs the ``tensorboard`` extra), renamed into
    place by ``close()``.  A folder that already holds event files is refused unless
    ``append`` (TensorBoard would show both files' points as one run)."""

    def __init__(self, directory: str, append: bool = False,
                 flag: str = "--write-tensorboard"):
        existing = event_files(directory)
        if existing and not append:
            raise UsageError(
                f"{flag} {directory!r} already holds a TensorBoard run ({len(existing)} event "
                f"file(s)): give a new folder (e.g. {os.path.join(directory, 'relog')!r}), or "
                "--append to add this run's event file to that one")
        self._writer = EventWriter(directory, flag)

    def add(self, interval: Interval) -> None:
        write_interval_tensorboard(self._writer, interval)

    def close(self) -> None:
        self._writer.close()

    def discard(self) -> None:
        self._writer.discard()


class PlotSeries:
    """Compact per-interval columns for the plot (8 bytes a value)."""

    def __init__(self):
        self.iteration = array("d")
        self.logged = array("d")
        self.model = array("d")
        self.hardware = array("d")
        self.mfu = array("d")
        self.hfu = array("d")
        self.forks = set()

    def add(self, interval: Interval) -> None:
        rep = interval.report
        nan = math.nan
        self.iteration.append(interval.iteration)
        self.logged.append(nan if interval.logged_tflops is None else interval.logged_tflops)
        self.model.append(rep.model_tflops_per_gpu)
        self.hardware.append(rep.hardware_tflops_per_gpu)
        self.mfu.append(nan if rep.mfu is None else rep.mfu)
        self.hfu.append(nan if rep.hfu is None else rep.hfu)
        if interval.fork:
            self.forks.add(interval.fork)


class PlotOutput:
    """The plot, drawn to ``path`` (format from its extension; needs matplotlib): into a
    temporary file beside it by ``draw()`` (after the last interval), renamed into place by
    ``close()``.  The temporary file is made when the output is, so an unwritable folder
    fails before the log is read."""

    def __init__(self, path: str, title: str = "", peak_tflops: Optional[float] = None,
                 flag: str = "--plot"):
        from .pending import PendingFile
        self.path, self.title, self.peak_tflops = path, title, peak_tflops
        self._series = PlotSeries()
        self._file = PendingFile(flag, path, binary=True)
        self._drawn = False

    def add(self, interval: Interval) -> None:
        self._series.add(interval)

    def draw(self) -> None:
        series = self._series
        extension = os.path.splitext(self.path)[1].lstrip(".").lower()
        from .pending import OutputError
        try:
            draw_plot(series, self._file.file, self.title, self.peak_tflops, series.forks,
                      extension)
        except OSError as error:
            raise OutputError(self._file.flag, self._file.shown, error) from None
        self._drawn = True

    def close(self) -> None:
        if not self._drawn:
            self.draw()
        self._file.commit()

    def discard(self) -> None:
        self._file.discard()


def wrap_title(title: str, width: int = 120) -> str:
    """The plot's title broken into lines of at most ``width`` characters (a long model
    description ran off both sides of the figure): each of its lines wrapped at spaces."""
    import textwrap
    return "\n".join(textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False)
                     for line in title.splitlines())


def draw_plot(series: PlotSeries, path, title: str, peak_tflops: Optional[float],
              forks, file_format: Optional[str] = None) -> None:
    """The figure, saved to ``path`` (a file name, or a file object with ``file_format``)."""
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
    top.set_title(wrap_title(title), fontsize=9)
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
    figure.savefig(path, dpi=110, format=file_format)
    plt.close(figure)


MEGATRON_LM_NOTE = (
    "the logged figure (throughput per GPU) is Megatron-LM's model-FLOPs estimate: its "
    "num_floating_point_operations (forward + backward, never recompute, causal attention "
    "since 2025-03) with the batch at log time; compared with the exact model count, and "
    "checked against Megatron-LM's current formula and each earlier era of it "
    "(`megatron-flops estimate --convention megatron-lm@YYYY-MM`)")


def summary_lines(summary: dict) -> List[str]:
    """The summary for people, from :meth:`.summary.Summary.as_dict`."""
    def pct(value):
        return format_percent(value, "+.1f")

    parse = summary["parse"]
    source = summary.get("world_size_source")
    # the provenance block says it for the command line and the log; here what neither said
    world_source = "" if source in (None, "command line", "log arguments") else f", {source}"
    lines = [
        f"intervals: {summary['intervals']} (iterations {summary['first_iteration']}"
        f"–{summary['last_iteration']}; fork {', '.join(summary['forks']) or 'unknown'}; "
        f"world size {summary['world_size']}{world_source})",
        f"mean model / hardware TFLOP/s per GPU: "
        f"{format_tflops(summary['mean_tflops_per_gpu']['model'])} / "
        f"{format_tflops(summary['mean_tflops_per_gpu']['hardware'])} "
        f"(over the whole time: {format_tflops(summary['overall_tflops_per_gpu']['model'])} / "
        f"{format_tflops(summary['overall_tflops_per_gpu']['hardware'])})",
    ]
    if summary["mean_mfu"] is not None:
        lines.append(f"mean MFU / HFU: {format_percent(summary['mean_mfu'])} / "
                     f"{format_percent(summary['mean_hfu'])} (peak: {summary['peak']['source']})")
    else:
        lines.append(f"MFU / HFU: n/a ({summary['peak']['source']})")
    if summary["intervals_with_logged_tflops"]:
        counts = summary.get("logged_counts") or ["hardware"]
        lines.append(
            f"mean logged TFLOPs: {format_tflops(summary['mean_logged_tflops'])} vs true "
            f"({' / '.join(counts)}) {format_tflops(summary['mean_true_tflops_where_logged'])} over "
            f"{summary['intervals_with_logged_tflops']} intervals: mean error "
            f"{pct(summary['mean_error'])} (from {pct(summary['min_error'])} to "
            f"{pct(summary['max_error'])})")
        bound, within = summary.get("max_error_bound") or 0.0, summary.get(
            "errors_within_printed_digits")
        if bound >= SHOWN_BOUND or within:   # issue 24: what the printed digits allow
            lines.append(
                f"the logged figures' printed digits alone allow an error of up to "
                f"±{100.0 * bound:.1f}%; {within or 0} of the "
                f"{summary['intervals_with_logged_tflops']} intervals are {WITHIN_DIGITS} "
                "(the true figure rounds to the logged one)")
    elif not summary.get("logged_tflops_rounded_to_zero"):
        lines.append("no logged TFLOPs to compare")
    if summary.get("logged_tflops_rounded_to_zero"):
        lines.append(
            f"error n/a for {summary['logged_tflops_rounded_to_zero']} intervals: their logged "
            "TFLOPs were printed as zero (too few digits at this scale; the true figure is "
            "in the table), so they say nothing of the formula's error")
    if "megatron-lm" in summary["forks"]:
        lines.append(MEGATRON_LM_NOTE)
        eras = summary.get("megatron_lm_eras") or {}
        if eras.get("lines_checked"):
            found = ", ".join(eras["reproducing"]) or (
                "none (the flags, the world size or the formula's era do not describe the run)")
            lines.append(f"Megatron-LM formula eras that reproduce all {eras['lines_checked']} "
                         f"logged figures: {found}")
        per_line = {name: count for name, count in summary.get("fork_formulas", {}).items()
                    if name.startswith("megatron-lm")}
        if per_line:
            lines.append("Megatron-LM formula per line (the newest era its date stamp allows "
                         "that reproduces it, else the newest allowed): " + ", ".join(
                             f"{name} ({count} lines)" for name, count in per_line.items()))
    startup = summary.get("startup_intervals")
    if startup:
        spans = ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in startup)
        lines.append(f"left out of the statistics, their time including start-up: "
                     f"iterations {spans} (Megatron-LM logs its first iteration with the "
                     "start-up time and does not reset that line's timer, so the next line "
                     "includes it too; in progress.txt, a job's first checkpoint)")
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
        f"{summary['duplicate_lines']} duplicates skipped, {summary['restarts']} restarts"
        + (f", {summary['gaps']} gaps" if summary.get("gaps") else "")
        + (f", {len(summary['segments'])} run shapes (arguments dumps)"
           if len(summary.get("segments", ())) > 1 else ""))
    lines += read_warnings(parse)
    if summary["inconsistent_consumed_samples"]:
        lines.append(f"{summary['inconsistent_consumed_samples']} intervals whose consumed "
                     "samples disagree with the logged batch sizes used the logged batch size")
    lines += summary.get("warnings", [])
    return lines


def read_warnings(parse: dict) -> List[str]:
    """What was read only in part (the summary's ``parse`` object): damaged TensorBoard
    files, lines cut at the line-length bound."""
    from .console import MAX_LINE_CHARACTERS
    from .tensorboard import damage_warning
    lines = [damage_warning(damage) for damage in parse.get("damaged_files", ())]
    if parse.get("overlong"):
        lines.append(f"warning: {parse['overlong']} line(s) longer than "
                     f"{MAX_LINE_CHARACTERS:,} characters skipped, not read whole "
                     f"(first at line "
                     f"{', '.join(map(str, parse['overlong_line_numbers']))})")
    return lines


def convention_lines(summary: dict, show_table: bool) -> List[str]:
    """The summary's ``headline`` convention (when one was asked for) as one line, and with
    ``show_table`` the side-by-side table of every convention (:mod:`megatron_flops.conventions`)."""
    peak = summary["peak"]["source"]
    lines = []
    if summary["headline"] is None and not show_table:
        return lines
    if summary["conventions"] is None:
        return [f"conventions: n/a ({summary['conventions_unavailable']})"]
    if summary["headline"] is not None:
        lines.append(headline_line(summary["headline"], peak))
    if show_table:
        lines.append("what each convention reports for this run, at the mean interval of its "
                     "last run shape (vs exact = vs our model FLOPs):")
        lines += conventions_table(summary["conventions"], peak).split("\n")
    return lines
