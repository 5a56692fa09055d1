"""The hook on the Megatron-LM fixture, held to hand counts: the console field ``throughput
per GPU (TFLOP/s/GPU)`` and the TensorBoard scalar ``throughput`` become the exact model
TFLOP/s per GPU of each interval across a batch ramp-up; our ``throughput/*`` tags beside
them; the start summary compares Megatron-LM's own formula with the model count; a feature
not counted yet makes the hook step aside once."""

import os
import re

import pytest

from .conftest import FIXTURES, _purge_megatron, read_scalars, require_tensorboard

CHECKOUT = os.path.join(FIXTURES, "megatron_lm")
L, H, N, S, V = 2, 64, 4, 32, 128
SECONDS, STARTUP = 1e-6, 1e-5  # the fixture's virtual clock: per iteration, before iteration 1
ARGV = (f"--num-layers {L} --hidden-size {H} --num-attention-heads {N} --seq-length {S} "
        f"--vocab-size {V} --micro-batch-size 2 --global-batch-size 8 "
        "--rampup-batch-size 2 2 12 --train-iters 8 --log-interval 4 --log-throughput "
        f"--fake-seconds-per-iteration {SECONDS} --fake-startup-seconds {STARTUP}").split()

# by hand: a layer's forward is 24·s·h² + 4·s²·h per sample (QKV 6sh², output 2sh², MLP 16sh²,
# scores and A·V 2s²h each), the logits 2·s·h·V once; model FLOPs are 3 × forward
MODEL_FLOPS_PER_SAMPLE = 3 * (L * (24 * S * H * H + 4 * S * S * H) + 2 * S * H * V)
assert MODEL_FLOPS_PER_SAMPLE == 22_020_096
# Megatron-LM's formula (d98e8a64): causal core attention, 2·s²·h instead of 4·s²·h
MEGATRON_LM_FLOPS_PER_SAMPLE = 3 * (L * (24 * S * H * H + 2 * S * S * H) + 2 * S * H * V)
# --rampup-batch-size 2 2 12 to 8: +2 every 12 / 3 = 4 samples; batch b at consumed c:
# c = 0 → 2, 2 → 2, 4 → 4, 8 → 6, 14 → 8, then 8
BATCHES = (2, 2, 4, 6, 8, 8, 8, 8)


def tflops(samples, seconds):
    return samples * MODEL_FLOPS_PER_SAMPLE / (seconds * 1e12)  # one GPU


# iteration 1's line does not reset the timer: the line at 4 covers iterations 1-4 and the
# start-up; the line at 8 covers 5-8
EXPECTED = {4: tflops(sum(BATCHES[:4]), STARTUP + 4 * SECONDS),
            8: tflops(sum(BATCHES[4:]), 4 * SECONDS)}


def fields(out, key):
    pattern = re.compile(r"iteration +(\d+)/ +\d+ \|.*?\| " + re.escape(key) + r": ([^|]+) \|")
    return {int(m[1]): m[2].strip() for m in pattern.finditer(out)}


def test_console_and_tensorboard_throughput_are_exact_model_flops(runner, tmp_path,
                                                                    monkeypatch):
    require_tensorboard()
    monkeypatch.chdir(tmp_path)
    board = str(tmp_path / "tb")
    out = runner.run(CHECKOUT, ARGV + ["--tensorboard-dir", board,
                                       "--log-timers-to-tensorboard"])
    throughput = fields(out, "throughput per GPU (TFLOP/s/GPU)")
    assert throughput[4] == f"{EXPECTED[4]:.1f}" and throughput[8] == f"{EXPECTED[8]:.1f}"
    model = fields(out, "model TFLOP/s per gpu")
    assert model[8] == f"{EXPECTED[8]:.2f}"
    scalars = read_scalars(board)
    logged = dict(scalars["throughput"])
    ours = dict(scalars["throughput/model_tflops_per_gpu"])
    for iteration, value in EXPECTED.items():
        # TensorBoard keeps float32
        assert logged[iteration] == pytest.approx(value, rel=1e-6)
        assert ours[iteration] == pytest.approx(value, rel=1e-6)
    # no recompute: hardware = model
    assert dict(scalars["throughput/hardware_tflops_per_gpu"])[8] == pytest.approx(
        EXPECTED[8], rel=1e-6)


