"""The hook's memory lines (issue 22): the per-stage table at the start summary, and each
logging rank's estimated peak beside the measured one (n/a on a CPU), the same figure
``estimate --memory`` gives for the run's flags."""

import json

import pytest

from megatron_flops.commands import main

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--vocab-size", "1000", "--seq-length", "32", "--micro-batch-size", "2",
        "--max-position-embeddings", "32"]
FIXTURE_ONLY = ["--fake-seconds-per-iteration", "0.5", "--train-iters", "6", "--log-interval", "3"]


@pytest.mark.parametrize("fork", ["bigscience", "microsoft"])
def test_memory_lines_at_the_first_log(fork, runner, tools, capsys):
    out = runner.run(tools.fixture_dir(fork), BASE + FIXTURE_ONLY)
    prefix = "megatron-flops: "
    assert any(line.startswith(prefix + "memory per rank (GiB)") for line in out.splitlines())
    line = next(line for line in out.splitlines() if line.startswith(prefix + "memory, rank 0"))
    assert line.endswith("measured peak after the first iteration n/a (no CUDA device in use)")
    estimated = float(line.split("estimated peak ")[1].split(" GiB")[0])
    assert main(["estimate", *BASE, "--memory", "--json", "--framework", fork]) == 0
    peak = json.loads(capsys.readouterr().out)["memory"]["peak_bytes"]
    assert estimated == pytest.approx(peak / 1024 ** 3, abs=5e-4)
