"""Megatron-Core's MoE, MLA, multi-token prediction and sliding-window attention, counted on CPU.

Same method as ``test_dense_gpt.py``: Megatron-Core 0.16.1 builds its real GPTModel from the
settings a Megatron-LM run would pass (``get_gpt_decoder_block_spec`` without Transformer
Engine, so MoE layers sit where ``--moe-layer-freq`` says; ``get_gpt_mtp_block_spec`` for MTP),
FlopCounterMode counts one training step, hooks attribute each FLOP to the module that ran
it, and the table per component and phase must equal ``flops_breakdown`` exactly.

MoE runs on real tensors only (routing is data-dependent); every token reaches its top-k
experts because the all-gather dispatcher is dropless, so the routed experts' total is exact
whatever the router picks.
"""

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import mcore_counting  # noqa: E402

from megatron_flops.flops import flops_breakdown  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute, parse_layer_pattern  # noqa: E402

SEQ, BATCH = 16, 2
BASE = dict(num_layers=3, hidden_size=64, num_attention_heads=4, vocab_size=128,
            add_bias_linear=False)
SWIGLU = dict(glu_activation="swiglu", ffn_hidden_size=96, normalization="rmsnorm")
MOE = dict(num_experts=4, moe_ffn_hidden_size=40)

CASES = {
    # MoE
    "moe top-1, every layer (--moe-layer-freq 1)": (dict(**MOE, moe_topk=1, moe_layer_freq=1), None),
    "moe top-2, gelu, --moe-layer-freq 2": (dict(**MOE, moe_topk=2, moe_layer_freq=2), None),
    "moe top-2, swiglu, shared experts, first layer dense ([0]*1+[1]*2)": (
        dict(**MOE, **SWIGLU, moe_topk=2, moe_shared_expert_intermediate_size=56,
             moe_layer_freq=parse_layer_pattern("([0]*1+[1]*2)")), None),
    "moe top-1, shared experts, gqa, rotary, untied": (
        dict(**MOE, moe_topk=1, moe_shared_expert_intermediate_size=24, moe_layer_freq=(1, 0, 1),
             num_query_groups=2, position_embedding="rotary", tie_embeddings=False), None),
    "moe top-2, selective recompute": (dict(**MOE, **SWIGLU, moe_topk=2), Recompute("selective")),
    "moe top-2, full block recompute of 2": (dict(**MOE, moe_topk=2, moe_layer_freq=(0, 1, 1)),
                                              Recompute("full", "block", 2)),
    # multi-latent attention
    "mla with q-lora": (dict(**SWIGLU, multi_latent_attention=True, q_lora_rank=32, kv_lora_rank=24,
                             qk_head_dim=16, qk_pos_emb_head_dim=8, v_head_dim=12,
                             position_embedding="rotary"), None),
    "mla without q-lora, full uniform recompute": (
        dict(multi_latent_attention=True, kv_lora_rank=20, qk_head_dim=12, qk_pos_emb_head_dim=4,
             v_head_dim=20, position_embedding="rotary"), Recompute("full", "uniform", 1)),
    "mla + moe with shared experts (DeepSeek-V2-like)": (
        dict(**MOE, **SWIGLU, moe_topk=2, moe_shared_expert_intermediate_size=32,
             moe_layer_freq=(0, 1, 1), multi_latent_attention=True, q_lora_rank=24,
             kv_lora_rank=16, qk_head_dim=8, qk_pos_emb_head_dim=8, v_head_dim=8,
             position_embedding="rotary", tie_embeddings=False), None),
    # multi-token prediction
    "mtp 1 layer, dense": (dict(mtp_num_layers=1), None),
    "mtp 2 layers, untied, swiglu": (dict(**SWIGLU, mtp_num_layers=2, tie_embeddings=False), None),
    "mtp after an moe last layer": (dict(**MOE, moe_topk=2, moe_layer_freq=(1, 0, 1),
                                         mtp_num_layers=1), None),
    "mtp, full uniform recompute (mtp layers recomputed)": (dict(mtp_num_layers=1),
                                                            Recompute("full", "uniform", 1)),
    "mtp, full block recompute (mtp layers not recomputed)": (dict(mtp_num_layers=1),
                                                              Recompute("full", "block", 1)),
    "mtp, selective recompute": (dict(mtp_num_layers=2), Recompute("selective")),
    # sliding-window attention: the unfused kernel still multiplies the whole s×s matrix
    "sliding window 4": (dict(window_size=4), None),
    "sliding window 4, every 2nd layer full": (dict(window_size=4, window_attn_skip_freq=2), None),
}
# (MoE with --add-bias-linear does not run in 0.16.1's local path: its expert output is a
# custom-Function view modified in place, which autograd refuses)

