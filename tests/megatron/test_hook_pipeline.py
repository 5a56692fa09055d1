"""The hook's per-pipeline-rank figures (issue 22) on the fixture forks: the logging rank's own
TFLOP/s and MFU beside the even ones, and every rank with the spread in the start summary.

Hand counts from the table in DESIGN.md §2 (``hand_forward_flops`` of tests/megatron/test_hook.py,
written out again here): 2 layers on PP 2 split evenly, one layer per rank; the last rank also
runs the logits (3 passes: forward and backward)."""

import pytest

SECONDS = 1e-6  # the fixtures' virtual clock
S, H, N, V = 32, 64, 4, 1024
BASE = ["--num-layers", "2", "--hidden-size", str(H), "--num-attention-heads", str(N),
        "--vocab-size", "1000", "--fake-seconds-per-iteration", str(SECONDS), "--seq-length",
        str(S), "--micro-batch-size", "2", "--train-iters", "6", "--log-interval", "3",
        "--pipeline-model-parallel-size", "2"]


def layer_and_logits(s=S, h=H, n=N):
    d, f = h // n, 4 * h
    layer = (2 * s * h * n * d + 2 * s * h * 2 * n * d + 4 * n * s * s * d + 2 * s * n * d * h
             + 2 * s * h * f + 2 * s * f * h)
    return layer, 2 * s * h * V


@pytest.mark.parametrize("fork", ["bigscience", "microsoft"])
def test_the_logging_rank_prints_its_own_figure(fork, runner, tools, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")   # PP 2, one GPU per pipeline rank
    monkeypatch.setenv("RANK", "1")         # the last rank: the one that logs
    monkeypatch.setenv("MEGATRON_FLOPS_PEAK_TFLOPS", "500")
    out = runner.run(tools.fixture_dir(fork), BASE)
    line = tools.log_lines(out)[0]
    layer, logits = layer_and_logits()
    batch = 2
    even = batch * 3 * (2 * layer + logits) / 2 / (SECONDS * 1e12)   # over 2 GPUs
    mine = batch * 3 * (layer + logits) / 1 / (SECONDS * 1e12)       # rank 1's one GPU
    assert tools.field(line, "hardware TFLOP/s per gpu") == f"{even:.2f}"
    assert tools.field(line, "pipeline rank") == "1"
    assert tools.field(line, "rank hardware TFLOP/s per gpu") == f"{mine:.2f}"
    assert tools.field(line, "rank model TFLOP/s per gpu") == f"{mine:.2f}"
    assert tools.field(line, "rank MFU (%)") == f"{100 * mine / 500:.1f}"


def test_the_start_summary_lists_every_rank_and_the_spread(runner, tools, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = runner.run(tools.fixture_dir("bigscience"), BASE)
    layer, logits = layer_and_logits()
    total = 2 * layer + logits
    first, last = 2 * layer / total, 2 * (layer + logits) / total   # per GPU vs the even share
    assert "megatron-flops: per pipeline rank (Megatron split (even); 1 GPUs per rank)" in out
    assert f"megatron-flops:   rank 0: E 0: {first:.3f} model, {first:.3f} hardware" in out
    assert f"megatron-flops:   rank 1: 1 L: {last:.3f} model, {last:.3f} hardware" in out
    spread = (layer + logits) / layer
    assert (f"megatron-flops:   busiest rank 1: {100 * (spread - 1):.1f}% more hardware FLOPs "
            "per GPU than the least busy") in out


def test_without_a_pipeline_the_line_is_unchanged(runner, tools):
    out = runner.run(tools.fixture_dir("bigscience"), BASE[:-2])
    line = tools.log_lines(out)[0]
    assert "pipeline rank" not in line and "per pipeline rank" not in out
