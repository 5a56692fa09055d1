"""Issue 18 item 5: relog reads Megatron-LM lines by their own era and their forks' variants.

- Each line's ``fork_formula`` is the era of Megatron-LM's formula the line can come from:
  a checkout no newer than its date stamp, no older than the stamp's format (the plain
  stamp since f427c6f0, 2024-03-09; ``.%f`` since 6cf285b2, 2026-01-27) — the newest such era
  that reproduces the logged figure, else the newest such era (and the mismatch is flagged).
  The logged figures below are written by hand for the dense count (every era before
  2025-03 gives it for this MHA, ffn 4h, no-GLU shape: test_relog_megatron_lm.py) and for the
  causal (2025-03 on) one.
- A line that ends right after ``throughput per GPU (TFLOP/s/GPU): N`` (no closing ``|``)
  is read whole, its figure used; a line cut inside that value is still a cut line.
- AMD Primus's "current/average" pairs (AMD-AGI/Primus fd1eeabb,
  ``primus/backends/megatron/patches/training_log/print_rank_last_patches.py``:
  ``elapsed time per iteration (ms): {inst:.1f}/{avg:.1f}`` and ``compute per GPU
  (TFLOP/s/GPU): {inst:.1f} (avg {avg:.1f})``; its ``benchmark/megatron/model/
  benchmark_report.py`` names the earlier ``throughput per GPU (TFLOP/s/GPU): X/Y`` form):
  the current value is read.
"""

import datetime

import pytest

from megatron_flops.logs.console import MEGATRON_LM, parse_line

from .test_relog_megatron_lm import (B, SECONDS, WORLD, hand_model_flops_per_sample,
                                     megatron_lm_dump, megatron_lm_line, megatron_lm_logged)

DENSE = B * hand_model_flops_per_sample() / (SECONDS * 1e12 * WORLD)   # eras 2023-11 … 2025-02
CAUSAL = megatron_lm_logged(B, SECONDS)                                # eras 2025-03 on


