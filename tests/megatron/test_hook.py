"""The runtime hook on the two fixture forks: exact console fields and TensorBoard tags,
per-iteration ramp-up and curriculum accounting, failure handling, fork detection."""

import os
import shutil
import subprocess
import sys

import pytest

FORKS = ("bigscience", "microsoft")
SECONDS_PER_ITERATION = 1e-6  # the fixtures' virtual clock

# l=2, h=64, n=4 (d=16, g=4), f=4h, vocab 1000 padded to a multiple of 128 -> 1024
LAYERS, HIDDEN, HEADS, VOCAB_PADDED = 2, 64, 4, 1024
BASE = ["--num-layers", str(LAYERS), "--hidden-size", str(HIDDEN), "--num-attention-heads",
        str(HEADS), "--vocab-size", "1000", "--fake-seconds-per-iteration",
        str(SECONDS_PER_ITERATION)]


def hand_forward_flops(s, l=LAYERS, h=HIDDEN, n=HEADS, V=VOCAB_PADDED, f=None, glu=False):
    """Forward matmul FLOPs of one sample, written out from the table in DESIGN.md §2:
    per layer Q 2·s·h·(n·d), K and V 2·s·h·(2·g·d), QKᵀ 2·n·s²·d, A·V 2·n·s²·d, output
    2·s·(n·d)·h, MLP up 2·s·h·f (two branches with GLU), MLP down 2·s·f·h; logits 2·s·h·V once.
    Returns (all layers, logits)."""
    d, g = h // n, n
    f = 4 * h if f is None else f
    layer = (2 * s * h * n * d + 2 * s * h * 2 * g * d + 2 * n * s * s * d + 2 * n * s * s * d
             + 2 * s * n * d * h + 2 * s * h * f * (2 if glu else 1) + 2 * s * f * h)
    return l * layer, 2 * s * h * V


def hand_hardware_flops(s, full_recompute=False, **shape):
    layers, logits = hand_forward_flops(s, **shape)
    model = 3 * (layers + logits)  # backward = 2 × forward
    return model + (layers if full_recompute else 0)  # full recompute re-runs the layers


def test_hand_formula_matches_design_closed_form():
    # with defaults a layer is 24·s·h² + 4·s²·h (DESIGN.md)
    s = 32
    layers, _ = hand_forward_flops(s, l=1)
    assert layers == 24 * s * HIDDEN ** 2 + 4 * s * s * HIDDEN


def args_for(seq=32, micro=2, iters=6, log_interval=3, extra=()):
    return BASE + ["--seq-length", str(seq), "--micro-batch-size", str(micro), "--train-iters",
                   str(iters), "--log-interval", str(log_interval), *extra]


def bigscience_formula_tflops(batch, s, seconds_per_iteration):
    """bigscience's Eq. 3 as it prints it (coefficient 24, factor 3), for the 'before' check."""
    h, l, V = HIDDEN, LAYERS, VOCAB_PADDED
    flops = 24 * 3 * batch * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
    return flops / (seconds_per_iteration * 1e12)


