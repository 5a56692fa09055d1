"""Issue 24: the profile picture's per-component bars stay visible far below the peak."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_gpu_trace_and_command import MODEL, gpu_trace  # noqa: E402

from megatron_flops.profile.attribute import attribute  # noqa: E402
from megatron_flops.profile.trace import load_trace  # noqa: E402
from megatron_flops.shapes import RunShape  # noqa: E402


@pytest.mark.parametrize("peak_tflops", [0.01, 1000.0])
def test_every_component_bar_is_visible(peak_tflops, tmp_path, monkeypatch):
    from matplotlib import pyplot

    from megatron_flops.profile.plot import write_png
    run = RunShape(seq_length=24, micro_batch_size=2)
    profile = attribute(load_trace(str(gpu_trace(tmp_path / "gpu.json"))), MODEL, run,
                        peak_tflops=peak_tflops, peak_source="given")
    rates = [profile.tflops(r) for r in profile.rows if r.calls and r.flops]
    assert rates and all(r > 0 for r in rates)
    drawn = []
    monkeypatch.setattr(pyplot, "close", lambda figure: drawn.append(figure))
    write_png(profile, str(tmp_path / "profile.png"))
    bars = drawn[0].axes[1]
    renderer = drawn[0].canvas.get_renderer()
    widths = [patch.get_window_extent(renderer).width for patch in bars.patches]
    assert len(widths) == len(rates)
    assert min(widths) >= 3   # pixels: a bar one can see
