"""relog of NVIDIA Megatron-Bridge console logs: its configuration summary read as the run's
arguments, its ``Step Time … MODEL_TFLOP/s/GPU`` line and Megatron-LM-style iteration line read.

The log (tests/data/megatron_bridge/console_0.3.1.log) is written by
``make_console_log.py`` beside it, in Bridge v0.3.1's own line formats, its TFLOP/s from
Bridge's own ``num_floating_point_operations`` (the 0.3.1 wheel): so our ``megatron-bridge``
convention must reproduce every logged figure to its printed digit, and the exact count is
derived below by hand.
"""

from pathlib import Path

import pytest

from megatron_flops.logs.bridge import SummaryReader, arguments_from_config, step_time
from megatron_flops.logs.console import ParseStats, parse_console_log

LOG = Path(__file__).resolve().parents[1] / "data" / "megatron_bridge" / "console_0.3.1.log"
# the run (make_console_log.py): Llama-3-8B's shape, s 8192, batch 128, 64 GPUs
L, H, N, G, F, V, S, B, WORLD = 32, 4096, 32, 8, 14336, 128256, 8192, 128, 64


def hand_exact_flops():
    """Every GEMM, dense attention: per layer Q and O 2·2·T·h², K and V 2·2·T·h·(g·d),
    QKᵀ and A·V 2·2·B·s²·h, SwiGLU MLP 3·2·T·h·f; logits 2·T·h·V; all × 3."""
    T, d = B * S, H // N
    layer = 4 * T * H * H + 4 * T * H * G * d + 4 * B * S * S * H + 6 * T * H * F
    return 3 * (L * layer + 2 * T * H * V)


def hand_bridge_flops():
    """Bridge 0.3.1 for this shape: the same with half the core attention."""
    return hand_exact_flops() - 3 * L * 2 * B * S * S * H


def test_step_time_line_both_spellings():
    assert step_time("Step Time : 12.78s GPU utilization: 528.1MODEL_TFLOP/s/GPU") == \
        (12.78, 528.1)
    # PR NVIDIA-NeMo/Megatron-Bridge#388 (2025-08-13) quotes the line before MODEL_ was added
    assert step_time("Step Time : 12.78s GPU utilization: 528.1 TFLOP/s/GPU") == (12.78, 528.1)
    assert step_time("iteration 10/ 40 | elapsed time per iteration (ms): 1.0 |") is None


def test_summary_block_read_as_arguments():
    reader = SummaryReader()
    for line in LOG.read_text().splitlines():
        reader.feed(line)
    assert not reader.inside
    assert reader.sections["model"]["num_query_groups"] == G
    assert reader.sections["train"] == {"global_batch_size": B, "micro_batch_size": 1,
                                        "train_iters": 40}
    arguments = arguments_from_config(reader.sections)
    assert arguments["swiglu"] == "True" and arguments["vocab_size"] == str(V)
    assert "seq_length" not in arguments   # never printed: Bridge's provider field


def test_relog_reproduces_bridges_logged_tflops_and_the_exact_count(capsys, logfmt):
    result = logfmt.run_cli(capsys, LOG, "--seq-length", S, "--world-size", WORLD, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert [i["iteration"] for i in intervals] == [10, 20, 30, 40]
    for interval in intervals:
        seconds = interval["seconds_per_iteration"]
        assert interval["fork"] == "megatron-bridge"
        assert interval["fork_formula"] == "megatron-bridge"
        # printed with one decimal: our value of Bridge's formula rounds to the logged figure
        assert round(interval["fork_formula_tflops"], 1) == interval["logged_tflops"]
        assert interval["fork_formula_tflops"] == pytest.approx(
            hand_bridge_flops() / (seconds * WORLD * 1e12), rel=1e-12)
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(
            hand_exact_flops() / (seconds * WORLD * 1e12), rel=1e-12)


def _variant(tmp_path, transform):
    path = tmp_path / "bridge.log"
    path.write_text("\n".join(transform(line) for line in LOG.read_text().splitlines()) + "\n")
    return path


def test_step_time_gives_the_figure_when_the_iteration_line_has_none(tmp_path):
    # logger.log_throughput off: the iteration line has no throughput field
    path = _variant(tmp_path, lambda line: line.replace(
        line[line.find(" throughput per GPU"):line.find("| learning rate") + 1], "")
        if "throughput per GPU" in line else line)
    stats = ParseStats()
    with open(path) as lines:
        records = list(parse_console_log(lines, stats))
    assert [r.tflops for r in records] == [59.3, 65.8, 65.9, 65.9]
    assert {r.fork for r in records} == {"megatron-bridge"}
    assert stats.argument_dumps == 1 and stats.arguments["num_layers"] == str(L)


def test_launcher_prefixes(tmp_path, capsys, logfmt):
    path = _variant(tmp_path, lambda line: "[default0]:" + line)
    result = logfmt.run_cli(capsys, path, "--seq-length", S, "--world-size", WORLD, "--json")
    assert result.code == 0, result.err
    assert [round(i["fork_formula_tflops"], 1) for i in logfmt.json_intervals(result)] == \
        [59.3, 65.8, 65.9, 65.9]


def test_sequence_length_is_asked_for_by_name(capsys, logfmt):
    result = logfmt.run_cli(capsys, LOG, "--world-size", WORLD)
    assert result.code == 2
    assert "--seq-length" in result.err and "Traceback" not in result.err


CONFIG = LOG.with_name("config_0.3.1.yaml")


def test_saved_config_yaml_makes_the_relog_flag_free_but_the_world_size(capsys, logfmt):
    pytest.importorskip("yaml")
    result = logfmt.run_cli(capsys, LOG, "--bridge-config", CONFIG, "--world-size", WORLD,
                            "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert [round(i["fork_formula_tflops"], 1) for i in intervals] == [59.3, 65.8, 65.9, 65.9]
    assert all(i["seq_length"] == S for i in intervals)


def test_saved_config_yaml_without_the_summary_in_the_log(tmp_path, capsys, logfmt):
    pytest.importorskip("yaml")
    text = LOG.read_text()
    path = tmp_path / "lines_only.log"
    path.write_text("\n".join(line for line in text.splitlines()
                              if "iteration" in line and "|" in line) + "\n")
    result = logfmt.run_cli(capsys, path, "--bridge-config", CONFIG, "--world-size", WORLD,
                            "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert {i["fork"] for i in intervals} == {"megatron-bridge"}
    assert [i["logged_tflops"] for i in intervals] == [59.3, 65.8, 65.9, 65.9]
    for interval in intervals:
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(
            hand_exact_flops() / (interval["seconds_per_iteration"] * WORLD * 1e12), rel=1e-12)


def test_a_config_that_is_not_bridges_is_one_line(tmp_path, capsys, logfmt):
    pytest.importorskip("yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {micro_batch_size: 1}\n")
    result = logfmt.run_cli(capsys, LOG, "--bridge-config", bad)
    assert result.code == 2 and "no 'model' section" in result.err
    assert "Traceback" not in result.err


def test_compare_reads_bridge_logs(capsys):
    from megatron_flops.cli import main
    code = main(["compare", str(LOG), str(LOG), "--seq-length", str(S), "--world-size",
                 str(WORLD), "--gpu", "h100-sxm"])
    out = capsys.readouterr()
    assert code == 0, out.err
    # the steady-state median of iterations 20–40 (seconds 12.8127, 12.7931, 12.8019)
    median_seconds = 12.8019
    expected = hand_exact_flops() / (median_seconds * WORLD * 1e12)
    assert f"{expected:.2f}" in out.out
