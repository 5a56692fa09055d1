"""relog on console logs the tests write in each fork's format.

Every expected number is derived by hand in this file: per interval,

    batch        = (consumed samples now − consumed samples at the previous line)
                   / (iteration now − previous iteration)      (first line: logged batch)
    TFLOP/s/GPU  = batch × FLOPs per sample(seq) / (seconds per iteration × world × 1e12)
    error        = logged TFLOPs / hardware TFLOP/s − 1

with FLOPs per sample from ``hand_flops_per_sample`` in conftest.py (3 × forward matmuls,
full recompute adds one forward of every layer).  The logged TFLOPs in the generated lines
come from the forks' own formulas restated in conftest.py, as a run would have printed them.
Times and batches are chosen so that the printed values are exact (10.0 s, 512 samples →
51.200 samples/s), so the hand values need no rounding allowance beyond float noise.
"""

import pytest

# a 1.3B-like GPT: 24 layers, h 2048, 16 heads, padded vocab 50304
L, H, N, V = 24, 2048, 16, 50304
MODEL_FLAGS = ["--num-layers", L, "--hidden-size", H, "--num-attention-heads", N,
               "--padded-vocab-size", V]


def simulate(logfmt, fork, batches, seqs, seconds, log_interval, world, logged_tflops,
             start_iteration=0, **line_kw):
    """Log lines as the fork would print them for per-iteration batches/seqs/seconds.

    At each log iteration the fork uses the batch and seq *at log time* and the interval's
    mean time per iteration (that is what both forks do).
    """
    lines, consumed, tokens, last = [], 0, 0, start_iteration
    for i in range(start_iteration + 1, start_iteration + len(batches) + 1):
        b, s = batches[i - start_iteration - 1], seqs[i - start_iteration - 1]
        consumed += b
        tokens += b * s
        if i % log_interval:
            continue
        span = range(last - start_iteration, i - start_iteration)
        elapsed = sum(seconds[k] for k in span) / len(span)
        sps = b / elapsed
        tflops = logged_tflops(b, s, elapsed)
        if fork == "bigscience":
            lines.append(logfmt.bigscience_line(i, consumed, tokens, elapsed, b, sps, tflops,
                                                **line_kw))
        else:
            lines.append(logfmt.microsoft_line(i, consumed, tokens, elapsed, b, sps, tflops,
                                               actual_seqlen=s, world_size=world, **line_kw))
        last = i
    return lines


