"""``megatron-flops patch``: dry-run, apply (and the patched fixture reports exact values),
idempotence, --check, refusal of unknown layouts, byte-exact --revert, exit codes."""

import hashlib
import os

import pytest

from megatron_flops.cli import main as cli_main
from megatron_flops.megatron import patch

FORKS = ("bigscience", "microsoft")
TRAINING = os.path.join("megatron", "training.py")


def digest_tree(root):
    """sha256 of every file under root (path -> digest), __pycache__ left out."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("fork", FORKS)
def test_dry_run_shows_the_diff_and_writes_nothing(fork, checkout_copy, capsys):
    checkout = checkout_copy(fork)
    before = digest_tree(checkout)
    assert cli_main(["patch", checkout, "--dry-run"]) == 0
    diff = capsys.readouterr().out
    assert diff.startswith(f"--- a/{TRAINING}\n+++ b/{TRAINING}\n")
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert added[1].startswith("# megatron-flops: begin")
    assert added[-1] == "# megatron-flops: end"
    assert "    _megatron_flops.install(training_module=__name__)" in added
    assert not [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert digest_tree(checkout) == before


@pytest.mark.parametrize("fork", FORKS)
def test_patched_checkout_reports_exact_values(fork, checkout_copy, runner, tools, capsys):
    checkout = checkout_copy(fork)
    assert cli_main(["patch", checkout]) == 0
    assert f"patched ({fork} fork)" in capsys.readouterr().out
    argv = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--vocab-size", "1000", "--seq-length", "32", "--micro-batch-size", "2",
            "--train-iters", "6", "--log-interval", "3", "--fake-seconds-per-iteration", "1e-6"]
    out = runner.run(checkout, argv, hook=False)  # only the patched block installs the hook
    # per sample: layers 2·(24·s·h² + 4·s²·h), logits 2·s·h·V; ×3 for fwd+bwd; batch 2
    s, h, V = 32, 64, 1024
    exact = 2 * 3 * (2 * (24 * s * h * h + 4 * s * s * h) + 2 * s * h * V) / (1e-6 * 1e12)
    lines = tools.log_lines(out)
    assert len(lines) == 2
    for line in lines:
        assert tools.field(line, "TFLOPs") == f"{exact:.2f}"
        assert tools.field(line, "hardware TFLOP/s per gpu") == f"{exact:.2f}"
    assert out.count(f"megatron-flops: hooked the {fork}") == 1


@pytest.mark.parametrize("fork", FORKS)
def test_apply_is_idempotent_and_revert_is_byte_exact(fork, checkout_copy, capsys):
    checkout = checkout_copy(fork)
    before = digest_tree(checkout)
    original = read(os.path.join(checkout, TRAINING))
    assert cli_main(["patch", checkout, "--check"]) == 1
    assert cli_main(["patch", checkout]) == 0
    once = read(os.path.join(checkout, TRAINING))
    assert once != original and once.startswith(original)
    compile(once, TRAINING, "exec")  # still valid Python
    assert cli_main(["patch", checkout]) == 0
    assert "already patched" in capsys.readouterr().out
    assert read(os.path.join(checkout, TRAINING)) == once
    assert cli_main(["patch", checkout, "--check"]) == 0
    assert cli_main(["patch", checkout, "--revert", "--dry-run"]) == 0
    assert "-# megatron-flops: end" in capsys.readouterr().out
    assert read(os.path.join(checkout, TRAINING)) == once
    assert cli_main(["patch", checkout, "--revert"]) == 0
    assert read(os.path.join(checkout, TRAINING)) == original
    assert digest_tree(checkout) == before  # no backup or temporary file left behind
    assert cli_main(["patch", checkout, "--revert"]) == 0
    assert "nothing to revert" in capsys.readouterr().out


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""])
def test_revert_restores_any_line_ending_byte_for_byte(ending, checkout_copy):
    checkout = checkout_copy("bigscience")
    path = os.path.join(checkout, TRAINING)
    text = read(path).replace(b"\n", b"\r\n") if ending == b"\r\n" else read(path)
    if ending == b"":
        text = text.rstrip(b"\n")
    with open(path, "wb") as f:
        f.write(text)
    assert cli_main(["patch", checkout]) == 0
    patched = read(path)
    if ending == b"\r\n":
        assert b"\n" not in patched.replace(b"\r\n", b"")  # no mixed newlines added
    compile(patched, TRAINING, "exec")
    assert cli_main(["patch", checkout, "--check"]) == 0
    assert cli_main(["patch", checkout, "--revert"]) == 0
    assert read(path) == text


def test_unknown_layout_is_refused_without_writing(checkout_copy, capsys):
    checkout = checkout_copy("bigscience")
    path = os.path.join(checkout, TRAINING)
    with open(path, "rb") as f:
        text = f.read().replace(b"TFLOPs:", b"Throughput:")
    with open(path, "wb") as f:
        f.write(text)
    before = digest_tree(checkout)
    assert cli_main(["patch", checkout]) == 2
    err = capsys.readouterr().err
    assert "unknown layout, nothing written" in err and "Traceback" not in err
    assert digest_tree(checkout) == before


def test_edited_block_is_refused(checkout_copy, capsys):
    checkout = checkout_copy("microsoft")
    path = os.path.join(checkout, TRAINING)
    assert cli_main(["patch", checkout]) == 0
    with open(path, "ab") as f:
        f.write(b"# a later edit\n")
    edited = read(path)
    assert cli_main(["patch", checkout, "--revert"]) == 2
    assert cli_main(["patch", checkout]) == 2
    assert cli_main(["patch", checkout, "--check"]) == 1
    assert read(path) == edited
    assert "was edited" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["patch", "/nonexistent/checkout"], "CHECKOUT must be a directory"),
    (["patch"], "CHECKOUT"),
    (["patch", ".", "--check", "--revert"], "not allowed with argument"),
    (["patch", ".", "--check", "--dry-run"], "--check and --dry-run"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_directory_without_megatron_is_refused(tmp_path, capsys):
    assert cli_main(["patch", str(tmp_path)]) == 2
    assert "no megatron/training.py" in capsys.readouterr().err


def test_block_is_what_the_docs_describe():
    text = patch.block().decode()
    assert text.startswith("\n# megatron-flops: begin")
    assert text.endswith("# megatron-flops: end\n")
    assert "install(training_module=__name__)" in text


@pytest.mark.slow
@pytest.mark.parametrize("fork", FORKS)
def test_patched_checkout_trains_when_the_installed_megatron_flops_cannot_hook(fork, checkout_copy,
                                                                              tmp_path, tools):
    # found on a real fork: an older megatron_flops on the path has no install(); the patched
    # block must say so once and leave the run to the fork, not kill it with AttributeError
    import subprocess
    import sys
    checkout = checkout_copy(fork)
    assert cli_main(["patch", checkout]) == 0
    stub = tmp_path / "old_install" / "megatron_flops" / "megatron"
    stub.mkdir(parents=True)
    (stub.parent / "__init__.py").write_text("")
    (stub / "__init__.py").write_text("")            # no install()
    argv = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--vocab-size", "1000", "--seq-length", "32", "--micro-batch-size", "2",
            "--train-iters", "4", "--log-interval", "2", "--fake-seconds-per-iteration", "1e-6"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stub.parent.parent), checkout]))
    proc = subprocess.run([sys.executable, os.path.join(checkout, "pretrain_gpt.py"), *argv],
                          capture_output=True, text=True, env=env, cwd=checkout, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("megatron-flops: hook not installed (AttributeError(") == 1
    lines = tools.log_lines(proc.stdout)
    assert len(lines) == 2 and all(tools.field(line, "TFLOPs") for line in lines)
    assert "hardware TFLOP/s per gpu" not in proc.stdout
