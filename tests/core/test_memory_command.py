"""``estimate --memory``: the per-stage table, the peak and its stage, ``--json``; bad memory
flags are one line, exit 2, nothing on stdout."""

import json

import pytest

from megatron_flops.activations import ActivationSettings
from megatron_flops.commands import main
from megatron_flops.model_state import StateSettings
from megatron_flops.rank_memory import rank_memory
from megatron_flops.shapes import ModelShape, Recompute, RunShape

FLAGS = ["--num-layers", "8", "--hidden-size", "256", "--num-attention-heads", "8",
         "--seq-length", "512", "--max-position-embeddings", "512", "--vocab-size", "1024",
         "--micro-batch-size", "2", "--global-batch-size", "64", "--tensor-model-parallel-size",
         "2", "--pipeline-model-parallel-size", "4", "--world-size", "16", "--bf16",
         "--framework", "bigscience"]


def run_json(capsys, *extra):
    assert main(["estimate", *FLAGS, "--memory", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)["memory"]


def test_json_is_the_core_computation(capsys):
    memory = run_json(capsys, "--use-distributed-optimizer", "--sequence-parallel",
                      "--recompute-granularity", "selective")
    model = ModelShape(num_layers=8, hidden_size=256, num_attention_heads=8, vocab_size=1024,
                       max_position_embeddings=512)
    run = RunShape(seq_length=512, micro_batch_size=2, global_batch_size=64,
                   tensor_model_parallel_size=2, pipeline_model_parallel_size=4, world_size=16,
                   dtype="bf16", recompute=Recompute("selective"))
    # bigscience: no flash attention flag, Megatron's dropout default 0.1; bf16 with fp32 grads
    expected = rank_memory(model, run, ActivationSettings(2, True, True), StateSettings(2, 4,
                           zero_stage=1), sequence_parallel=True)
    assert memory == json.loads(json.dumps(expected.to_dict()))
    assert [s["in_flight"] for s in memory["stages"]] == [4, 3, 2, 1]
    assert memory["peak_stage"] == 0


def test_flags_change_what_they_should(capsys):
    plain = run_json(capsys)
    flash = run_json(capsys, "--use-flash-attn")
    no_dropout = run_json(capsys, "--hidden-dropout", "0", "--attention-dropout", "0")
    zero3 = run_json(capsys, "--zero-stage", "3")
    first = lambda memory, key: memory["stages"][0][key]  # noqa: E731
    assert "attention_softmax" in first(plain, "activations_per_micro_batch")
    assert first(flash, "activations") < first(plain, "activations")
    assert first(no_dropout, "activations_per_micro_batch")["hidden_dropout_masks"] == 0
    # ZeRO-3 over DP = 16 / (TP 2 × PP 4) = 2 ranks: every part of the state halves
    for part in ("parameters", "gradients", "optimizer"):
        assert first(zero3, "state")[part] == -(-first(plain, "state")[part] // 2)


def test_rotary_is_estimated_as_megatron_fuses_it(capsys):
    with_rotary = run_json(capsys, "--position-embedding-type", "rotary")
    learned = run_json(capsys)
    # the same activations but the learned positions' ids (s int64 per micro-batch; stage 0
    # holds 4 micro-batches: 64 samples / (micro 2 × DP 2) = 16 ≥ PP 4)
    assert with_rotary["stages"][0]["activations"] == \
        learned["stages"][0]["activations"] - 512 * 8 * 4


def test_table(capsys):
    assert main(["estimate", *FLAGS, "--memory"]) == 0
    out = capsys.readouterr().out
    assert "memory per rank (GiB)" in out and "peak: " in out and "on pipeline stage 0" in out
    assert "stage  layers  in flight  parameters  gradients  optimizer" in out


@pytest.mark.parametrize("extra, message", [
    (["--hidden-dropout", "1.5"], "--hidden-dropout must be in [0, 1), got 1.5"),
    (["--expert-model-parallel-size", "0"], "--expert-model-parallel-size must be a positive"),
    (["--num-layers-per-virtual-pipeline-stage", "3"], "--num-layers-per-virtual-pipeline-stage (3)"),
    (["--num-experts", "4", "--mlp-type", "residual", "--framework", "microsoft"],
     "not modelled for PR-MoE"),
])
def test_bad_memory_flags_are_one_line(extra, message, capsys):
    assert main(["estimate", *FLAGS, "--memory", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.err.count("error:") == 1
