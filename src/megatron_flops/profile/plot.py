"""The picture of a profile (needs matplotlib, the ``plot`` extra): an MFU waterfall from
the peak down to the achieved MFU — one bar per component and category, as long as the share
of the peak it costs — beside each component's achieved TFLOP/s against the peak."""

from ..errors import UsageError
from .attribute import MODEL, Profile

# the component bars get a log axis when the fastest is below this fraction of the peak
LOG_SCALE_BELOW = 0.1


def write_png(profile: Profile, path: str, title: str = "") -> None:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--png needs matplotlib: pip install -e '.[plot]' in a megatron-flops clone") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (waterfall, bars) = pyplot.subplots(1, 2, figsize=(15, 7),
                                                gridspec_kw={"width_ratios": [3, 2]})
    steps = profile.waterfall()
    if steps:
        names = ["peak"] + [name for name, _ in steps] + ["MFU"]
        level = 100.0
        for index, (name, lost) in enumerate(steps, start=1):
            lost_percent = 100 * lost
            color = "tab:red" if name in profile.categories else (
                "tab:purple" if name.endswith("(recompute)") else "tab:orange")
            waterfall.bar(index, -lost_percent, bottom=level, color=color)
            if abs(lost_percent) >= 0.5:
                waterfall.text(index, level - lost_percent / 2, f"{lost_percent:.1f}",
                               ha="center", va="center", fontsize=7)
            level -= lost_percent
        waterfall.bar(0, 100.0, color="tab:green")
        waterfall.bar(len(names) - 1, 100 * profile.mfu, color="tab:blue")
        waterfall.text(len(names) - 1, 100 * profile.mfu, f"{100 * profile.mfu:.1f}%",
                       ha="center", va="bottom", fontsize=9)
        waterfall.set_xticks(range(len(names)))
        waterfall.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        waterfall.set_ylabel("% of peak")
        waterfall.set_ylim(0, 105)
        waterfall.set_title("MFU waterfall: peak -> achieved (orange: a component's time beyond "
                            "its FLOPs at peak;\npurple: recompute; red: non-matmul time)",
                            fontsize=9)
    else:
        waterfall.text(0.5, 0.5, "no peak known: give --peak-tflops or --gpu", ha="center",
                       transform=waterfall.transAxes)
    rows = [r for r in profile.rows if r.calls and r.flops]
    labels = [r.name for r in rows]
    rates = [profile.tflops(r) or 0.0 for r in rows]
    colors = ["tab:orange" if r.kind == MODEL else "tab:purple" for r in rows]
    positive = [r for r in rates if r > 0]
    # far below the peak (a CPU, a tiny model) linear bars next to the peak line are a few
    # pixels wide or none: a log axis from below the slowest component up to the peak
    log_scale = bool(profile.peak_tflops and positive
                     and max(positive) < LOG_SCALE_BELOW * profile.peak_tflops)
    if log_scale:
        floor = min(positive) / 3
        bars.barh(range(len(rows)), [max(r, floor) - floor for r in rates], left=floor,
                  color=colors)
        bars.set_xscale("log")
        bars.set_xlim(floor, 2 * profile.peak_tflops)
    else:
        bars.barh(range(len(rows)), rates, color=colors)
    bars.set_yticks(range(len(rows)))
    bars.set_yticklabels(labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("achieved TFLOP/s" + (" (log scale: far below the peak)" if log_scale else ""))
    if profile.peak_tflops:
        bars.axvline(profile.peak_tflops, color="tab:green", linestyle="--", label="peak")
        bars.legend(fontsize=8)
    for index, row in enumerate(rows):
        share = 100 * row.seconds / profile.iteration_seconds
        bars.text(rates[index], index, f" {share:.1f}% of iter", va="center", fontsize=7)
    bars.set_title("per component: achieved TFLOP/s (and share of the iteration)", fontsize=9)
    figure.suptitle(title or f"where the time went: {profile.trace_path}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
