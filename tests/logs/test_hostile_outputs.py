"""Issue 23, hostile input to relog and compare (items 1, 2, 4 and the line bound of 8).

1. relog never destroys an output: a failing relog leaves the previous CSV / plot /
   TensorBoard folder byte for byte; a full disk (RLIMIT_FSIZE in a subprocess) is one line,
   no traceback, no temporary file left; an unwritable --plot fails before the CSV is
   touched; a folder holding a TensorBoard run is refused unless --append; concurrent relogs
   into one CSV leave one whole run (atomic rename).
2. compare fails closed: NaN/inf or non-numeric metrics and malformed records are exit 2
   naming the line; --min-mfu never passes on NaN.
4. a damaged TensorBoard file is read up to the damage, with a warning giving the records
   read and the byte where it stopped; the expected counts come from walking the file's
   record framing (8-byte length, 4-byte CRC, data, 4-byte CRC) here, independently.
8. a newline-free file is not read as one line.

Every case: exit 0 or one ``megatron-flops: error:`` line with exit 2, never a traceback.
"""

import json
import math
import os
import resource
import signal
import struct
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_flops.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
# l=2, h=64, n=8, s=32, vocab 1024 (not padded), batch 8, one GPU
FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8",
         "--seq-length", "32", "--padded-vocab-size", "1024", "--world-size", "1"]
PRECIOUS = b"iteration,precious\n1,the previous run's output\n"
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("megatron-flops: error:")]


def write_log(path, logfmt, intervals=6, start=1, seconds=1.0):
    lines = [logfmt.bigscience_line(10 * i, 80 * i, 80 * 32 * i, seconds, 8, 8 / seconds, 1.0)
             for i in range(start, start + intervals)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def leftovers(folder):
    """Temporary files a relog left behind."""
    return [name for name in os.listdir(folder) if "megatron-flops-tmp" in name]


# ---- 1. nothing lost -----------------------------------------------------------------------

FAILING_LOGS = {
    "empty": "",
    "no iteration lines": "a log without a single training_log line\n" * 3,
    "only unparsed": " iteration        x/ 1000 | consumed samples: what |\n",
}


@FAST
@given(failure=st.sampled_from(sorted(FAILING_LOGS)), output=st.sampled_from(["csv", "plot"]),
       previous=st.binary(min_size=0, max_size=200))
def test_a_failing_relog_leaves_the_previous_output_as_it_was(tmp_path, capsys, failure,
                                                               output, previous):
    log = tmp_path / "bad.log"
    log.write_text(FAILING_LOGS[failure])
    target = tmp_path / ("out.csv" if output == "csv" else "out.png")
    target.write_bytes(previous)
    code, out, err = run(capsys, "relog", log, *FLAGS, f"--{output}", target)
    assert code == 2 and len(error_lines(err)) == 1, err
    assert target.read_bytes() == previous
    assert leftovers(tmp_path) == []


def test_a_missing_model_flag_leaves_the_csv(tmp_path, capsys, logfmt):
    log = write_log(tmp_path / "run.log", logfmt)
    target = tmp_path / "out.csv"
    target.write_bytes(PRECIOUS)
    code, _, err = run(capsys, "relog", log, "--num-layers", "2", "--csv", target)
    assert code == 2 and len(error_lines(err)) == 1 and "--hidden-size" in err, err
    assert target.read_bytes() == PRECIOUS and leftovers(tmp_path) == []


def test_an_unwritable_plot_fails_before_the_csv_is_touched(tmp_path, capsys, logfmt):
    log = write_log(tmp_path / "run.log", logfmt)
    target = tmp_path / "out.csv"
    target.write_bytes(PRECIOUS)
    (tmp_path / "plot.png").mkdir()   # a folder where the plot should go
    code, out, err = run(capsys, "relog", log, *FLAGS, "--csv", target, "--plot",
                         tmp_path / "plot.png")
    assert code == 2 and len(error_lines(err)) == 1 and "--plot" in err, err
    assert out == ""   # refused before the log was read
    assert target.read_bytes() == PRECIOUS and leftovers(tmp_path) == []


def test_a_successful_relog_replaces_the_csv_whole(tmp_path, capsys, logfmt):
    log = write_log(tmp_path / "run.log", logfmt, intervals=6)
    target = tmp_path / "out.csv"
    target.write_bytes(PRECIOUS)
    os.chmod(target, 0o640)
    code, _, err = run(capsys, "relog", log, *FLAGS, "--csv", target)
    assert code == 0, err
    rows = target.read_text().splitlines()
    assert rows[0].startswith("iteration,fork,") and len(rows) == 1 + 6
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o640)  # the replaced file's mode
    assert leftovers(tmp_path) == []


