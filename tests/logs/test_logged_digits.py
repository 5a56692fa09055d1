"""Issue 24: the logged TFLOPs' error respects the digits the run printed.

The forks print ``TFLOPs: {:.2f}`` (bigscience 8387ae1 and microsoft f4157be
``megatron/training.py``; conftest.py writes lines in their formats), Megatron-LM
``throughput per GPU (TFLOP/s/GPU): {:.1f}``.  A small run's figure prints as ``0.00``: it
says nothing of the formula, so its error is n/a (before: −100 %), said why in the table's
summary, the CSV and ``--json``.  A figure printed as ``0.01`` stands for anything in
[0.005, 0.015): against a true 0.0146 its error is not −32 % but "within the printed digits",
with the bound ± 0.005 / true.
"""

import csv
import json
from pathlib import Path

import pytest

from megatron_flops.logs.console import parse_line
from megatron_flops.logs.intervals import ROUNDED_TO_ZERO, WITHIN_DIGITS

L, H, N, S, V, BATCH = 2, 128, 4, 128, 512, 8
QUOTES = Path(__file__).resolve().parent.parent / "data" / "logs" / "bigscience_quoted_lines.jsonl"


def _small_run(tmp_path, logfmt, seconds, batch=BATCH):
    """Three intervals of a tiny bigscience run at ``seconds`` per iteration (printed with the
    fork's 2 decimals, the samples per second with 3): (path, the true TFLOP/s by hand,
    the fork's unrounded figure)."""
    model, hardware = logfmt.hand_flops_per_sample(S, L, H, N, V)
    assert model == hardware                    # no recompute
    true = batch * hardware / (seconds * 1e12)
    fork = logfmt.bigscience_logged_tflops(batch, S, L, H, V, seconds, 1)
    lines = logfmt.arguments_dump(
        num_layers=L, hidden_size=H, num_attention_heads=N, seq_length=S,
        micro_batch_size=batch, global_batch_size=batch, world_size=1, log_interval=10)
    lines.append(f" > padded vocab (size: {V}) with 0 dummy tokens (new size: {V})")
    for i in (10, 20, 30):
        lines.append(logfmt.bigscience_line(i, i * batch, i * batch * S, seconds, batch,
                                            batch / seconds, fork))
    path = tmp_path / "run.log"
    path.write_text("\n".join(lines) + "\n")
    return path, true, fork


def test_the_printed_digits_of_the_logged_figure_are_read():
    # a real line: bigscience-workshop/bigscience 9e64ede, train/tr11-176B-ml/README.md:245
    quoted = next(json.loads(line) for line in QUOTES.read_text().splitlines()
                  if '"line": 245' in line and "tr11-176B-ml/README.md" in line)
    assert "| TFLOPs: 8.04 |" in quoted["text"]
    first = parse_line(quoted["text"])
    again = parse_line(quoted["text"].replace("3707/", "3708/"))   # the learned-format path
    for record in (first, again):
        assert record.tflops == 8.04 and record.tflops_resolution == pytest.approx(0.005)
    # Megatron-LM's {:.1f}, as the last field without its "|" (a fork's line end)
    megatron_lm = (" [2026-01-28 10:00:00.123456] iteration       10/     100 | consumed "
                   "samples:          80 | elapsed time per iteration (ms): 1234.5 | "
                   "throughput per GPU (TFLOP/s/GPU): 0.0")
    assert parse_line(megatron_lm).tflops_resolution == pytest.approx(0.05)


def test_a_logged_figure_printed_as_zero_has_no_error(tmp_path, logfmt, capsys):
    path, true, fork = _small_run(tmp_path, logfmt, seconds=2.68)
    assert true == pytest.approx(0.0012, rel=0.01) and fork < 0.005   # prints as 0.00
    assert "| TFLOPs: 0.00 |" in path.read_text()
    result = logfmt.run_cli(capsys, path, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert len(intervals) == 3
    for interval in intervals:
        assert interval["logged_tflops"] == 0.0
        assert interval["tflops_per_gpu"]["hardware"] == pytest.approx(true, rel=0.005)
        assert interval["error"] is None               # before: -1.0 (−100 %)
        assert interval["error_note"] == ROUNDED_TO_ZERO
    summary = logfmt.json_summary(result)
    assert summary["logged_tflops_rounded_to_zero"] == 3
    assert summary["intervals_with_logged_tflops"] == 0
    assert summary["mean_error"] is None and summary["min_error"] is None

    table = logfmt.run_cli(capsys, path, "--csv", tmp_path / "small.csv")
    assert table.code == 0, table.err
    rows = table.out.splitlines()
    header = next(i for i, row in enumerate(rows) if row.split()[:1] == ["iteration"])
    for row in rows[header + 1:header + 4]:
        assert row.split()[-1] == "n/a" and "-100" not in row
    assert "error n/a for 3 intervals: their logged TFLOPs were printed as zero" in table.out
    with open(tmp_path / "small.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            assert row["error_percent"] == "" and row["error_note"] == ROUNDED_TO_ZERO


def test_a_logged_figure_within_its_printed_digits_says_so_with_its_bound(tmp_path, logfmt,
                                                                          capsys):
    path, true, fork = _small_run(tmp_path, logfmt, seconds=0.22)
    # the fork's figure (0.0142: Eq. 3 × 3/4 counts the logits as 4.5·s·h·V, not 6) prints 0.01
    assert round(fork, 2) == 0.01 and "| TFLOPs: 0.01 |" in path.read_text()
    assert 0.0145 < true < 0.015
    result = logfmt.run_cli(capsys, path, "--json")
    assert result.code == 0, result.err
    summary = logfmt.json_summary(result)
    for interval in logfmt.json_intervals(result):
        measured = interval["tflops_per_gpu"]["hardware"]
        assert measured == pytest.approx(true, rel=0.005)
        assert interval["error"] == pytest.approx(0.01 / measured - 1)        # about −32 %
        assert interval["error_bound"] == pytest.approx(0.005 / measured)   # about ±34 %
        assert interval["error_note"] == WITHIN_DIGITS
    assert summary["errors_within_printed_digits"] == 3
    assert summary["max_error_bound"] == pytest.approx(0.005 / true, rel=0.005)

    table = logfmt.run_cli(capsys, path)
    bound = f"±{100 * 0.005 / true:.1f}%"
    rows = [row for row in table.out.splitlines() if row.split()[:1] in (["10"], ["20"], ["30"])]
    assert len(rows) == 3 and all(row.split()[-1].endswith(bound) for row in rows)
    assert all(row.split()[4] == "0.01" for row in rows)   # the logged figure as printed
    assert f"up to {bound}; 3 of the 3 intervals are {WITHIN_DIGITS}" in table.out


def test_a_big_run_keeps_its_plain_error(tmp_path, logfmt, capsys):
    """At a real run's scale (7.80 TFLOPs, 2 decimals) the printing allows ±0.06 %: the
    table shows no bound (it would not change the printed error), the JSON still gives it."""
    path, true, fork = _small_run(tmp_path, logfmt, seconds=1.0, batch=20_000)
    assert "| TFLOPs: 7.80 |" in path.read_text()   # the fork's 0.969 × the true 8.05
    result = logfmt.run_cli(capsys, path, "--json")
    for interval in logfmt.json_intervals(result):
        assert interval["error_bound"] == pytest.approx(0.005 / true, rel=1e-3)   # 0.06 %
        assert interval["error"] == pytest.approx(7.80 / true - 1, rel=1e-3)
    table = logfmt.run_cli(capsys, path).out
    assert "±" not in table
