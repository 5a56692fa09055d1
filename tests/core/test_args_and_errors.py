"""Megatron flags -> shapes, Megatron's vocabulary padding, and clear errors naming the flag."""

import argparse
import json
import subprocess
import sys

import pytest

from megatron_flops.cli import main
from megatron_flops.megatron.args import padded_vocab_size, parse_megatron_args, shapes_from_args
from megatron_flops.shapes import ModelShape, RunShape, ShapeError

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8",
        "--seq-length", "32"]


def shapes(*extra):
    ns, _ = parse_megatron_args(BASE + list(extra))
    return shapes_from_args(ns)


def test_vocab_padding_rule():
    # GPT-2 BPE 50257 rounds up to a multiple of 128 × TP
    assert padded_vocab_size(50257, 128, 1) == 50304
    assert padded_vocab_size(50257, 128, 2) == 50432   # multiple of 256: 197 × 256
    assert padded_vocab_size(50304, 128, 1) == 50304
    # BLOOM's tokenizer (250,680) with --pad-vocab-size-to 250880
    assert padded_vocab_size(250680, 128, 4, pad_vocab_size_to=250880) == 250880


def test_microsoft_swiglu_default_ffn():
    model, _ = shapes("--swiglu")
    # int((4·64·2/3)/64)·64 = int(2.67)·64 = 128
    assert model.ffn_hidden_size == 128 and model.glu_activation == "swiglu"
    model, _ = ModelShape, None
    ns, _ = parse_megatron_args(["--num-layers", "1", "--hidden-size", "4096",
                                 "--num-attention-heads", "32", "--seq-length", "8", "--swiglu"])
    assert shapes_from_args(ns)[0].ffn_hidden_size == 10880   # 170 × 64


def test_bigscience_glu_keeps_4h():
    model, _ = shapes("--glu-activation", "geglu")
    assert model.ffn_hidden_size == 256


def test_gqa_flags_of_both_families():
    assert shapes("--num-key-value-heads", "2")[0].num_query_groups == 2
    assert shapes("--group-query-attention", "--num-query-groups", "4")[0].num_query_groups == 4
    assert shapes()[0].num_query_groups == 8


def test_recompute_flags():
    assert shapes("--checkpoint-activations")[1].recompute.granularity == "full"
    assert shapes("--recompute-activations")[1].recompute.granularity == "selective"
    r = shapes("--recompute-granularity", "full", "--recompute-method", "block",
               "--recompute-num-layers", "1")[1].recompute
    assert (r.granularity, r.method, r.num_layers) == ("full", "block", 1)


def test_world_size_and_batch():
    _, run = shapes("--micro-batch-size", "2", "--world-size", "8",
                    "--tensor-model-parallel-size", "2")
    assert run.data_parallel_size == 4 and run.global_batch_size == 8


def test_namespace_of_a_real_run_bigscience_enum_and_padded_vocab():
    class PositionEmbeddingType:      # stands in for bigscience's enum member
        name = "alibi"
    ns = argparse.Namespace(num_layers=2, hidden_size=64, num_attention_heads=8, seq_length=32,
                            padded_vocab_size=50304, position_embedding_type=PositionEmbeddingType(),
                            glu_activation=None, checkpoint_activations=True, micro_batch_size=1,
                            global_batch_size=16, world_size=4, tensor_model_parallel_size=1,
                            pipeline_model_parallel_size=1, rampup_batch_size=["4", "4", "100"],
                            recompute_num_layers=1)
    model, run = shapes_from_args(ns)
    assert model.position_embedding == "alibi" and model.vocab_size == 50304
    assert run.recompute.granularity == "full" and run.rampup_batch_size == (4, 4, 100)


def test_rampup_follows_megatron():
    run = RunShape(seq_length=8, micro_batch_size=1, global_batch_size=16, world_size=2,
                   rampup_batch_size=(4, 4, 120))
    # 3 increments over 120 samples: +4 every 40 samples
    assert [run.batch_size_at(c) for c in (0, 39, 40, 80, 120, 121)] == [4, 4, 8, 12, 16, 16]


