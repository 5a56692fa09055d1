"""Helpers for the demo tests: run the demo, read its log lines back."""

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")

# the fields every log line must carry, in Megatron's `| key: value |` form
LINE_FIELDS = ("consumed samples", "elapsed time per iteration (ms)", "learning rate",
               "global batch size", "lm loss", "samples per second", "tokens per second",
               "tokens per gpu per second", "model TFLOP/s per gpu", "hardware TFLOP/s per gpu",
               "MFU (%)", "HFU (%)")


def parse_lines(text: str):
    """The ` iteration N/M | key: value | …` lines as dicts (iteration, train_iters, fields)."""
    rows = []
    for line in text.splitlines():
        match = re.match(r"^ iteration\s+(\d+)/\s*(\d+) \|(.*)\|$", line)
        if not match:
            continue
        row = {"iteration": int(match.group(1)), "train_iters": int(match.group(2))}
        for field in match.group(3).split("|"):
            key, _, value = field.strip().rpartition(": ")
            row[key] = value.strip()
        rows.append(row)
    return rows


def number(text: str) -> float:
    return float(text.rstrip("%"))


def subprocess_env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["MEGATRON_FLOPS_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def run_module(args, tmp_path, stall_seconds=None, env=None):
    """``python ARGS`` to completion, output captured: a ``CompletedProcess``.

    No wall-clock limit (a loaded machine is slow, not wrong: issue 24 saw a fixed 170 s fail
    on a busy CI runner); the child is killed and ``subprocess.TimeoutExpired`` raised only
    when it prints nothing, on stdout or stderr, for ``stall_seconds`` (default
    ``MEGATRON_FLOPS_TEST_STALL_SECONDS`` or 600)."""
    from subprocess_progress import STALL_SECONDS, run_with_progress
    return run_with_progress([sys.executable, *args], tmp_path,
                             env if env is not None else subprocess_env(tmp_path),
                             stall_seconds or STALL_SECONDS)


def run_demo(argv, capsys):
    """Run ``megatron-flops demo`` in this process; (exit code, stdout, stderr)."""
    from megatron_flops.cli import main
    code = main(["demo", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def counted_flops_per_iteration(model_shape, seq_length, global_batch_size, recompute=None):
    """Matmul FLOPs of one training iteration of the reference GPT, counted by PyTorch's
    FlopCounterMode on meta tensors (forward, backward, and any recomputation) — an
    independent check of what the demo's meter divides by the interval time."""
    import torch
    from torch.utils.checkpoint import set_checkpoint_early_stop
    from torch.utils.flop_counter import FlopCounterMode

    from megatron_flops.reference.model import ReferenceGPT
    from megatron_flops.shapes import NO_RECOMPUTE
    gpt = ReferenceGPT(model_shape, seq_length, recompute or NO_RECOMPUTE, device="meta")
    ids = torch.zeros(global_batch_size, seq_length, dtype=torch.long, device="meta")
    with set_checkpoint_early_stop(False), FlopCounterMode(display=False) as counter:
        gpt.loss(ids, ids).backward()
    return counter.get_total_flops()


@contextlib.contextmanager
def one_intra_op_thread():
    """One intra-op torch thread inside: on a shared 2-core machine two OpenMP threads
    spin-wait on each other and run several times slower than one.  Timings are not what
    these tests check.  Without torch, nothing."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
