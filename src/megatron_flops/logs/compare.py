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
import os
import statistics
from typing import Dict, List, NamedTuple, Optional, Sequence

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

    @property
    def relative_iqr(self) -> Optional[float]:
        return self.iqr / self.median if self.median else None


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
        for line in stream:
            line = line.strip()
            if line and not line.startswith(b"megatron-flops:"):
                return line.startswith(b"{")
    return False


def read_json_lines(path: str) -> List[dict]:
    """relog --json interval records (and the world size from a summary line, if any)."""
    records, world_size = [], None
    with open(path, encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, 1):
            line = line.strip()
            if not line or line.startswith("megatron-flops:"):
                continue  # relog's notes on stderr, when saved with 2>&1
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}: line {number} is not JSON (expected the output of "
                                 "'megatron-flops relog PATH --json')") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            if "summary" in item:
                world_size = (item["summary"] or {}).get("world_size", world_size)
            elif "iteration" in item and "tflops_per_gpu" in item:
                records.append(item)
            else:
                raise ValueError(f"{path}: line {number} is not a relog interval record "
                                 "(no 'iteration' and 'tflops_per_gpu' keys)")
    for record in records:
        record.setdefault("world_size", world_size)
    return records


def summarise(path: str, records: Sequence[dict], warmup: int,
              world_size: Optional[int] = None) -> RunSummary:
    """Drop ``warmup`` intervals, then the median and IQR of every metric."""
    if not records:
        raise ValueError(f"{path}: no logged intervals")
    if len(records) <= warmup:
        raise ValueError(f"{path}: {len(records)} logged interval(s), all warm-up under "
                         f"--warmup {warmup}; nothing left to compare")
    steady = records[warmup:]
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
        return self.change is not None and self.change < -self.threshold

    def to_dict(self) -> dict:
        return {"baseline": self.baseline.to_dict(), "candidate": self.candidate.to_dict(),
                "metric": self.metric, "threshold": self.threshold, "changes": self.changes,
                "change": self.change, "regressed": self.regressed}


def compare(baseline: RunSummary, candidate: RunSummary, metric: str = "model_tflops_per_gpu",
            threshold: float = 0.05) -> Comparison:
    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    changes = {}
    for name in METRICS:
        b, c = baseline.metrics[name], candidate.metrics[name]
        changes[name] = c.median / b.median - 1.0 if b and c and b.median else None
    if changes[metric] is None:
        raise ValueError(f"--metric {metric}: not known for both runs (MFU and HFU need the "
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
        text = f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return text + ("%" if name in ("mfu", "hfu") else "")


def _cell(name: str, s: Optional[Spread]) -> str:
    if s is None:
        return "n/a"
    return f"{_value(name, s.median)} (IQR {_value(name, s.q1)}–{_value(name, s.q3)})"


def run_line(run: RunSummary) -> str:
    return (f"{run.path}: {run.steady} steady-state intervals (iterations {run.first_iteration}–"
            f"{run.last_iteration}), {run.warmup} warm-up interval(s) dropped")


def comparison_lines(result: Comparison) -> List[str]:
    from ..report import format_percent, table
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

def read_log_records(path: str, args, model, run, peak_tflops: Optional[float] = None,
                     causal: bool = False, fork: Optional[str] = None):
    """A console log, a folder of one run's logs or a TensorBoard run, recomputed through
    relog's compute (:func:`~.relog.relog_run`: restarts and re-shapes included) with the model
    flags in ``args`` (a parsed namespace; every flag set there counts as typed, the log's
    arguments dump fills the rest): ``(interval records, notes)``."""
    from .console import ParseStats
    from .relog import relog_run
    stats = ParseStats()
    given = {name for name, value in vars(args).items()
             if value is not None and not name.startswith("_")}
    out, notes, segment = [], [], None
    for _, new_segment, interval in relog_run([path], args, given, stats,
                                              lambda _: peak_tflops, causal, fork):
        if new_segment is not None:
            segment = new_segment
            notes += segment.notes
            continue
        item = interval.as_dict()
        item["world_size"] = segment.run.world_size
        out.append(item)
    if segment is None:
        raise ValueError(f"{path}: no training_log iteration lines ({stats.lines} lines read)")
    return out, notes
