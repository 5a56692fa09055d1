"""relog on NVIDIA Megatron-LM console logs, written by the tests themselves.

The line is Megatron-LM's ``training_log`` format (NVIDIA/Megatron-LM d98e8a64,
``megatron/training/training.py``; the timestamp prefix since 2024, with ``.%f`` since
2026-01; read, not copied): `` [stamp] iteration {:8d}/{:8d} | consumed samples: {:12d} |
elapsed time per iteration (ms): {:.1f} | throughput per GPU (TFLOP/s/GPU): {:.1f} | learning
rate: … | global batch size: {:5d} | …``.  The logged throughput is generated with Megatron-LM's
current formula written out by hand below (causal core attention, model FLOPs), so relog's
check of that formula must pass, and its error against our exact (dense) model count is known
in closed form.
"""

import datetime
import os

import pytest

from megatron_flops.logs.console import MEGATRON_LM, parse_line

# the run: GPT, 4 layers, h 1024, 16 heads, s 1024, padded vocab 50304, batch 16, 8 GPUs
L, H, N, S, V, B, WORLD, LOG_INTERVAL = 4, 1024, 16, 1024, 50304, 16, 8, 4
SECONDS = 0.5  # per iteration, printed as 500.0 ms


def hand_model_flops_per_sample(s=S, l=L, h=H, V=V):
    """Dense attention, ffn 4h, no GLU, MHA: 3 × (l·(24·s·h² + 4·s²·h) + 2·s·h·V)."""
    return 3 * (l * (24 * s * h * h + 4 * s * s * h) + 2 * s * h * V)


def megatron_lm_flops_per_iteration(batch, s=S, l=L, h=H, V=V):
    """Megatron-LM's num_floating_point_operations since 2025-03 for this shape (MHA, ffn 4h,
    no GLU, d = h/n): per token and layer QKV + output 2·(3h² + h²) and MLP 2·2·4h², core
    attention causal 2·s·h (half of 4·s·h), logits 2·h·V once; all × 3."""
    per_token = l * (8 * h * h + 16 * h * h + 2 * s * h) + 2 * h * V
    return 3 * batch * s * per_token


def megatron_lm_logged(batch, seconds_per_iteration):
    return megatron_lm_flops_per_iteration(batch) / (seconds_per_iteration * 1e12 * WORLD)


STAMP0 = datetime.datetime(2026, 8, 22, 15, 0, 0)


def megatron_lm_line(iteration, consumed, ms, batch=B, stamp=".%f", train_iters=12,
                     startup_seconds=0.0):
    """One line; ``stamp`` None (2023), ``""`` (2024: seconds) or ``".%f"`` (2026)."""
    text = ""
    if stamp is not None:
        when = STAMP0 + datetime.timedelta(seconds=startup_seconds + iteration * SECONDS)
        text = " [" + when.strftime("%Y-%m-%d %H:%M:%S" + stamp) + "]"
    text += " iteration {:8d}/{:8d} |".format(iteration, train_iters)
    text += " consumed samples: {:12d} |".format(consumed)
    text += " elapsed time per iteration (ms): {:.1f} |".format(ms)
    text += " throughput per GPU (TFLOP/s/GPU): {:.1f} |".format(megatron_lm_logged(batch, ms / 1000))
    text += " learning rate: {:.6E} |".format(3e-4)
    text += " global batch size: {:5d} |".format(batch)
    text += " lm loss: {:.6E} |".format(4.321)
    text += " loss scale: {:.1f} |".format(1.0)
    text += " grad norm: {:.3f} |".format(1.5)
    text += " number of skipped iterations: {:3d} |".format(0)
    text += " number of nan iterations: {:3d} |".format(0)
    return text


def megatron_lm_dump(logfmt):
    # a Megatron-LM dump: no `deepspeed`, names only its parser has (log_throughput, …)
    return logfmt.arguments_dump(
        context_parallel_size=1, global_batch_size=B, group_query_attention=False,
        hidden_size=H, log_interval=LOG_INTERVAL, log_throughput=True, micro_batch_size=2,
        num_attention_heads=N, num_layers=L, num_query_groups=1, seq_length=S,
        max_position_embeddings=S, swiglu=False, tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1, world_size=WORLD) + [
        " > padded vocab (size: 50257) with 47 dummy tokens (new size: 50304)"]


PREFIXES = ("", "[default7]:", "7: ", "[1,7]<stdout>:")


def steady_log(logfmt, stamp, prefix=""):
    lines = megatron_lm_dump(logfmt)
    lines += [megatron_lm_line(i, i * B, SECONDS * 1000, stamp=stamp) for i in (4, 8, 12)]
    return "\n".join(prefix + line for line in lines) + "\n"


