"""Issue 24: ``python -m megatron_flops.run pretrain_gpt.py …`` under two ranks (gloo, CPU, the
environment torchrun gives), ended by Ctrl-C: each rank exits 130 with no traceback, and rank 0
prints once what the hook measured.  The script is the bigscience fixture fork's, each
iteration with one all-reduce over the group (a data-parallel step's collective) and a short
sleep (its virtual clock times the intervals)."""

import os
import re
import sys

import pytest

from two_ranks import interrupt_two_ranks

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "bigscience_fork")
SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src"))
SCRIPT = """\
import sys, time
sys.path.insert(0, {fixture!r})
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
import megatron.training as training
fixture_step = training.train_step

def train_step(args, iteration):
    dist.all_reduce(torch.ones(1))   # the step's collective: the ranks go in lock-step
    time.sleep(0.01)
    return fixture_step(args, iteration)

training.train_step = train_step
training.pretrain()
"""
FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--vocab-size", "1000", "--fake-seconds-per-iteration", "0.5", "--seq-length", "32",
         "--micro-batch-size", "2", "--train-iters", "100000000", "--log-interval", "2"]


@pytest.mark.slow
def test_ctrl_c_under_two_ranks_ends_with_the_hooks_summary_and_exit_130(tmp_path):
    """SIGINT to the process group, as a terminal sends it.  (The wrapper does not own the
    script's loop, so unlike the demo it cannot make the ranks agree: a SIGINT to one rank
    alone leaves the other to fail in its next collective, as the fork itself would.)"""
    pytest.importorskip("torch")
    script = tmp_path / "pretrain_gpt.py"
    script.write_text(SCRIPT.format(fixture=FIXTURE))
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    ranks = interrupt_two_ranks([sys.executable, "-m", "megatron_flops.run", str(script), *FLAGS],
                                env, str(tmp_path), ready=" iteration ", ready_count=2)
    # (two logged lines of the last rank: the ranks run in lock-step, so rank 0 has then
    # counted its first interval too — after one line it may not have, and says so)
    for rank in ranks:
        assert rank.returncode == 130, rank.stderr[-3000:]
        assert "Traceback" not in rank.stdout + rank.stderr, rank.stderr[-3000:]
    first, last = ranks
    summary = re.findall(r"^megatron-flops: interrupted \(Ctrl-C\): (\d+) logged intervals "
                         r"\(iterations 1–(\d+)\), model / hardware TFLOP/s per GPU over their "
                         r"time ([0-9.]+) / ([0-9.]+)", first.stdout, re.M)
    assert len(summary) == 1 and "interrupted" not in last.stdout   # once, by rank 0
    intervals, last_iteration, model, hardware = summary[0]
    assert int(intervals) >= 1 and int(last_iteration) == 2 * int(intervals)
    # the hook's own figures: no recompute, model = hardware, as on every logged line
    assert model == hardware and float(model) > 0
