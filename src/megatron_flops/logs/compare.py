"""Compare the steady-state throughput of finished runs (``megatron-flops compare``).

A run is read as relog's per-interval records (:meth:`megatron_flops.logs.intervals.Interval.as_dict`):

- a file of JSON lines as ``megatron-flops relog PATH --json`` writes them (one object per
  interval; a ``{"summary": …}`` line, if the file has one, gives the world size);
- a console log or a TensorBoard run, recomputed through relog with the model flags given.

Steady state: the first ``warmup`` intervals of a run are dropped (the first logged interval
includes start-up: compilation, data loader, allocator warm-up); every other interval counts.
Each metric is summarised by its **median** over those intervals, with the interquartile
range (IQR, the middle half of the intervals) as its spread; a single slow interval (a
checkpoint save, an evaluation) moves the median little, and an interval-to-interval jitter
of a few percent moves it by no more than the jitter.

Metrics, per GPU: ``tokens_per_second_per_gpu``, ``model_tflops_per_gpu`` (forward +
backward FLOPs / s / GPU / 1e12), ``hardware_tflops_per_gpu`` (plus recompute), ``mfu`` and
``hfu`` (those divided by the dense peak, when the peak is known).

The candidate *regresses* when its median of the gated metric is more than ``threshold``
(a fraction) below the baseline's.
"""

import json
import math
import os
import statistics
from typing import Dict, List, NamedTuple, Optional, Sequence

from ..errors import UsageError
from ..report import format_percent, format_tflops, table
from .console import MAX_LINE_CHARACTERS, ParseStats
from .outputs import read_warnings
from .relog import relog_run

METRICS = ("tokens_per_second_per_gpu", "model_tflops_per_gpu", "hardware_tflops_per_gpu",
           "mfu", "hfu")
LABELS = {"tokens_per_second_per_gpu": "tokens/s per GPU",
          "model_tflops_per_gpu": "model TFLOP/s per GPU",
          "hardware_tflops_per_gpu": "hardware TFLOP/s per GPU",
          "mfu": "MFU", "hfu": "HFU"}


class Spread(NamedTuple):
    """Median and interquartile range of one metric over ``count`` intervals."""

    median: float
    q1: float
    q3: float
    count: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def spread(values: Sequence[float]) -> Optional[Spread]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    if len(values) == 1:
        return Spread(values[0], values[0], values[0], 1)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(statistics.median(values), q1, q3, len(values))


class RunSummary(NamedTuple):
    """One run's steady-state figures."""

    path: str
    intervals: int                   # intervals read
    warmup: int                      # of which dropped as warm-up
    first_iteration: int             # first steady-state interval's iteration
    last_iteration: int
    metrics: Dict[str, Optional[Spread]]
    world_size: Optional[int]

    @property
    def steady(self) -> int:
        return self.intervals - self.warmup

    def to_dict(self) -> dict:
        return {"path": self.path, "intervals": self.intervals, "warmup_intervals": self.warmup,
                "steady_intervals": self.steady, "first_iteration": self.first_iteration,
                "last_iteration": self.last_iteration, "world_size": self.world_size,
                "metrics": {name: None if s is None else
                            {"median": s.median, "q1": s.q1, "q3": s.q3, "iqr": s.iqr,
                             "count": s.count} for name, s in self.metrics.items()}}


def _metric_values(record: dict) -> Dict[str, Optional[float]]:
    tflops = record.get("tflops_per_gpu") or {}
    return {"tokens_per_second_per_gpu": record.get("tokens_per_second_per_gpu"),
            "model_tflops_per_gpu": tflops.get("model"),
            "hardware_tflops_per_gpu": tflops.get("hardware"),
            "mfu": record.get("mfu"), "hfu": record.get("hfu")}


