"""`megatron-flops compare`: steady-state medians of generated runs with a known regression,
warm-up exclusion, noise (1 % jitter vs a 5 % threshold), relog --json input, --min-mfu,
--markdown, bad input."""

import json
import random
import statistics

import pytest

from megatron_flops.cli import main

# l=4, h=256, n=8, s=512, vocab 1024 (a multiple of 128: not padded), batch 16, 8 GPUs
L, H, N, S, V, BATCH, WORLD = 4, 256, 8, 512, 1024, 16, 8
FLAGS = ["--num-layers", L, "--hidden-size", H, "--num-attention-heads", N, "--seq-length", S,
         "--padded-vocab-size", V, "--micro-batch-size", 2, "--global-batch-size", BATCH,
         "--world-size", WORLD]
LOG_INTERVAL = 10


def write_log(path, logfmt, seconds):
    """A bigscience console log: one line per interval with these seconds per iteration."""
    lines = []
    for index, sec in enumerate(seconds, 1):
        iteration = index * LOG_INTERVAL
        samples = iteration * BATCH
        sps = BATCH / sec
        tflops = logfmt.bigscience_logged_tflops(BATCH, S, L, H, V, sec, WORLD)
        lines.append(logfmt.bigscience_line(iteration, samples, samples * S, sec, BATCH, sps, tflops))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def jittered(mean, count, jitter, seed):
    rng = random.Random(seed)
    return [mean * (1 + rng.uniform(-jitter, jitter)) for _ in range(count)]


