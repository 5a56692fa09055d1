"""The demo trains for real and its log lines, TensorBoard events and summary say true things.

The FLOPs a line's TFLOP/s stands for are checked against PyTorch's own count of the
reference model's matmuls (FlopCounterMode), not against the formulas the meter uses.
"""

import math
import re

import pytest

torch = pytest.importorskip("torch")

from demo_helpers import (LINE_FIELDS, counted_flops_per_iteration, number,  # noqa: E402
                          parse_lines, run_demo)

from megatron_flops import sinks  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

# the demo's default shape, written out by hand: 4 layers, hidden 128, 4 heads, byte vocab
# 256 (already a multiple of Megatron's 128, so padding keeps it), seq 128, micro batch 8
DEFAULT_SHAPE = ModelShape(num_layers=4, hidden_size=128, num_attention_heads=4, vocab_size=256)
SEQ, MICRO = 128, 8
# a smaller shape for the tests that check one feature each (a shared CPU is slow)
SMALL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--seq-length", "64", "--micro-batch-size", "4"]
SMALL_SHAPE = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256)
SMALL_SEQ, SMALL_MICRO = 64, 4


def check_line_arithmetic(row, flops_per_iteration, seq_length, world_size=1):
    """A line's rates follow from its own batch, iteration time and the counted FLOPs.

    Printed values are rounded: ms to 0.1 (relative error up to 0.05/ms), rates to 3 or more
    significant digits (0.5 %); the tolerance is the sum of the two."""
    ms = number(row["elapsed time per iteration (ms)"])
    seconds = ms / 1000.0
    rel = 0.05 / ms + 0.005
    batch = int(row["global batch size"])
    assert number(row["samples per second"]) == pytest.approx(batch / seconds, rel=rel)
    assert number(row["tokens per second"]) == pytest.approx(batch * seq_length / seconds, rel=rel)
    assert number(row["tokens per gpu per second"]) == pytest.approx(
        batch * seq_length / seconds / world_size, rel=rel)
    tflops = flops_per_iteration / (seconds * world_size * 1e12)
    assert number(row["hardware TFLOP/s per gpu"]) == pytest.approx(tflops, rel=rel)


@pytest.mark.slow
def test_default_shape_trains_and_reports(tmp_path, capsys):
    """The default demo, shortened to 40 iterations: exit 0, loss falls, every line complete
    and consistent, TensorBoard holds the throughput tags, the summary is printed."""
    tb = tmp_path / "tb"
    code, out, err = run_demo(["--train-iters", "40", "--log-interval", "10",
                               "--tensorboard-dir", str(tb)], capsys)
    assert code == 0, err
    rows = parse_lines(out)
    assert [r["iteration"] for r in rows] == [10, 20, 30, 40]
    for row in rows:
        for field in LINE_FIELDS:
            assert field in row, (field, row)
    # consumed samples: 10 iterations × global batch 8 per interval
    assert [int(r["consumed samples"]) for r in rows] == [80, 160, 240, 320]

    # learning: uniform guessing over 256 bytes is ln 256 = 5.55 nats; the model must get
    # well below that and keep going down
    losses = [number(r["lm loss"]) for r in rows]
    assert losses[0] < math.log(256)
    assert losses[-1] < losses[0] - 1.0
    assert losses[-1] < 3.0

    counted = counted_flops_per_iteration(DEFAULT_SHAPE, SEQ, MICRO)
    for row in rows:
        check_line_arithmetic(row, counted, SEQ)
        # no recompute: model and hardware FLOPs are the same
        assert row["model TFLOP/s per gpu"] == row["hardware TFLOP/s per gpu"]
        # the unit is in the key: the value is a plain number
        assert row["MFU (%)"] == row["HFU (%)"] and float(row["MFU (%)"]) > 0

    # the start: breakdown table and the peak's source; the end: the summary
    assert "component (" in out and "mlp_up" in out and "logits" in out
    assert "peak for MFU/HFU: measured peak: dense fp32 matmul" in out
    assert "mean throughput over iterations 11-40" in out
    assert "bigscience fork:" in out and "microsoft  fork:" in out
    assert "MFU / HFU:" in out

    # TensorBoard: every throughput tag, once per log line, equal to the console's value
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tb))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for _, tag in sinks.TAGS:
        assert tag in tags, tag
        assert tag + " vs samples" in tags and tag + " vs tokens" in tags
        assert [e.step for e in events.Scalars(tag)] == [10, 20, 30, 40]
    assert [e.step for e in events.Scalars("throughput/mfu vs samples")] == \
        [int(r["consumed samples"]) for r in rows]
    assert [e.step for e in events.Scalars("throughput/mfu vs tokens")] == \
        [int(r["consumed samples"]) * SEQ for r in rows]
    for event, row in zip(events.Scalars("throughput/samples_per_second"), rows):
        assert event.value == pytest.approx(number(row["samples per second"]), rel=1e-3)
    for event, row in zip(events.Scalars("throughput/mfu"), rows):
        assert 100 * event.value == pytest.approx(number(row["MFU (%)"]), abs=0.06)
    for event, row in zip(events.Scalars("lm loss"), rows):
        assert event.value == pytest.approx(number(row["lm loss"]), rel=1e-5)


