"""A :class:`~.attribute.Profile` as table lines (for the console) and as a dict (``--json``)."""

from typing import List

from ..report import format_percent as _percent
from .attribute import COMPILED, Profile


def table_lines(profile: Profile) -> List[str]:
    n = len(profile.steps)
    per_iteration_ms = 1000 * profile.iteration_seconds / n
    steps = ", ".join(f"#{s}" for s in profile.steps)
    lines = [f"where the time went: {n} profiled iteration(s) (ProfilerStep {steps}), "
             f"{per_iteration_ms:.2f} ms each; {profile.device} trace; times per iteration",
             f"peak: {profile.peak_source}"]
    header = (f"  {'component':<34}{'calls':>7}{'GFLOP':>11}{'ms':>10}{'TFLOP/s':>10}"
              f"{'% peak':>8}{'% iter':>8}  rule")
    lines.append(header)
    total = profile.iteration_seconds
    for row in profile.rows:
        if not row.calls and not row.flops:
            continue
        tflops = profile.tflops(row)
        of_peak = (tflops / profile.peak_tflops if tflops is not None and profile.peak_tflops
                   else None)
        rules = ", ".join(sorted(row.rules)) or "not in the trace"
        lines.append(f"  {row.name:<34}{row.calls / n:>7.4g}{row.flops / n / 1e9:>11.4g}"
                     f"{1000 * row.seconds / n:>10.3f}"
                     f"{(f'{tflops:.4g}' if tflops is not None else 'n/a'):>10}"
                     f"{_percent(of_peak):>8}{_percent(row.seconds / total):>8}  {rules}")
    lines.append(f"  {'all matmuls':<34}{'':>7}{'':>11}{1000 * profile.matmul_seconds / n:>10.3f}"
                 f"{'':>10}{'':>8}{_percent(profile.matmul_seconds / total):>8}")
    for name, seconds in profile.categories.items():
        if seconds:
            lines.append(f"  {name:<34}{'':>7}{'':>11}{1000 * seconds / n:>10.3f}{'':>10}{'':>8}"
                         f"{_percent(seconds / total):>8}")
    lines.append(f"  {'sum of the parts':<34}{'':>7}{'':>11}"
                 f"{1000 * profile.accounted_seconds / n:>10.3f}   (iteration measured: "
                 f"{per_iteration_ms:.3f} ms)")
    lines.append(f"MFU {_percent(profile.mfu)}, HFU {_percent(profile.hfu)} over the profiled "
                 "iterations (ours: model / hardware FLOPs of this rank)")
    trace_flops = sum(r.trace_flops for r in profile.rows)
    ours = profile.hardware_flops
    check = "equal" if round(trace_flops) == round(ours) else f"differ by {trace_flops - ours:+.6g}"
    lines.append(f"matmul FLOPs read from the trace's shapes: {trace_flops / n / 1e9:.6g} GFLOP "
                 f"per iteration; ours (hardware): {ours / n / 1e9:.6g}: {check}")
    for row in profile.rows:
        if row.calls and row.flops and round(row.trace_flops) != round(row.flops):
            lines.append(f"  {row.name}: trace {row.trace_flops / n:.6g} vs ours "
                         f"{row.flops / n:.6g} FLOPs per iteration")
    compiled = sum(r.calls for r in profile.rows if r.component == COMPILED)
    if compiled:
        lines.append(f"torch.compile: {compiled / n:.4g} matmul call(s) per iteration ran in "
                     f"compiled code, which no module scope reaches (Dynamo drops "
                     f"record_function) and whose backward ops have no per-op autograd link: "
                     f"they are the row '{COMPILED}', FLOPs from the trace's shapes, not split "
                     f"by component (by shape alone backward products would be misattributed); "
                     f"the components' own FLOPs are shown without their time")
    if profile.ambiguous:
        lines.append("ambiguous shapes (filed under the first match):")
        lines += [f"  {text}" for text in profile.ambiguous]
    if profile.unattributed:
        lines.append("unattributed matmul ops:")
        lines += [f"  {text}" for text in profile.unattributed]
    return lines


def profile_dict(profile: Profile) -> dict:
    n = len(profile.steps)
    rows = []
    for row in profile.rows:
        if not row.calls and not row.flops:
            continue
        tflops = profile.tflops(row)
        rows.append({
            "component": row.component, "kind": row.kind, "calls": row.calls / n,
            "flops": row.flops / n, "trace_flops": row.trace_flops / n,
            "seconds": row.seconds / n, "forward_seconds": row.forward_seconds / n,
            "backward_seconds": row.backward_seconds / n, "tflops": tflops,
            "fraction_of_peak": (tflops / profile.peak_tflops
                                 if tflops is not None and profile.peak_tflops else None),
            "fraction_of_iteration": row.seconds / profile.iteration_seconds,
            "rules": dict(row.rules)})
    return {
        "trace": profile.trace_path, "profiler_steps": profile.steps, "device": profile.device,
        "per": "iteration (mean over the profiled iterations), this rank",
        "iteration_seconds": profile.iteration_seconds / n,
        "accounted_seconds": profile.accounted_seconds / n,
        "peak_tflops": profile.peak_tflops, "peak_source": profile.peak_source,
        "model_flops": profile.model_flops / n, "hardware_flops": profile.hardware_flops / n,
        "mfu": profile.mfu, "hfu": profile.hfu,
        "components": rows,
        "categories": {name: seconds / n for name, seconds in profile.categories.items()},
        "waterfall": [{"name": name, "fraction_of_peak_lost": lost}
                      for name, lost in profile.waterfall()],
        "ambiguous": profile.ambiguous, "unattributed": profile.unattributed,
    }