@pytest.mark.parametrize("fork", FORKS)
def test_console_and_tensorboard_carry_exact_values(fork, runner, tools, tmp_path):
    tools.require_tensorboard()
    tb = str(tmp_path / "tb")
    argv = args_for(extra=["--tensorboard-dir", tb, "--log-timers-to-tensorboard"]
                    + (["--wandb-project", "p"] if fork == "microsoft" else []))
    out = runner.run(tools.fixture_dir(fork), argv)
    lines = tools.log_lines(out)
    assert len(lines) == 2
    expected_tflops = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    expected_samples = 2 / SECONDS_PER_ITERATION
    for line in lines:
        assert tools.field(line, "TFLOPs") == f"{expected_tflops:.2f}"
        assert tools.field(line, "samples per second") == f"{expected_samples:.3f}"
        assert tools.field(line, "hardware TFLOP/s per gpu") == f"{expected_tflops:.2f}"
        assert tools.field(line, "model TFLOP/s per gpu") == f"{expected_tflops:.2f}"
        assert tools.field(line, "tokens per second") == f"{expected_samples * 32:.1f}"
        # no peak: MFU/HFU left out (never "n/a": every value parses as a number)
        assert " MFU" not in line and " HFU" not in line and "n/a" not in line
        assert line.count(" samples per second: ") == 1  # not appended twice
    scalars = tools.read_scalars(tb)
    for tag in ("throughput/hardware_tflops_per_gpu", "throughput/model_tflops_per_gpu"):
        assert [step for step, _ in scalars[tag]] == [3, 6]
        for _, value in scalars[tag]:
            assert value == pytest.approx(expected_tflops, rel=1e-6)
        samples_axis = scalars[tag + " vs samples"]
        assert [step for step, _ in samples_axis] == [6, 12]  # consumed samples
        assert [step for step, _ in scalars[tag + " vs tokens"]] == [6 * 32, 12 * 32]
    assert scalars["throughput/samples_per_second"][0][1] == pytest.approx(expected_samples, rel=1e-6)
    assert "throughput/mfu" not in scalars  # no peak known on this machine
    if fork == "bigscience":
        fork_tag = scalars["iteration-time/TFLOPs per gpu (estimated)"]
        assert [s for s, _ in fork_tag] == [3, 6]
        for _, value in fork_tag:
            assert value == pytest.approx(expected_tflops, rel=1e-6)
        sps = scalars["iteration-time/samples per second"]
        assert sps[0][1] == pytest.approx(expected_samples, rel=1e-6)
        tps = scalars["iteration-time/tokens per second per replica"]
        assert tps[0][1] == pytest.approx(expected_samples * 32, rel=1e-6)  # DP = 1
    else:
        logged = runner.wandb.logged
        tflops = [v["throughput/tflops"] for v, step in logged if "throughput/tflops" in v]
        assert tflops == [pytest.approx(expected_tflops, rel=1e-12)] * 2
        ours = [(v, step) for v, step in logged if "throughput/hardware_tflops_per_gpu" in v]
        assert [step for _, step in ours] == [3, 6]
        assert ours[0][0]["throughput/model_tflops_per_gpu"] == pytest.approx(expected_tflops)
    # the start summary, once: breakdown table, peak, the fork's formula vs exact
    assert out.count("megatron-flops: hooked the " + fork) == 1
    assert "component (" in out and "peak for MFU/HFU: " in out
    assert f"the {fork} fork's own formula counts" in out


@pytest.mark.parametrize("fork", FORKS)
def test_without_hook_the_fixture_prints_its_own_formula(fork, runner, tools):
    """The 'before' line: the fixture prints the fork's number, not the exact one."""
    out = runner.run(tools.fixture_dir(fork), args_for(), hook=False)
    line = tools.log_lines(out)[0]
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    assert "model TFLOP/s per gpu" not in line and "megatron-flops" not in out
    if fork == "bigscience":
        legacy = bigscience_formula_tflops(2, 32, SECONDS_PER_ITERATION)
        assert tools.field(line, "TFLOPs") == f"{legacy:.2f}"
        assert f"{legacy:.2f}" != f"{exact:.2f}"
    else:  # the microsoft formula is exact for a dense MHA model without recompute
        assert tools.field(line, "TFLOPs") == f"{exact:.2f}"


@pytest.mark.parametrize("fork", FORKS)
def test_rampup_counted_per_iteration(fork, runner, tools):
    # batch 2 -> 8 in steps of 2 over 8 samples: iterations see 2, 2, 4, 8, 8, 8 (fork's rule)
    argv = args_for(micro=2, extra=["--global-batch-size", "8", "--rampup-batch-size", "2", "2", "8"])
    lines = tools.log_lines(runner.run(tools.fixture_dir(fork), argv))
    per_sample = hand_hardware_flops(32)
    previous_consumed = 0
    for line in lines:
        consumed = int(tools.field(line, "consumed samples"))
        interval_samples = consumed - previous_consumed  # the fork's own counter
        previous_consumed = consumed
        elapsed = 3 * SECONDS_PER_ITERATION
        exact = interval_samples * per_sample / (elapsed * 1e12)
        log_time = int(tools.field(line, "global batch size")) * 3 * per_sample / (elapsed * 1e12)
        assert tools.field(line, "TFLOPs") == f"{exact:.2f}"
        assert tools.field(line, "samples per second") == f"{interval_samples / elapsed:.3f}"
        if line is lines[0]:
            assert f"{log_time:.2f}" != f"{exact:.2f}"  # the log-time count would be wrong here