def _log(tmp_path, logfmt, logged, when, precise=False):
    """Three lines stamped on ``when`` (None: no stamp) whose figure is ``logged``."""
    lines = megatron_lm_dump(logfmt)
    for i in (4, 8, 12):
        line = megatron_lm_line(i, i * B, SECONDS * 1000, stamp=None)
        line = line.replace("{:.1f} |".format(CAUSAL), "{:.1f} |".format(logged))
        if when is not None:
            stamp = when + datetime.timedelta(seconds=i)
            line = " [" + stamp.strftime("%Y-%m-%d %H:%M:%S" + (".%f" if precise else "")) \
                + "]" + line
        lines.append(line)
    path = tmp_path / "run.log"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("logged, when, precise, era, mismatches", [
    # a 2024-06 run: its checkout is 2024-04 or older: the dense figure is 2024-04's
    (DENSE, datetime.datetime(2024, 6, 1), False, "megatron-lm@2024-04", 0),
    # a 2024-03-20 run: 2024-03-13's formula at the newest (SwiGLU counted came on 03-25)
    (DENSE, datetime.datetime(2024, 3, 20), False, "megatron-lm@2024-03", 0),
    # a 2025-01 run with the dense figure: 2024-09 (2025-02 came later)
    (DENSE, datetime.datetime(2025, 1, 15), False, "megatron-lm@2024-09", 0),
    # a ".%f" stamp is a 2026 checkout: only today's formula; the dense figure is off
    (DENSE, datetime.datetime(2026, 8, 1), True, "megatron-lm@2025-04", 3),
    # the causal figure in a 2024-06 run: no era of then gives it; the newest of then named
    (CAUSAL, datetime.datetime(2024, 6, 1), False, "megatron-lm@2024-04", 3),
    # no stamp bounds nothing: the newest era that reproduces
    (DENSE, None, False, "megatron-lm@2025-02", 0),
    (CAUSAL, None, False, "megatron-lm@2025-04", 0),
])
def test_each_line_names_the_formula_of_its_own_era(tmp_path, capsys, logfmt, logged, when,
                                                    precise, era, mismatches):
    path = _log(tmp_path, logfmt, logged, when, precise)
    result = logfmt.run_cli(capsys, path, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert [i["fork_formula"] for i in intervals] == [era] * 3
    summary = logfmt.json_summary(result)
    assert summary["fork_formulas"] == {era: 3}
    assert summary["fork_formula_mismatches"] == mismatches
    for interval in intervals:
        # the era's own figure: it reproduces the logged one exactly where no mismatch is said
        same = abs(interval["fork_formula_tflops"] - interval["logged_tflops"]) <= max(
            0.01 * interval["fork_formula_tflops"], 0.01)
        assert same == (mismatches == 0)
    table = logfmt.run_cli(capsys, path)
    assert f"Megatron-LM formula per line" in table.out and f"{era} (3 lines)" in table.out


LINE = (" [2024-06-01 10:00:04] iteration        4/      12 | consumed samples:           64 |"
        " elapsed time per iteration (ms): 500.0 | learning rate: 3.000000E-04 |"
        " global batch size:    16 | lm loss: 4.321000E+00 | grad norm: 1.500 |"
        " throughput per GPU (TFLOP/s/GPU): {value}")


def test_a_line_ending_right_after_the_throughput_value_is_read_whole():
    record = parse_line(LINE.format(value="266.3") + "\n")
    assert record.tflops == 266.3 and not record.truncated and record.fork == MEGATRON_LM
    # cut inside the value (Megatron-LM prints one decimal): a cut line, the value not read
    for cut in ("26", "266.", "266.3 extra"):
        record = parse_line(LINE.format(value=cut) + "\n")
        assert record.truncated and record.tflops is None, cut


def test_lines_ending_after_the_throughput_value_relog_with_their_figures(tmp_path, capsys,
                                                                          logfmt):
    lines = megatron_lm_dump(logfmt)
    for i in (4, 8, 12):
        line = megatron_lm_line(i, i * B, SECONDS * 1000, stamp=None)
        head, tail = line.split(" throughput per GPU (TFLOP/s/GPU): ")
        value, rest = tail.split(" |", 1)
        lines.append(head + rest + " throughput per GPU (TFLOP/s/GPU): " + value)
    path = tmp_path / "run.log"
    path.write_text("\n".join(lines) + "\n")
    result = logfmt.run_cli(capsys, path, "--json")
    summary = logfmt.json_summary(result)
    assert summary["intervals_with_logged_tflops"] == 3
    assert summary["parse"]["truncated"] == 0
    assert [i["logged_tflops"] for i in logfmt.json_intervals(result)] == [
        float("{:.1f}".format(CAUSAL))] * 3


# Primus's line: the Megatron-LM line of AMD-AGI/Primus fd1eeabb
# tests/unit_tests/backends/megatron/test_training_log_patches.py (lines 284-292) with the
# fields Primus rewrites in their rewritten forms (its print_rank_last_patches.py)
PRIMUS = ("[2025-12-25 08:40:22] iteration        2/      50 | consumed samples:          256 | "
          "elapsed time per iteration (ms): {elapsed} | {throughput} | "
          "learning rate: 1.000000E-05 | global batch size:   128 | "
          "lm loss: 1.189062E+01 | loss scale: 1.0 | grad norm: 7.499 | "
          "number of skipped iterations:   0 | number of nan iterations:   0 |")


@pytest.mark.parametrize("elapsed, throughput", [
    ("6046.6/6100.2", "throughput per GPU (TFLOP/s/GPU): 1255.4/1250.0"),
    ("6046.6/6100.2", "compute per GPU (TFLOP/s/GPU): 1255.4 (avg 1250.0)"),
    ("6046.6", "throughput per GPU (TFLOP/s/GPU): 1255.4"),
])
def test_primus_current_average_pairs_read_the_current_value(elapsed, throughput):
    record = parse_line(PRIMUS.format(elapsed=elapsed, throughput=throughput))
    assert record.seconds_per_iteration == pytest.approx(6.0466)
    assert record.time_resolution_seconds == pytest.approx(0.5e-4)
    assert record.tflops == 1255.4
    assert record.fork == MEGATRON_LM and not record.truncated


@pytest.mark.parametrize("elapsed", ["6046.6[default3]: glued 1/2", "6046.6/abc", "6046.6 (avg x)"])
def test_a_pair_whose_average_is_no_number_is_not_read_as_one(elapsed):
    from megatron_flops.logs.console import Malformed
    with pytest.raises(Malformed):
        parse_line(PRIMUS.format(elapsed=elapsed,
                                 throughput="throughput per GPU (TFLOP/s/GPU): 1255.4"))