def test_full_recompute_counts_hardware_flops_above_model_flops(capsys):
    """--checkpoint-activations: HFU > MFU, in the ratio PyTorch counts for the re-run."""
    code, out, err = run_demo(SMALL + ["--train-iters", "4", "--log-interval", "2",
                                       "--checkpoint-activations", "--peak-tflops", "1"], capsys)
    assert code == 0, err
    model_flops = counted_flops_per_iteration(SMALL_SHAPE, SMALL_SEQ, SMALL_MICRO)
    hardware_flops = counted_flops_per_iteration(SMALL_SHAPE, SMALL_SEQ, SMALL_MICRO,
                                                 Recompute("full"))
    assert hardware_flops > model_flops
    rows = parse_lines(out)
    assert len(rows) == 2
    for row in rows:
        check_line_arithmetic(row, hardware_flops, SMALL_SEQ)
        ratio = number(row["hardware TFLOP/s per gpu"]) / number(row["model TFLOP/s per gpu"])
        assert ratio == pytest.approx(hardware_flops / model_flops, rel=0.01)
        # --peak-tflops 1: MFU in percent is 100 × TFLOP/s
        assert number(row["HFU (%)"]) == pytest.approx(100 * number(row["hardware TFLOP/s per gpu"]),
                                                   abs=0.06)
    assert "given (1 TFLOP/s)" in out


def test_glu_and_bf16_autocast(capsys):
    """--swiglu (microsoft's ffn rounding) under bf16 autocast on CPU: trains, counts the GLU."""
    code, out, err = run_demo(SMALL + ["--train-iters", "4", "--log-interval", "2", "--swiglu",
                                       "--bf16"], capsys)
    assert code == 0, err
    # microsoft fork's --swiglu ffn: int(8h/3 / 64)·64 = int(170.67/64)·64 = 128 for h=64
    shape = ModelShape(2, 64, 4, 256, ffn_hidden_size=128, glu_activation="swiglu")
    counted = counted_flops_per_iteration(shape, SMALL_SEQ, SMALL_MICRO)
    rows = parse_lines(out)
    assert len(rows) == 2
    for row in rows:
        check_line_arithmetic(row, counted, SMALL_SEQ)
    assert "ffn 128 (swiglu)" in out
    assert "dense bf16 matmul" in out  # the peak is the bf16 one


def test_batch_rampup_is_counted_per_iteration(capsys):
    """--rampup-batch-size 4 4 32 to 12: batch sizes by hand from Megatron's rule
    (2 increments over 32 samples, one every 16): 4,4,4,4 (0-15 consumed), 8,8 (16-31),
    then 12 from 32 samples on."""
    code, out, err = run_demo(SMALL + ["--train-iters", "8", "--log-interval", "1",
                                       "--global-batch-size", "12",
                                       "--rampup-batch-size", "4", "4", "32",
                                       "--peak-tflops", "1"], capsys)
    assert code == 0, err
    rows = parse_lines(out)
    assert [int(r["global batch size"]) for r in rows] == [4, 4, 4, 4, 8, 8, 12, 12]
    assert [int(r["consumed samples"]) for r in rows] == [4, 8, 12, 16, 24, 32, 44, 56]
    per_sample = counted_flops_per_iteration(SMALL_SHAPE, SMALL_SEQ, 1)
    for row in rows:
        check_line_arithmetic(row, per_sample * int(row["global batch size"]), SMALL_SEQ)


def test_data_path_and_seed_reproduce(tmp_path, capsys):
    """--data-path trains on the user's text; the same seed gives the same losses."""
    text = tmp_path / "mine.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    argv = SMALL + ["--data-path", str(text), "--train-iters", "4", "--log-interval", "2",
                    "--peak-tflops", "1"]
    code, first, err = run_demo(argv, capsys)
    assert code == 0, err
    assert f"data: {text}" in first
    code, second, err = run_demo(argv, capsys)
    assert code == 0, err
    assert [r["lm loss"] for r in parse_lines(first)] == [r["lm loss"] for r in parse_lines(second)]


def test_wandb_receives_the_same_tags(monkeypatch, capsys):
    """--wandb logs sinks' tags through wandb.log (a stand-in module records the calls)."""
    import sys
    import types
    calls = []

    class FakeRun:
        def log(self, values, step=None):
            calls.append((step, dict(values)))

        def finish(self):
            calls.append(("finished", {}))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    code, out, err = run_demo(SMALL + ["--train-iters", "4", "--log-interval", "2", "--wandb",
                                       "--peak-tflops", "1"], capsys)
    assert code == 0, err
    throughput = [(step, values) for step, values in calls if "throughput/mfu" in values]
    assert [step for step, _ in throughput] == [2, 4]
    for _, values in throughput:
        assert set(values) == {tag for _, tag in sinks.TAGS}
    assert calls[-1][0] == "finished"