@pytest.mark.parametrize("fork", FORKS)
def test_curriculum_sequence_length_counted_per_iteration(fork, runner, tools, tmp_path):
    tools.require_tensorboard()
    tb = str(tmp_path / "tb")
    argv = args_for(seq=64, extra=["--curriculum-seqlens", "16,32,64,64,64,64",
                                   "--tensorboard-dir", tb])
    lines = tools.log_lines(runner.run(tools.fixture_dir(fork), argv))
    elapsed = 3 * SECONDS_PER_ITERATION
    first = 2 * sum(hand_hardware_flops(s, ) for s in (16, 32, 64)) / (elapsed * 1e12)
    second = 2 * 3 * hand_hardware_flops(64) / (elapsed * 1e12)
    assert [tools.field(line, "TFLOPs") for line in lines] == [f"{first:.2f}", f"{second:.2f}"]
    tokens = tools.read_scalars(tb)["throughput/tokens_per_second"]
    assert tokens[0][1] == pytest.approx(2 * (16 + 32 + 64) / elapsed, rel=1e-6)
    if fork == "microsoft":
        # the fork's own tgs (samples/s × seqlen at log time) is made per-iteration exact too:
        # 2 samples at 16, 32 and 64 tokens in the first interval, on one GPU
        tgs = [tools.field(line, "tokens per gpu per second (tgs)") for line in lines]
        assert tgs == [f"{2 * (16 + 32 + 64) / elapsed:.3f}", f"{2 * 3 * 64 / elapsed:.3f}"]


def test_full_recompute_counted_in_hardware_not_model(runner, tools):
    argv = args_for(extra=["--checkpoint-activations"])
    line = tools.log_lines(runner.run(tools.fixture_dir("bigscience"), argv))[0]
    hardware = 2 * hand_hardware_flops(32, full_recompute=True) / (SECONDS_PER_ITERATION * 1e12)
    model = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    assert tools.field(line, "TFLOPs") == f"{hardware:.2f}"
    assert tools.field(line, "model TFLOP/s per gpu") == f"{model:.2f}"


@pytest.mark.parametrize("fork", ["bigscience", "microsoft"])
def test_skipped_iterations_are_counted(fork, runner, tools):
    """An fp16-overflow iteration is skipped (no update) but its batch ran forward and
    backward and was consumed: the interval's FLOPs count it like any other (iterations 1-3
    with 2 skipped run at the same rate as 4-6)."""
    out = runner.run(tools.fixture_dir(fork), args_for(extra=["--fake-skipped-iterations", "2"]))
    lines = tools.log_lines(out)
    assert [tools.field(line, "number of skipped iterations").strip() for line in lines] \
        == ["1", "0"]
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)  # batch 2, 1 GPU
    assert [tools.field(line, "hardware TFLOP/s per gpu") for line in lines] == [f"{exact:.2f}"] * 2


def test_peak_override_gives_mfu(runner, tools, monkeypatch):
    monkeypatch.setenv("MEGATRON_FLOPS_PEAK_TFLOPS", "500")
    out = runner.run(tools.fixture_dir("microsoft"), args_for())
    line = tools.log_lines(out)[0]
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    assert tools.field(line, "MFU (%)") == f"{100 * exact / 500:.1f}"
    assert "peak for MFU/HFU: given (500 TFLOP/s)" in out


def test_last_rank_of_several_writes_per_gpu_values(runner, tools, monkeypatch):
    # world 2 (DP 2), this process is rank 1 = the last rank: it prints the line, not the summary
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    out = runner.run(tools.fixture_dir("bigscience"), args_for(micro=2))
    line = tools.log_lines(out)[0]
    exact = 4 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 2 * 1e12)  # batch 2 × DP 2
    assert tools.field(line, "TFLOPs") == f"{exact:.2f}"
    assert "megatron-flops: hooked" not in out  # the summary is rank 0's