def is_json_lines(path: str) -> bool:
    """A file whose first line (past blank lines and relog's ``megatron-flops:`` notes)
    opens a JSON object: relog --json output."""
    if os.path.isdir(path):
        return False
    with open(path, "rb") as stream:
        while True:
            line = stream.readline(MAX_LINE_CHARACTERS)
            if not line:
                return False
            line = line.strip()
            if line and not line.startswith(b"megatron-flops:"):
                return line.startswith(b"{")


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _metric(value, where: str, key: str) -> Optional[float]:
    """A record's metric: null, or a finite number; anything else names the record (a gate
    must fail closed: NaN compares false with every threshold)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}: {key} must be a number or null, got {_shown(value)}")
    if not math.isfinite(value):
        raise UsageError(f"{where}: {key} is {value!r}, not a finite number: no median or "
                         "threshold can be judged on it")
    return value


def check_record(record: dict, where: str) -> dict:
    """``record`` if it is a relog interval record whose metrics are finite numbers or null,
    else UsageError naming ``where`` (the file and line, or the iteration)."""
    iteration = record.get("iteration")
    if isinstance(iteration, bool) or not isinstance(iteration, int):
        raise UsageError(f"{where}: iteration must be an integer, got {_shown(iteration)}")
    tflops = record.get("tflops_per_gpu")
    if not isinstance(tflops, dict):
        raise UsageError(f"{where}: tflops_per_gpu must be an object with 'model' and "
                         f"'hardware', got {_shown(tflops)}")
    for key in ("model", "hardware"):
        _metric(tflops.get(key), where, f"tflops_per_gpu.{key}")
    for key in ("tokens_per_second_per_gpu", "mfu", "hfu"):
        _metric(record.get(key), where, key)
    world_size = record.get("world_size")
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int)
                                   or world_size < 1):
        raise UsageError(f"{where}: world_size must be a positive integer, got "
                         f"{_shown(world_size)}")
    return record


def read_json_lines(path: str) -> List[dict]:
    """relog --json interval records (and the world size from a summary line, if any); a
    line that is not JSON, not a relog record, or holds a non-finite or non-numeric metric
    is a UsageError naming the line."""
    records, world_size = [], None
    with open(path, encoding="utf-8", errors="replace") as stream:
        number = 0
        while True:
            line = stream.readline(MAX_LINE_CHARACTERS)
            if not line:
                break
            number += 1
            where = f"{path}: line {number}"
            if len(line) == MAX_LINE_CHARACTERS and not line.endswith("\n"):
                raise UsageError(f"{where} is longer than {MAX_LINE_CHARACTERS:,} characters: "
                                 "not a relog interval record")
            line = line.strip()
            if not line or line.startswith("megatron-flops:"):
                continue  # relog's notes on stderr, when saved with 2>&1
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{where} is not JSON (expected the output of "
                                 "'megatron-flops relog PATH --json')") from None
            except RecursionError:
                raise UsageError(f"{where} is nested too deeply to be a relog record") from None
            if not isinstance(item, dict):
                raise UsageError(f"{where} is not a JSON object")
            if "summary" in item:
                summary = item["summary"]
                if summary is not None and not isinstance(summary, dict):
                    raise UsageError(f"{where}: summary must be an object, got {_shown(summary)}")
                found = (summary or {}).get("world_size", world_size)
                if found is not None and (isinstance(found, bool) or not isinstance(found, int)
                                          or found < 1):
                    raise UsageError(f"{where}: summary.world_size must be a positive integer, "
                                     f"got {_shown(found)}")
                world_size = found
            elif "iteration" in item and "tflops_per_gpu" in item:
                records.append(check_record(item, where))
            else:
                raise UsageError(f"{where} is not a relog interval record "
                                 "(no 'iteration' and 'tflops_per_gpu' keys)")
    for record in records:
        record.setdefault("world_size", world_size)
    return records


def summarise(path: str, records: Sequence[dict], warmup: int,
              world_size: Optional[int] = None) -> RunSummary:
    """Drop ``warmup`` intervals, then the median and IQR of every metric."""
    if not records:
        raise UsageError(f"{path}: no logged intervals")
    if len(records) <= warmup:
        raise UsageError(f"{path}: {len(records)} logged interval(s), all warm-up under "
                         f"--warmup {warmup}; nothing left to compare")
    steady = records[warmup:]
    for record in steady:  # recomputed from a log: checked the same way
        check_record(record, f"{path}: iteration {record.get('iteration')}")
    metrics = {name: spread([_metric_values(r)[name] for r in steady]) for name in METRICS}
    world = world_size if world_size is not None else steady[-1].get("world_size")
    return RunSummary(path, len(records), warmup, steady[0]["iteration"], steady[-1]["iteration"],
                      metrics, world)


class Comparison(NamedTuple):
    baseline: RunSummary
    candidate: RunSummary
    metric: str
    threshold: float
    changes: Dict[str, Optional[float]]  # candidate median / baseline median − 1

    @property
    def change(self) -> Optional[float]:
        return self.changes[self.metric]

    @property
    def regressed(self) -> bool:
        # fails closed: a change that is not a number >= -threshold is a regression
        return self.change is not None and not self.change >= -self.threshold

    def to_dict(self) -> dict:
        return {"baseline": self.baseline.to_dict(), "candidate": self.candidate.to_dict(),
                "metric": self.metric, "threshold": self.threshold, "changes": self.changes,
                "change": self.change, "regressed": self.regressed}


def compare(baseline: RunSummary, candidate: RunSummary, metric: str = "model_tflops_per_gpu",
            threshold: float = 0.05) -> Comparison:
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    changes = {}
    for name in METRICS:
        b, c = baseline.metrics[name], candidate.metrics[name]
        changes[name] = c.median / b.median - 1.0 if b and c and b.median else None
    if changes[metric] is None:
        raise UsageError(f"--metric {metric}: not known for both runs (MFU and HFU need the "
                         "peak: --gpu NAME or --peak-tflops X)")
    return Comparison(baseline, candidate, metric, threshold, changes)


# ---- text and Markdown ---------------------------------------------------------------------

def _value(name: str, value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    if name in ("mfu", "hfu"):
        value *= 100  # a percentage
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    else:  # tiny CI models run at a small fraction of one TFLOP/s: keep 3 digits
        text = format_tflops(value)
    return text + ("%" if name in ("mfu", "hfu") else "")


def _cell(name: str, s: Optional[Spread]) -> str:
    if s is None:
        return "n/a"
    return f"{_value(name, s.median)} (IQR {_value(name, s.q1)}–{_value(name, s.q3)})"


def run_line(run: RunSummary) -> str:
    return (f"{run.path}: {run.steady} steady-state intervals (iterations {run.first_iteration}–"
            f"{run.last_iteration}), {run.warmup} warm-up interval(s) dropped")


def comparison_lines(result: Comparison) -> List[str]:
    rows = []
    for name in METRICS:
        change = result.changes[name]
        rows.append([LABELS[name], _cell(name, result.baseline.metrics[name]),
                     _cell(name, result.candidate.metrics[name]),
                     format_percent(change, "+.1f")])
    out = ["baseline  " + run_line(result.baseline), "candidate " + run_line(result.candidate),
           table(rows, ["median over steady state", "baseline", "candidate", "change"],
                 [False, True, True, True])]
    change = result.change
    verdict = "REGRESSION" if result.regressed else "ok"
    out.append(f"{verdict}: candidate {LABELS[result.metric]} {format_percent(change, '+.1f')} "
               f"vs baseline (fails below -{100 * result.threshold:g}%)")
    return out


def single_lines(run: RunSummary) -> List[str]:
    return [run_line(run)] + [f"  {LABELS[name]}: {_cell(name, run.metrics[name])}"
                              for name in METRICS]


MARKDOWN_HEADER = ("run", "model", "GPUs", "precision", "recompute", "tokens/s/GPU",
                   "model TFLOP/s/GPU", "hardware TFLOP/s/GPU", "MFU", "HFU")


def markdown_table(runs: Sequence[RunSummary], model: str = "n/a", precision: str = "n/a",
                   recompute: str = "n/a") -> str:
    """The columns people publish, one row per run (medians over steady state)."""
    lines = ["| " + " | ".join(MARKDOWN_HEADER) + " |",
             "|" + "|".join("---" if i < 5 else "---:" for i in range(len(MARKDOWN_HEADER))) + "|"]
    for run in runs:
        m = {name: None if run.metrics[name] is None else run.metrics[name].median
             for name in METRICS}
        cells = [os.path.basename(run.path.rstrip("/")) or run.path, model,
                 "n/a" if run.world_size is None else str(run.world_size), precision, recompute]
        cells += [_value(name, m[name]) for name in METRICS]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# ---- reading a run -------------------------------------------------------------------------

def read_log_records(path: str, args, model, run, peak_tflops=None,
                     causal: bool = False, fork: Optional[str] = None, given=None,
                     segments: Optional[list] = None):
    """A console log, a folder of one run's logs or a TensorBoard run, recomputed through
    relog's compute (:func:`~.relog.relog_run`: restarts and re-shapes included) with the model
    flags in ``args`` (a parsed namespace) laid over the log's arguments dump, as ``relog``
    reads it: ``given`` names the flags typed (None: every flag set in ``args`` counts as
    typed).  ``peak_tflops``: a number, or a function of the first segment (``relog``'s).
    Each run segment is appended to ``segments`` when given.  ``(interval records, notes)``."""
    stats = ParseStats()
    if given is None:
        given = {name for name, value in vars(args).items()
                 if value is not None and not name.startswith("_")}
    peak_for = peak_tflops if callable(peak_tflops) else (lambda _: peak_tflops)
    out, notes, segment = [], [], None
    for _, new_segment, interval in relog_run([path], args, given, stats, peak_for, causal,
                                              fork):
        if new_segment is not None:
            segment = new_segment
            if segments is not None:
                segments.append(segment)
            notes += segment.notes
            continue
        item = interval.as_dict()
        item["world_size"] = segment.run.world_size
        out.append(item)
    if segment is None:
        raise UsageError(f"{path}: no training_log iteration lines ({stats.lines} lines read)")
    return out, notes + read_warnings(stats.as_dict())