@pytest.mark.parametrize("stamp", [None, "", ".%f"], ids=["2023-no-stamp", "2024-seconds",
                                                          "2026-microseconds"])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["bare", "torchrun", "srun", "mpirun"])
def test_every_line_format_relogs_flag_free_to_the_hand_count(tmp_path, capsys, logfmt, stamp,
                                                                prefix):
    path = tmp_path / "megatron_lm.log"
    path.write_text(steady_log(logfmt, stamp, prefix))
    result = logfmt.run_cli(capsys, path, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert [i["iteration"] for i in intervals] == [4, 8, 12]
    exact = B * hand_model_flops_per_sample() / (SECONDS * WORLD * 1e12)
    logged = round(megatron_lm_logged(B, SECONDS), 1)
    for interval in intervals:
        assert interval["fork"] == MEGATRON_LM
        assert interval["logged_counts"] == "model"
        assert interval["logged_tflops"] == logged
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(exact, rel=1e-12)
        # the error is against the model count (Megatron-LM never counts recompute)
        assert interval["error"] == pytest.approx(logged / exact - 1, rel=1e-12)
        # relog's own reading of Megatron-LM's formula reproduces the logged figure
        assert interval["fork_formula_tflops"] == pytest.approx(megatron_lm_logged(B, SECONDS),
                                                                rel=1e-12)
    summary = logfmt.json_summary(result)
    assert summary["fork_formula_checked"] == 3 and summary["fork_formula_mismatches"] == 0
    assert summary["logged_counts"] == ["model"]
    assert summary["world_size"] == WORLD


def test_megatron_lm_lines_are_named_by_their_timestamp_or_throughput_field():
    plain = megatron_lm_line(4, 64, 500.0, stamp=None)
    record = parse_line(plain)
    assert record.fork == MEGATRON_LM and record.timestamp is None
    assert record.tflops == round(megatron_lm_logged(B, SECONDS), 1)
    # without --log-throughput and without a timestamp (2023): not told apart from the line
    bare = plain.replace(" throughput per GPU (TFLOP/s/GPU): ", " other: ")
    assert parse_line(bare).fork is None
    for stamp, expected in (("", STAMP0 + datetime.timedelta(seconds=2)),
                            (".%f", STAMP0 + datetime.timedelta(seconds=2))):
        stamped = parse_line("[default0]:" + megatron_lm_line(4, 64, 500.0, stamp=stamp)
                             .replace(" throughput per GPU (TFLOP/s/GPU): ", " other: "))
        assert stamped.fork == MEGATRON_LM
        assert stamped.timestamp == expected.replace(tzinfo=datetime.timezone.utc).timestamp()
    fraction = parse_line(" [2026-08-22 15:00:41.850000]" + plain)
    assert fraction.timestamp - parse_line(" [2026-08-22 15:00:41]" + plain).timestamp \
        == pytest.approx(0.85)


def test_iteration_one_line_and_the_next_are_start_up_and_left_out(tmp_path, capsys, logfmt):
    """Since 2026-01 Megatron-LM logs iteration 1 (its time includes the start-up) without
    resetting the interval timer or the iteration counts, so the line at iteration 4 covers
    iterations 1-4 again.  Both are shown but are left out of the statistics."""
    startup = 40.0
    ramp = [2 * B, B, B, B]  # a first batch unlike the rest shows which samples are counted
    lines = megatron_lm_dump(logfmt)
    lines.append(megatron_lm_line(1, ramp[0], (startup + SECONDS) * 1000, batch=ramp[0]))
    lines.append(megatron_lm_line(4, sum(ramp), (startup + 4 * SECONDS) * 1000 / 4))
    lines += [megatron_lm_line(i, sum(ramp) + (i - 4) * B, SECONDS * 1000) for i in (8, 12)]
    path = tmp_path / "megatron_lm_2026.log"
    path.write_text("\n".join(lines) + "\n")
    result = logfmt.run_cli(capsys, path, "--json")
    assert result.code == 0, result.err
    by_iteration = {i["iteration"]: i for i in logfmt.json_intervals(result)}
    per_sample = hand_model_flops_per_sample()
    first = by_iteration[1]
    assert first["startup"] and first["batch_size"] == 2 * B
    assert first["tflops_per_gpu"]["model"] == pytest.approx(
        2 * B * per_sample / ((startup + SECONDS) * WORLD * 1e12), rel=1e-12)
    second = by_iteration[4]
    # iterations 1-4: 5·B samples over the whole (unreset) time
    assert second["startup"] and second["batch_size"] == pytest.approx(sum(ramp) / 4)
    assert second["tflops_per_gpu"]["model"] == pytest.approx(
        sum(ramp) * per_sample / ((startup + 4 * SECONDS) * WORLD * 1e12), rel=1e-12)
    for iteration in (8, 12):
        assert not by_iteration[iteration]["startup"]
        assert by_iteration[iteration]["batch_size"] == B
    summary = logfmt.json_summary(result)
    assert summary["intervals"] == 2 and summary["first_iteration"] == 8
    assert summary["startup_intervals"] == [[1, 1], [1, 4]]
    assert summary["gaps"] == 0
    assert summary["mean_tflops_per_gpu"]["model"] == pytest.approx(
        B * per_sample / (SECONDS * WORLD * 1e12), rel=1e-12)
    table = logfmt.run_cli(capsys, path)
    assert "left out of the statistics, their time including start-up: iterations 1, 1–4" \
        in table.out
    assert "Megatron-LM's model-FLOPs estimate" in table.out


def test_with_full_recompute_the_logged_figure_is_compared_with_the_model_count(
        tmp_path, capsys, logfmt):
    """Megatron-LM's number never counts recomputation: with --recompute-granularity full its
    error is against the model count, while the hardware count adds one forward per layer."""
    lines = megatron_lm_dump(logfmt)
    lines[-2:-1] = ["  recompute_granularity ........................... full",
                    "  recompute_method ................................ uniform",
                    "  recompute_num_layers ............................ 1", lines[-2]]
    lines += [megatron_lm_line(i, i * B, SECONDS * 1000) for i in (4, 8)]
    path = tmp_path / "recompute.log"
    path.write_text("\n".join(lines) + "\n")
    result = logfmt.run_cli(capsys, path, "--json")
    assert result.code == 0, result.err
    model = B * hand_model_flops_per_sample() / (SECONDS * WORLD * 1e12)
    layer_forward = 24 * S * H * H + 4 * S * S * H
    hardware = model + B * L * layer_forward / (SECONDS * WORLD * 1e12)
    logged = round(megatron_lm_logged(B, SECONDS), 1)
    for interval in logfmt.json_intervals(result):
        assert interval["tflops_per_gpu"]["hardware"] == pytest.approx(hardware, rel=1e-12)
        assert interval["error"] == pytest.approx(logged / model - 1, rel=1e-12)
    assert logfmt.json_summary(result)["fork_formula_mismatches"] == 0


def progress_line(seconds, event, gpus=WORLD, job="4242"):
    """Megatron-LM's append_to_progress_log line (d98e8a64 megatron/training/utils/log_utils.py)."""
    when = STAMP0 + datetime.timedelta(seconds=seconds)
    return f"{when.strftime('%Y-%m-%d %H:%M:%S')}\tJob ID: {job}\t# GPUs: {gpus}\t{event}"


def checkpoint_event(iteration, job_tflops, flops):
    return (f"Saved checkpoint\tIteration: {iteration}\tJob throughput: {job_tflops:.1f} "
            f"TFLOP/s/GPU\tCumulative throughput: {job_tflops:.1f} TFLOP/s/GPU\t"
            f"Floating-point operations: {flops:.2e}\tTokens (in billions): 0.00")


def test_progress_txt_is_relogged_per_checkpoint(tmp_path, capsys, logfmt):
    """Two jobs: the first saves at iterations 4 and 8, the second resumes from 8 and saves at
    12.  Each checkpoint line is an interval since the job's previous one (the job's first:
    since its start, from the checkpoint it resumed from); the job's first checkpoint keeps
    its Job throughput as the logged figure and is left out of the statistics (start-up)."""
    per_iteration = megatron_lm_flops_per_iteration(B)
    lines = [progress_line(0, "Starting job"),
             progress_line(42, checkpoint_event(4, 4 * per_iteration / (42 * WORLD * 1e12),
                                                4 * per_iteration)),
             progress_line(44, checkpoint_event(8, 8 * per_iteration / (44 * WORLD * 1e12),
                                                8 * per_iteration)),
             progress_line(44, "Saved async checkpoint\tIteration: 8"),
             progress_line(100, "Starting job"),
             progress_line(130, checkpoint_event(12, 4 * per_iteration / (30 * WORLD * 1e12),
                                                 12 * per_iteration))]
    path = tmp_path / "progress.txt"
    path.write_text("\n".join(lines) + "\n")
    flags = ["--num-layers", L, "--hidden-size", H, "--num-attention-heads", N, "--seq-length",
             S, "--global-batch-size", B, "--micro-batch-size", 2, "--padded-vocab-size", V]
    result = logfmt.run_cli(capsys, path, *flags, "--json")
    assert result.code == 0, result.err
    intervals = {i["iteration"]: i for i in logfmt.json_intervals(result)}
    assert sorted(intervals) == [4, 8, 12]
    per_sample = hand_model_flops_per_sample()
    for iteration, seconds, startup in ((4, 42, True), (8, 2, False), (12, 30, True)):
        interval = intervals[iteration]
        assert interval["fork"] == MEGATRON_LM and interval["startup"] is startup
        assert interval["seconds_per_iteration"] == pytest.approx(seconds / 4)
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(
            4 * B * per_sample / (seconds * WORLD * 1e12), rel=1e-12)
    # the Job throughput is kept only where it covers the same span (a job's first save)
    assert intervals[4]["logged_tflops"] == round(4 * per_iteration / (42 * WORLD * 1e12), 1)
    assert intervals[8]["logged_tflops"] is None
    summary = logfmt.json_summary(result)
    assert summary["world_size"] == WORLD  # from the lines' "# GPUs"
    assert summary["intervals"] == 1 and summary["startup_intervals"] == [[1, 4], [9, 12]]


REAL_LOG = os.path.join(os.path.dirname(__file__), os.pardir, "data", "megatron_lm", "real",
                        "d98e8a64_cpu.log")


def test_the_real_megatron_lm_output_relogs_flag_free(capsys, logfmt):
    """Megatron-LM d98e8a64's own dump and training_log lines (tests/data/megatron_lm/README.md,
    real/):
    read flag-free, the logged figure is Megatron-LM's formula (checked by hand here), the
    error is against the model count written out by hand."""
    s, l, h, V, B = 1024, 4, 1024, 128, 8
    result = logfmt.run_cli(capsys, REAL_LOG, "--json")
    assert result.code == 0, result.err
    summary = logfmt.json_summary(result)
    assert summary["forks"] == ["megatron-lm"] and summary["world_size"] == 1
    assert summary["startup_intervals"] == [[1, 1], [1, 4]] and summary["intervals"] == 1
    # (the two start-up intervals are not in the statistics: one interval checked there)
    assert summary["fork_formula_checked"] == 1 and summary["fork_formula_mismatches"] == 0
    theirs = megatron_lm_flops_per_iteration(B, s, l, h, V)
    ours = B * hand_model_flops_per_sample(s, l, h, V)
    for interval in logfmt.json_intervals(result):
        seconds = interval["seconds_per_iteration"]
        # printed: ms with 1 decimal, TFLOP/s with 1 decimal
        assert abs(interval["logged_tflops"] - theirs / (seconds * 1e12)) <= \
            theirs / 1e12 * 0.05e-3 / (seconds - 0.05e-3) ** 2 + 0.05
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(ours / (seconds * 1e12),
                                                                    rel=1e-12)
        assert interval["fork_formula_tflops"] == pytest.approx(theirs / (seconds * 1e12),
                                                                rel=1e-12)


def test_a_dump_with_a_feature_not_counted_yet_is_refused(tmp_path, capsys, logfmt):
    lines = megatron_lm_dump(logfmt)
    lines[1:1] = ["  mtp_use_repeated_layer .......................... True"]
    lines += [megatron_lm_line(i, i * B, SECONDS * 1000) for i in (4, 8)]
    path = tmp_path / "repeated_mtp.log"
    path.write_text("\n".join(lines) + "\n")
    result = logfmt.run_cli(capsys, path)
    assert result.code == 2 and "Traceback" not in result.err
    assert "--mtp-use-repeated-layer" in result.err
    assert "MTP with one shared layer (its parameters counted once) is not counted yet" \
        in result.err


def test_the_eras_of_megatron_lms_formula_that_reproduce_a_log_are_named(tmp_path, capsys,
                                                                         logfmt):
    """A 2024 log (before 8873b55d, 2025-03) counted attention dense: for this shape (MHA,
    ffn 4h, no GLU, d = h/n) the 2023-11 formula 60·B·s·l·h²·(1 + g/(5n) + s/(5h) + V/(10lh))
    and the 2024 ones are exactly our dense model count; the current formula is lower."""
    dense_logged = B * hand_model_flops_per_sample() / (SECONDS * 1e12 * WORLD)
    lines = megatron_lm_dump(logfmt)
    for i in (4, 8, 12):
        line = megatron_lm_line(i, i * B, SECONDS * 1000, stamp="")
        current = "{:.1f}".format(megatron_lm_logged(B, SECONDS))
        lines.append(line.replace(f"(TFLOP/s/GPU): {current} |",
                                  f"(TFLOP/s/GPU): {dense_logged:.1f} |"))
    path = tmp_path / "megatron_lm_2024.log"
    path.write_text("\n".join(lines) + "\n")
    eras = logfmt.json_summary(logfmt.run_cli(capsys, path, "--json"))["megatron_lm_eras"]
    # 2024-09 (shared experts) and 2025-02 (--moe-ffn-hidden-size) change nothing without
    # experts: every era before the causal one reproduces the dense figure
    assert eras == {"lines_checked": 3, "reproducing": [
        "megatron-lm@2023-11", "megatron-lm@2024-03", "megatron-lm@2024-03-25",
        "megatron-lm@2024-04", "megatron-lm@2024-09", "megatron-lm@2025-02"]}
    current_log = tmp_path / "megatron_lm_2026.log"
    current_log.write_text(steady_log(logfmt, ".%f"))
    result = logfmt.run_cli(capsys, current_log)
    assert "Megatron-LM formula eras that reproduce all 3 logged figures: megatron-lm@2025-03" \
        in result.out


def test_logged_throughputs_of_0_0_are_not_said_to_be_reproduced_by_any_era(tmp_path, capsys,
                                                                            logfmt):
    """A tiny run (CPU) logs ``throughput per GPU (TFLOP/s/GPU): 0.0`` on every line: every
    era's formula rounds to 0.0 too, so none may be said to reproduce the log (before issue 19
    relog named all eight)."""
    ms = 1e8  # 10⁵ s per iteration: every era's formula prints 0.0 (well below 0.05)
    assert megatron_lm_logged(B, ms / 1000) < 0.05
    lines = megatron_lm_dump(logfmt)
    lines += [megatron_lm_line(i, i * B, ms, stamp=None) for i in (4, 8, 12)]
    assert all("(TFLOP/s/GPU): 0.0 |" in line for line in lines[-3:])
    path = tmp_path / "tiny.log"
    path.write_text("\n".join(lines) + "\n")
    result = logfmt.run_cli(capsys, path, "--json")
    assert result.code == 0, result.err
    assert logfmt.json_summary(result)["megatron_lm_eras"] == {"lines_checked": 0,
                                                               "reproducing": []}
    assert "formula eras that reproduce" not in logfmt.run_cli(capsys, path).out


def test_a_log_of_start_up_intervals_only_says_so(tmp_path, capsys, logfmt):
    lines = megatron_lm_dump(logfmt) + [megatron_lm_line(1, B, 40_000.0),
                                        megatron_lm_line(4, 4 * B, 10_000.0)]
    path = tmp_path / "short.log"
    path.write_text("\n".join(lines) + "\n")
    result = logfmt.run_cli(capsys, path)
    assert result.code == 2 and "only start-up intervals" in result.err


SAMPLE_LOGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                           "megatron_lm")


