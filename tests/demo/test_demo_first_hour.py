"""Issue 24, a newcomer's first hour with the demo: its log relogs flag-free (a Megatron-style
arguments dump at start), Ctrl-C ends with the summary and exit 130, progress only on a
terminal, a thread count chosen for a loaded machine."""

import io
import json

import pytest

torch = pytest.importorskip("torch")

from demo_helpers import number, parse_lines, run_demo  # noqa: E402

from megatron_flops.cli import main  # noqa: E402
from megatron_flops.demo.config import auto_threads  # noqa: E402
from megatron_flops.logs.arguments import DUMP_END, DUMP_START  # noqa: E402
from megatron_flops.terminal import ProgressLine, format_duration  # noqa: E402

SMALL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--seq-length", "64", "--micro-batch-size", "4"]


def test_the_demo_log_relogs_flag_free_to_the_demos_own_numbers(tmp_path, capsys):
    code, out, err = run_demo(SMALL + ["--train-iters", "6", "--log-interval", "2",
                                       "--global-batch-size", "8", "--peak-tflops", "0.5"],
                              capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == DUMP_START and DUMP_END in lines
    log = tmp_path / "demo.log"
    log.write_text(out)
    assert main(["relog", str(log), "--json"]) == 0      # no model flag typed
    relogged = capsys.readouterr()
    intervals = [json.loads(line) for line in relogged.out.splitlines()]
    summary = next(json.loads(line)["summary"] for line in relogged.err.splitlines()
                   if line.startswith('{"summary"'))
    rows = parse_lines(out)
    assert [i["iteration"] for i in intervals] == [r["iteration"] for r in rows] == [2, 4, 6]
    for interval, row in zip(intervals, rows):
        ms = number(row["elapsed time per iteration (ms)"])
        rel = 0.05 / ms + 0.005     # the log's ms has one decimal, its rates 3 digits
        assert interval["batch_size"] == 8 and interval["seq_length"] == 64
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(
            number(row["model TFLOP/s per gpu"]), rel=rel)
        assert interval["tflops_per_gpu"]["hardware"] == pytest.approx(
            number(row["hardware TFLOP/s per gpu"]), rel=rel)
        assert 100 * interval["mfu"] == pytest.approx(number(row["MFU (%)"]), rel=rel, abs=0.06)
    assert summary["peak"]["tflops"] == 0.5       # the demo's own peak, from its dump
    assert summary["world_size"] == 1


def test_ctrl_c_ends_with_the_summary_and_exit_130(monkeypatch, capsys):
    from megatron_flops.demo import train
    real, calls = train.train_iteration, []

    def interrupted_at_the_third(session, batch_size):
        calls.append(batch_size)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(session, batch_size)

    monkeypatch.setattr(train, "train_iteration", interrupted_at_the_third)
    code, out, err = run_demo(SMALL + ["--train-iters", "10", "--log-interval", "5",
                                       "--peak-tflops", "1"], capsys)
    assert code == 130
    assert "Traceback" not in out + err
    assert [r["iteration"] for r in parse_lines(out)] == [2]  # the 2 iterations done
    assert "interrupted (Ctrl-C) after iteration 2 of 10" in out
    assert "done: 2 iterations, 8 samples" in out


def test_ctrl_c_before_training_is_one_line_and_exit_130(monkeypatch, capsys):
    from megatron_flops.commands import demo

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "demo_main", interrupted)
    assert main(["demo"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "megatron-flops: interrupted (Ctrl-C)\n" and captured.out == ""


def test_no_progress_line_when_output_is_not_a_terminal(capsys):
    code, out, err = run_demo(SMALL + ["--train-iters", "2", "--log-interval", "1",
                                       "--peak-tflops", "1"], capsys)
    assert code == 0
    assert "\r" not in out + err and "ETA" not in out + err


def test_progress_line_on_a_terminal():
    from megatron_flops.demo.train import show_progress
    stream = io.StringIO()
    status = ProgressLine(stream, enabled=True)
    # 10 of 200 iterations in 5 s: 0.5 s each, 190 left = 95 s
    show_progress(status, 10, 200, 5.0)
    assert stream.getvalue().startswith("\riteration 11/200 running | 0.50 s/iteration | "
                                        "ETA 1m35s")
    status.clear()
    assert stream.getvalue().endswith("\r\x1b[K")
    quiet = io.StringIO()
    show_progress(ProgressLine(quiet, enabled=False), 10, 200, 5.0)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (42, "42s"), (200, "3m20s"),
                                           (7300, "2h01m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("cores, load, processes, threads", [
    (2, 0.0, 1, 2),     # idle: every core (torch's own default)
    (2, 0.4, 1, 2),     # a little noise rounds away
    (2, 1.0, 1, 1),     # one core busy elsewhere: one thread
    (2, 6.5, 1, 1),     # the loaded machine of issue 24: never below one
    (16, 3.2, 1, 13),
    (16, 0.0, 4, 4),    # four local processes share the cores
    (16, 10.0, 4, 1),
])
def test_auto_threads(cores, load, processes, threads):
    assert auto_threads(cores, load, processes) == threads


def test_the_start_says_how_the_threads_were_chosen(capsys):
    code, out, err = run_demo(SMALL + ["--train-iters", "1", "--log-interval", "1",
                                       "--peak-tflops", "1"], capsys)
    assert code == 0
    assert "CPU threads per process (chosen for this machine: " in out
    code, out, err = run_demo(SMALL + ["--train-iters", "1", "--log-interval", "1",
                                       "--peak-tflops", "1", "--threads", "1"], capsys)
    assert "1 CPU threads per process (--threads)" in out


def test_a_silent_child_is_stopped_but_a_slow_one_is_not(tmp_path):
    """The subprocess helper judges progress, not wall time (issue 24: a fixed 170 s timeout
    failed a DeepSpeed test on a loaded runner)."""
    import subprocess

    from demo_helpers import run_module
    slow = ("import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.6)\n")
    done = run_module(["-c", slow], tmp_path, stall_seconds=1.5)   # 2.4 s in all, never silent
    assert done.returncode == 0 and done.stdout.split() == ["0", "1", "2", "3"]
    with pytest.raises(subprocess.TimeoutExpired):
        run_module(["-c", "import time; time.sleep(30)"], tmp_path, stall_seconds=1.5)


def test_peak_shows_progress_on_a_terminal_only(monkeypatch, capsys):
    argv = ["peak", "--dtype", "fp32", "--size", "32", "--repeats", "1"]
    assert main(argv) == 0
    piped = capsys.readouterr()
    assert "\r" not in piped.out + piped.err and "measuring" not in piped.err
    line = next(l for l in piped.out.splitlines() if l.strip().startswith("fp32"))
    assert " 0.000 " not in line     # significant digits, not a fixed three decimals
    from megatron_flops import terminal
    monkeypatch.setattr(terminal, "on_terminal", lambda *streams: True)
    assert main(argv) == 0
    shown = capsys.readouterr()
    assert "\rmeasuring fp32 (1/1): 32×32 matmuls" in shown.err
    assert shown.err.endswith("\r\x1b[K")   # erased before the results


DUMP_CASES = [
    [],
    ["--swiglu"],
    ["--group-query-attention", "--num-query-groups", "2"],
    ["--recompute-granularity", "full", "--recompute-method", "uniform",
     "--recompute-num-layers", "1"],
    ["--ffn-hidden-size", "96", "--kv-channels", "8", "--untie-embeddings-and-output-weights"],
]


@pytest.mark.parametrize("extra", DUMP_CASES, ids=lambda e: " ".join(e) or "defaults")
def test_the_short_dump_relogs_as_the_whole_namespace_would(extra, tmp_path, capsys):
    """Issue 24: the demo's dump shows the arguments relog reads the run by and those that
    differ from the defaults (not the ~130 lines of the whole namespace), and relog reads
    the log with it exactly as with the whole namespace dumped (every interval's JSON, the
    summary's figures)."""
    from megatron_flops.commands.demo import DUMPED_ALWAYS, demo_parser
    argv = SMALL + extra + ["--train-iters", "4", "--log-interval", "2", "--peak-tflops", "0.5"]
    code, out, err = run_demo(argv, capsys)
    assert code == 0, err
    lines = out.splitlines()
    start, end = lines.index(DUMP_START), lines.index(DUMP_END)
    shown = {line.split()[0]: line.split()[-1] for line in lines[start + 1:end]}
    assert end - start - 1 == len(shown) <= 40
    for flag in extra:
        if flag.startswith("--"):
            assert flag[2:].replace("-", "_") in shown       # every flag typed is shown
    # the whole namespace, as the dump was before: every argument the parser has
    whole = vars(demo_parser().parse_args(argv))
    assert {name for name in DUMPED_ALWAYS if name in whole} <= set(shown)
    whole.update({name: value for name, value in shown.items()})
    full = [DUMP_START] + [f"  {name} {'.' * max(3, 48 - len(name) - 2)} {whole[name]}"
                           for name in sorted(whole, key=str.lower)
                           if not name.startswith("_")] + [DUMP_END]
    assert len(full) > 100
    relogged = []
    for dump in (lines[start:end + 1], full):
        log = tmp_path / "demo.log"
        log.write_text("\n".join(lines[:start] + dump + lines[end + 1:]) + "\n")
        assert main(["relog", str(log), "--json"]) == 0
        result = capsys.readouterr()
        summary = next(json.loads(line)["summary"] for line in result.err.splitlines()
                       if line.startswith('{"summary"'))
        intervals = [json.loads(line) for line in result.out.splitlines()]
        for interval in intervals:
            interval.pop("line")                  # the log's line numbers differ
        relogged.append((intervals, summary["mean_tflops_per_gpu"],
                         summary["overall_tflops_per_gpu"], summary["peak"]))
    assert relogged[0] == relogged[1]
