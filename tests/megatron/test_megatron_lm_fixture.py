"""The Megatron-LM training-loop fixture: its console line in three eras, its FLOPs formula
against the conventions module's independent reading, its log-time throughput, and the
test-data logs generated from it."""

import filecmp
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_flops.conventions import RunFacts, megatron_lm_current_flops
from megatron_flops.flops import flops_breakdown
from megatron_flops.megatron.args import shapes_from_args

FIXTURE = str(Path(__file__).resolve().parent / "fixtures" / "megatron_lm")
DATA = Path(__file__).resolve().parents[1] / "data" / "megatron_lm"
LINE = re.compile(r"^(?P<stamp> \[[^\]]+\])? iteration +(?P<iteration>\d+)/ +\d+ \|")
BASE = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 "
        "--micro-batch-size 2 --train-iters 8 --log-interval 4 --log-throughput").split()


def iteration_lines(out):
    return [line for line in out.splitlines() if LINE.match(line)]


def run_fixture(argv, tmp_path):
    """The fixture's pretrain_gpt.py in a subprocess (world size 1): its stdout."""
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", PYTHONPATH=FIXTURE)
    return subprocess.run([sys.executable, os.path.join(FIXTURE, "pretrain_gpt.py"), *argv],
                          env=env, check=True, capture_output=True, text=True,
                          cwd=tmp_path).stdout


@pytest.mark.parametrize("era, stamp, first", [
    ("2023", None, False),
    ("2024", r" \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]", False),
    ("2026", r" \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\]", True),
])
def test_console_line_of_each_era(tmp_path, era, stamp, first):
    out = run_fixture(BASE + ["--fixture-log-format", era], tmp_path)
    lines = iteration_lines(out)
    assert [int(LINE.match(line)["iteration"]) for line in lines] == ([1] if first else []) + [4, 8]
    for line in lines:
        found = LINE.match(line)["stamp"]
        assert (found is None) if stamp is None else re.fullmatch(stamp, found)
        assert " | throughput per GPU (TFLOP/s/GPU): " in line
    assert "------------------------ arguments ------------------------" in out
    assert "  num_layers ...................................... 2" in out  # 48-wide dots


def fixture_module(name):
    sys.path.insert(0, FIXTURE)
    try:
        for module in [m for m in sys.modules if m == "megatron" or m.startswith("megatron.")]:
            del sys.modules[module]
        return importlib.import_module(name)
    finally:
        sys.path.remove(FIXTURE)


@pytest.fixture
def fixture_args(capsys):
    """The fixture's parse_args (prints the dump) and num_floating_point_operations."""
    arguments = fixture_module("megatron.training.arguments")
    training = fixture_module("megatron.training.training")
    yield arguments.parse_args, training.num_floating_point_operations
    for module in [m for m in sys.modules if m == "megatron" or m.startswith("megatron.")]:
        del sys.modules[module]


@pytest.mark.parametrize("flags", [
    "",
    "--group-query-attention --num-query-groups 2 --swiglu --ffn-hidden-size 96",
    "--num-experts 4 --moe-router-topk 2 --moe-layer-freq ([0]*1+[1]*1) --swiglu",
    "--num-experts 4 --moe-router-topk 1 --moe-layer-freq 1 --untie-embeddings-and-output-weights",
])
def test_fixture_formula_is_megatron_lms_current_formula(fixture_args, flags):
    """Two readings of Megatron-LM's num_floating_point_operations (this fixture's and
    conventions.megatron_lm_current_flops) agree; both are model FLOPs, causal."""
    parse_args, num_floating_point_operations = fixture_args
    args = parse_args(BASE + flags.split())
    model, run = shapes_from_args(args)
    fixture_flops = num_floating_point_operations(args, 8)
    assert fixture_flops == pytest.approx(megatron_lm_current_flops(RunFacts(model, 8, 32)), rel=1e-12)
    # and it is not our exact causal model count: Megatron-LM leaves out the MoE router
    exact = flops_breakdown(model, 32, 8, causal=True).model_flops
    assert (fixture_flops == exact) == (not model.is_moe)


def test_log_time_batch_is_wrong_across_a_ramp_up(fixture_args, tmp_path):
    """Megatron-LM multiplies the *log-time* batch by the interval's mean time: across a
    ramp-up step the printed throughput is not the interval's FLOPs / seconds."""
    argv = BASE + ["--global-batch-size", "8", "--rampup-batch-size", "2", "2", "12",
                   "--fake-seconds-per-iteration", "1e-6", "--fixture-log-format", "2024"]
    out = run_fixture(argv, tmp_path)
    # iterations 1-4 consume 2, 2, 4, 6 samples (ramp 2 -> 8 by 2 every 4 samples); the line
    # says batch 6 and multiplies it by the interval's mean time
    line = iteration_lines(out)[0]
    printed = float(re.search(r"throughput per GPU \(TFLOP/s/GPU\): ([\d.]+)", line)[1])
    sizes = re.search(r"global batch size: +(\d+)", line)[1]
    parse_args, num_floating_point_operations = fixture_args
    per_sample = num_floating_point_operations(parse_args(argv), 1)
    consumed = int(re.search(r"consumed samples: +(\d+)", line)[1])
    exact = consumed * per_sample / (4 * 1e-6 * 1e12)
    logged = int(sizes) * per_sample / (1e-6 * 1e12)
    assert (consumed, int(sizes)) == (14, 6)
    assert round(logged, 1) == printed
    assert exact == pytest.approx(printed * 14 / 24, rel=1e-3)


def test_test_data_is_what_the_fixture_generates(tmp_path):
    spec = importlib.util.spec_from_file_location("generate_megatron_lm_logs", DATA / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.main(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in DATA.iterdir() if p.suffix in (".log", ".txt"))
    match, mismatch, errors = filecmp.cmpfiles(tmp_path, DATA, names, shallow=False)
    assert (mismatch, errors) == ([], [])