def test_a_linked_csv_stays_a_link_and_its_target_is_replaced(tmp_path, capsys, logfmt):
    log = write_log(tmp_path / "run.log", logfmt, intervals=3)
    (tmp_path / "real.csv").write_bytes(PRECIOUS)
    (tmp_path / "link.csv").symlink_to("real.csv")
    code, _, err = run(capsys, "relog", log, *FLAGS, "--csv", tmp_path / "link.csv")
    assert code == 0, err
    assert os.path.islink(tmp_path / "link.csv")
    assert len((tmp_path / "real.csv").read_text().splitlines()) == 1 + 3


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))


@pytest.mark.parametrize("flag", ["--csv", "--plot", "--write-tensorboard"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, logfmt, flag):
    if flag == "--write-tensorboard":
        pytest.importorskip("tensorboard")
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    log = write_log(tmp_path / "run.log", logfmt, intervals=2000)   # ~300 kB of CSV
    names = {"--csv": "out.csv", "--plot": "out.png", "--write-tensorboard": "tb"}
    target = tmp_path / names[flag]
    if flag != "--write-tensorboard":
        target.write_bytes(PRECIOUS)
    env = dict(os.environ, PYTHONPATH=SRC)
    done = subprocess.run([sys.executable, "-m", "megatron_flops", "relog", log, *FLAGS, flag,
                           str(target)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env=env, preexec_fn=_limit_file_size, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and flag in done.stderr, done.stderr
    if flag == "--write-tensorboard":
        assert not target.exists()   # the folder it made is gone again
    else:
        assert target.read_bytes() == PRECIOUS
    assert leftovers(tmp_path) == []


def test_a_tensorboard_folder_holding_a_run_is_refused_unless_append(tmp_path, capsys, logfmt):
    pytest.importorskip("tensorboard")
    log = write_log(tmp_path / "run.log", logfmt)
    folder = tmp_path / "tb"
    code, _, err = run(capsys, "relog", log, *FLAGS, "--write-tensorboard", folder)
    assert code == 0, err
    first = sorted(os.listdir(folder))
    assert len(first) == 1 and "tfevents" in first[0]
    before = (folder / first[0]).read_bytes()
    code, out, err = run(capsys, "relog", log, *FLAGS, "--write-tensorboard", folder)
    assert code == 2 and len(error_lines(err)) == 1 and "--append" in err, err
    assert sorted(os.listdir(folder)) == first and (folder / first[0]).read_bytes() == before
    code, _, err = run(capsys, "relog", log, *FLAGS, "--write-tensorboard", folder, "--append")
    assert code == 0, err
    assert len(os.listdir(folder)) == 2 and (folder / first[0]).read_bytes() == before


@pytest.mark.slow
def test_concurrent_relogs_into_one_csv_leave_one_whole_run(tmp_path, logfmt):
    """8 processes, each a different run (its own seconds per iteration), into one CSV: the
    file is exactly one run's output (the last rename wins), never a splice."""
    env = dict(os.environ, PYTHONPATH=SRC)
    shared = tmp_path / "shared.csv"
    commands, expected = [], set()
    for index in range(8):
        log = write_log(tmp_path / f"run{index}.log", logfmt, intervals=20000,
                        seconds=1.0 + index / 4)
        commands.append([sys.executable, "-m", "megatron_flops", "relog", log, *FLAGS, "--csv"])
    alone = [subprocess.Popen(command + [str(tmp_path / f"alone{index}.csv")],
                              stdout=subprocess.DEVNULL, env=env)
             for index, command in enumerate(commands)]
    assert [p.wait(timeout=600) for p in alone] == [0] * 8
    expected = {(tmp_path / f"alone{index}.csv").read_bytes() for index in range(8)}
    processes = [subprocess.Popen(command + [str(shared)], stdout=subprocess.DEVNULL, env=env)
                 for command in commands]
    assert len(expected) == 8
    assert [p.wait(timeout=600) for p in processes] == [0] * 8
    assert shared.read_bytes() in expected
    assert leftovers(tmp_path) == []


# ---- 2. compare fails closed ---------------------------------------------------------------

def record(iteration, tflops=100.0, mfu=0.4):
    return {"iteration": iteration, "tflops_per_gpu": {"model": tflops, "hardware": tflops},
            "tokens_per_second_per_gpu": 1000.0, "mfu": mfu, "hfu": mfu}


def write_records(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records))
    return str(path)


BAD_VALUES = st.sampled_from([math.nan, math.inf, -math.inf, "100", [1.0], {"x": 1}, True])
FIELDS = ["tflops_per_gpu.model", "tflops_per_gpu.hardware", "tokens_per_second_per_gpu",
          "mfu", "hfu"]


@FAST
@given(field=st.sampled_from(FIELDS), value=BAD_VALUES, where=st.integers(0, 5),
       metric=st.sampled_from(["model_tflops_per_gpu", "mfu", "tokens_per_second_per_gpu"]))
def test_a_non_finite_or_non_numeric_metric_is_an_error_naming_the_line(
        tmp_path, capsys, field, value, where, metric):
    records = [record(i) for i in range(1, 7)]
    if "." in field:
        outer, inner = field.split(".")
        records[where][outer][inner] = value
    else:
        records[where][field] = value
    base = write_records(tmp_path / "base.jsonl", [record(i) for i in range(1, 7)])
    candidate = write_records(tmp_path / "candidate.jsonl", records)
    code, out, err = run(capsys, "compare", base, candidate, "--metric", metric,
                         "--min-mfu", "10%")
    assert code == 2 and len(error_lines(err)) == 1, (code, out, err)
    assert f"line {where + 1}" in err and field in err


MALFORMED = st.sampled_from([
    '"a string"', "[1, 2, 3]", "17", "null",
    '{"iteration": 1, "tflops_per_gpu": "fast"}',
    '{"iteration": 1, "tflops_per_gpu": [1, 2]}',
    '{"iteration": "one", "tflops_per_gpu": {"model": 1, "hardware": 1}}',
    '{"iteration": 1, "tflops_per_gpu": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"summary": "world size 8"}', '{"summary": {"world_size": [8]}}',
    '{"iteration": 1, "tflops_per_gpu": {"model": NaN, "hardware": 1}}',
    "{" * 50_000,
])


@FAST
@given(line=MALFORMED, where=st.integers(0, 4))
def test_a_malformed_record_is_one_error_naming_the_line(tmp_path, capsys, line, where):
    records = [record(i) for i in range(1, 6)]
    records.insert(where, line)
    if where == 0 and not line.startswith("{"):   # not relog --json output at all
        records.insert(0, record(0))
        where += 1
    base = write_records(tmp_path / "base.jsonl", [record(i) for i in range(1, 6)])
    candidate = write_records(tmp_path / "candidate.jsonl", records)
    code, out, err = run(capsys, "compare", base, candidate)
    assert code == 2 and len(error_lines(err)) == 1, (code, out, err)
    assert f"line {where + 1}" in err


def test_min_mfu_never_passes_on_nan(tmp_path, capsys):
    nan_mfu = write_records(tmp_path / "nan.jsonl", [record(i, mfu=math.nan) for i in range(6)])
    code, out, err = run(capsys, "compare", nan_mfu, "--min-mfu", "0%")
    assert code == 2 and "mfu is nan" in err
    from megatron_flops.logs.compare import Comparison, RunSummary, Spread
    run_summary = RunSummary("x", 2, 0, 1, 2, {"model_tflops_per_gpu": Spread(1, 1, 1, 1)}, 1)
    nan_change = Comparison(run_summary, run_summary, "model_tflops_per_gpu", 0.05,
                            {"model_tflops_per_gpu": math.nan})
    assert nan_change.regressed   # a gate that cannot judge fails


# ---- 4. a damaged TensorBoard file -------------------------------------------------------------

def record_spans(data):
    """(start, end) of each record of an event file, from its length fields alone."""
    spans, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        spans.append((offset, offset + 12 + length + 4))
        offset += 12 + length + 4
    return spans


def tensorboard_run(folder):
    """20 steps of the microsoft fork's tags, the iteration time every 2nd step: 10
    intervals.  Returns (event file, the tag of each record after the file-version one)."""
    from megatron_flops.logs.tensorboard import EventWriter
    writer = EventWriter(str(folder))
    tags = []
    for step in range(1, 21):
        writer.add_scalar("steps-vs-samples/y=samples,x=steps", 32 * step, step)
        tags.append(("samples", step))
        if step % 2 == 0:
            writer.add_scalar("iteration-time/iteration-time", 2.0, step)
            tags.append(("time", step))
    writer.close()
    return writer.name, tags


@FAST
@given(kind=st.sampled_from(["flip", "truncate"]), where=st.floats(0.0, 0.999))
def test_a_damaged_tensorboard_file_is_read_in_part_with_counts(tmp_path_factory, capsys,
                                                                kind, where):
    pytest.importorskip("tensorboard")
    folder = tmp_path_factory.mktemp("tb")
    name, tags = tensorboard_run(folder)
    data = bytearray(open(name, "rb").read())
    spans = record_spans(bytes(data))
    position = int(where * len(data))
    if kind == "flip":
        data[position] ^= 0xFF
        damaged = next(i for i, (start, end) in enumerate(spans) if start <= position < end)
    else:
        data = data[:position]
        whole = [i for i, (start, end) in enumerate(spans) if end <= position]
        damaged = len(whole) if position not in [end for _, end in spans] + [0] else None
    with open(name, "wb") as stream:
        stream.write(data)
    code, out, err = run(capsys, "relog", folder, *FLAGS, "--seq-length", "1024", "--json")
    if damaged is None:           # cut at a record boundary: a shorter file, nothing half
        assert "is damaged" not in err
        return
    # the records read: the file-version record, then tags[:damaged - 1]; an interval for
    # each iteration time read (its step's consumed samples and the step before come first)
    intervals = sum(1 for tag, _ in tags[:max(damaged - 1, 0)] if tag == "time")
    if intervals == 0:
        assert code == 2 and len(error_lines(err)) == 1 and "is damaged" in err, err
        assert f"read {damaged:,} records" in err
        return
    assert code == 0, err
    assert len([line for line in out.splitlines() if line.strip()]) == intervals
    warning = [line for line in err.splitlines() if "is damaged" in line]
    assert len(warning) == 1 and f"read {damaged:,} records" in warning[0]
    assert f"at byte {spans[damaged][0]:,} of {len(data):,}" in warning[0]
    summary = next(json.loads(line)["summary"] for line in err.splitlines()
                   if line.startswith('{"summary"'))
    [entry] = summary["parse"]["damaged_files"]
    assert entry["records_read"] == damaged and entry["stopped_at_byte"] == spans[damaged][0]


def test_a_damaged_tensorboard_file_is_said_on_screen(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    name, _ = tensorboard_run(tmp_path / "tb")
    data = open(name, "rb").read()
    with open(name, "wb") as stream:
        stream.write(data[:len(data) * 2 // 3])
    code, out, err = run(capsys, "relog", tmp_path / "tb", *FLAGS, "--seq-length", "1024")
    assert code == 0, err
    assert "is damaged" in out and "is damaged" in err and "records before it" in out


# ---- 8. a newline-free file ------------------------------------------------------------------

def test_a_newline_free_file_is_not_read_as_one_line(tmp_path, capsys, logfmt):
    log = tmp_path / "run.log"
    good = [logfmt.bigscience_line(10 * i, 80 * i, 80 * 32 * i, 1.0, 8, 8.0, 1.0)
            for i in range(1, 4)]
    with open(log, "w") as stream:
        stream.write("\n".join(good) + "\n")
        stream.write("iteration " * 2_000_000 + "\n")        # one 20 MB line
        stream.write("\n".join(good).replace("iteration       ", "iteration      4") + "\n")
    tracemalloc.start()
    code, out, err = run(capsys, "relog", log, *FLAGS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 0, err
    assert peak < 12 * 2 ** 20, peak       # the line is never held whole (20 MB)
    assert "1 line(s) longer than 1,048,576 characters skipped" in out
    assert "(first at line 4)" in out
    bare = tmp_path / "bare.log"
    bare.write_text("x" * 5_000_000)
    code, out, err = run(capsys, "relog", bare, *FLAGS)
    assert code == 2 and len(error_lines(err)) == 1 and "longer than" in err
