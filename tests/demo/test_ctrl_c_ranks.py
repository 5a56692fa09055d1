"""Issue 24: Ctrl-C under two data-parallel ranks (gloo, CPU) ends each rank with exit code
130, no traceback, and the summary once (the last rank prints, as the demo's log lines)."""

import re
import sys

import pytest

pytest.importorskip("torch")

from demo_helpers import parse_lines, subprocess_env  # noqa: E402
from two_ranks import interrupt_two_ranks  # noqa: E402

SMALL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--seq-length", "64", "--micro-batch-size", "4"]


@pytest.mark.slow
@pytest.mark.parametrize("only_rank", [None, 0], ids=["process group", "rank 0 alone"])
def test_ctrl_c_ends_both_ranks_with_one_summary_and_exit_130(only_rank, tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C), or to rank 0 alone (torchrun passes
    it on one worker at a time; ``kill -INT``): the ranks agree to stop after the same
    iteration.  Before, a rank stopped where its KeyboardInterrupt fell: rank 0 alone left
    rank 1 training, then failing in its next collective with a traceback."""
    command = [sys.executable, "-m", "megatron_flops", "demo", *SMALL, "--train-iters",
               "1000000", "--log-interval", "2", "--peak-tflops", "1", "--threads", "1"]
    ranks = interrupt_two_ranks(command, subprocess_env(tmp_path), str(tmp_path),
                                ready=" iteration ", only_rank=only_rank)
    for rank in ranks:
        assert rank.returncode == 130, rank.stderr[-2000:]
        assert "Traceback" not in rank.stdout + rank.stderr
    first, last = ranks
    assert first.stdout == ""                      # the last rank speaks
    stopped = re.findall(r"interrupted \(Ctrl-C\) after iteration (\d+) of 1000000",
                         last.stdout)
    assert len(stopped) == 1
    done = re.findall(r"^done: (\d+) iterations", last.stdout, re.M)
    assert done == stopped                          # one summary, of the iterations trained
    # both ranks stopped after the same iteration: its interval was closed and logged
    assert parse_lines(last.stdout)[-1]["iteration"] == int(done[0])
