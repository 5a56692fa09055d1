"""relog's command line: exit codes, CSV, plot."""

import csv
import os
import subprocess
import sys

import pytest

FLAGS = ["--num-layers", 2, "--hidden-size", 256, "--num-attention-heads", 4,
         "--padded-vocab-size", 1024, "--seq-length", 128, "--world-size", 2]


@pytest.fixture
def small_log(tmp_path, logfmt):
    lines = []
    for k, i in enumerate(range(10, 110, 10)):
        batch = 8 if i <= 50 else 16
        consumed = sum(8 if j <= 50 else 16 for j in range(1, i + 1))
        seconds = 0.5 + 0.05 * (k % 3)
        lines.append(logfmt.bigscience_line(i, consumed, consumed * 128, seconds, batch,
                                            batch / seconds, 1.5 + 0.1 * k))
    path = tmp_path / "small.log"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("argv, message", [
    ([], "PATH"),
    (["{log}", "--hidden-size", 256, "--num-attention-heads", 4, "--seq-length", 128],
     "--num-layers is required"),
    (["{log}", *FLAGS, "--fork", "nvidia"], "--fork"),
    (["/nonexistent/train.log", *FLAGS], "does not exist"),
    (["{log}", *FLAGS, "--peak-tflops", "-1"], "--peak-tflops must be positive"),
    (["{log}", *FLAGS, "--plot", "{tmp}/out.xyz"], "--plot"),
    (["{log}", *FLAGS, "--csv", "{tmp}/no/such/folder/out.csv"], "--csv"),
    (["{empty}", *FLAGS], "no training_log iteration lines"),
    (["{log}", *FLAGS[:-2], "--world-size", 3, "--tensor-model-parallel-size", 2],
     "--world-size"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, small_log, logfmt, capsys, argv, message):
    empty = tmp_path / "empty.log"
    empty.write_text("nothing to see\n")
    argv = [str(a).format(log=small_log, tmp=tmp_path, empty=empty) for a in argv]
    result = logfmt.run_cli(capsys, *argv)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err


def test_entry_point_exit_code(small_log):
    ok = subprocess.run([sys.executable, "-m", "megatron_flops", "relog", str(small_log),
                         *map(str, FLAGS)], capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "megatron_flops", "relog", str(small_log),
                          "--num-layers", "x"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_csv_matches_json(tmp_path, small_log, logfmt, capsys):
    out = tmp_path / "out.csv"
    result = logfmt.run_cli(capsys, small_log, *FLAGS, "--json", "--csv", out)
    assert result.code == 0
    intervals = logfmt.json_intervals(result)
    with open(out, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(intervals) == 10
    for row, interval in zip(rows, intervals):
        assert int(row["iteration"]) == interval["iteration"]
        assert float(row["hardware_tflops_per_gpu"]) == pytest.approx(
            interval["tflops_per_gpu"]["hardware"], rel=1e-12)
        # issue 24: in percent as every screen shows it, the unit in the column's name
        # (until then `error`, `mfu`, `hfu` held fractions)
        assert float(row["error_percent"]) == pytest.approx(100 * interval["error"], rel=1e-12)
        assert row["mfu_percent"] == ""  # no peak given


def test_plot_is_a_png_with_content(tmp_path, small_log, logfmt, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib.image
    out = tmp_path / "relog.png"
    result = logfmt.run_cli(capsys, small_log, *FLAGS, "--peak-tflops", 10, "--plot", out)
    assert result.code == 0, result.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(out))
    height, width = image.shape[:2]
    assert width > 800 and height > 600      # two panels with a peak
    assert image[..., :3].std() > 0.05       # not blank
    single = tmp_path / "single.png"
    assert logfmt.run_cli(capsys, small_log, *FLAGS, "--plot", single).code == 0
    assert matplotlib.image.imread(str(single)).shape[0] < height   # no MFU panel


def test_broken_pipe_is_quiet(small_log):
    process = subprocess.Popen(
        [sys.executable, "-m", "megatron_flops", "relog", str(small_log), *map(str, FLAGS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    process.stdout.readline()
    process.stdout.close()
    process.wait(timeout=60)
    assert b"Traceback" not in process.stderr.read()