def test_rampup_rounds_down_to_whole_micro_batches():
    """Megatron's RampupBatchsizeNumMicroBatches (microsoft/Megatron-DeepSpeed f4157bea,
    megatron/microbatches.py), restated: the batch at ``consumed`` samples is
    ``start + int(consumed / (ramp_samples / steps)) · increment`` with
    ``steps = (global − start) / increment``, and an iteration runs
    ``batch // (micro × DP)`` micro-batches, i.e. ``(batch // (micro × DP)) · micro × DP``
    samples.  Micro 2 × DP 2 = 4; ramp 6 +6 over 120 samples to 24: +6 every 40 samples.

        consumed   0..40 → 6 → 1 micro-batch round  → 4   (int(39/40) = 0; 40 is step 1)
        consumed  40..80 → 12 → 3 rounds           → 12
        consumed 80..120 → 18 → 4 rounds           → 16
        consumed   > 120 → 24                      → 24
    """
    run = RunShape(seq_length=8, micro_batch_size=2, global_batch_size=24, world_size=2,
                   rampup_batch_size=(6, 6, 120))
    assert run.data_parallel_size == 2
    consumed = (0, 39, 40, 79, 80, 119, 120, 121, 10 ** 6)
    assert [run.batch_size_at(c) for c in consumed] == [4, 4, 12, 12, 16, 16, 24, 24, 24]
    # micro 4 × DP 1 = 4 on one GPU: the same rounding, the same batches
    single = RunShape(seq_length=8, micro_batch_size=4, global_batch_size=24, world_size=1,
                      rampup_batch_size=(6, 6, 120))
    assert [single.batch_size_at(c) for c in consumed] == [4, 4, 12, 12, 16, 16, 24, 24, 24]


@pytest.mark.parametrize("flags,flag,words", [
    (["--num-layers", "2", "--hidden-size", "60", "--num-attention-heads", "8",
      "--seq-length", "8"], "--num-attention-heads", "must divide --hidden-size (60)"),
    (BASE + ["--num-key-value-heads", "3"], "--num-key-value-heads",
     "--num-key-value-heads (3) must divide --num-attention-heads (8)"),
    (BASE + ["--glu-activation", "gelu2"], "--glu-activation", "must be one of"),
    (BASE + ["--seq-length", "0"], "--seq-length", "positive"),
    (BASE + ["--swiglu", "--glu-activation", "geglu"], "--swiglu", "contradicts"),
    (BASE + ["--checkpoint-activations", "--recompute-granularity", "selective"],
     "--checkpoint-activations", "contradicts"),
    (BASE + ["--fp16", "--bf16"], "--bf16", "cannot both"),
    (BASE + ["--global-batch-size", "3", "--micro-batch-size", "2"], "--global-batch-size",
     "multiple"),
    (BASE + ["--vocab-size", "300", "--pad-vocab-size-to", "256"], "--pad-vocab-size-to",
     "at least"),
    (BASE + ["--recompute-granularity", "full", "--recompute-method", "block"],
     "--recompute-num-layers", "needs"),
    (BASE + ["--num-experts", "4", "--topk", "5"], "--topk", "must not exceed"),
    (BASE + ["--world-size", "3", "--tensor-model-parallel-size", "2"], "--world-size", "multiple"),
])
def test_errors_name_the_flag(flags, flag, words):
    ns, _ = parse_megatron_args(flags)
    with pytest.raises(ShapeError) as info:
        shapes_from_args(ns)
    assert info.value.flag == flag
    assert words in str(info.value)


@pytest.mark.parametrize("extra", [
    ["--num-key-value-heads", "3"],
    ["--iteration-time", "0"],
    ["--iteration-time", "-1"],
    ["--glu-activation", "nope"],
    ["--hidden-size", "abc"],
    ["--plan-tokens", "1e9"],             # without --plan-tflops-per-gpu
])
def test_cli_bad_input_exits_2_with_one_line(extra, capsys):
    assert main(["estimate"] + BASE + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("megatron-flops: error:")
    assert "Traceback" not in err[0]


def test_cli_subprocess_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "megatron_flops", "estimate", *BASE,
                           "--num-key-value-heads", "3"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("megatron-flops: error: --num-key-value-heads (3) must divide "
                                   "--num-attention-heads (8)")
    assert proc.stdout == ""


def test_unknown_flags_are_listed_once(capsys):
    # (--tokenizer-type is read since issue 18: the vocabulary comes from the tokenizer)
    assert main(["estimate", *BASE, "--split", "949,50,1", "--lr", "1e-4",
                 "--no-masked-softmax-fusion", "--json"]) == 0
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if "ignoring" in l]
    assert len(lines) == 1
    for flag in ("--split", "--lr", "--no-masked-softmax-fusion"):
        assert flag in lines[0]
    json.loads(captured.out)