@pytest.mark.parametrize("fork", FORKS)
def test_failure_is_reported_once_and_training_continues(fork, runner, tools, monkeypatch):
    from megatron_flops.megatron import calculator

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(calculator.RunAccounting, "close_interval", broken)
    out = runner.run(tools.fixture_dir(fork), args_for(iters=9))
    lines = tools.log_lines(out)
    assert len(lines) == 3  # training ran to the end
    assert out.count("megatron-flops: disabled after an error") == 1
    assert "RuntimeError: boom" in out
    for line in lines:  # the fork's own numbers, nothing appended
        assert "model TFLOP/s per gpu" not in line
    if fork == "bigscience":
        legacy = bigscience_formula_tflops(2, 32, SECONDS_PER_ITERATION)
        assert tools.field(lines[-1], "TFLOPs") == f"{legacy:.2f}"
    else:
        assert " TFLOPs: " in lines[-1]


def test_failure_while_building_shapes_steps_aside(runner, tools):
    # kv heads that do not divide the heads: our shapes refuse, the hook steps aside
    argv = args_for(extra=["--num-key-value-heads", "3"])
    out = runner.run(tools.fixture_dir("microsoft"), argv)
    assert out.count("megatron-flops: disabled after an error") == 1
    assert "--num-key-value-heads" in out
    assert len(tools.log_lines(out)) == 2


def test_unknown_version_is_left_untouched(runner, tools, tmp_path):
    checkout = tmp_path / "other"
    shutil.copytree(tools.fixture_dir("bigscience"), checkout,
                    ignore=shutil.ignore_patterns("__pycache__"))
    training = checkout / "megatron" / "training.py"
    text = training.read_text().replace('line += " TFLOPs: {:.2f} |".format(tflops)', "pass")
    training.write_text(text)
    out = runner.run(str(checkout), args_for(iters=6))
    assert out.count("not one the hook knows") == 1
    lines = tools.log_lines(out)
    assert len(lines) == 2 and all("TFLOP/s" not in line for line in lines)


def test_install_twice_patches_once(runner, tools):
    from megatron_flops.megatron import hook
    hook.install()
    out = runner.run(tools.fixture_dir("microsoft"), args_for())
    line = tools.log_lines(out)[0]
    assert line.count(" model TFLOP/s per gpu: ") == 1


@pytest.mark.slow
def test_run_module_under_launcher_style_arguments(tools, tmp_path):
    """`python -m megatron_flops.run --local_rank=0 pretrain_gpt.py ARGS` (DeepSpeed's
    launcher puts --local_rank first): the script gets it back, the hook is on."""
    checkout = tools.fixture_dir("microsoft")
    src = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    from subprocess_progress import run_with_progress   # no wall-clock limit: a busy
    result = run_with_progress(                            # machine failed a fixed 60 s
        [sys.executable, "-m", "megatron_flops.run", "--local_rank=0",
         os.path.join(checkout, "pretrain_gpt.py"), *args_for()], cwd=str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    lines = tools.log_lines(result.stdout)
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    assert [tools.field(line, "hardware TFLOP/s per gpu") for line in lines] == [f"{exact:.2f}"] * 2


@pytest.mark.parametrize("argv, message", [
    ([], "usage: python -m megatron_flops.run"),
    (["--local_rank=0"], "usage: python -m megatron_flops.run"),
    (["--peak", "x.py"], "expected a script, got '--peak'"),
    (["missing.py"], "no such script: missing.py"),
])
def test_run_module_bad_input_exits_2(argv, message, tmp_path):
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
    result = subprocess.run([sys.executable, "-m", "megatron_flops.run", *argv],
                            capture_output=True, text=True, cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=src))
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_torchrun_two_processes(tools, tmp_path):
    """`torchrun --nproc_per_node=2 -m megatron_flops.run pretrain_gpt.py ARGS`: rank 0 prints
    the summary, the last rank the exact line (world 2, DP 2, batch 4)."""
    pytest.importorskip("torch")
    checkout = tools.fixture_dir("bigscience")
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src"))
    from subprocess_progress import run_with_progress   # progress, not wall time
    result = run_with_progress(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "megatron_flops.run", os.path.join(checkout, "pretrain_gpt.py"), *args_for()],
        env=dict(os.environ, PYTHONPATH=src),
        cwd=str(tmp_path))  # --standalone: a free port (other jobs may hold 29500)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.count("megatron-flops: hooked the bigscience") == 1
    exact = 4 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 2 * 1e12)
    assert [tools.field(line, "TFLOPs") for line in tools.log_lines(out)] == [f"{exact:.2f}"] * 2


