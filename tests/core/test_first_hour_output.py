"""Issue 24: numbers print with the digits they have (one function), never ``None``; the
``--gpu`` names are discoverable."""

import pytest

from megatron_flops.cli import main
from megatron_flops.hardware import PARTS, resolve_peak
from megatron_flops.report import format_significant, format_tflops


@pytest.mark.parametrize("value, text", [
    (0.0011834, "0.00118"), (62.917, "62.9"), (312.0, "312"), (11024.4, "11024"),
    (9.996, "10.0"),            # the rounding carries into a new digit: still 3 digits
    (0.09996, "0.100"), (1.234e-7, "1.23e-07"), (0.0, "0"), (-0.5, "-0.500"), (None, "n/a"),
])
def test_format_significant(value, text):
    assert format_significant(value) == text


@pytest.mark.parametrize("value, text", [
    (83.1666, "83.17"),         # as Megatron's {:.2f} prints it
    (312.0, "312.00"),
    (0.0011834, "0.00118"),     # where {:.2f} prints 0.00
    (0.0051, "0.00510"),
    (None, "n/a"),
])
def test_format_tflops(value, text):
    assert format_tflops(value) == text


SMALL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--seq-length", "32"]


def test_estimate_without_a_device_says_what_to_give(capsys):
    assert main(["estimate", *SMALL, "--iteration-time", "1", "--fp8-format", "hybrid",
                 "--bf16"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out
    assert "give --gpu NAME from `megatron-flops peak --list`" in out
    # 2 layers of 24·T·h² + 4·B·s²·h plus logits 2·T·h·V (V = 50304 padded GPT-2 vocab),
    # × 3 for forward + backward, at 1 s on one GPU: far below 0.01 TFLOP/s, 3 digits kept
    T, h, s, V = 32, 64, 32, 50304
    model = 3 * (2 * (24 * T * h * h + 4 * s * s * h) + 2 * T * h * V)
    assert f"model TFLOP/s per GPU:     {format_significant(model / 1e12)}" in out


def test_peak_list_names_every_gpu(capsys):
    assert main(["peak", "--list"]) == 0
    out = capsys.readouterr().out
    for part in PARTS:
        assert f"\n{part.key} " in out
    assert "989.4" in out           # H100 SXM bf16 dense, the datasheet figure


def test_an_unknown_gpu_points_at_the_list():
    assert "`megatron-flops peak --list`" in resolve_peak("foo", "bf16").source
    assert "`megatron-flops peak --list`" in resolve_peak(None, "bf16").source


def test_run_help_exits_0_and_lists_the_hook_environment():
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path
    src = Path(__file__).resolve().parents[2] / "src"
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run([sys.executable, "-m", "megatron_flops.run", "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: python -m megatron_flops.run")
    # every variable the hook reads, found in its source rather than listed here by hand
    hook = src / "megatron_flops" / "megatron"
    read = set()
    for path in [hook / "calculator.py", *sorted((hook / "hook").glob("*.py"))]:
        read |= set(re.findall(r'"(MEGATRON_FLOPS_[A-Z_]+)"', path.read_text()))
    assert {"MEGATRON_FLOPS_GPU", "MEGATRON_FLOPS_PEAK_TFLOPS"} <= read
    for variable in read:
        assert variable in done.stdout, variable
    empty = subprocess.run([sys.executable, "-m", "megatron_flops.run"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert empty.returncode == 2 and "usage:" in empty.stderr


def test_profile_names_a_missing_trace_before_a_missing_flag(tmp_path, capsys):
    missing = tmp_path / "trace.json"
    assert main(["profile", str(missing)]) == 2        # and no --num-layers either
    err = capsys.readouterr().err
    assert err == (f"megatron-flops: error: TRACE {str(missing)!r} cannot be read: it does not "
                   "exist\n")
