"""Hostile input, every case: one line on stderr, exit 2, no traceback, nothing written.

Issue 10 item 6: a closed pipe (`| head -1`), paths that cannot be read or written,
non-finite or absurd numbers, verify and peak without torch, a step that cannot fit in memory,
and ``patch`` keeping the file's mode and owner.  Run through the dispatcher
(:func:`megatron_flops.commands.main`) in-process, or as ``python -m megatron_flops`` where the
process itself matters (pipes, a shadowed torch).
"""

import builtins
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest

from megatron_flops.commands import main

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8",
         "--seq-length", "32"]
# BLOOM-176B (bigscience-workshop/bigscience, train/tr11-176B-ml/tr11-176B-ml.slurm)
BLOOM = ["--num-layers", "70", "--hidden-size", "14336", "--num-attention-heads", "112",
         "--seq-length", "2048", "--padded-vocab-size", "250880", "--position-embedding-type",
         "alibi", "--embed-layernorm"]


def one_error_line(capsys, argv, status=2):
    """Run ``argv``; assert it failed with exactly one error line and printed nothing else."""
    assert main(argv) == status
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("megatron-flops: error: "), captured.err
    assert captured.out == ""
    return lines[0]


def run_module(*argv, stdout=subprocess.PIPE, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "megatron_flops", *argv], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=timeout)


def log_file(path, lines=4):
    """A bigscience-format console log (the test suite's own line writer, tests/logs)."""
    spec = importlib.util.spec_from_file_location("hostile_log_lines",
                                                  os.path.join(HERE, "logs", "conftest.py"))
    writers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writers)
    bigscience_line = writers.bigscience_line
    path.write_text("".join(bigscience_line(10 * i, 80 * i, 80 * 32 * i, 1.0, 8, 8.0, 1.0) + "\n"
                            for i in range(1, lines + 1)))
    return str(path)


# ---- numbers ----------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [
    ("--iteration-time", "inf"), ("--iteration-time", "nan"), ("--iteration-time", "-1"),
    ("--iteration-time", "0"), ("--iteration-time", "-inf"), ("--peak-tflops", "inf"),
    ("--peak-tflops", "nan"), ("--plan-tflops-per-gpu", "inf"), ("--plan-tokens", "nan"),
])
def test_non_finite_or_negative_numbers_are_refused(capsys, flag, value):
    # flag=value: argparse would read a bare "-inf" as a flag of its own
    line = one_error_line(capsys, ["estimate", *SMALL, "--iteration-time", "1", f"{flag}={value}"])
    assert flag in line and "positive and finite" in line


@pytest.mark.parametrize("extra", [
    ["--num-layers", str(10 ** 30), "--num-experts", "8"],          # a tuple of 5·10^29 layers
    ["--num-attention-heads", "1", "--hidden-size", str(10 ** 200), "--iteration-time", "1"],
])
def test_numbers_too_large_to_compute_with_are_one_line(capsys, extra):
    line = one_error_line(capsys, ["estimate", *SMALL, *extra])
    assert "too large" in line


def test_a_dense_model_of_10_to_the_30_layers_is_counted_at_once(capsys):
    start = time.perf_counter()
    assert main(["estimate", *SMALL, "--num-layers", str(10 ** 30), "--json"]) == 0
    assert time.perf_counter() - start < 10
    assert '"parameters": ' in capsys.readouterr().out


# ---- a reader that goes away ------------------------------------------------------------