def test_bigscience_run_with_its_own_wandb_gets_the_new_keys(runner, tools, monkeypatch):
    """bigscience has no W&B; a script that called wandb.init gets the throughput keys."""
    import types
    logged = []
    fake_wandb = types.SimpleNamespace(run=object(), log=lambda data, step=None: logged.append((data, step)))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    runner.run(tools.fixture_dir("bigscience"), args_for())
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    assert [step for _, step in logged] == [3, 6]
    assert logged[0][0]["throughput/hardware_tflops_per_gpu"] == pytest.approx(exact)
    assert set(logged[0][0]) == {"throughput/model_tflops_per_gpu", "throughput/hardware_tflops_per_gpu",
                                 "throughput/tokens_per_second", "throughput/tokens_per_second_per_gpu",
                                 "throughput/samples_per_second"}  # no MFU/HFU without a peak


@pytest.mark.parametrize("fork", FORKS)
def test_install_after_the_import_patches_at_once(fork, runner, tools):
    out = runner.run(tools.fixture_dir(fork), args_for(), late_install=True)
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    assert [tools.field(line, "TFLOPs") for line in tools.log_lines(out)] == [f"{exact:.2f}"] * 2


def test_unexpected_training_log_signature_falls_back_to_log_time(runner, tools, tmp_path):
    """microsoft layout whose training_log lacks (…, iteration, …) 4th: the calculator is still
    replaced but counts at log time (current batch × iterations), and says so once."""
    checkout = tmp_path / "variant"
    shutil.copytree(tools.fixture_dir("microsoft"), checkout,
                    ignore=shutil.ignore_patterns("__pycache__"))
    training = checkout / "megatron" / "training.py"
    text = training.read_text()
    text = text.replace("def training_log(loss_dict, total_loss_dict, learning_rate, iteration,",
                        "def training_log(loss_dict, total_loss_dict, learning_rate, step,")
    text = text.replace("    args = get_args()\n    timers = get_timers()\n    tb = ",
                        "    iteration = step\n    args = get_args()\n    timers = get_timers()\n    tb = ")
    training.write_text(text)
    argv = args_for(micro=2, extra=["--global-batch-size", "8", "--rampup-batch-size", "2", "2", "8"])
    out = runner.run(str(checkout), argv)
    assert out.count("throughput counted at log time") == 1
    per_sample = hand_hardware_flops(32)
    for line in tools.log_lines(out):
        log_time = int(tools.field(line, "global batch size")) * 3 * per_sample \
            / (3 * SECONDS_PER_ITERATION * 1e12)
        assert tools.field(line, "TFLOPs") == f"{log_time:.2f}"


def summary_line(out: str, start: str) -> str:
    """A start-up line (every one carries the "megatron-flops: " prefix), prefix removed."""
    prefix = "megatron-flops: "
    return next(line[len(prefix):] for line in out.splitlines()
                if line.startswith(prefix + start))


@pytest.mark.parametrize("fork, extra", [
    ("bigscience", []),
    ("bigscience", ["--glu-activation", "swiglu"]),
    ("microsoft", ["--checkpoint-activations"]),
])
def test_start_summary_says_how_far_the_forks_formula_is_off(fork, extra, runner, tools):
    """The 'fork formula off by X %' line against a hand count of both sides, per iteration
    (batch 2, s 32): the forks' formulas as DESIGN.md §3 describes them, the exact count from
    the table in DESIGN.md §2."""
    out = runner.run(tools.fixture_dir(fork), args_for(extra=extra))
    s, l, h, V, batch = 32, LAYERS, HIDDEN, VOCAB_PADDED, 2
    recompute, glu = "--checkpoint-activations" in extra, "--glu-activation" in extra
    exact = batch * hand_hardware_flops(s, full_recompute=recompute, glu=glu)
    if fork == "bigscience":  # Eq. 3 with coefficient 32 for GLU, else 24; factor 3
        legacy = (32 if glu else 24) * 3 * batch * s * l * h * h * (
            1 + s / (6 * h) + V / (16 * l * h))
    else:  # exact for dense MHA, but recompute adds a whole forward, logits included
        layers, logits = hand_forward_flops(s)
        legacy = batch * 4 * (layers + logits)
    off = 100 * (legacy / exact - 1)
    assert abs(off) > 1  # a sign or factor change shows
    line = summary_line(out, f"the {fork} fork's own formula counts")
    assert line == (f"the {fork} fork's own formula counts {legacy:.4g} FLOPs per iteration for "
                    f"this shape, {off:+.1f}% vs the exact hardware count {exact:.4g}: its TFLOPs "
                    "would be off by that much")


