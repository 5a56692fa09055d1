"""Megatron-Core's GPTModel (local spec, CPU, fp32): counted FLOPs = our breakdown, exactly.

For each case the same Megatron-LM settings build Megatron-Core's real model and our
``ModelShape``/``Recompute``; FlopCounterMode counts one training step (forward, backward and
whatever recomputation re-runs) and hooks attribute every counted FLOP to the Megatron-Core
module that executed it.  The comparison is per component group and per phase, exactly, and
nothing may go unattributed.  Megatron-Core's unfused attention multiplies the whole s×s
score matrix (the causal mask is applied afterwards), so the dense count (``causal=False``) is
what it executes.
"""

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import mcore_counting  # noqa: E402

from megatron_flops.flops import flops_breakdown  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128)
SEQ, BATCH = 16, 2

CASES = {
    "gelu+bias, learned positions, tied": dict(),
    "swiglu, no bias, rmsnorm": dict(glu_activation="swiglu", ffn_hidden_size=96,
                                     add_bias_linear=False, normalization="rmsnorm"),
    "gqa 2 groups": dict(num_query_groups=2),
    "gqa 1 group (mqa)": dict(num_query_groups=1),
    "kv_channels != h/n": dict(kv_channels=24),
    "untied embeddings": dict(tie_embeddings=False),
    "rotary": dict(position_embedding="rotary"),
    "llama-like: swiglu, gqa, rotary, untied, kv_channels": dict(
        glu_activation="swiglu", ffn_hidden_size=80, add_bias_linear=False,
        normalization="rmsnorm", position_embedding="rotary", tie_embeddings=False,
        num_query_groups=2, kv_channels=20),
}

RECOMPUTES = {
    "none": Recompute(),
    "selective": Recompute("selective"),
    "full uniform 1": Recompute("full", "uniform", 1),
    "full uniform 2": Recompute("full", "uniform", 2),
    "full block 1 of 4": Recompute("full", "block", 1),
    "full block 3 of 4": Recompute("full", "block", 3),
}


def count_and_expect(model, recompute, seq_length=SEQ, batch_size=BATCH, device="cpu"):
    gpt = mcore_counting.build_gpt(model, recompute, max_sequence_length=seq_length, device=device)
    inputs = mcore_counting.training_inputs(batch_size, seq_length, model.vocab_size, device)
    counted = mcore_counting.count_training_step(gpt, *inputs)
    breakdown = flops_breakdown(model, seq_length, batch_size, recompute)
    return counted, breakdown


def assert_exact(counted, breakdown):
    assert mcore_counting.counted_by_component(counted) == \
        mcore_counting.expected_by_component(breakdown)
    assert counted.total_flops == breakdown.hardware_flops


@pytest.mark.parametrize("case", sorted(CASES))
def test_architecture_counted_exactly(megatron_core, case):
    model = ModelShape(**{**TINY, **CASES[case]})
    assert_exact(*count_and_expect(model, Recompute()))


@pytest.mark.parametrize("name", sorted(RECOMPUTES))
def test_recompute_counted_exactly(megatron_core, name):
    recompute = RECOMPUTES[name]
    # 4 layers: Megatron-Core's uniform method needs --recompute-num-layers to divide them
    # (with 3 layers and chunks of 2 it indexes a fourth layer and fails)
    model = ModelShape(**{**TINY, "num_layers": 4, "glu_activation": "swiglu",
                          "num_query_groups": 2})
    counted, breakdown = count_and_expect(model, recompute)
    assert_exact(counted, breakdown)
    if recompute.granularity is not None:
        assert breakdown.recompute_flops > 0


FULL_SIZE = {
    # Llama-2-7B (Touvron et al. 2023, Table 1 / its config.json): 32 layers, h 4096, 32 heads,
    # SwiGLU ffn 11008, vocab 32000, rotary, RMSNorm, untied, no biases.
    "llama-2-7b, selective": (dict(num_layers=32, hidden_size=4096, num_attention_heads=32,
                                   vocab_size=32000, glu_activation="swiglu", ffn_hidden_size=11008,
                                   add_bias_linear=False, normalization="rmsnorm",
                                   position_embedding="rotary", tie_embeddings=False),
                              4096, Recompute("selective")),
    # GPT-3 2.7B-like (Brown et al. 2020, Table 2.1: 32 layers, d_model 2560, 32 heads, s 2048)
    # with GQA 8 groups and full block recompute of 5 layers.
    "gpt3-2.7b-like, gqa 8, full block 5": (dict(num_layers=32, hidden_size=2560, num_attention_heads=32,
                                               vocab_size=50304, num_query_groups=8),
                                          2048, Recompute("full", "block", 5)),
}


@pytest.mark.parametrize("case", sorted(FULL_SIZE))
def test_full_size_on_meta_tensors(megatron_core, case):
    shape, seq_length, recompute = FULL_SIZE[case]
    model = ModelShape(**shape)
    with mcore_counting.scratch_device("meta"):
        counted, breakdown = count_and_expect(model, recompute, seq_length=seq_length,
                                              batch_size=1, device="meta")
    assert_exact(counted, breakdown)
