"""relog's per-line path (issue 25) gives what the general path gives, value for value.

- console lines: a line read by a *learned format* (one regular expression per line format,
  :func:`megatron_flops.logs.console._learn_format`) is the same record, or the same
  ``Malformed`` message, as the general field-by-field pass gives, on every line of the
  real logs kept in ``tests/data`` and on lines made to trip it (fields that change place,
  a read key in an unread field's place, bad values, glued and truncated lines);
- ``--json`` lines: :func:`megatron_flops.logs.outputs.interval_json` is
  ``json.dumps(interval.as_dict())`` for every interval of those logs and for special values
  (None, NaN, infinities, a non-ASCII fork name);
- the meter: :meth:`ThroughputMeter.interval_report` is ``add_iterations`` + ``report``.

Byte-identical output of the whole command against the code before the change is shown by
``benchmarks/relog_identical.py`` (it needs the old checkout).
"""

import glob
import json
import math
import os

import pytest

from megatron_flops.logs import console
from megatron_flops.logs.console import LogRecord, Malformed, parse_line

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")


def _data_lines():
    lines = []
    for path in sorted(glob.glob(os.path.join(DATA, "logs", "*.out"))
                       + glob.glob(os.path.join(DATA, "megatron_lm", "**", "*.log"),
                                   recursive=True)):
        with open(path, encoding="utf-8", errors="replace") as f:
            lines += [line for line in f if "iteration" in line]
    with open(os.path.join(DATA, "logs", "bigscience_quoted_lines.jsonl"), encoding="utf-8") as f:
        lines += [json.loads(line)["text"] for line in f]
    return lines


BASE = (" iteration      {it}/    1000 | consumed samples:        {c} | elapsed time per "
        "iteration (ms): {ms} | learning rate: 1.0E-04 | global batch size:    {b} | "
        "lm loss: 2.0E+00 | number of skipped iterations:   0 | number of nan iterations:   0 |")
TRICKY = [
    BASE.format(it=10, c=40, ms="661.3", b=4),
    BASE.format(it=11, c=44, ms="661.35", b=4),
    BASE.format(it=12, c=48, ms="nan", b=4),                  # malformed by its value
    BASE.format(it=13, c="4x", ms="661.3", b=4),              # a read value that is no number
    BASE.format(it=14, c=56, ms="661.3", b=4) + " TFLOPs: 12.5",     # truncated tail
    BASE.format(it=15, c=60, ms="661.3", b=4) + " TFLOPs: 12.5 |",   # one field more
    BASE.format(it=16, c=64, ms="661.3", b=4).replace("lm loss", "TFLOPs"),  # read, not skipped
    BASE.format(it=17, c=68, ms="661.3", b=4).replace("lm loss: 2.0E+00", "lm loss"),
    BASE.format(it=18, c=72, ms="661.3", b=4).replace("learning rate", "samples per second"),
    BASE.format(it=19, c=76, ms="661.3", b=4).replace(" | lm loss", " || lm loss"),
    BASE.format(it=20, c=80, ms="661.3", b=4).replace("| global", "|  global"),
    BASE.format(it=21, c=84, ms="661.3", b=4) + " elapsed time per iteration (s): 0.66 |",
    BASE.format(it=22, c=88, ms="661.3", b=4) + " consumed samples: 90 |",    # read twice
    BASE.format(it=23, c=92, ms="661.3", b=4).replace("(ms)", "(s)"),
    BASE.format(it=24, c=96, ms="661.3", b=4) + " MFU (%): 45.2 | HFU: n/a |",
    BASE.format(it=25, c=100, ms="661.3", b=4).replace("consumed samples:", "consumed samples"),
    "[2024-05-01 10:00:00]" + BASE.format(it=26, c=104, ms="661.3", b=4)
    + " throughput per GPU (TFLOP/s/GPU): 123.4 |",
    BASE.format(it=27, c=108, ms="661.3", b=4)[:120] + "[default3]: warning glued"
    + BASE.format(it=27, c=108, ms="661.3", b=4)[120:],
    BASE.format(it=28, c=112, ms="661.3", b=4) + "\n",
    BASE.format(it=29, c=116, ms="0661.3", b=4),
    BASE.format(it=30, c=120, ms="661.3", b=4).replace("elapsed time per iteration (ms): 661.3 |",
                                                      ""),             # no time: malformed
    # the word before the anchor, and two lines glued: the first anchor is the line's, a
    # learned format found further on must not read it
    "[iteration timer] " + BASE.format(it=31, c=124, ms="661.3", b=4),
    BASE.format(it=32, c=128, ms="662.3", b=4)[:90] + BASE.format(it=33, c=132, ms="663.3", b=4),
]