def run(capsys, *argv):
    code = main(["compare", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err




def expected_median_tflops(logfmt, seconds):
    model_per_sample, _ = logfmt.hand_flops_per_sample(S, L, H, N, V)
    return statistics.median(BATCH * model_per_sample / (sec * WORLD * 1e12) for sec in seconds)


def test_known_regression_fails_with_its_size(tmp_path, logfmt, capsys):
    base_seconds = [5.0] + jittered(0.5, 20, 0.01, seed=1)   # first interval: start-up
    slow_seconds = [5.0] + jittered(0.5 / 0.92, 20, 0.01, seed=2)  # 8 % lower throughput
    base = write_log(tmp_path / "base.log", logfmt, base_seconds)
    cand = write_log(tmp_path / "cand.log", logfmt, slow_seconds)
    code, out, err = run(capsys, base, cand, *FLAGS, "--json")
    assert code == 1, err
    result = json.loads(out)["comparison"]
    assert result["regressed"] is True
    base_median = result["baseline"]["metrics"]["model_tflops_per_gpu"]["median"]
    cand_median = result["candidate"]["metrics"]["model_tflops_per_gpu"]["median"]
    # independent: the hand formula over the steady intervals (warm-up dropped)
    assert base_median == pytest.approx(expected_median_tflops(logfmt, base_seconds[1:]), rel=1e-3)
    assert cand_median == pytest.approx(expected_median_tflops(logfmt, slow_seconds[1:]), rel=1e-3)
    assert result["change"] == pytest.approx(cand_median / base_median - 1)
    assert -0.10 < result["change"] < -0.06
    assert result["baseline"]["steady_intervals"] == 20
    assert result["baseline"]["warmup_intervals"] == 1
    assert result["baseline"]["metrics"]["model_tflops_per_gpu"]["count"] == 20
    # the text form says so, with the spread
    code, out, _ = run(capsys, base, cand, *FLAGS)
    assert code == 1 and "REGRESSION" in out and "IQR" in out and "20 steady-state intervals" in out


@pytest.mark.parametrize("seed", range(5))
def test_one_percent_jitter_passes_a_five_percent_threshold(tmp_path, logfmt, capsys, seed):
    base = write_log(tmp_path / "base.log", logfmt, [3.0] + jittered(0.5, 15, 0.01, seed))
    cand = write_log(tmp_path / "cand.log", logfmt, [3.0] + jittered(0.5, 15, 0.01, seed + 100))
    code, out, err = run(capsys, base, cand, *FLAGS)
    assert code == 0, out + err
    assert out.strip().splitlines()[-1].startswith("ok:")


def test_a_slow_outlier_interval_does_not_fail_but_a_threshold_of_zero_does(tmp_path, logfmt, capsys):
    seconds = [3.0] + jittered(0.5, 15, 0.01, 7)
    with_checkpoint_save = list(seconds)
    with_checkpoint_save[8] *= 4  # one interval with a checkpoint save
    base = write_log(tmp_path / "base.log", logfmt, seconds)
    cand = write_log(tmp_path / "cand.log", logfmt, with_checkpoint_save)
    assert run(capsys, base, cand, *FLAGS)[0] == 0
    slower = write_log(tmp_path / "slower.log", logfmt, [s * 1.02 for s in seconds])
    assert run(capsys, base, slower, *FLAGS)[0] == 0
    assert run(capsys, base, slower, *FLAGS, "--threshold", "1%")[0] == 1


def test_warmup_is_excluded(tmp_path, logfmt, capsys):
    steady = [0.5] * 3
    base = write_log(tmp_path / "base.log", logfmt, steady * 2)
    cand = write_log(tmp_path / "cand.log", logfmt, [50.0] * 3 + steady)
    code, out, _ = run(capsys, base, cand, *FLAGS, "--warmup", "3", "--json")
    assert code == 0
    metrics = json.loads(out)["comparison"]["candidate"]["metrics"]["model_tflops_per_gpu"]
    assert metrics["count"] == 3
    assert metrics["median"] == pytest.approx(expected_median_tflops(logfmt, steady), rel=1e-3)
    # kept, the three start-up intervals pull the median of six halfway down: a regression
    assert run(capsys, base, cand, *FLAGS, "--warmup", "0")[0] == 1


def test_relog_json_input_gives_the_same_medians(tmp_path, logfmt, capsys):
    seconds = [5.0] + jittered(0.5, 12, 0.01, 3)
    log = write_log(tmp_path / "run.log", logfmt, seconds)
    assert main(["relog", log, *map(str, FLAGS), "--json"]) == 0
    captured = capsys.readouterr()
    json_path = tmp_path / "run.jsonl"
    json_path.write_text(captured.out + captured.err)  # intervals, then the summary line
    code, out, err = run(capsys, str(json_path), log, *FLAGS, "--json")
    assert code == 0, err
    result = json.loads(out)["comparison"]
    assert result["change"] == pytest.approx(0.0, abs=1e-12)
    assert result["baseline"]["world_size"] == WORLD
    # JSON alone needs no model flags
    code, out, err = run(capsys, str(json_path), str(json_path))
    assert code == 0, err


def test_min_mfu_on_a_single_run(tmp_path, logfmt, capsys):
    seconds = [5.0] + jittered(0.5, 10, 0.01, 4)
    log = write_log(tmp_path / "run.log", logfmt, seconds)
    mfu = expected_median_tflops(logfmt, seconds[1:]) / 312.0  # A100 dense bf16
    peak = ["--gpu", "a100", "--bf16"]
    assert run(capsys, log, *FLAGS, *peak, "--min-mfu", f"{0.9 * mfu}")[0] == 0
    code, out, _ = run(capsys, log, *FLAGS, *peak, "--min-mfu", f"{100 * 1.1 * mfu}%")
    assert code == 1 and "MFU below --min-mfu" in out
    code, _, err = run(capsys, log, *FLAGS, "--min-mfu", "40%")  # no peak known
    assert code == 2 and "--min-mfu" in err


def test_markdown_table_has_the_published_columns(tmp_path, logfmt, capsys):
    seconds = [5.0] + jittered(0.5, 10, 0.01, 5)
    base = write_log(tmp_path / "base.log", logfmt, seconds)
    code, out, _ = run(capsys, base, base, *FLAGS, "--gpu", "a100", "--bf16", "--markdown")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("| run | model | GPUs | precision | recompute | tokens/s/GPU | "
                        "model TFLOP/s/GPU | hardware TFLOP/s/GPU | MFU | HFU |")
    row = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert row[0] == "base.log" and row[2] == str(WORLD) and row[3] == "bf16" and row[4] == "none"
    assert float(row[6]) == pytest.approx(expected_median_tflops(logfmt, seconds[1:]), rel=0.005)
    tokens = statistics.median(BATCH * S / (sec * WORLD) for sec in seconds[1:])
    assert float(row[5].replace(",", "")) == pytest.approx(tokens, abs=0.6)


@pytest.mark.parametrize("argv,flag", [
    (["missing.log", "missing.log"], "missing.log"),
    (["BASE", "BASE", "--threshold", "five"], "--threshold"),
    (["BASE", "BASE", "--threshold", "-5%"], "--threshold"),
    (["BASE"], "CANDIDATE"),
    (["GARBAGE", "BASE"], "not JSON"),
    (["BASE", "BASE", "--warmup", "30"], "--warmup"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, logfmt, capsys, argv, flag):
    base = write_log(tmp_path / "base.log", logfmt, jittered(0.5, 5, 0.01, 6))
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"iteration": 1, "tflops_per_gpu": {}}\n{not json\n')
    argv = [{"BASE": base, "GARBAGE": str(garbage)}.get(a, a) for a in argv]
    code, out, err = run(capsys, *argv, *FLAGS)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and flag in err
    assert "Traceback" not in err


# ---- a real published log ------------------------------------------------------------------
# BLOOM-176B (bigscience tr11-176B-ml) resumed from global_step94767 on 36 nodes (288 A100s)
# with two layouts; lines quoted as test data from bigscience-workshop/bigscience,
# train/tr11-176B-ml/reshaping-log.md at commit c352f83ccdb672cfb4cc844774fe74073ea10b40.
_BLOOM_LINE = ("[default7]: iteration    {it}/  115311 | consumed samples:    {samples} | "
               "consumed tokens: {tokens} | elapsed time per iteration (s): {sec} | learning "
               "rate: 7.610E-06 | global batch size:  2048 | lm loss: 1.963261E+00 | grad norm: "
               "0.154 | num zeros: 0.0 | number of skipped iterations:   0 | number of nan "
               "iterations:   0 | samples per second: {sps} | TFLOPs: {tflops} |")
_BLOOM_CONSUMED = {94768: (177927088, 364394676224), 94769: (177929136, 364398870528),
                   94770: (177931184, 364403064832)}
# (iteration, elapsed s, samples per second, TFLOPs) as printed
BLOOM_TP2_PP36 = [(94768, "178.44", "11.477", "117.17"), (94769, "141.94", "14.428", "147.29"),
                  (94770, "141.22", "14.502", "148.04")]
BLOOM_TP4_PP36 = [(94768, "219.17", "9.344", "95.39"), (94769, "155.71", "13.152", "134.26")]
BLOOM_FLAGS = ["--num-layers", 70, "--hidden-size", 14336, "--num-attention-heads", 112,
               "--seq-length", 2048, "--padded-vocab-size", 250880, "--micro-batch-size", 1,
               "--global-batch-size", 2048, "--checkpoint-activations",
               "--position-embedding-type", "alibi", "--embed-layernorm", "--bf16"]
# The run had 288 GPUs with PP 36 on 70 layers (the DeepSpeed pipeline partitions unevenly);
# our flags refuse a PP that does not divide the layers, so the world size is left at one
# replica: it cancels in the ratio the test checks.


def write_bloom(path, rows):
    lines = []
    for it, sec, sps, tflops in rows:
        samples, tokens = _BLOOM_CONSUMED[it]
        lines.append(_BLOOM_LINE.format(it=it, samples=samples, tokens=tokens, sec=sec, sps=sps,
                                        tflops=tflops))
        lines.append("after restart" if it == 94768 else "")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_real_bloom_layouts_tp4_is_a_regression_against_tp2(tmp_path, capsys):
    base = write_bloom(tmp_path / "tp2_pp36.log", BLOOM_TP2_PP36)
    cand = write_bloom(tmp_path / "tp4_pp36.log", BLOOM_TP4_PP36)
    code, out, err = run(capsys, base, cand, *BLOOM_FLAGS, "--json")
    assert code == 1, err
    result = json.loads(out)["comparison"]
    # same model, batch and GPUs: the ratio of TFLOP/s is the inverse ratio of the steady
    # seconds per iteration, from the printed batch / samples per second (first line: warm-up)
    base_seconds = statistics.median([2048 / 14.428, 2048 / 14.502])
    cand_seconds = 2048 / 13.152
    assert result["change"] == pytest.approx(base_seconds / cand_seconds - 1, abs=2e-4)
    assert result["baseline"]["steady_intervals"] == 2
    assert result["candidate"]["steady_intervals"] == 1
    # the other way round it passes, with the whole 10 % as an improvement
    code, out, _ = run(capsys, cand, base, *BLOOM_FLAGS)
    assert code == 0 and "ok: candidate model TFLOP/s per GPU +" in out


def test_tensorboard_run_reads_like_its_console_log(tmp_path, logfmt, capsys):
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    seconds = [5.0] + jittered(0.5, 6, 0.01, 8)
    writer = torch_tb.SummaryWriter(log_dir=str(tmp_path / "tb"))
    for index, sec in enumerate(seconds, 1):  # the bigscience tags, one point per interval
        iteration = index * LOG_INTERVAL
        writer.add_scalar("steps-vs-samples/y=samples,x=steps", iteration * BATCH, iteration,
                          new_style=True)
        writer.add_scalar("iteration-time/iteration-time", sec, iteration, new_style=True)
        writer.add_scalar("iteration-time/samples per second", BATCH / sec, iteration,
                          new_style=True)
    writer.close()
    log = write_log(tmp_path / "run.log", logfmt, seconds)
    code, out, err = run(capsys, str(tmp_path / "tb"), log, *FLAGS, "--json")
    assert code == 0, err
    result = json.loads(out)["comparison"]
    assert result["baseline"]["steady_intervals"] == 6
    assert result["baseline"]["metrics"]["model_tflops_per_gpu"]["median"] == pytest.approx(
        expected_median_tflops(logfmt, seconds[1:]), rel=1e-3)
    assert result["change"] == pytest.approx(0.0, abs=2e-3)  # the log's times are rounded


@pytest.mark.parametrize("candidate_median, regressed", [
    (120.0, False),     # exactly 6.25 % below 128: at the threshold, not beyond it
    (119.99, True),     # beyond it
])
def test_a_run_exactly_at_the_threshold_passes(candidate_median, regressed):
    """"More than --threshold below" fails; exactly at it passes.  128 → 120 is −1/16, and
    1/16 = 0.0625 is exact in binary, so the boundary is not blurred by rounding."""
    from megatron_flops.logs.compare import METRICS, RunSummary, Spread, compare

    def summary(median):
        spread = Spread(median, median, median, 10)
        return RunSummary("run.log", 10, 0, 10, 100, {name: spread for name in METRICS}, 8)

    result = compare(summary(128.0), summary(candidate_median), threshold=0.0625)
    assert result.change == pytest.approx(candidate_median / 128.0 - 1.0, abs=0)
    assert result.regressed is regressed