# dense datasheet peaks (TFLOP/s): NVIDIA A100 datasheet (fp32 19.5, bf16/fp16 tensor 312),
# NVIDIA V100 SXM2 datasheet (fp32 15.7, fp16 tensor 125; no bf16)
@pytest.mark.parametrize("fork, gpu, flags, dtype, peak", [
    ("bigscience", "a100", [], "fp32", 19.5),
    ("microsoft", "a100", [], "fp32", 19.5),
    ("bigscience", "a100", ["--bf16"], "bf16", 312.0),
    ("microsoft", "v100-sxm", ["--fp16"], "fp16", 125.0),
    ("bigscience", "v100-sxm", [], "fp32", 15.7),
    ("microsoft", "v100-sxm", ["--bf16"], "bf16", None),
])
def test_peak_is_the_datasheet_one_for_the_runs_dtype(fork, gpu, flags, dtype, peak, runner, tools,
                                                      monkeypatch):
    monkeypatch.setenv("MEGATRON_FLOPS_GPU", gpu)
    monkeypatch.delenv("MEGATRON_FLOPS_PEAK_TFLOPS", raising=False)
    out = runner.run(tools.fixture_dir(fork), args_for(extra=flags))
    line = tools.log_lines(out)[0]
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    peak_line = summary_line(out, "peak for MFU/HFU: ")
    if peak is None:
        assert " MFU" not in line and "n/a" not in line
        assert peak_line.startswith(f"peak for MFU/HFU: no {dtype} peak known for {gpu}")
        # what works in pretrain_gpt.py, not the megatron-flops command line's flags
        assert "--peak-tflops" not in peak_line and "--gpu" not in peak_line
        assert "MEGATRON_FLOPS_GPU" in peak_line and "MEGATRON_FLOPS_PEAK_TFLOPS" in peak_line
    else:
        assert tools.field(line, "MFU (%)") == f"{100 * exact / peak:.1f}"
        assert peak_line == f"peak for MFU/HFU: {gpu} dense {dtype} datasheet peak ({peak:g} TFLOP/s)"


def test_bigscience_per_replica_tags_divide_by_the_data_parallel_size(runner, tools, tmp_path,
                                                                     monkeypatch):
    # world 2 = DP 2, this process the last rank (it owns the writer); global batch 4
    tools.require_tensorboard()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    tb = str(tmp_path / "tb")
    runner.run(tools.fixture_dir("bigscience"),
               args_for(micro=2, extra=["--tensorboard-dir", tb, "--log-timers-to-tensorboard"]))
    scalars = tools.read_scalars(tb)
    samples = 4 / SECONDS_PER_ITERATION  # 4 samples per iteration, 1 µs each
    expected = {
        "iteration-time/samples per second": samples,
        "iteration-time/samples per second per replica": samples / 2,
        "iteration-time/tokens per second": samples * 32,
        "iteration-time/tokens per second per replica": samples * 32 / 2,
        "iteration-time/TFLOPs per gpu (estimated)":
            4 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 2 * 1e12),
    }
    for tag, value in expected.items():
        assert [step for step, _ in scalars[tag]] == [3, 6], tag
        assert [v for _, v in scalars[tag]] == [pytest.approx(value, rel=1e-6)] * 2, tag


