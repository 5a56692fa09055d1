"""relog --conventions / --convention NAME and the summary's ``conventions`` object (issue 13).

Expected values are derived by hand here: the parameter count N of the shape below, the 6N and
PaLM per-token formulas (``megatron_flops.conventions`` docstrings cite their sources), and
the exact count from conftest's hand formula.
"""

import pytest

L, H, N_HEADS, V, SEQ, WORLD, PEAK = 2, 256, 4, 1024, 128, 2, 100.0
FLAGS = ["--num-layers", L, "--hidden-size", H, "--num-attention-heads", N_HEADS,
         "--padded-vocab-size", V, "--seq-length", SEQ, "--world-size", WORLD,
         "--peak-tflops", PEAK]
BATCH = 8
# N by hand: per layer QKV 3h² + 3h, output h² + h, MLP h·4h + 4h + 4h·h + h, two layer norms
# 4h → 12h² + 13h; word embeddings V·h (tied output), learned positions max_position_embeddings
# (= seq length) · h, final layer norm 2h
N_PARAMS = L * (12 * H * H + 13 * H) + V * H + SEQ * H + 2 * H
assert N_PARAMS == 1_874_944


def write_log(path, logfmt, seconds):
    # the dump's log interval: the first line covers 10 iterations too (without one it
    # counts as one), so every interval is 10 iterations and the mean is the plain one
    lines = logfmt.arguments_dump(log_interval=10) + [logfmt.bigscience_line(i, BATCH * i, BATCH * i * SEQ, t, BATCH, BATCH / t, 1.5)
             for i, t in zip(range(10, 10 * len(seconds) + 1, 10), seconds)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_summary_conventions_at_the_mean_interval(tmp_path, logfmt, capsys):
    seconds = [0.5, 0.8, 0.5, 0.8]   # equal intervals, exact in the log: the mean is 0.65 s
    log = write_log(tmp_path / "train.log", logfmt, seconds)
    result = logfmt.run_cli(capsys, log, *FLAGS, "--json", "--convention", "palm")
    assert result.code == 0, result.err
    summary = logfmt.json_summary(result)
    conventions = summary["conventions"]
    assert {"exact", "exact-causal", "palm", "nanogpt", "torchtitan", "llm-foundry", "maxtext",
            "megatron-lm", "bigscience", "microsoft", "6n"} <= set(conventions)
    mean_seconds = sum(seconds) / len(seconds)
    tokens = BATCH * SEQ
    model_per_sample, _ = logfmt.hand_flops_per_sample(SEQ, L, H, N_HEADS, V)
    exact = conventions["exact"]
    assert exact["flops_per_iteration"] == pytest.approx(BATCH * model_per_sample, rel=1e-12)
    assert exact["tflops_per_gpu"] == pytest.approx(
        BATCH * model_per_sample / (mean_seconds * WORLD * 1e12), rel=1e-9)
    # all FLOPs over all the time, for one shape and equal intervals
    assert exact["tflops_per_gpu"] == pytest.approx(
        summary["overall_tflops_per_gpu"]["model"], rel=1e-9)
    six_n = conventions["6n"]
    assert six_n["tflops_per_gpu"] == pytest.approx(
        6 * N_PARAMS * tokens / (mean_seconds * WORLD * 1e12), rel=1e-9)
    assert six_n["mfu"] == pytest.approx(six_n["tflops_per_gpu"] / PEAK, rel=1e-12)
    # PaLM: 6N + 12·L·H·Q·T per token (n heads of d = h/n, T = seq length)
    palm_per_token = 6 * N_PARAMS + 12 * L * N_HEADS * (H // N_HEADS) * SEQ
    assert conventions["palm"]["flops_per_iteration"] == pytest.approx(
        tokens * palm_per_token, rel=1e-12)
    assert summary["headline"] == {"convention": "palm", **conventions["palm"]}
    assert summary["conventions_unavailable"] is None


def test_exact_row_equals_the_intervals_model_tflops(tmp_path, logfmt, capsys):
    log = write_log(tmp_path / "train.log", logfmt, [0.5] * 3)
    result = logfmt.run_cli(capsys, log, *FLAGS, "--json")
    assert result.code == 0, result.err
    summary = logfmt.json_summary(result)
    assert summary["headline"] is None      # no --convention: the object is there, no headline
    for interval in logfmt.json_intervals(result):
        assert summary["conventions"]["exact"]["tflops_per_gpu"] == pytest.approx(
            interval["tflops_per_gpu"]["model"], rel=1e-9)
        assert summary["conventions"]["exact"]["mfu"] == pytest.approx(interval["mfu"],
                                                                       rel=1e-9)


def test_table_and_headline_after_the_summary(tmp_path, logfmt, capsys):
    log = write_log(tmp_path / "train.log", logfmt, [0.5] * 3)
    plain = logfmt.run_cli(capsys, log, *FLAGS)
    assert plain.code == 0 and "would report" not in plain.out and "6n " not in plain.out
    result = logfmt.run_cli(capsys, log, *FLAGS, "--conventions", "--convention",
                            "megatron-lm@2024-03")
    assert result.code == 0, result.err
    out = result.out.splitlines()
    summary_end = next(i for i, line in enumerate(out) if line.startswith("lines: "))
    headline = next(i for i, line in enumerate(out) if " would report: " in line)
    table = next(i for i, line in enumerate(out) if line.startswith("what each convention"))
    assert summary_end < headline < table
    # the era, dense attention without GLU: 12·B·s·l·h²·(1 + g/n + s/h + (f/h)) + 6·B·s·h·V
    # = the exact count for this MHA shape (its attention terms are ours term by term)
    rows = {line.split()[0]: line.split() for line in out[table + 3:] if line.strip()
            and not line.startswith("peak:")}
    assert out[headline].startswith("megatron-lm@2024-03 would report: ")
    assert "+0.0% vs exact" in out[headline]
    six_n = 6 * N_PARAMS * BATCH * SEQ
    assert rows["6n"][2] == f"{six_n / 1e9:.3f}" and rows["6n"][3] == "GFLOP"
    assert rows["6n"][4] == f"{six_n / (0.5 * WORLD * 1e12):.2f}"
    assert rows["exact"][-1] == "+0.0%"
    assert out[-1] == f"peak: given ({PEAK:g} TFLOP/s)"


def test_unknown_convention_fails_before_the_log_is_read(tmp_path, logfmt, capsys):
    log = write_log(tmp_path / "train.log", logfmt, [0.5] * 3)
    result = logfmt.run_cli(capsys, log, *FLAGS, "--convention", "nosuch")
    assert result.code == 2
    assert "--convention must be one of" in result.err and "Traceback" not in result.err
    assert result.out == ""


def test_a_reshaped_restart_gives_the_conventions_of_the_last_shape(tmp_path, logfmt, capsys):
    """A restart's new arguments dump (here 2 → 4 GPUs, 0.5 → 0.25 s per iteration): the
    conventions are at the last shape's intervals, on its world size."""
    first = logfmt.arguments_dump(log_interval=10, world_size=2)
    first += [logfmt.bigscience_line(i, BATCH * i, BATCH * i * SEQ, 0.5, BATCH, BATCH / 0.5, 1.5)
              for i in (10, 20, 30)]
    second = logfmt.arguments_dump(log_interval=10, world_size=4)
    second += [logfmt.bigscience_line(i, BATCH * i, BATCH * i * SEQ, 0.25, BATCH, BATCH / 0.25,
                                      1.5) for i in (40, 50, 60)]
    log = tmp_path / "train.log"
    log.write_text("\n".join(first + second) + "\n")
    flags = list(FLAGS)
    at = flags.index("--world-size")
    del flags[at:at + 2]                      # each dump's world size
    result = logfmt.run_cli(capsys, log, *flags, "--json")
    assert result.code == 0, result.err
    summary = logfmt.json_summary(result)
    assert len(summary["segments"]) == 2
    six_n = summary["conventions"]["6n"]["tflops_per_gpu"]
    assert six_n == pytest.approx(6 * N_PARAMS * BATCH * SEQ / (0.25 * 4 * 1e12), rel=1e-9)
