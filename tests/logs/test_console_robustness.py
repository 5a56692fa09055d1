"""The console parser on messy logs: prefixes, interleaving, truncation, bytes, restarts."""

import itertools

import pytest

from megatron_flops.logs.console import (Malformed, ParseStats, parse_console_log, parse_line)

FLAGS = ["--num-layers", 2, "--hidden-size", 256, "--num-attention-heads", 4,
         "--padded-vocab-size", 1024, "--seq-length", 128, "--world-size", 2]


def line(logfmt, iteration, batch=8, consumed=None, seconds=0.5, **kw):
    consumed = iteration * batch if consumed is None else consumed
    return logfmt.bigscience_line(iteration, consumed, consumed * 128, seconds, batch,
                                  batch / seconds, 1.25, **kw)


@pytest.mark.parametrize("prefix", ["[default7]:", "7: ", "[1,7]<stdout>:", "node-3 7: ",
                                    "2026-01-01 12:00:00 INFO "])
def test_launcher_prefixes(logfmt, prefix):
    record = parse_line(prefix + line(logfmt, 100), 5)
    assert record.iteration == 100 and record.global_batch_size == 8
    assert record.line_number == 5 and record.fork == "bigscience"


def test_ms_line_and_units(logfmt):
    text = logfmt.microsoft_line(40, 320, 320 * 128, 1.2345, 8, 6.48, 3.5, actual_seqlen=128,
                                 world_size=2)
    record = parse_line(text)
    assert record.fork == "microsoft"
    assert record.seconds_per_iteration == pytest.approx(1.2345)
    assert record.time_resolution_seconds == pytest.approx(0.05e-3)
    assert record.actual_seqlen == 128 and record.tokens_per_gpu_per_second is not None


def test_non_iteration_lines_are_none():
    for text in ["", "Skipped iterations 10 to 20 due to --skip-train-iteration-range flag.",
                 " validation loss at iteration 100 | lm loss value: 5.1E+00 |",
                 "time (ms) | forward-compute: 12.00"]:
        assert parse_line(text) is None


def test_glued_lines_are_malformed(logfmt):
    good = line(logfmt, 100)
    cut = good.index("samples per second: ") + len("samples per second: 1")
    glued = good[:cut] + "[default3]: loading checkpoint | TFLOPs: 1.0 |"
    with pytest.raises(Malformed):
        parse_line(glued)
    with pytest.raises(Malformed):  # anchor but no time
        parse_line(good[:good.index("elapsed")])


def test_truncated_tail_is_dropped_and_counted(logfmt):
    good = line(logfmt, 100)
    truncated = good[:good.index("TFLOPs: ") + len("TFLOPs: 1.")]
    record = parse_line(truncated)
    assert record.truncated and record.tflops is None
    assert record.samples_per_second == pytest.approx(16.0)


def test_parse_stats_on_a_messy_log(tmp_path, logfmt):
    lines = ["\ufeffstartup banner ✓ 日本語", "  world_size ........................ 2",
             line(logfmt, 10), "[default0]: some warning | with pipes |",
             line(logfmt, 20)[:60],                             # truncated before the time
             "7: " + line(logfmt, 20), line(logfmt, 20),        # the same line twice (tee)
             line(logfmt, 30)[:-12],                            # truncated tail: used
             line(logfmt, 40).replace("global batch size:     8", "global batch size:  8\x00x")]
    path = tmp_path / "messy.log"
    data = ("\r\n".join(lines) + "\n").encode("utf-8") + b"\xff\xfe\x80 binary junk\n"
    path.write_bytes(data)
    stats = ParseStats()
    with open(path, encoding="utf-8", errors="replace") as stream:
        records = list(parse_console_log(stream, stats))
    assert [r.iteration for r in records] == [10, 20, 20, 30]
    assert stats.records == 4
    assert stats.malformed == 2 and stats.malformed_lines == [5, 9]
    assert stats.truncated == 1
    assert stats.other == 4
    assert stats.lines == 10
    assert stats.arguments == {"world_size": "2"}


def test_cli_counts_duplicates_restarts_and_reports(tmp_path, logfmt, capsys):
    lines = [line(logfmt, 10), line(logfmt, 20), line(logfmt, 20),   # printed twice (tee)
             line(logfmt, 30),
             # resumed from the checkpoint at 10: iterations go back to 20
             line(logfmt, 20), line(logfmt, 30),
             "garbage iteration 5/ | nothing"]
    path = tmp_path / "run.log"
    path.write_text("\n".join(lines) + "\n")
    result = logfmt.run_cli(capsys, path, *FLAGS, "--json")
    assert result.code == 0
    summary = logfmt.json_summary(result)
    intervals = logfmt.json_intervals(result)
    assert [i["iteration"] for i in intervals] == [10, 20, 30, 20, 30]
    # after the restart the previous line is forgotten: the logged batch is used
    assert [i["batch_source"] for i in intervals][3] == "logged batch size"
    assert summary["duplicate_lines"] == 1
    assert summary["restarts"] == 1
    assert summary["parse"]["other"] == 1 and summary["parse"]["malformed"] == 0