def test_install_settings_belong_to_the_hook(runner, tools, monkeypatch):
    """install(peak_tflops=…) sets this hook's peak; a second install() keeps what it does not
    give; the drop-in calculator (not the hook's) never sees them."""
    from megatron_flops.megatron import calculator, hook
    monkeypatch.delenv("MEGATRON_FLOPS_PEAK_TFLOPS", raising=False)
    monkeypatch.delenv("MEGATRON_FLOPS_GPU", raising=False)
    hook.install(peak_tflops=400)
    out = runner.run(tools.fixture_dir("microsoft"), args_for(), causal=False)  # installs again
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    assert tools.field(tools.log_lines(out)[0], "MFU (%)") == f"{100 * exact / 400:.1f}"
    assert hook.installed() is None  # the runner uninstalled it
    import argparse
    args = argparse.Namespace(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32,
                              padded_vocab_size=1024, micro_batch_size=1, world_size=1)
    try:
        assert calculator.accounting_for(args).peak.tflops is None
    finally:
        calculator.forget()


def test_install_peak_wins_over_the_environment(runner, tools, monkeypatch):
    """install(peak_tflops=…) is the script's own word: it beats MEGATRON_FLOPS_PEAK_TFLOPS
    (and MEGATRON_FLOPS_GPU), which only fill in what install() leaves unset."""
    from megatron_flops.megatron import hook
    monkeypatch.setenv("MEGATRON_FLOPS_PEAK_TFLOPS", "100")
    monkeypatch.setenv("MEGATRON_FLOPS_GPU", "h100-sxm")
    hook.install(peak_tflops=400)
    out = runner.run(tools.fixture_dir("microsoft"), args_for(), causal=False)
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    mfu = [tools.field(line, "MFU (%)") for line in tools.log_lines(out)]
    assert mfu == [f"{100 * exact / 400:.1f}"] * 2      # not exact / 100, not the H100's peak


def test_install_rejects_a_non_positive_peak():
    from megatron_flops.megatron import hook
    with pytest.raises(ValueError, match="peak_tflops must be positive, got 0"):
        hook.install(peak_tflops=0)
    assert hook.installed() is None


def test_every_strategy_recognises_only_its_own_fork(tools):
    """detect() by features: each fixture fork is recognised by its strategy, which the hook
    asks first."""
    from megatron_flops.megatron import hook
    for fork in FORKS:
        tools.purge_megatron()
        sys.path.insert(0, tools.fixture_dir(fork))
        try:
            import megatron.training
            found = [s.name for s in hook.STRATEGIES if s.detect(megatron.training)]
        finally:
            sys.path.remove(tools.fixture_dir(fork))
            tools.purge_megatron()
        # the microsoft fork's line also has an inline TFLOPs field: asked first, it wins
        assert found == ([fork, "bigscience"] if fork == "microsoft" else [fork])


@pytest.mark.parametrize("fork", FORKS)
def test_every_start_up_line_carries_the_prefix(fork, runner, tools, monkeypatch):
    """The start summary (breakdown table included) is grep-able: each line starts with
    "megatron-flops:"; one GPU is "1 GPU"; no peak known names what works in a run."""
    monkeypatch.delenv("MEGATRON_FLOPS_PEAK_TFLOPS", raising=False)
    monkeypatch.delenv("MEGATRON_FLOPS_GPU", raising=False)
    out = runner.run(tools.fixture_dir(fork), args_for())
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "hooked the" in line)
    end = next(i for i, line in enumerate(lines) if "fork's own formula counts" in line)
    summary = lines[start:end + 1]
    assert len(summary) > 8  # model, run, parameters, the table, peak, formula
    assert [line for line in summary if not line.startswith("megatron-flops:")] == []
    assert any(" 1 GPU (TP 1, PP 1)" in line for line in summary)
    assert "1 GPUs" not in out
    peak_line = summary_line(out, "peak for MFU/HFU: ")
    assert "--peak-tflops" not in peak_line and "--gpu" not in peak_line
    assert "MEGATRON_FLOPS_PEAK_TFLOPS" in peak_line and "install(" in peak_line