def write(tmp_path, lines, name="train.log"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def expected_tflops(logfmt, batch, s, seconds, world, **shape):
    model, hardware = logfmt.hand_flops_per_sample(s, L, H, N, V, **shape)
    return (batch * model / (seconds * world * 1e12), batch * hardware / (seconds * world * 1e12))


def test_bigscience_steady_run_matches_hand_derivation(tmp_path, logfmt, capsys):
    world, batch, s, seconds = 64, 512, 2048, 10.0
    logged = lambda b, s_, t: logfmt.bigscience_logged_tflops(b, s_, L, H, V, t, world)
    lines = simulate(logfmt, "bigscience", [batch] * 300, [s] * 300, [seconds] * 300, 100,
                     world, logged)
    result = logfmt.run_cli(capsys, write(tmp_path, lines), *MODEL_FLAGS, "--seq-length", s,
                            "--world-size", world, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert [i["iteration"] for i in intervals] == [100, 200, 300]
    model, hardware = expected_tflops(logfmt, batch, s, seconds, world)
    for interval in intervals:
        assert interval["fork"] == "bigscience"
        assert interval["seconds_per_iteration"] == pytest.approx(seconds, rel=1e-9)
        assert interval["batch_size"] == batch
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(model, rel=1e-9)
        assert interval["tflops_per_gpu"]["hardware"] == pytest.approx(hardware, rel=1e-9)
        printed = round(logged(batch, s, seconds), 2)
        assert interval["logged_tflops"] == printed
        assert interval["error"] == pytest.approx(printed / hardware - 1, rel=1e-9)
        # the fork's formula with the right flags reproduces the printed number
        assert interval["fork_formula_tflops"] == pytest.approx(printed, abs=0.005)
    # without recompute or GLU the bigscience formula undercounts only the logits:
    # 4.5·s·h·V instead of 6·s·h·V per sample
    assert intervals[0]["error"] < 0
    summary = logfmt.json_summary(result)
    assert summary["intervals"] == 3
    assert summary["fork_formula_mismatches"] == 0
    assert summary["parse"]["malformed"] == 0


def test_bigscience_glu_error_is_large_and_positive(tmp_path, logfmt, capsys):
    """--glu-activation with the default ffn 4h: the fork scales everything by 32/24."""
    world, batch, s, seconds = 8, 64, 2048, 4.0      # 16 samples/s
    logged = lambda b, s_, t: logfmt.bigscience_logged_tflops(b, s_, L, H, V, t, world, glu=True)
    lines = simulate(logfmt, "bigscience", [batch] * 20, [s] * 20, [seconds] * 20, 10, world,
                     logged)
    result = logfmt.run_cli(capsys, write(tmp_path, lines), *MODEL_FLAGS, "--seq-length", s,
                            "--world-size", world, "--glu-activation", "swiglu", "--json")
    assert result.code == 0, result.err
    model, hardware = expected_tflops(logfmt, batch, s, seconds, world, glu=True)
    for interval in logfmt.json_intervals(result):
        assert interval["tflops_per_gpu"]["hardware"] == pytest.approx(hardware, rel=1e-9)
        printed = round(logged(batch, s, seconds), 2)
        assert interval["error"] == pytest.approx(printed / hardware - 1, rel=1e-9)
        assert interval["error"] > 0


def test_rampup_batch_is_averaged_from_consumed_samples(tmp_path, logfmt, capsys):
    """Batch 16 for iterations 1–6, 32 for 7–12, logged every 4 iterations.

    Interval 1 (it 1–4): first line, logged batch 16.
    Interval 2 (it 5–8): 16, 16, 32, 32 → consumed 64+… : mean (2·16 + 2·32)/4 = 24; the
    fork used 32 (the batch at log time), so it overstates by 32/24.
    Interval 3 (it 9–12): all 32.
    """
    world, s, seconds = 16, 1024, 2.0
    batches = [16] * 6 + [32] * 6
    logged = lambda b, s_, t: logfmt.bigscience_logged_tflops(b, s_, L, H, V, t, world)
    lines = simulate(logfmt, "bigscience", batches, [s] * 12, [seconds] * 12, 4, world, logged)
    result = logfmt.run_cli(capsys, write(tmp_path, lines), *MODEL_FLAGS, "--seq-length", s,
                            "--world-size", world, "--rampup-batch-size", 16, 16, 96,
                            "--global-batch-size", 32, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert [i["batch_size"] for i in intervals] == [16, 24, 32]
    assert [i["batch_source"] for i in intervals] == [
        "logged batch size", "consumed samples", "consumed samples"]
    assert [i["logged_global_batch_size"] for i in intervals] == [16, 32, 32]
    # the line's own time is the interval mean: 2.0 s in every interval here
    for interval, batch in zip(intervals, (16, 24, 32)):
        model, hardware = expected_tflops(logfmt, batch, s, seconds, world)
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(model, rel=1e-9)
    # the rampup interval's logged figure is computed with batch 32, the truth with 24
    logged_ratio = intervals[1]["logged_tflops"] / intervals[2]["logged_tflops"]
    assert logged_ratio == pytest.approx(1.0, abs=1e-3)
    true_ratio = (intervals[1]["tflops_per_gpu"]["hardware"]
                  / intervals[2]["tflops_per_gpu"]["hardware"])
    assert true_ratio == pytest.approx(24 / 32, rel=1e-9)


def test_curriculum_seqlen_is_taken_per_line(tmp_path, logfmt, capsys):
    """bigscience prints ' curriculum seqlen: …' with curriculum learning; each interval uses
    its own line's value (s² attention term included), not --seq-length."""
    world, batch, seconds = 8, 32, 2.0
    seqs = [256] * 10 + [512] * 10 + [1024] * 10
    logged = lambda b, s_, t: logfmt.bigscience_logged_tflops(b, s_, L, H, V, t, world)
    lines = []
    consumed = tokens = 0
    for i in range(1, 31):
        consumed += batch
        tokens += batch * seqs[i - 1]
        if i % 10 == 0:
            s = seqs[i - 1]
            lines.append(logfmt.bigscience_line(i, consumed, tokens, seconds, batch,
                                                batch / seconds, logged(batch, s, seconds),
                                                curriculum_seqlen=s))
    result = logfmt.run_cli(capsys, write(tmp_path, lines), *MODEL_FLAGS, "--seq-length", 2048,
                            "--world-size", world, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert [i["seq_length"] for i in intervals] == [256, 512, 1024]
    assert {i["seq_source"] for i in intervals} == {"curriculum seqlen"}
    for interval in intervals:
        model, _ = expected_tflops(logfmt, batch, interval["seq_length"], seconds, world)
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(model, rel=1e-9)


def test_microsoft_gqa_swiglu_recompute(tmp_path, logfmt, capsys):
    """microsoft: time in ms, actual seqlen, tgs; GQA 16:4 and SwiGLU with ffn 5504, full
    recompute, MFU/HFU against a given peak.  The fork's `2 // gqa` drops K and V at a GQA
    ratio of 4, and full recompute re-counts the logits; the true counts are below."""
    world, batch, s, seconds = 32, 256, 4096, 8.0     # 32 samples/s; 8000.0 ms
    kv_heads, ffn, peak = 4, 5504, 312.0
    logged = lambda b, s_, t: logfmt.microsoft_logged_tflops(
        b, s_, L, H, N, kv_heads, ffn, V, t, world, swiglu=True) * 4 / 3  # full recompute
    lines = simulate(logfmt, "microsoft", [batch] * 40, [s] * 40, [seconds] * 40, 20, world,
                     logged)
    assert "elapsed time per iteration (ms): 8000.0 |" in lines[0]
    result = logfmt.run_cli(capsys, write(tmp_path, lines), *MODEL_FLAGS, "--seq-length", s,
                            "--world-size", world, "--swiglu", "--ffn-hidden-size", ffn,
                            "--num-key-value-heads", kv_heads, "--recompute-granularity", "full",
                            "--peak-tflops", peak, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    model, hardware = expected_tflops(logfmt, batch, s, seconds, world, f=ffn, g=kv_heads,
                                      glu=True, full_recompute=True)
    assert hardware > model
    for interval in intervals:
        assert interval["fork"] == "microsoft"
        assert interval["seq_source"] == "actual seqlen"
        assert interval["seconds_per_iteration"] == pytest.approx(seconds, rel=1e-9)
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(model, rel=1e-9)
        assert interval["tflops_per_gpu"]["hardware"] == pytest.approx(hardware, rel=1e-9)
        assert interval["mfu"] == pytest.approx(model / peak, rel=1e-9)
        assert interval["hfu"] == pytest.approx(hardware / peak, rel=1e-9)
        printed = round(logged(batch, s, seconds), 2)
        assert interval["error"] == pytest.approx(printed / hardware - 1, rel=1e-9)
    assert logfmt.json_summary(result)["fork_formula_mismatches"] == 0


def test_time_taken_from_samples_per_second_when_finer(tmp_path, logfmt, capsys):
    """0.123456 s prints as '0.12' (2.8 % off); batch / samples-per-second recovers it."""
    world, batch, s, seconds = 8, 512, 1024, 0.123456
    line = logfmt.bigscience_line(10, 10 * batch, 10 * batch * s, seconds, batch,
                                  batch / seconds, 99.0)
    assert "elapsed time per iteration (s): 0.12 |" in line
    result = logfmt.run_cli(capsys, write(tmp_path, [line]), *MODEL_FLAGS, "--seq-length", s,
                            "--world-size", world, "--json")
    (interval,) = logfmt.json_intervals(result)
    assert interval["time_source"] == "batch / samples per second"
    assert interval["seconds_per_iteration"] == pytest.approx(seconds, rel=1e-6)


def test_printed_time_kept_when_samples_per_second_disagrees(tmp_path, logfmt, capsys):
    line = logfmt.bigscience_line(10, 5120, 5120 * 1024, 2.0, 512, 100.0, 99.0)
    result = logfmt.run_cli(capsys, write(tmp_path, [line]), *MODEL_FLAGS, "--seq-length", 1024,
                            "--world-size", 8, "--json")
    (interval,) = logfmt.json_intervals(result)
    assert interval["time_source"] == "elapsed time"
    assert interval["seconds_per_iteration"] == 2.0


def test_wrong_flags_are_flagged_by_the_fork_formula_check(tmp_path, logfmt, capsys):
    world, batch, s, seconds = 8, 64, 2048, 4.0
    logged = lambda b, s_, t: logfmt.bigscience_logged_tflops(b, s_, L, H, V, t, world)
    lines = simulate(logfmt, "bigscience", [batch] * 20, [s] * 20, [seconds] * 20, 10, world,
                     logged)
    # the run had 24 layers; the user says 32
    result = logfmt.run_cli(capsys, write(tmp_path, lines), "--num-layers", 32, "--hidden-size",
                            H, "--num-attention-heads", N, "--padded-vocab-size", V,
                            "--seq-length", s, "--world-size", world)
    assert result.code == 0
    assert "does not reproduce the logged TFLOPs" in result.out


def test_world_size_read_from_the_arguments_dump(tmp_path, logfmt, capsys):
    world, batch, s, seconds = 16, 64, 2048, 4.0
    logged = lambda b, s_, t: logfmt.bigscience_logged_tflops(b, s_, L, H, V, t, world)
    lines = logfmt.arguments_dump(world_size=world, hidden_size=H, num_layers=L)
    lines += simulate(logfmt, "bigscience", [batch] * 10, [s] * 10, [seconds] * 10, 10, world,
                      logged)
    path = write(tmp_path, lines)
    result = logfmt.run_cli(capsys, path, *MODEL_FLAGS, "--seq-length", s, "--json")
    assert "world size 16 from the log's arguments" in result.err
    (interval,) = logfmt.json_intervals(result)
    _, hardware = expected_tflops(logfmt, batch, s, seconds, world)
    assert interval["tflops_per_gpu"]["hardware"] == pytest.approx(hardware, rel=1e-9)
    # a flag that contradicts the dump is reported
    result = logfmt.run_cli(capsys, path, *MODEL_FLAGS[:2], "--hidden-size", 1024,
                            "--num-attention-heads", N, "--padded-vocab-size", V,
                            "--seq-length", s, "--world-size", 8)
    assert "world_size = 16 but --world-size 8" in result.err
    assert "hidden_size = 2048 but --hidden-size is 1024" in result.err


def test_microsoft_tgs_implies_world_size(tmp_path, logfmt, capsys):
    line = logfmt.microsoft_line(10, 640, 640 * 1024, 2.0, 64, 32.0, 50.0, actual_seqlen=1024,
                                 world_size=32)
    result = logfmt.run_cli(capsys, write(tmp_path, [line]), *MODEL_FLAGS, "--seq-length", 1024,
                            "--world-size", 8)
    assert "implies a world size of 32.0" in result.err


def test_fork_override(tmp_path, logfmt, capsys):
    line = logfmt.bigscience_line(10, 640, 640 * 1024, 2.0, 64, 32.0, 50.0)
    result = logfmt.run_cli(capsys, write(tmp_path, [line]), *MODEL_FLAGS, "--seq-length", 1024,
                            "--world-size", 8, "--fork", "microsoft", "--json")
    (interval,) = logfmt.json_intervals(result)
    assert interval["fork"] == "microsoft"
    assert interval["seconds_per_iteration"] == 2.0  # the unit still comes from the line


def test_human_table_and_summary(tmp_path, logfmt, capsys):
    world, batch, s, seconds = 8, 64, 2048, 4.0
    logged = lambda b, s_, t: logfmt.bigscience_logged_tflops(b, s_, L, H, V, t, world)
    lines = ["startup noise"] + simulate(logfmt, "bigscience", [batch] * 30, [s] * 30,
                                         [seconds] * 30, 10, world, logged) + ["garbage |"]
    result = logfmt.run_cli(capsys, write(tmp_path, lines), *MODEL_FLAGS, "--seq-length", s,
                            "--world-size", world, "--gpu", "a100", "--bf16")
    assert result.code == 0
    # the provenance block first (every value typed here), a blank line, then the table
    block, table = result.out.split("\n\n", 1)
    assert block.splitlines()[0] == "sources: world size 8 (command line); TP 1, PP 1, DP 8"
    assert "from the command line: num_layers 24, hidden_size 2048" in block
    rows = table.splitlines()
    assert rows[0].split()[:3] == ["iteration", "batch", "seq"]
    assert [r.split()[0] for r in rows[1:4]] == ["10", "20", "30"]
    _, hardware = expected_tflops(logfmt, batch, s, seconds, world)
    assert f"{hardware:.2f}" in rows[1]
    assert "intervals: 3 (iterations 10–30; fork bigscience; world size 8)" in result.out
    assert "mean logged TFLOPs" in result.out
    assert "MFU" in result.out and "312" in result.out
    assert "0 unparsed" in result.out and "2 other" in result.out


def test_summary_statistics_by_hand(tmp_path, logfmt, capsys):
    """Every summary statistic of a messy bigscience log, derived by hand.

    Full recompute (``--checkpoint-activations``), so model and hardware differ; peak 100.
    Lines (iteration, consumed samples, logged batch, seconds, printed TFLOPs):

        A  10   640   64  4.0  1.005 × the formula: 0.24 TFLOPs     first line: batch 64, 1 it
                               off but within 1 %: no mismatch
        B  20  1280   64  2.0  1.2 × the formula (a mismatch)       Δ 640 / 10 → 64, 10 its
        B  20  1280   (the same line twice more: two duplicates, skipped)
        C  30  2560  128  8.0  inf (no error: not a number)         Δ 1280 / 10 → 128, 10 its
        D  40  3840  128  5.0  the fork's formula                   Δ 1280 / 10 → 128, 10 its
        E  35  3200  128  2.5  0.9 × the formula (a mismatch)       restart: batch 128, 5 its
        F  45  8200  128  4.0  the fork's formula                   10 after E: a gap (the
                                                                    log interval is 5): logged
                                                                    128, 5 its
        G  50  8520   64  640  0.30 where the formula says 0.3044   Δ 320 / 5 → 64, 5 its
                               (1.5 % off, but within the printed 2 decimals: no mismatch)

    The log interval is not in the log (no arguments dump): it is the common step of the
    logged iterations, 10 up to D, then 5 from E on.  A line's time covers one log interval:
    A (the first, no step known yet) counts 1 iteration, E and F (no usable previous line)
    the 5 of one interval.

    Per interval, TFLOP/s per GPU = batch × FLOPs per sample / (seconds × world × 1e12);
    the mean is over the 6 intervals, "over the whole time" is Σ FLOPs / Σ time with an
    interval's FLOPs and time counted over its iterations (1, 5 or 10).  The logged
    statistics are over A, B, D, E, F, G (C's inf is not a number).
    """
    world, s, peak = 8, 2048, 100.0
    _, hardware_per_sample = logfmt.hand_flops_per_sample(s, L, H, N, V, full_recompute=True)
    model_per_sample, _ = logfmt.hand_flops_per_sample(s, L, H, N, V)

    def formula(batch, seconds):
        return logfmt.bigscience_logged_tflops(batch, s, L, H, V, seconds, world, checkpoint=True)

    rows = [  # iteration, consumed, batch, seconds, printed, (batch used, iterations)
        (10, 640, 64, 4.0, 1.005 * formula(64, 4.0), (64, 1)),
        (20, 1280, 64, 2.0, 1.2 * formula(64, 2.0), (64, 10)),
        (30, 2560, 128, 8.0, float("inf"), (128, 10)),
        (40, 3840, 128, 5.0, formula(128, 5.0), (128, 10)),
        (35, 3200, 128, 2.5, 0.9 * formula(128, 2.5), (128, 5)),
        (45, 8200, 128, 4.0, formula(128, 4.0), (128, 5)),
        (50, 8520, 64, 640.0, 0.30, (64, 5)),
    ]
    lines = [logfmt.bigscience_line(i, c, c * s, t, b, b / t, printed)
             for i, c, b, t, printed, _ in rows]
    lines[2:2] = [lines[1], lines[1]]
    path = write(tmp_path, lines)
    flags = [*MODEL_FLAGS, "--seq-length", s, "--world-size", world, "--checkpoint-activations",
             "--peak-tflops", peak]
    result = logfmt.run_cli(capsys, path, *flags, "--json")
    assert result.code == 0, result.err
    summary = logfmt.json_summary(result)

    model = [b * model_per_sample / (t * world * 1e12) for _, _, _, t, _, (b, _) in rows]
    hardware = [b * hardware_per_sample / (t * world * 1e12) for _, _, _, t, _, (b, _) in rows]
    seconds = sum(t * its for _, _, _, t, _, (_, its) in rows)
    samples = sum(b * its for _, _, _, _, _, (b, its) in rows)
    logged_rows = [k for k in range(7) if k != 2]
    printed = [float(f"{rows[k][4]:.2f}") for k in logged_rows]
    errors = [p / hardware[k] - 1 for p, k in zip(printed, logged_rows)]
    deviations = [abs(p - formula(rows[k][2], rows[k][3])) / formula(rows[k][2], rows[k][3])
                  for p, k in zip(printed, logged_rows)]

    assert abs(0.30 - formula(64, 640.0)) / formula(64, 640.0) > 0.01   # G: see above
    assert abs(printed[0] - formula(64, 4.0)) > 0.2                      # A
    assert summary["intervals"] == 7
    assert (summary["first_iteration"], summary["last_iteration"]) == (10, 50)
    assert summary["forks"] == ["bigscience"] and summary["world_size"] == world
    assert summary["mean_tflops_per_gpu"]["model"] == pytest.approx(sum(model) / 7, rel=1e-9)
    assert summary["mean_tflops_per_gpu"]["hardware"] == pytest.approx(sum(hardware) / 7,
                                                                        rel=1e-9)
    assert summary["overall_tflops_per_gpu"]["model"] == pytest.approx(
        samples * model_per_sample / (seconds * world * 1e12), rel=1e-9)
    assert summary["overall_tflops_per_gpu"]["hardware"] == pytest.approx(
        samples * hardware_per_sample / (seconds * world * 1e12), rel=1e-9)
    assert summary["mean_mfu"] == pytest.approx(sum(model) / 7 / peak, rel=1e-9)
    assert summary["mean_hfu"] == pytest.approx(sum(hardware) / 7 / peak, rel=1e-9)
    assert summary["intervals_with_logged_tflops"] == 6
    assert summary["mean_logged_tflops"] == pytest.approx(sum(printed) / 6, rel=1e-9)
    assert summary["mean_hardware_tflops_where_logged"] == pytest.approx(
        sum(hardware[k] for k in logged_rows) / 6, rel=1e-9)
    assert summary["mean_error"] == pytest.approx(sum(errors) / 6, rel=1e-9)
    assert summary["min_error"] == pytest.approx(min(errors), rel=1e-9)
    assert summary["max_error"] == pytest.approx(max(errors), rel=1e-9)
    assert summary["fork_formula_checked"] == 6
    assert summary["fork_formula_mismatches"] == 2            # B and E, not G
    assert summary["worst_fork_formula_deviation"] == pytest.approx(max(deviations), rel=1e-6)
    assert summary["worst_fork_formula_deviation"] == pytest.approx(0.2, abs=1e-3)
    assert summary["duplicate_lines"] == 2 and summary["restarts"] == 1
    assert summary["inconsistent_consumed_samples"] == 0 and summary["gaps"] == 1

    text = logfmt.run_cli(capsys, path, *flags).out
    assert (f"mean model / hardware TFLOP/s per GPU: {sum(model) / 7:.2f} / "
            f"{sum(hardware) / 7:.2f}") in text
    assert (f"mean MFU / HFU: {100 * sum(model) / 7 / peak:.1f}% / "
            f"{100 * sum(hardware) / 7 / peak:.1f}%") in text
    assert (f"mean logged TFLOPs: {sum(printed) / 6:.2f} vs true (hardware) "
            f"{sum(hardware[k] for k in logged_rows) / 6:.2f} over 6 intervals: mean error "
            f"{100 * sum(errors) / 6:+.1f}% (from {100 * min(errors):+.1f}% to "
            f"{100 * max(errors):+.1f}%)") in text
    assert "in 2 of 6 intervals the fork's own formula" in text
    assert "2 duplicates skipped, 1 restarts, 1 gaps" in text


def test_summary_without_peak_or_logged_tflops(tmp_path, logfmt, capsys):
    """No peak: no MFU/HFU (n/a, the reason shown); inf logged everywhere: nothing to compare."""
    world, batch, s, seconds = 8, 64, 2048, 4.0
    lines = [logfmt.bigscience_line(i, i * batch, i * batch * s, seconds, batch,
                                    batch / seconds, float("inf")) for i in (10, 20)]
    path = write(tmp_path, lines)
    flags = [*MODEL_FLAGS, "--seq-length", s, "--world-size", world]
    summary = logfmt.json_summary(logfmt.run_cli(capsys, path, *flags, "--json"))
    assert summary["mean_mfu"] is None and summary["mean_hfu"] is None
    assert summary["intervals_with_logged_tflops"] == 0
    for key in ("mean_logged_tflops", "mean_hardware_tflops_where_logged", "mean_error",
                "min_error", "max_error"):
        assert summary[key] is None
    assert summary["fork_formula_checked"] == 0
    text = logfmt.run_cli(capsys, path, *flags).out
    assert "MFU / HFU: n/a (unknown device" in text
    assert "no logged TFLOPs to compare" in text


def test_library_summary_counts_formula_checks_only_with_a_fork():
    """The compute API without the command: a record of unknown fork (a TensorBoard run
    whose tags name no fork) has a logged figure and an error but no fork formula to check."""
    from megatron_flops.hardware import resolve_peak
    from megatron_flops.logs.console import LogRecord, ParseStats
    from megatron_flops.logs.intervals import Relogger
    from megatron_flops.logs.summary import Summary
    from megatron_flops.shapes import ModelShape, RunShape
    model = ModelShape(num_layers=L, hidden_size=H, num_attention_heads=N, vocab_size=V)
    run = RunShape(seq_length=2048, world_size=8, global_batch_size=64)
    relogger, summary = Relogger(model, run), Summary()
    for fork, iteration in ((None, 10), ("bigscience", 20)):
        record = LogRecord(line_number=0, fork=fork, iteration=iteration, train_iters=None,
                           seconds_per_iteration=4.0, global_batch_size=64, tflops=40.0)
        summary.add(relogger.add(record))
    result = summary.as_dict(8, ParseStats(), relogger, resolve_peak())
    assert result["intervals_with_logged_tflops"] == 2
    assert result["fork_formula_checked"] == 1
    assert result["forks"] == ["bigscience"]
    with pytest.raises(ValueError, match="at least one interval"):
        Summary().as_dict(8, ParseStats(), relogger, resolve_peak())