# Megatron-Core options that add no matmul (norms only): counted exactly as without them
CONFIG_ONLY = {
    "--qk-layernorm": (dict(num_query_groups=2), dict(qk_layernorm=True)),
    "--qk-layernorm with mla": (CASES["mla with q-lora"][0], dict(qk_layernorm=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_counted_exactly(megatron_core, case):
    fields, recompute = CASES[case]
    recompute = recompute or Recompute()
    model = ModelShape(**{**BASE, **fields})
    gpt = mcore_counting.build_gpt(model, recompute, max_sequence_length=SEQ)
    counted = mcore_counting.count_training_step(
        gpt, *mcore_counting.training_inputs(BATCH, SEQ, model.vocab_size))
    breakdown = flops_breakdown(model, SEQ, BATCH, recompute)
    assert mcore_counting.counted_by_component(counted) == \
        mcore_counting.expected_by_component(breakdown)
    assert counted.total_flops == breakdown.hardware_flops


@pytest.mark.parametrize("case", sorted(CONFIG_ONLY))
def test_options_without_matmuls_count_the_same(megatron_core, case):
    fields, config = CONFIG_ONLY[case]
    model = ModelShape(**{**BASE, **fields})
    gpt = mcore_counting.build_gpt(model, Recompute(), max_sequence_length=SEQ, **config)
    counted = mcore_counting.count_training_step(
        gpt, *mcore_counting.training_inputs(BATCH, SEQ, model.vocab_size))
    assert mcore_counting.counted_by_component(counted) == \
        mcore_counting.expected_by_component(flops_breakdown(model, SEQ, BATCH))


def test_the_moe_cases_route_through_experts(megatron_core):
    """The MoE cases are MoE in Megatron-Core too: its layers and ours agree on which is which."""
    fields, _ = CASES["moe top-2, swiglu, shared experts, first layer dense ([0]*1+[1]*2)"]
    model = ModelShape(**{**BASE, **fields})
    gpt = mcore_counting.build_gpt(model, Recompute(), max_sequence_length=SEQ)
    kinds = [type(layer.mlp).__name__ for layer in gpt.decoder.layers]
    assert kinds == ["MLP", "MoELayer", "MoELayer"]
    assert [model.experts_in_layer(i) for i in range(3)] == [1, 4, 4]


FULL_SIZE_MLA = {
    # DeepSeek-V2-Lite's attention (DeepSeek-AI 2024, its config.json: h 2048, 16 heads,
    # kv_lora_rank 512, qk_nope 128, qk_rope 64, v 128, no q-lora) on a dense 27-layer model
    # with MTP 1, s 4096: meta tensors, real Megatron-Core code.
    "deepseek-v2-lite attention, mtp 1": dict(
        num_layers=27, hidden_size=2048, num_attention_heads=16, vocab_size=102400,
        glu_activation="swiglu", ffn_hidden_size=10944, add_bias_linear=False,
        normalization="rmsnorm", position_embedding="rotary", tie_embeddings=False,
        multi_latent_attention=True, kv_lora_rank=512, qk_head_dim=128, qk_pos_emb_head_dim=64,
        v_head_dim=128, mtp_num_layers=1),
}


@pytest.mark.parametrize("case", sorted(FULL_SIZE_MLA))
def test_full_size_mla_on_meta_tensors(megatron_core, case):
    model, seq_length = ModelShape(**FULL_SIZE_MLA[case]), 4096
    recompute = Recompute("selective")
    with mcore_counting.scratch_device("meta"):
        gpt = mcore_counting.build_gpt(model, recompute, max_sequence_length=seq_length,
                                       device="meta")
        counted = mcore_counting.count_training_step(
            gpt, *mcore_counting.training_inputs(1, seq_length, model.vocab_size, "meta"))
    breakdown = flops_breakdown(model, seq_length, 1, recompute)
    assert mcore_counting.counted_by_component(counted) == \
        mcore_counting.expected_by_component(breakdown)


PARAMETER_CASES = ("mla with q-lora", "mla without q-lora, full uniform recompute",
                   "mla + moe with shared experts (DeepSeek-V2-like)", "mtp 2 layers, untied, swiglu",
                   "mtp after an moe last layer",
                   "moe top-2, swiglu, shared experts, first layer dense ([0]*1+[1]*2)")


@pytest.mark.parametrize("case", PARAMETER_CASES)
def test_parameter_count_is_megatron_cores(megatron_core, case):
    """Our parameter count = the numel of Megatron-Core's model (bias-free cases: Megatron-Core's
    router has a bias with --add-bias-linear, the microsoft fork's, which we count, has none)."""
    from megatron_flops.params import parameter_count

    fields, _ = CASES[case]
    model = ModelShape(**{**BASE, **fields, "max_position_embeddings": SEQ})
    gpt = mcore_counting.build_gpt(model, Recompute(), max_sequence_length=SEQ)
    assert parameter_count(model).total == sum(p.numel() for p in gpt.parameters())

