"""``demo --profile`` on CPU: the demo's own trace, every matmul FLOP of the profiled
iterations attributed, and the parts of each iteration adding up to its measured time.

Expected FLOPs: PyTorch's FlopCounterMode count of one iteration of the same model (on meta
tensors; ``demo_helpers.counted_flops_per_iteration``), times the profiled iterations.
"""

import re

import pytest

torch = pytest.importorskip("torch")

from demo_helpers import counted_flops_per_iteration, run_demo  # noqa: E402

from megatron_flops.profile.attribute import RECOMPUTE, attribute  # noqa: E402
from megatron_flops.profile.trace import load_trace  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute, RunShape  # noqa: E402

SMALL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--seq-length", "48", "--micro-batch-size", "4"]
SHAPE = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256)
SEQ, MICRO = 48, 4


@pytest.mark.parametrize("extra, recompute", [
    ([], None),
    (["--attention", "sdpa"], None),
    (["--checkpoint-activations"], Recompute("full")),
], ids=["matmul", "sdpa", "recompute"])
def test_demo_trace_attributes_every_flop_and_all_the_time(extra, recompute, tmp_path, capsys):
    out_dir = tmp_path / "profile"
    code, out, err = run_demo(SMALL + extra + [
        "--train-iters", "4", "--log-interval", "2", "--peak-tflops", "1", "--profile",
        "--profile-start", "2", "--profile-iters", "2", "--profile-dir", str(out_dir)], capsys)
    assert code == 0, err
    assert "where the time went: 2 profiled iteration(s)" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the picture needs the plot extra; the demo says so and goes on
        assert "(no picture: --png needs matplotlib" in out
    else:
        assert (out_dir / "trace_rank0.png").stat().st_size > 10_000

    run = RunShape(seq_length=SEQ, micro_batch_size=MICRO, recompute=recompute or Recompute())
    profile = attribute(load_trace(str(out_dir / "trace_rank0.json")), SHAPE, run,
                        peak_tflops=1.0)
    # every matmul FLOP of the two iterations, as PyTorch counts them, and nothing else
    counted = counted_flops_per_iteration(SHAPE, SEQ, MICRO, recompute)
    assert sum(r.trace_flops for r in profile.rows) == 2 * counted
    assert profile.unattributed == [] and profile.ambiguous == []
    for row in profile.rows:
        assert row.trace_flops == pytest.approx(row.flops, rel=1e-12), row.name
        assert set(row.rules) <= {"scope", "scope via autograd"}, row.name
    if recompute:
        assert {r.component for r in profile.rows if r.kind == RECOMPUTE and r.calls} == {
            "query", "key_value", "attention_scores", "attention_over_values",
            "attention_output", "mlp_up", "mlp_down"}

    # times: the parts are the profiler's spans, so they add up to the steps exactly; the
    # steps themselves match the loop's own clock up to the profiler's step() overhead
    assert profile.accounted_seconds == pytest.approx(profile.iteration_seconds, rel=1e-6)
    wall_ms = float(re.search(r"perf_counter: ([0-9.]+) ms each", out).group(1))
    span_ms = 1000 * profile.iteration_seconds / 2
    assert abs(span_ms - wall_ms) <= 0.05 * wall_ms + 1.0, (span_ms, wall_ms)
    # the printed table says the same
    assert re.search(r"sum of the parts\s+([0-9.]+)", out).group(1) == f"{span_ms:.3f}"
    assert ": equal" in out


def test_sdpa_shows_in_the_trace(tmp_path, capsys):
    """With --attention sdpa the attention rows are one fused kernel call per layer and
    pass instead of two bmm each: the trace shows what changed."""
    calls = {}
    for kind in ("matmul", "sdpa"):
        out_dir = tmp_path / kind
        code, out, err = run_demo(SMALL + ["--attention", kind, "--train-iters", "2",
                                           "--log-interval", "2", "--peak-tflops", "1",
                                           "--profile", "--profile-start", "2",
                                           "--profile-iters", "1", "--profile-dir",
                                           str(out_dir)], capsys)
        assert code == 0, err
        trace = load_trace(str(out_dir / "trace_rank0.json"))
        names = {e.name for e in trace.events}
        calls[kind] = any("scaled_dot_product_flash_attention" in n for n in names)
        profile = attribute(trace, SHAPE, RunShape(seq_length=SEQ, micro_batch_size=MICRO))
        rows = {r.component: r for r in profile.rows}
        # matmul: 1 forward + 2 backward bmm per layer; fused: 1 forward + 1 backward call
        assert rows["attention_scores"].calls == (6 if kind == "matmul" else 4)
    assert calls == {"matmul": False, "sdpa": True}


@pytest.mark.parametrize("argv, message", [
    (["--profile", "--profile-start", "1"], "--profile-start must be at least 2"),
    (["--profile", "--train-iters", "3", "--profile-start", "3", "--profile-iters", "2"],
     "must not exceed --train-iters (3)"),
    (["--attention", "flash"], "--attention"),
])
def test_bad_profile_flags_exit_2(argv, message, capsys):
    code, out, err = run_demo(argv + ["--peak-tflops", "1"], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