def test_mfu_above_100_percent_comes_with_a_warning(runner, tools, monkeypatch):
    """A peak far below what was counted: MFU/HFU > 100 % is printed once with a warning that
    names the likely causes (world size, dtype, peak)."""
    exact = 2 * hand_hardware_flops(32) / (SECONDS_PER_ITERATION * 1e12)
    peak = exact / 3  # HFU = 300 %
    monkeypatch.setenv("MEGATRON_FLOPS_PEAK_TFLOPS", repr(peak))
    out = runner.run(tools.fixture_dir("microsoft"), args_for())
    assert float(tools.field(tools.log_lines(out)[0], "HFU (%)")) == pytest.approx(300, abs=0.1)
    warnings = [line for line in out.splitlines() if "is above 100%" in line]
    assert len(warnings) == 1, out
    (warning,) = warnings
    assert warning.startswith("megatron-flops: warning: ") and "300% is above 100%" in warning
    assert "fp32" in warning and "peak" in warning  # the likely causes: dtype, peak
    # what sets the peak in a training run (pretrain_gpt.py rejects --gpu / --peak-tflops)
    assert "MEGATRON_FLOPS_GPU" in warning and "--peak-tflops" not in warning
    # a plausible peak: no warning
    monkeypatch.setenv("MEGATRON_FLOPS_PEAK_TFLOPS", repr(exact * 2))
    assert "above 100%" not in runner.run(tools.fixture_dir("microsoft"), args_for())


@pytest.mark.parametrize("fork, how", [("bigscience", "env"), ("microsoft", "install")])
def test_start_summary_conventions_table(fork, how, runner, tools, monkeypatch):
    """MEGATRON_FLOPS_CONVENTIONS=1 or install(conventions=True): the start summary has what
    each convention counts for one iteration of the run's shape, every line prefixed."""
    from megatron_flops.report import format_flops
    plain = runner.run(tools.fixture_dir(fork), args_for())
    assert "what each convention counts" not in plain
    kwargs = {}
    if how == "env":
        monkeypatch.setenv("MEGATRON_FLOPS_CONVENTIONS", "1")
    else:
        kwargs["conventions"] = True
    out = runner.run(tools.fixture_dir(fork), args_for(), **kwargs)
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "what each convention counts" in line)
    assert lines[start].startswith("megatron-flops: what each convention counts for one "
                                   "iteration (2 × 32 tokens;")
    header = lines[start + 1].split()
    assert header == ["megatron-flops:", "convention", "counts", "FLOPs/iteration", "vs",
                      "exact"]   # no time yet: no TFLOP/s or MFU column
    rows = {}
    for line in lines[start + 3:]:
        if not line.startswith("megatron-flops: ") or line.split()[1] in ("hooked",):
            break
        cells = line.split()
        rows[cells[1]] = cells
    assert {"exact", "palm", "megatron-lm", "bigscience", "microsoft", "6n"} <= set(rows)
    # exact: global batch 2 (micro 2, DP 1) × the hand count (no recompute: model = hardware)
    exact = format_flops(2 * hand_hardware_flops(32)).split()
    assert rows["exact"][3:] == exact + ["+0.0%"]
    # Megatron-LM 2024-03: 12·B·s·l·h²·(1 + g/n + s/h + f/h) + 6·B·s·h·V is, for MHA with
    # f = 4h and no GLU, 72·s·h² + 12·s²·h per layer and sample plus 3 × the logits: exact
    assert rows["megatron-lm@2024-03"][-1] == "+0.0%"


# ---- issue 24: the microsoft fork says tokens per GPU once; a small run's TFLOPs keep their
# significant digits (the forks' {:.2f} prints 0.00, and a relog of such a line read -100 %)


def test_microsoft_line_has_tokens_per_gpu_once(runner, tools):
    line = tools.log_lines(runner.run(tools.fixture_dir("microsoft"), args_for()))[0]
    assert line.count("tokens per gpu per second") == 1
    assert " tokens per gpu per second (tgs): " in line


@pytest.mark.parametrize("fork", FORKS)
def test_small_tflops_keep_three_significant_digits(fork, runner, tools):
    seconds = 0.01   # the fixtures' virtual clock: a few 0.0001 TFLOP/s
    argv = [a if a != "1e-06" else str(seconds) for a in args_for()]
    assert argv != args_for() and "--fake-seconds-per-iteration" in BASE
    line = tools.log_lines(runner.run(tools.fixture_dir(fork), argv))[0]
    exact = 2 * hand_hardware_flops(32) / (seconds * 1e12)   # 2 samples per iteration
    assert exact < 0.01                         # {:.2f} would keep one digit at most
    logged = tools.field(line, "TFLOPs")
    assert float(logged) == pytest.approx(exact, rel=5e-3)
    assert logged == f"{exact:.3g}"