@pytest.mark.parametrize("name, eras", [
    # GQA, SwiGLU, MoE after a dense first layer, MTP 1 (tests/data/megatron_lm/README.md):
    # only the formula that counts MTP layers (d4f9a6f7, 2025-04 on) reproduces it
    ("megatron_lm_2026.log", ["megatron-lm@2025-04"]),
    ("megatron_lm_2026_rank_prefix.log", ["megatron-lm@2025-04"]),
    # dense MHA, no MTP or MLA: 2025-03 and 2025-04 count it alike
    ("megatron_lm_2023-11.log", ["megatron-lm@2025-03", "megatron-lm@2025-04"]),
    ("megatron_lm_2024-03.log", ["megatron-lm@2025-03", "megatron-lm@2025-04"]),
    (os.path.join("real", "d98e8a64_cpu.log"), ["megatron-lm@2025-03", "megatron-lm@2025-04"]),
])
def test_the_committed_megatron_lm_logs_name_their_era_without_a_warning(capsys, logfmt, name,
                                                                         eras):
    """The sample logs' figures come from Megatron-LM's current formula (the fixture's
    re-derivation, or the real d98e8a64): relog names the eras that reproduce every line."""
    result = logfmt.run_cli(capsys, os.path.join(SAMPLE_LOGS, name), "--json")
    assert result.code == 0, result.err
    summary = logfmt.json_summary(result)
    assert summary["megatron_lm_eras"]["reproducing"] == eras
    assert summary["fork_formula_mismatches"] == 0
    table = logfmt.run_cli(capsys, os.path.join(SAMPLE_LOGS, name))
    assert "does not reproduce" not in table.out + table.err