def _read(line, learn):
    """(record or the Malformed message) of ``line``: learning formats or by the general pass
    alone."""
    saved = list(console._formats), console._learned[0]
    if not learn:
        console._formats.clear()
        console._learned[0] = console._MAX_LEARNED
    try:
        return parse_line(line, 7)
    except Malformed as error:
        return f"Malformed: {error}"
    finally:
        if not learn:
            console._formats[:] = saved[0]
            console._learned[0] = saved[1]


def _same(a, b):
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    return all(x == y or (isinstance(x, float) and isinstance(y, float)
                          and math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


@pytest.fixture
def fresh_formats():
    saved = list(console._formats), console._learned[0]
    console._formats.clear()
    console._learned[0] = 0
    yield
    console._formats[:] = saved[0]
    console._learned[0] = saved[1]


def test_learned_formats_read_every_real_line_as_the_general_pass(fresh_formats):
    lines = _data_lines()
    assert len(lines) > 500
    expected = [_read(line, learn=False) for line in lines]
    learned_hits = 0
    for line, want in zip(lines, expected):
        had = len(console._formats)
        got = _read(line, learn=True)
        assert _same(got, want), (line, got, want)
        learned_hits += had == len(console._formats) and isinstance(got, LogRecord)
    # the per-line path was taken: most lines matched a format learned from an earlier one
    assert learned_hits > len(lines) // 2


@pytest.mark.parametrize("order", [1, -1])
def test_learned_formats_read_tricky_lines_as_the_general_pass(fresh_formats, order):
    lines = TRICKY[::order]
    expected = [_read(line, learn=False) for line in lines]
    # each line twice: the second time a format learned from it (or from another) may read it
    for line, want in zip(lines + lines, expected + expected):
        got = _read(line, learn=True)
        assert _same(got, want), (line, got, want)


def test_a_format_learned_from_one_line_does_not_read_a_different_one(fresh_formats):
    plain = BASE.format(it=10, c=40, ms="661.3", b=4)
    _read(plain, learn=True)
    assert console._formats
    other = plain.replace("lm loss", "TFLOPs")      # an unread field's place, now read
    record = _read(other, learn=True)
    assert record.tflops == 2.0


def _intervals(path, *flags):
    import argparse
    from megatron_flops.commands.common import command_parser, parse_flags_over_log
    from megatron_flops.logs.console import ParseStats
    from megatron_flops.logs.relog import relog_run
    parser = command_parser("relog", "test")
    parser.add_argument("paths", nargs="+")
    args, given, _, _ = parse_flags_over_log(parser, [path, *flags])
    assert isinstance(args, argparse.Namespace)
    out = []
    for _, _, interval in relog_run(args.paths, args, given, ParseStats(), lambda run: 312.0):
        if interval is not None:
            out.append(interval)
    return out


def test_json_lines_are_json_dumps_of_as_dict():
    from megatron_flops.logs.outputs import interval_json
    paths = sorted(glob.glob(os.path.join(DATA, "logs", "*.out"))
                   + glob.glob(os.path.join(DATA, "megatron_lm", "*.log")))
    intervals = []
    for path in paths:
        try:
            intervals += _intervals(path)
        except ValueError:   # a Megatron-LM log whose shape needs flags: the others suffice
            pass
    assert len(intervals) > 200
    special = []
    first = intervals[0]
    for value in (None, math.nan, math.inf, -math.inf, 0.1 + 0.2, 1e300, -0.0):
        record = first.record._replace(tflops=value, consumed_samples=None,
                                       samples_per_second=value)
        special.append(first._replace(record=record, error=value, fork_formula_tflops=value,
                                      fork="førk\u2028\"x\"", startup=True))
    for interval in intervals + special:
        assert interval_json(interval) == json.dumps(interval.as_dict()) + "\n"


def test_meter_interval_report_is_add_iterations_then_report():
    from megatron_flops.meter import ThroughputMeter
    from megatron_flops.shapes import ModelShape
    model = ModelShape(num_layers=4, hidden_size=256, num_attention_heads=4, vocab_size=1000)
    for peak in (None, 312.0):
        one, two = ThroughputMeter(model, 8, peak_tflops=peak), ThroughputMeter(model, 8,
                                                                                 peak_tflops=peak)
        for count, samples, seq, seconds in ((1, 4, 128, 0.5), (10, 37, 1024, 13.1),
                                             (3, 12, 77, 1e-3)):
            one.add_iterations(count, samples, seq)
            want = one.report(seconds)
            got = two.interval_report(count, samples, seq, seconds)
            assert got == want
            assert (two.consumed_samples, two.consumed_tokens) == (one.consumed_samples,
                                                                   one.consumed_tokens)
        with pytest.raises(ValueError):
            two.interval_report(0, 4, 128, 1.0)
        with pytest.raises(ValueError):
            two.interval_report(1, 4, 128, 0.0)


def test_table_rows_are_the_general_rows(monkeypatch):
    """The table row's one-format fast path (TFLOP/s figures ≥ 1; logged figure and peak
    present or absent) gives the text of the field-by-field formatting (format_tflops,
    format_percent) for every interval of the data logs and at the edges of the fast path
    (1.0, just below it, 0, NaN, inf, None, negative, a rounding carry, a fractional
    batch, a logged figure without its error, an MFU without its HFU)."""
    from megatron_flops.logs import outputs
    paths = sorted(glob.glob(os.path.join(DATA, "logs", "*.out"))
                   + glob.glob(os.path.join(DATA, "megatron_lm", "*.log")))
    intervals = []
    for path in paths:
        try:
            intervals += _intervals(path)
        except ValueError:
            pass
    assert len(intervals) > 200
    first = next(i for i in intervals if i.error is not None and i.report.mfu is not None)
    special = []
    for value in (None, math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 0.99999, 0.999,
                  9.996, 99.995, -12.5, 1e300, 123456789.125):
        record = first.record._replace(tflops=value)
        report = first.report._replace(model_tflops_per_gpu=value if value is not None else 1.5,
                                       hardware_tflops_per_gpu=value if value is not None
                                       else 2.5, mfu=value, hfu=value)
        special.append(first._replace(record=record, report=report, error=value,
                                      batch_size=1023.5, seconds_per_iteration=value or 0.5))
        special.append(first._replace(record=record))
        special.append(first._replace(report=first.report._replace(hfu=value), error=value))
        special.append(first._replace(report=first.report._replace(mfu=None, hfu=None)))
        special.append(first._replace(report=first.report._replace(hfu=None)))
        if value is not None:
            special.append(first._replace(report=first.report._replace(
                model_tflops_per_gpu=value)))
            special.append(first._replace(report=first.report._replace(
                hardware_tflops_per_gpu=value)))
    general = outputs._table_row_general
    slow = []
    monkeypatch.setattr(outputs, "_table_row_general",
                        lambda interval: slow.append(interval) or general(interval))
    for interval in intervals:
        assert outputs.table_row(interval) == general(interval), interval
    slow_in_logs = len(slow)
    for interval in special:
        assert outputs.table_row(interval) == general(interval), interval
    # the fast path was taken for most rows of the data logs, and for some edge cases
    assert slow_in_logs < len(intervals) // 10
    assert len(slow) - slow_in_logs < len(special) - 5