def test_without_the_hook_the_fixture_prints_megatron_lms_log_time_number(runner, tmp_path,
                                                                          monkeypatch):
    """The control: Megatron-LM's own number (causal formula, batch 6 at log time for all
    four iterations of the first interval) differs from the exact one, so the test above
    can fail."""
    monkeypatch.chdir(tmp_path)
    out = runner.run(CHECKOUT, ARGV, hook=False)
    throughput = fields(out, "throughput per GPU (TFLOP/s/GPU)")
    own = 6 * MEGATRON_LM_FLOPS_PER_SAMPLE / ((STARTUP + 4 * SECONDS) / 4 * 1e12)
    assert throughput[4] == f"{own:.1f}" != f"{EXPECTED[4]:.1f}"


def test_start_summary_compares_megatron_lms_formula_with_the_model_count(runner, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner.run(CHECKOUT, ARGV + ["--recompute-granularity", "full",
                                       "--recompute-method", "uniform"])
    theirs, ours = 8 * MEGATRON_LM_FLOPS_PER_SAMPLE, 8 * MODEL_FLOPS_PER_SAMPLE
    line = next(line for line in out.splitlines() if "Megatron-LM's own formula" in line)
    # against the model count, not the hardware count (full recompute adds a forward)
    assert (f"counts {theirs:.4g} FLOPs per iteration for this shape, "
            f"{100 * (theirs / ours - 1):+.1f}% vs the exact model count {ours:.4g}") in line


def test_a_feature_not_counted_yet_makes_the_hook_step_aside_once(runner, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ARGV + ["--mtp-use-repeated-layer"]
    out = runner.run(CHECKOUT, argv)
    plain = runner.run(CHECKOUT, argv, hook=False)
    messages = [line for line in out.splitlines() if line.startswith("megatron-flops:")]
    assert len(messages) == 1, messages
    assert "--mtp-use-repeated-layer: MTP with one shared layer (its parameters counted " \
           "once) is not counted yet" in messages[0]
    assert "training continues" in messages[0]
    # Megatron-LM's own numbers stay, nothing of ours is added
    assert fields(out, "throughput per GPU (TFLOP/s/GPU)") == \
        fields(plain, "throughput per GPU (TFLOP/s/GPU)")
    assert "model TFLOP/s per gpu" not in out


def test_installed_after_the_import_it_patches_megatron_lms_training_module(runner, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner.run(CHECKOUT, ARGV, late_install=True)
    assert fields(out, "throughput per GPU (TFLOP/s/GPU)")[8] == f"{EXPECTED[8]:.1f}"


def test_log_interval_one_iteration_one_is_not_reset_and_the_next_line_covers_it(
        runner, tmp_path, monkeypatch):
    """With --log-interval 1 the timer is already watched at iteration 1, whose line does
    not reset it: the line at 2 covers iterations 1-2 and the start-up, the line at 3 only 3.
    --rampup-batch-size 2 2 4 to 8 (+2 every 4/3 samples): batches 2, 4, 8, 8 by hand, so
    iterations 1-2 differ from two iterations at the log-time batch."""
    monkeypatch.chdir(tmp_path)
    argv = (f"--num-layers {L} --hidden-size {H} --num-attention-heads {N} --seq-length {S} "
            f"--vocab-size {V} --micro-batch-size 2 --global-batch-size 8 "
            "--rampup-batch-size 2 2 4 --train-iters 4 --log-interval 1 --log-throughput "
            f"--fake-seconds-per-iteration {SECONDS} --fake-startup-seconds {STARTUP}").split()
    out = runner.run(CHECKOUT, argv)
    assert fields(out, "global batch size") == {1: "2", 2: "4", 3: "8", 4: "8"}
    model = fields(out, "model TFLOP/s per gpu")
    assert model[2] == f"{tflops(2 + 4, STARTUP + 2 * SECONDS):.2f}"
    assert model[3] == f"{tflops(8, SECONDS):.2f}"




# packed (THD): every sample holds documents of 10 and 6 tokens (16 of S = 32, the rest
# padding); attention runs per document, 4·H·(10² + 6²) per layer instead of 4·S²·H, every
# GEMM still over all S tokens (they run on the padding too)
PACKED_FLOPS_PER_SAMPLE = 3 * (L * (24 * S * H * H + 4 * H * (10 ** 2 + 6 ** 2)) + 2 * S * H * V)


def test_packed_sequences_are_counted_from_the_loops_sum_of_squares(runner, tmp_path,
                                                                    monkeypatch):
    """Megatron-LM's loop passes each iteration's Σ Lᵢ² (and Σ Lᵢ) to
    num_floating_point_operations and training_log; the hook counts the packed attention
    exactly: the console field per interval, and progress.txt's running total."""
    monkeypatch.chdir(tmp_path)
    save = tmp_path / "checkpoints"
    argv = ARGV + ["--fake-document-lengths", "10,6", "--save", str(save),
                   "--save-interval", "8"]
    out = runner.run(CHECKOUT, argv)
    packed = {4: sum(BATCHES[:4]) * PACKED_FLOPS_PER_SAMPLE / ((STARTUP + 4 * SECONDS) * 1e12),
              8: sum(BATCHES[4:]) * PACKED_FLOPS_PER_SAMPLE / (4 * SECONDS * 1e12)}
    throughput = fields(out, "throughput per GPU (TFLOP/s/GPU)")
    assert throughput[4] == f"{packed[4]:.1f}" and throughput[8] == f"{packed[8]:.1f}"
    assert fields(out, "model TFLOP/s per gpu")[8] == f"{packed[8]:.2f}"
    assert packed[8] < EXPECTED[8]  # not the unpacked count
    progress = (save / "progress.txt").read_text()
    total = sum(BATCHES) * PACKED_FLOPS_PER_SAMPLE
    assert f"Floating-point operations: {total:.2e}" in progress

# MoE + shared experts + MTP (flags as in d98e8a64 arguments.py): 2 layers, h 64, n 4, GQA
# g 2 (d 16), SwiGLU f 96, layer 0 dense, layer 1 MoE (top-2 of 4, --moe-ffn-hidden-size 32,
# shared 48), one MTP layer (built like layer 1), V 128, s 32, B 8.
MOE_MTP_FLAGS = (f"--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length {S} "
                 "--vocab-size 128 --micro-batch-size 8 --train-iters 1 "
                 "--group-query-attention --num-query-groups 2 --swiglu --ffn-hidden-size 96 "
                 "--num-experts 4 --moe-router-topk 2 --moe-layer-freq ([0]*1+[1]*1) "
                 "--moe-ffn-hidden-size 32 --moe-shared-expert-intermediate-size 48 "
                 "--mtp-num-layers 1").split()
# by hand, per token, each GEMM × 3 passes × 2 per MAC: projections 6·(64·(64 + 2·32) + 64·64)
# per layer (3 layers with MTP); MLP 6·64·96·3 (dense), 6·64·(32·2 + 48)·3 (MoE, twice);
# logits 6·64·128 per head (2); MTP's 2h -> h projection and its 3h norm term 6·(2·64² + 3·64);
# core attention 6·64 per layer per s², causal (B·s² = 8·32²)
MOE_MTP_MEGATRON_LM_FLOPS = (
    8 * S * (3 * 6 * (64 * 128 + 64 * 64) + 6 * 64 * 96 * 3 + 2 * 6 * 64 * 112 * 3
             + 2 * 6 * 64 * 128 + 6 * (2 * 64 * 64 + 3 * 64))
    + 8 * S * S * 3 * 6 * 64)


def test_megatron_lms_formula_counts_moe_ffn_shared_experts_and_mtp():
    """The fixture's re-derivation of d98e8a64's num_floating_point_operations and our
    ``megatron-lm`` convention (from the shapes the hook reads from the same args) both equal
    the hand count."""
    from megatron_flops.conventions import RunFacts, convention
    from megatron_flops.megatron.args import shapes_from_args
    from .test_megatron_lm_fixture import fixture_module
    try:
        args = fixture_module("megatron.training.arguments").parse_args(MOE_MTP_FLAGS)
        training = fixture_module("megatron.training.training")
        assert training.num_floating_point_operations(args, 8) == MOE_MTP_MEGATRON_LM_FLOPS
    finally:
        _purge_megatron()
    model, _ = shapes_from_args(args)
    assert convention("megatron-lm").flops(RunFacts(model, 8, S)) == \
        pytest.approx(MOE_MTP_MEGATRON_LM_FLOPS, rel=1e-12)

# ---- megatron-flops patch on a Megatron-LM checkout -----------------------------------

LM_TRAINING = os.path.join("megatron", "training", "training.py")


@pytest.fixture
def lm_checkout(tmp_path):
    import shutil
    target = tmp_path / "Megatron-LM"
    shutil.copytree(CHECKOUT, target, ignore=shutil.ignore_patterns("__pycache__"))
    return str(target)


def test_patch_dry_run_check_and_revert_on_a_megatron_lm_checkout(lm_checkout, capsys):
    from megatron_flops.cli import main as cli_main
    path = os.path.join(lm_checkout, LM_TRAINING)
    with open(path, "rb") as f:
        original = f.read()
    assert cli_main(["patch", lm_checkout, "--check"]) == 1
    assert "unpatched (megatron-lm fork)" in capsys.readouterr().out
    assert cli_main(["patch", lm_checkout, "--dry-run"]) == 0
    diff = capsys.readouterr().out
    assert diff.startswith(f"--- a/{LM_TRAINING}\n+++ b/{LM_TRAINING}\n")
    assert "+    _megatron_flops.install(training_module=__name__)" in diff.splitlines()
    with open(path, "rb") as f:
        assert f.read() == original  # a dry run writes nothing
    assert cli_main(["patch", lm_checkout]) == 0
    assert cli_main(["patch", lm_checkout]) == 0  # twice: unchanged
    assert "already patched" in capsys.readouterr().out
    with open(path, "rb") as f:
        patched = f.read()
    assert patched.startswith(original) and patched.count(b"# megatron-flops: begin") == 1
    compile(patched, LM_TRAINING, "exec")
    assert cli_main(["patch", lm_checkout, "--check"]) == 0
    assert cli_main(["patch", lm_checkout, "--revert"]) == 0
    with open(path, "rb") as f:
        assert f.read() == original


def test_patch_refuses_a_megatron_lm_training_module_without_the_formula(lm_checkout, capsys):
    from megatron_flops.cli import main as cli_main
    path = os.path.join(lm_checkout, LM_TRAINING)
    with open(path, "rb") as f:
        text = f.read().replace(b"def num_floating_point_operations(", b"def flops(")
    with open(path, "wb") as f:
        f.write(text)
    assert cli_main(["patch", lm_checkout]) == 2
    err = capsys.readouterr().err
    assert "unknown layout, nothing written" in err and "Traceback" not in err
    with open(path, "rb") as f:
        assert f.read() == text


def test_patched_megatron_lm_checkout_reports_exact_numbers_without_install(
        lm_checkout, runner, tmp_path, monkeypatch, capsys):
    from megatron_flops.cli import main as cli_main
    assert cli_main(["patch", lm_checkout]) == 0
    monkeypatch.chdir(tmp_path)
    out = runner.run(lm_checkout, ARGV, hook=False)  # the appended block installs the hook
    assert out.count("megatron-flops: hooked NVIDIA Megatron-LM") == 1
    assert fields(out, "throughput per GPU (TFLOP/s/GPU)")[8] == f"{EXPECTED[8]:.1f}"