def closed_pipe_run(*argv):
    """Run with stdout on a pipe whose reader is already gone (`| head -1` after its line)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return run_module(*argv, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [
    ["estimate", *SMALL], ["estimate", *SMALL, "--json"], ["estimate", "--help"], ["--help"],
    ["verify", *SMALL], ["verify", *SMALL, "--json"],
])
def test_a_closed_pipe_ends_quietly(argv):
    if argv[0] == "verify":
        pytest.importorskip("torch")
    result = closed_pipe_run(*argv)
    assert result.returncode == 0
    assert "Traceback" not in result.stderr and "Broken" not in result.stderr, result.stderr


@pytest.mark.parametrize("output", [[], ["--json"]])
def test_relog_into_a_closed_pipe_ends_quietly(tmp_path, output):
    result = closed_pipe_run("relog", log_file(tmp_path / "log.txt", 50), *SMALL, *output)
    assert result.returncode == 0
    assert "Traceback" not in result.stderr and "Broken" not in result.stderr, result.stderr


def test_a_pipe_closed_after_the_first_line_ends_quietly():
    """The real thing: `megatron-flops estimate … | head -1`."""
    command = [sys.executable, "-m", "megatron_flops", "estimate", *SMALL]
    producer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = producer.stdout.readline()
    producer.stdout.close()
    _, err = producer.communicate(timeout=120)
    assert first.startswith(b"model: ")
    assert producer.returncode == 0 and b"Traceback" not in err, err


# ---- paths ------------------------------------------------------------------------------

def test_relog_of_a_directory_without_logs(capsys, tmp_path):
    assert "no TensorBoard event files" in one_error_line(capsys, ["relog", str(tmp_path), *SMALL])


def test_relog_of_a_missing_path(capsys, tmp_path):
    line = one_error_line(capsys, ["relog", str(tmp_path / "log.txt" / "child"), *SMALL])
    assert "does not exist" in line


def test_relog_of_an_unreadable_file(capsys, tmp_path, monkeypatch):
    """The kernel's refusal (root reads through chmod 000, so it is simulated at open)."""
    path = log_file(tmp_path / "log.txt")
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", refusing_open)
    line = one_error_line(capsys, ["relog", path, *SMALL])
    assert path in line and "Permission denied" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads through chmod 000")
def test_relog_of_a_chmod_000_file(tmp_path):
    path = log_file(tmp_path / "log.txt")
    os.chmod(path, 0)
    result = run_module("relog", path, *SMALL)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Permission denied" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("flag,target", [
    ("--csv", "missing/out.csv"), ("--csv", "folder"), ("--plot", "missing/out.png"),
    ("--plot", "folder"), ("--write-tensorboard", "file"),
])
def test_an_output_that_cannot_be_written_writes_nothing(capsys, tmp_path, flag, target):
    log = log_file(tmp_path / "log.txt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    if flag == "--write-tensorboard":
        pytest.importorskip("tensorboard")
    one_error_line(capsys, ["relog", log, *SMALL, flag, str(tmp_path / target)])
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "file").read_text() == ""


def test_one_unwritable_output_leaves_the_others_unwritten(capsys, tmp_path):
    pytest.importorskip("tensorboard")
    log = log_file(tmp_path / "log.txt")
    (tmp_path / "file").write_text("")
    one_error_line(capsys, ["relog", log, *SMALL, "--csv", str(tmp_path / "out.csv"),
                            "--write-tensorboard", str(tmp_path / "file")])
    assert not (tmp_path / "out.csv").exists()


# ---- no torch ---------------------------------------------------------------------------

@pytest.fixture
def without_torch(tmp_path):
    """An environment whose `import torch` fails, as a broken or absent install does."""
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("torch shadowed by the test")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow.parent), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("argv", [["verify", *SMALL], ["verify", *SMALL, "--real"], ["peak"],
                                  ["demo", "--train-iters", "1"]])
def test_commands_that_need_torch_say_so_without_it(without_torch, argv):
    result = run_module(*argv, env=without_torch)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("megatron-flops: error: ")
    assert "torch" in result.stderr.lower() and result.stdout == ""


def test_estimate_does_not_need_torch(without_torch):
    result = run_module("estimate", *SMALL, env=without_torch)
    assert result.returncode == 0 and result.stderr == ""


# ---- memory -----------------------------------------------------------------------------

def test_a_176b_verify_real_is_refused_before_allocating(capsys):
    pytest.importorskip("torch")
    start = time.perf_counter()
    line = one_error_line(capsys, ["verify", *BLOOM, "--real"])
    assert time.perf_counter() - start < 30  # refused, not allocated
    assert "verify --real" in line and "GB" in line and "--meta" in line