def test_missing_line_and_skipped_iterations(tmp_path, logfmt, capsys):
    """The line at 20 is lost; 30 follows 10.  Batches: 8 until 20, then 16 (a ramp).

    The line at 30 times iterations 21–30 only (one log interval, 10 = the common step of
    the logged iterations): all of batch 16.  Consumed samples over the 20-iteration gap
    (320 − 80) / 20 = 12 would be the mean of iterations 11–30, applied to a time that does
    not cover 11–20 (what relog did before issue 10): across a gap the line's logged batch
    decides.  Skipped iterations (fp16 overflow) still consume samples and time."""
    lines = [line(logfmt, 10, batch=8, consumed=80),
             line(logfmt, 30, batch=16, consumed=320, skipped=3)]
    path = tmp_path / "run.log"
    path.write_text("\n".join(lines) + "\n")
    result = logfmt.run_cli(capsys, path, *FLAGS, "--json")
    first, second = logfmt.json_intervals(result)
    assert first["batch_size"] == 8
    assert second["batch_size"] == 16 and second["batch_source"] == "logged batch size"
    assert second["skipped_iterations"] == 3
    assert logfmt.json_summary(result)["gaps"] == 1


def test_inconsistent_consumed_samples_fall_back(tmp_path, logfmt, capsys):
    # 80 → 1000 over 10 iterations of batch 8: impossible, the logged batch is used
    lines = [line(logfmt, 10, consumed=80), line(logfmt, 20, consumed=1000)]
    path = tmp_path / "run.log"
    path.write_text("\n".join(lines) + "\n")
    result = logfmt.run_cli(capsys, path, *FLAGS, "--json")
    assert logfmt.json_intervals(result)[1]["batch_source"] == "logged batch size"
    assert logfmt.json_summary(result)["inconsistent_consumed_samples"] == 1


def test_parser_streams(logfmt):
    """Records come out while the input is still being produced (no read-ahead)."""
    produced = []

    def endless():
        for i in itertools.count(1):
            produced.append(i)
            yield line(logfmt, 10 * i)

    records = parse_console_log(endless())
    first = list(itertools.islice(records, 3))
    assert [r.iteration for r in first] == [10, 20, 30]
    assert len(produced) == 3


def test_stdin(tmp_path, logfmt, capsys, monkeypatch):
    import io
    import sys
    data = (line(logfmt, 10) + "\n").encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    result = logfmt.run_cli(capsys, "-", *FLAGS, "--json")
    assert result.code == 0 and len(logfmt.json_intervals(result)) == 1


def test_non_finite_values(logfmt):
    good = line(logfmt, 10)
    with pytest.raises(Malformed):
        parse_line(good.replace("elapsed time per iteration (s): 0.50", "elapsed time per iteration (s): nan"))
    with pytest.raises(Malformed):
        parse_line(good.replace("elapsed time per iteration (s): 0.50", "elapsed time per iteration (s): 0.00"))
    record = parse_line(good.replace("TFLOPs: 1.25", "TFLOPs: inf"))
    assert record.tflops == float("inf")


def test_library_entry_point(logfmt):
    """relog.relog(records, model, run): intervals without the CLI; a non-finite logged
    TFLOPs gives no error rather than an infinite one."""
    from megatron_flops.logs.relog import relog
    from megatron_flops.shapes import ModelShape, RunShape
    model = ModelShape(num_layers=2, hidden_size=256, num_attention_heads=4, vocab_size=1024)
    run = RunShape(seq_length=128, world_size=2, global_batch_size=8)
    records = parse_console_log([line(logfmt, 10), line(logfmt, 20).replace("TFLOPs: 1.25",
                                                                             "TFLOPs: inf")])
    first, second = relog(records, model, run, peak_tflops=100.0)
    # hand: a layer is 24·s·h² (QKV, O: 4 × 2·s·h²; MLP up/down: 2 × 2·s·h·4h) + 4·s²·h
    # (QKᵀ, A·V); per sample 3·(2 layers + logits 2·s·h·V) with s 128, h 256, V 1024
    s, h, V = 128, 256, 1024
    per_sample = 3 * (2 * (24 * s * h * h + 4 * s * s * h) + 2 * s * h * V)
    assert first.report.model_tflops_per_gpu == pytest.approx(8 * per_sample / (0.5 * 2 * 1e12))
    assert first.error == pytest.approx(1.25 / first.report.hardware_tflops_per_gpu - 1)
    assert second.error is None
