"""Issue 24: ``compare`` reads two console logs flag-free from their arguments dumps, as
``relog`` does (it failed with ``--num-layers is required``), and flags typed override them."""

import json
import statistics

import pytest

from megatron_flops.cli import main

L, H, N, S, V, BATCH, WORLD = 4, 256, 8, 512, 1024, 16, 8


def write_log(path, logfmt, seconds):
    lines = logfmt.arguments_dump(
        num_layers=L, hidden_size=H, num_attention_heads=N, seq_length=S, micro_batch_size=2,
        global_batch_size=BATCH, world_size=WORLD, tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1, glu_activation=None, log_interval=10)
    lines.append(f" > padded vocab (size: {V}) with 0 dummy tokens (new size: {V})")
    for index, sec in enumerate(seconds, 1):
        iteration = index * 10
        samples = iteration * BATCH
        tflops = logfmt.bigscience_logged_tflops(BATCH, S, L, H, V, sec, WORLD)
        lines.append(logfmt.bigscience_line(iteration, samples, samples * S, sec, BATCH,
                                            BATCH / sec, tflops))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_two_console_logs_compare_flag_free(tmp_path, logfmt, capsys):
    base_seconds = [5.0] + [0.5] * 6
    cand_seconds = [5.0] + [0.5 / 0.9] * 6    # 10 % lower throughput
    base = write_log(tmp_path / "base.log", logfmt, base_seconds)
    cand = write_log(tmp_path / "cand.log", logfmt, cand_seconds)
    code = main(["compare", base, cand, "--json"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    result = json.loads(captured.out)["comparison"]
    model_per_sample, _ = logfmt.hand_flops_per_sample(S, L, H, N, V)
    for side, seconds in (("baseline", base_seconds), ("candidate", cand_seconds)):
        expected = statistics.median(BATCH * model_per_sample / (sec * WORLD * 1e12)
                                     for sec in seconds[1:])
        assert result[side]["metrics"]["model_tflops_per_gpu"]["median"] == pytest.approx(
            expected, rel=1e-3)
    assert result["change"] == pytest.approx(-0.1, abs=1e-3)
    assert "is required" not in captured.err


def test_a_typed_flag_overrides_the_dumps(tmp_path, logfmt, capsys):
    base = write_log(tmp_path / "base.log", logfmt, [5.0] + [0.5] * 4)
    # the same logs read as 4 GPUs: twice the TFLOP/s per GPU of the dumps' 8
    assert main(["compare", base, base, "--json"]) == 0
    eight = json.loads(capsys.readouterr().out)["comparison"]["baseline"]["metrics"]
    assert main(["compare", base, base, "--world-size", "4", "--json"]) == 0
    four = json.loads(capsys.readouterr().out)["comparison"]["baseline"]["metrics"]
    assert four["model_tflops_per_gpu"]["median"] == pytest.approx(
        2 * eight["model_tflops_per_gpu"]["median"], rel=1e-9)