def test_verify_real_compares_with_the_memory_available(capsys, monkeypatch):
    pytest.importorskip("torch")
    from megatron_flops import memory
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
    assert "0.0 GB is available: use --meta" in one_error_line(capsys, ["verify", *SMALL, "--real"])
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10 ** 12)
    assert main(["verify", *SMALL, "--real"]) == 0
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: None)  # unknown: not refused
    assert main(["verify", *SMALL, "--real"]) == 0


def test_training_step_bytes_by_hand():
    """2 layers, h 64, n 8 (d 8, MHA), f 256, V 512, s 16, learned positions 16, batch 3."""
    from megatron_flops.memory import training_step_bytes
    from megatron_flops.shapes import ModelShape, Recompute
    h, n, f, V, s, l, B = 64, 8, 256, 512, 16, 2, 3
    model = ModelShape(num_layers=l, hidden_size=h, num_attention_heads=n, vocab_size=V)
    layer = (2 * h + 2 * h) + (3 * h * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h)
    parameters = V * h + s * h + l * layer + 2 * h
    stored = s * (2 * h + 2 * h + 2 * h + f) + n * s * s  # matmul inputs, Q, K, V, probabilities
    assert training_step_bytes(model, s, B) == 4 * 2 * parameters + 4 * B * (l * stored + s * V)
    # Adam's two moments; full recompute keeps each layer's input and one layer again
    assert (training_step_bytes(model, s, B, Recompute("full"), optimizer_values_per_parameter=2)
            == 4 * 4 * parameters + 4 * B * (l * s * h + stored + s * V))
    selective = training_step_bytes(model, s, B, Recompute("selective"))
    assert selective == 4 * 2 * parameters + 4 * B * (l * (stored - n * s * s) + s * V)


def test_check_training_step_fits_names_what_and_how(monkeypatch):
    from megatron_flops.memory import check_training_step_fits, training_step_bytes
    from megatron_flops.shapes import ModelShape
    model = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=8, vocab_size=512)
    needed = training_step_bytes(model, 16, 1)
    check_training_step_fits(model, 16, 1, "demo", "smaller", available_bytes=needed)
    with pytest.raises(ValueError, match=r"^demo at this shape needs at least .* GB .*: smaller$"):
        check_training_step_fits(model, 16, 1, "demo", "smaller", available_bytes=needed - 1)


def test_available_memory_is_read_from_this_machine():
    from megatron_flops.memory import available_memory_bytes
    available = available_memory_bytes()
    if sys.platform.startswith("linux"):
        with open("/proc/meminfo") as meminfo:
            total = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
        assert 0 < available <= total * 1024


# ---- patch keeps the file's mode and owner ----------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="POSIX modes and owners")
def test_patch_and_revert_keep_the_mode_and_owner(tmp_path, capsys):
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(HERE, "megatron", "fixtures", "bigscience_fork"), checkout,
                    ignore=shutil.ignore_patterns("__pycache__"))
    training = checkout / "megatron" / "training.py"
    os.chmod(training, 0o640)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:  # root can give the file away: the patch must keep that owner too
        owner = (4321, 8765)
        os.chown(training, *owner)

    def mode_and_owner():
        st = os.stat(training)
        return stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    original = training.read_bytes()
    assert main(["patch", str(checkout)]) == 0
    assert training.read_bytes() != original
    assert mode_and_owner() == (0o640, owner)
    assert main(["patch", "--revert", str(checkout)]) == 0
    assert training.read_bytes() == original
    assert mode_and_owner() == (0o640, owner)
    capsys.readouterr()


@pytest.mark.parametrize("layers", [str(10 ** 8), str(10 ** 30)])
def test_verify_refuses_layer_counts_it_cannot_build(capsys, layers):
    start = time.perf_counter()
    line = one_error_line(capsys, ["verify", *SMALL, "--num-layers", layers])
    assert time.perf_counter() - start < 10 and "--num-layers" in line and "at most 2048" in line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["--version"], ["estimate", *SMALL], ["estimate", *SMALL, "--json"]])
def test_a_full_disk_on_stdout_is_one_line(argv):
    with open("/dev/full", "w") as full:
        result = run_module(*argv, stdout=full)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("megatron-flops: error: ") and "No space left" in result.stderr
