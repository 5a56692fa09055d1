"""Data-parallel demo runs: torchrun with gloo, and DeepSpeed ZeRO-2 — one writer, world size
in the per-device numbers, and the same training as one process on the same global batch.

Marked slow (a few processes each, DeepSpeed compiles a shared-memory op on its first use);
they run in CI.
"""

import contextlib
import io
import json

import pytest

torch = pytest.importorskip("torch")

from demo_helpers import (LINE_FIELDS, counted_flops_per_iteration, number,  # noqa: E402
                          parse_lines, run_module, subprocess_env)

from megatron_flops import sinks  # noqa: E402
from megatron_flops.shapes import ModelShape  # noqa: E402

# global batch 16 = micro 4 × DP 2 × 2 accumulation steps (× 4 in one process)
ARGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "64", "--micro-batch-size", "4", "--global-batch-size", "16",
        "--train-iters", "20", "--log-interval", "5", "--lr-warmup-iters", "5",
        "--peak-tflops", "1"]
SHAPE = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256)
SEQ, GLOBAL_BATCH = 64, 16


@pytest.fixture(scope="module")
def one_process_losses():
    """The same run in one process (4 accumulation steps): the reference losses."""
    from megatron_flops.cli import main
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["demo", *ARGS])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err.getvalue()
    return [number(r["lm loss"]) for r in parse_lines(out.getvalue())]


def torchrun(extra, tmp_path):
    return run_module(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "-m", "megatron_flops.demo", *ARGS, *extra], tmp_path)


def check_two_process_run(result, one_process_losses, tb=None):
    assert result.returncode == 0, result.stderr[-3000:]
    rows = parse_lines(result.stdout)
    # one writer: the last rank prints each line once
    assert [r["iteration"] for r in rows] == [5, 10, 15, 20]
    assert result.stdout.count("mean throughput over iterations") == 1
    counted = counted_flops_per_iteration(SHAPE, SEQ, GLOBAL_BATCH)
    for row in rows:
        for field in LINE_FIELDS:
            assert field in row
        ms = number(row["elapsed time per iteration (ms)"])
        rel = 0.05 / ms + 0.005  # the printed values' rounding
        seconds = ms / 1000
        tokens_per_second = GLOBAL_BATCH * SEQ / seconds
        assert number(row["tokens per second"]) == pytest.approx(tokens_per_second, rel=rel)
        # world size 2 enters every per-device number
        assert number(row["tokens per gpu per second"]) == pytest.approx(tokens_per_second / 2, rel=rel)
        assert number(row["hardware TFLOP/s per gpu"]) == pytest.approx(
            counted / (seconds * 2 * 1e12), rel=rel)
    losses = [number(r["lm loss"]) for r in rows]
    # data parallel over 2 ranks trains exactly what one process does on the same global
    # batch (same samples, averaged gradients); only summation order differs
    assert losses == pytest.approx(one_process_losses, rel=2e-3)
    assert losses[-1] < losses[0] - 0.5
    assert "2 process(es)" in result.stdout
    if tb is not None:
        files = list(tb.glob("events.out.tfevents.*"))
        assert len(files) == 1, files  # written by the last rank only
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        events = EventAccumulator(str(tb))
        events.Reload()
        for _, tag in sinks.TAGS:
            assert [e.step for e in events.Scalars(tag)] == [5, 10, 15, 20]
        for event, row in zip(events.Scalars("throughput/tokens_per_second_per_gpu"), rows):
            assert event.value == pytest.approx(number(row["tokens per gpu per second"]), rel=1e-3)
    return rows


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, one_process_losses):
    tb = tmp_path / "tb"
    result = torchrun(["--tensorboard-dir", str(tb)], tmp_path)
    check_two_process_run(result, one_process_losses, tb)
    assert "DistributedDataParallel (gloo)" in result.stdout


@pytest.mark.slow
def test_deepspeed_zero2_two_processes(tmp_path, one_process_losses):
    pytest.importorskip("deepspeed")
    result = torchrun(["--deepspeed", "--zero-stage", "2"], tmp_path)
    check_two_process_run(result, one_process_losses)
    assert "ZeRO stage 2" in result.stdout


@pytest.mark.slow
def test_deepspeed_config_file_one_process(tmp_path):
    """--deepspeed_config with its own optimizer (torch Adam: no FusedAdam build), ZeRO 1,
    one process without a launcher; batch keys are filled in from the flags."""
    pytest.importorskip("deepspeed")
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({
        "zero_optimization": {"stage": 1},
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "torch_adam": True}},
        "gradient_clipping": 1.0,
    }))
    args = [a for a in ARGS]
    args[args.index("--global-batch-size") + 1] = "8"
    args[args.index("--train-iters") + 1] = "10"
    result = run_module(["-m", "megatron_flops.demo", *args, "--deepspeed",
                         "--deepspeed_config", str(config)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = parse_lines(result.stdout)
    assert [r["iteration"] for r in rows] == [5, 10]
    assert "ZeRO stage 1" in result.stdout and "1 process(es)" in result.stdout
    counted = counted_flops_per_iteration(SHAPE, SEQ, 8)
    for row in rows:
        seconds = number(row["elapsed time per iteration (ms)"]) / 1000
        assert number(row["hardware TFLOP/s per gpu"]) == pytest.approx(
            counted / (seconds * 1e12), rel=0.05 / (seconds * 1000) + 0.005)
    assert number(rows[-1]["lm loss"]) < number(rows[0]["lm loss"])


@pytest.mark.slow
def test_default_demo_command(tmp_path):
    """`megatron-flops demo` exactly as a new user types it (its thread count is its own
    choice for a shared machine); no wall-clock limit, only one on going silent."""
    env = {k: v for k, v in subprocess_env(tmp_path).items() if k != "OMP_NUM_THREADS"}
    result = run_module(["-m", "megatron_flops", "demo"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = parse_lines(result.stdout)
    assert [r["iteration"] for r in rows] == list(range(20, 201, 20))
    losses = [number(r["lm loss"]) for r in rows]
    # from near ln 256 = 5.5 nats per byte to well under half of it
    assert losses[0] > 3.5 and losses[-1] < 2.5
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    assert "mean throughput over iterations 21-200" in result.stdout