def test_wandb_missing_is_a_usage_error(monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    code, out, err = run_demo(["--wandb", "--train-iters", "2"], capsys)
    assert code == 2
    assert "--wandb needs wandb" in err


@pytest.mark.parametrize("argv, message", [
    (["--train-iters", "0"], "--train-iters must be positive"),
    (["--log-interval", "x"], "--log-interval must be a number"),
    (["--tensor-model-parallel-size", "2"], "--tensor-model-parallel-size must be 1"),
    (["--vocab-size", "100"], "--vocab-size (100) must be at least 256"),
    (["--world-size", "3"], "--world-size (3) must equal the number of processes (1)"),
    (["--num-attention-heads", "3"], "--num-attention-heads (3) must divide --hidden-size (128)"),
    (["--glu-activation", "tanh"], "--glu-activation must be one of"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--deepspeed_config", "ds.json"], "--deepspeed_config needs --deepspeed"),
    (["--data-path", "/nonexistent/text.txt"], "--data-path '/nonexistent/text.txt' cannot be read"),
    (["--min-lr", "1"], "--min-lr (1.0) must be between 0 and --lr"),
    (["--global-batch-size", "12"], "--global-batch-size (12) must be a multiple of --micro-batch-size (8)"),
    (["--max-position-embeddings", "64"], "--seq-length (128) must not exceed --max-position-embeddings (64)"),
])
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    code, out, err = run_demo(argv + ["--peak-tflops", "1"], capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert parse_lines(out) == []


def test_too_short_data_path(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    code, out, err = run_demo(["--data-path", str(short), "--peak-tflops", "1"], capsys)
    assert code == 2
    assert "--data-path text has 4 bytes; --seq-length 128 needs at least 130" in err


def test_a_peak_below_the_achieved_rate_is_called_out(capsys):
    """MFU above 100 % cannot be real: the shared warning (the one estimate, relog and the
    hook print) names the cause, once among the interval lines and once in the summary."""
    code, out, err = run_demo(SMALL + ["--train-iters", "4", "--log-interval", "1",
                                       "--peak-tflops", "1e-9"], capsys)
    assert code == 0, err
    rows = parse_lines(out)
    assert all(number(r["HFU (%)"]) > 100 for r in rows)
    warnings = [line for line in out.splitlines() if "above 100% — impossible" in line]
    assert len(warnings) == 2, out
    interval, summary = warnings
    # the first interval line's MFU, to the warning's whole percent (no recompute: MFU = HFU);
    # the table prints fewer digits than the exact value the warning rounds, so allow one unit
    warned = re.match(r"warning: MFU (\d+)% is above 100%", interval)
    assert warned, interval
    assert abs(int(warned.group(1)) - number(rows[0]["MFU (%)"])) <= 1
    assert summary.startswith("  warning: MFU ")
    for line in warnings:   # the typed peak's source, the demo's ways to a better one
        assert "--peak-tflops, or measure it on a quiet machine (`megatron-flops peak`)" in line
        assert "--bf16 or --fp16 missing?" in line   # a given fp32 peak for an fp32 run
    assert out.index(interval) < out.index(" iteration        2/")


def test_measured_peak_is_reported_and_cached(tmp_path, capsys):
    """Without --peak-tflops on CPU the peak is measured (and cached), and MFU uses it."""
    import json
    # one thread given: without --threads the count follows the machine's load (auto_threads)
    code, out, err = run_demo(SMALL + ["--train-iters", "2", "--log-interval", "1",
                                       "--threads", "1"], capsys)
    assert code == 0, err
    cache = json.loads((tmp_path / "cache" / "measured_peaks.json").read_text())
    (key, best), = cache.items()
    assert "| fp32 | 1 threads" in key
    # the peak the lines used, as the start of the log states it (3 significant digits)
    match = re.search(r"peak for MFU/HFU: measured peak: dense fp32 matmul .*?, ([0-9.e-]+) "
                      r"TFLOP/s, best of now", out)
    assert match, out
    peak = float(match.group(1))
    assert peak <= best * 1.005  # the cache holds the best seen, at the end too
    for row in parse_lines(out):
        # MFU = model TFLOP/s / that peak.  Each input is printed rounded: the peak to 3
        # significant digits and the TFLOP/s to 3-4 (up to 0.5 % each, so 1 % together), the
        # MFU to 0.1 % (0.05 points): the two errors add, they do not take turns.
        expected = 100 * number(row["model TFLOP/s per gpu"]) / peak
        assert abs(number(row["MFU (%)"]) - expected) <= 0.05 + 0.01 * expected


def test_fp16_autocast_with_a_gradient_scaler(capsys):
    code, out, err = run_demo(SMALL + ["--train-iters", "4", "--log-interval", "2", "--fp16",
                                       "--peak-tflops", "1"], capsys)
    assert code == 0, err
    rows = parse_lines(out)
    counted = counted_flops_per_iteration(SMALL_SHAPE, SMALL_SEQ, SMALL_MICRO)
    for row in rows:
        assert math.isfinite(number(row["lm loss"]))
        check_line_arithmetic(row, counted, SMALL_SEQ)
    assert ", fp16" in out  # the run line names the dtype
