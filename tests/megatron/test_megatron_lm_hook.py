"""The hook on the Megatron-LM training-loop fixture: Megatron-LM's own ``throughput per GPU``
field, its W&B ``throughput`` scalar and the ``progress.txt`` FLOPs become exact model FLOPs,
per iteration across a batch ramp-up; iteration 1's line keeps Megatron-LM's number."""

import re
import sys
from pathlib import Path

import pytest

from megatron_flops.flops import flops_breakdown
from megatron_flops.megatron import hook as hook_module
from megatron_flops.shapes import ModelShape

FIXTURE = str(Path(__file__).resolve().parent / "fixtures" / "megatron_lm")
# h 64, 4 heads, 2 layers, s 32, vocabulary 128 (so that attention is a visible share and
# Megatron-LM's causal count differs from our dense one by more than progress.txt's 3 digits)
MODEL = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128,
                   max_position_embeddings=32)
SECONDS = 1e-6  # virtual seconds per iteration (large TFLOP/s on a tiny model)
ARGV = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 "
        "--micro-batch-size 2 --global-batch-size 8 --rampup-batch-size 2 2 12 --train-iters 8 "
        "--log-interval 4 --log-throughput --log-timers-to-tensorboard --wandb-project p "
        f"--fake-seconds-per-iteration {SECONDS} --fake-startup-seconds 1e-5 "
        "--save checkpoints --save-interval 8 --vocab-size 128").split()


def purge():
    for name in [m for m in sys.modules if m == "megatron" or m.startswith("megatron.")]:
        del sys.modules[name]


@pytest.fixture
def run_megatron_lm(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(hook=True):
        purge()
        sys.path.insert(0, FIXTURE)
        capsys.readouterr()
        try:
            if hook:
                hook_module.install()
            import megatron.training
            megatron.training.pretrain(list(ARGV))
            wandb = sys.modules["megatron.training.global_vars"].get_wandb_writer()
        finally:
            hook_module.uninstall()
            sys.path.remove(FIXTURE)
            purge()
        return capsys.readouterr().out, wandb, (tmp_path / "checkpoints" / "progress.txt").read_text()
    return run


def throughput_fields(out):
    return {int(m[1]): float(m[2]) for m in re.finditer(
        r"iteration +(\d+)/ +\d+ \|.*? throughput per GPU \(TFLOP/s/GPU\): ([\d.]+) \|", out)}


def test_throughput_field_and_scalar_are_exact_model_flops(run_megatron_lm):
    out, wandb, progress = run_megatron_lm()
    assert "megatron-flops: hooked NVIDIA Megatron-LM" in out
    per_sample = flops_breakdown(MODEL, 32).model_flops
    # ramp 2 -> 8 by 2 every 4 samples: batches 2, 2, 4, 6 | 8, 8, 8, 8
    # iteration 1's line reads the timer without resetting it, so the first interval is
    # iterations 1-4 (with the start-up), the second 5-8
    first = (2 + 2 + 4 + 6) * per_sample / ((4 * SECONDS + 1e-5) * 1e12)
    second = 4 * 8 * per_sample / (4 * SECONDS * 1e12)
    fields = throughput_fields(out)
    assert fields[4] == pytest.approx(first, abs=0.05)
    assert fields[8] == pytest.approx(second, abs=0.05)
    scalars = {step: data["throughput"] for data, step in wandb.logged if "throughput" in data}
    # (iteration 1 writes the scalar too, as Megatron-LM does: its own number, see below)
    assert scalars[4] == pytest.approx(first, rel=1e-9)
    assert scalars[8] == pytest.approx(second, rel=1e-9)
    assert round(scalars[1], 1) == fields[1]
    # our fields beside Megatron-LM's, and the throughput/* keys
    assert all(" model TFLOP/s per gpu: " in line for line in out.splitlines()
               if re.search(r"iteration +[48]/", line))
    assert any(key.startswith("throughput/") for data, _ in wandb.logged for key in data)
    # progress.txt: the FLOPs so far are the exact model FLOPs of every batch trained
    total = float(re.search(r"Floating-point operations: ([\d.e+]+)", progress)[1])
    assert total == pytest.approx((14 + 32) * per_sample, rel=5e-3)  # printed with 3 digits


def test_iteration_one_keeps_megatron_lms_number(run_megatron_lm):
    hooked, _, _ = run_megatron_lm()
    plain, _, _ = run_megatron_lm(hook=False)
    assert throughput_fields(hooked)[1] == throughput_fields(plain)[1]
    # without the hook the first interval's number uses the log-time batch (6) for all 4
    assert throughput_fields(plain)[4] > throughput_fields(hooked)[4]


def test_patch_a_megatron_lm_checkout(tmp_path, capsys, monkeypatch):
    """``megatron-flops patch`` appends its block to megatron/training/training.py; the
    patched checkout then reports exact numbers with no install() call; --revert restores
    the file byte for byte."""
    import shutil
    from megatron_flops.commands.patch import patch_main

    checkout = tmp_path / "Megatron-LM"
    shutil.copytree(FIXTURE, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    target = checkout / "megatron" / "training" / "training.py"
    original = target.read_bytes()
    assert patch_main([str(checkout)]) == 0
    assert "patched (megatron-lm fork)" in capsys.readouterr().out
    assert target.read_bytes().startswith(original) and target.read_bytes() != original
    assert patch_main([str(checkout), "--check"]) == 0
    monkeypatch.chdir(tmp_path)
    purge()
    sys.path.insert(0, str(checkout))
    try:
        import megatron.training
        megatron.training.pretrain(list(ARGV))
    finally:
        hook_module.uninstall()
        sys.path.remove(str(checkout))
        purge()
    out = capsys.readouterr().out
    per_sample = flops_breakdown(MODEL, 32).model_flops
    assert throughput_fields(out)[8] == pytest.approx(32 * per_sample / (4 * SECONDS * 1e12), abs=0.05)
    assert patch_main([str(checkout), "--revert"]) == 0
    assert target.read_bytes() == original
