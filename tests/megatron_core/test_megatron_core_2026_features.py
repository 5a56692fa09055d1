"""Issue 20 item 2 on Megatron-Core's own modules, counted on CPU: quick-GeGLU, the attention
output gate, the shared-expert gate, latent MoE, and selective recompute of ``mlp``, ``moe``,
``shared_experts`` and ``mla_up_proj``.

Same method as ``test_megatron_core_features.py``: Megatron-Core 0.16.1 builds its GPTModel
from the TransformerConfig a Megatron-LM run with these flags builds (the flags are
TransformerConfig fields copied by name; ``--quick-geglu`` sets ``gated_linear_unit`` and
``activation_func = quick_gelu``, ``argument_utils.py`` at d98e8a64), FlopCounterMode counts one
training step, hooks attribute every FLOP to the module that ran it, and the table per
component and phase equals ``flops_breakdown`` exactly.

Latent MoE's two projections are Transformer Engine ``TELinear`` modules in Megatron-Core; they
run here as a plain linear of the sizes MoELayer passes (``latent_projection_stand_in``), the
rest is Megatron-Core's code.
"""

import contextlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import mcore_counting  # noqa: E402

from megatron_flops.flops import flops_breakdown  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

SEQ, BATCH = 16, 2
BASE = dict(num_layers=3, hidden_size=64, num_attention_heads=4, vocab_size=128,
            add_bias_linear=False)
SWIGLU = dict(glu_activation="swiglu", ffn_hidden_size=96, normalization="rmsnorm")
MOE = dict(num_experts=4, moe_ffn_hidden_size=40, moe_topk=2)
SHARED = dict(moe_shared_expert_intermediate_size=48)
MLA = dict(multi_latent_attention=True, q_lora_rank=32, kv_lora_rank=24, qk_head_dim=16,
           qk_pos_emb_head_dim=8, v_head_dim=12, position_embedding="rotary")


def selective(*modules):
    return Recompute("selective", modules=modules)


CASES = {
    # --quick-geglu (gpt-oss): a GLU's GEMMs, h -> 2f and f -> h
    "quick-geglu, dense": (dict(glu_activation="quick_geglu", ffn_hidden_size=80), None),
    "quick-geglu, moe with bias-free experts": (
        dict(**MOE, glu_activation="quick_geglu", moe_layer_freq=1), None),
    # --attention-output-gate: linear_qkv n·d columns wider
    "attention output gate, mha": (dict(attention_output_gate=True), None),
    "attention output gate, gqa, swiglu, rotary": (
        dict(**SWIGLU, attention_output_gate=True, num_query_groups=2,
             position_embedding="rotary"), None),
    "attention output gate, selective core_attn recompute": (
        dict(attention_output_gate=True), Recompute("selective")),
    # --moe-shared-expert-gate: h -> 1
    "shared-expert gate": (dict(**MOE, **SHARED, moe_shared_expert_gate=True, moe_layer_freq=1),
                           None),
    "shared-expert gate, swiglu, shared_experts recompute": (
        dict(**MOE, **SWIGLU, **SHARED, moe_shared_expert_gate=True, moe_layer_freq=(0, 1, 1)),
        selective("shared_experts")),
    # --moe-latent-size
    "latent moe, gelu": (dict(**MOE, moe_latent_size=24, moe_layer_freq=1), None),
    "latent moe, swiglu, shared experts with gate, first layer dense": (
        dict(**MOE, **SWIGLU, **SHARED, moe_latent_size=20, moe_shared_expert_gate=True,
             moe_layer_freq=(0, 1, 1)), None),
    "latent moe, moe recompute": (dict(**MOE, **SHARED, moe_latent_size=24, moe_layer_freq=(0, 1, 1)),
                                  selective("moe")),
    # selective recompute modules, each alone and together
    "mlp recompute, dense": (dict(**SWIGLU), selective("mlp")),
    "mlp recompute, moe layers keep theirs": (dict(**MOE, moe_layer_freq=(0, 1, 1)),
                                              selective("mlp")),
    "moe recompute with core_attn": (dict(**MOE, **SHARED, moe_layer_freq=(1, 0, 1)),
                                     selective("core_attn", "moe")),
    "mla_up_proj recompute": (dict(**MLA), selective("mla_up_proj")),
    "mla_up_proj recompute, no q-lora": (dict(**{**MLA, "q_lora_rank": None}),
                                         selective("mla_up_proj")),
    "mlp + mla_up_proj + core_attn recompute": (dict(**MLA, **SWIGLU),
                                                selective("core_attn", "mlp", "mla_up_proj")),
    # (not here: moe_act needs --moe-grouped-gemm in 0.16.1, whose GroupedMLP does not run on
    # CPU; layernorm recompute's CheckpointWithoutOutput asks Transformer Engine's FP8 state)
}


def _stand_ins(model):
    return (mcore_counting.latent_projection_stand_in() if model.moe_latent_size is not None
            else contextlib.nullcontext())


def _build(model, recompute):
    with _stand_ins(model):
        return mcore_counting.build_gpt(model, recompute, max_sequence_length=SEQ)


@pytest.mark.parametrize("case", sorted(CASES))
def test_counted_exactly(megatron_core, case):
    fields, recompute = CASES[case]
    recompute = recompute or Recompute()
    model = ModelShape(**{**BASE, **fields})
    gpt = _build(model, recompute)
    counted = mcore_counting.count_training_step(
        gpt, *mcore_counting.training_inputs(BATCH, SEQ, model.vocab_size))
    breakdown = flops_breakdown(model, SEQ, BATCH, recompute)
    assert mcore_counting.counted_by_component(counted) == \
        mcore_counting.expected_by_component(breakdown)
    assert counted.total_flops == breakdown.hardware_flops


def test_the_features_are_built(megatron_core):
    """The cases exercise the features in Megatron-Core too (a silently ignored flag would
    pass the count trivially): the gate columns, the gate weight, the latent projections."""
    fields, _ = CASES["latent moe, swiglu, shared experts with gate, first layer dense"]
    model = ModelShape(**{**BASE, **fields, "attention_output_gate": True})
    gpt = _build(model, Recompute())
    layer = gpt.decoder.layers[1]
    assert layer.self_attention.linear_qkv.weight.shape == (4 * 16 * 2 + 2 * 4 * 16, 64)
    assert layer.mlp.shared_experts.gate_weight.shape == (1, 64)
    assert layer.mlp.fc1_latent_proj.weight.shape == (20, 64)
    assert layer.mlp.experts.local_experts[0].linear_fc1.weight.shape == (2 * 40, 20)
    assert type(gpt.decoder.layers[0].mlp).__name__ == "MLP"


PARAMETER_CASES = ("attention output gate, gqa, swiglu, rotary", "shared-expert gate",
                   "latent moe, swiglu, shared experts with gate, first layer dense",
                   "quick-geglu, dense")


@pytest.mark.parametrize("case", PARAMETER_CASES)
def test_parameter_count_is_megatron_cores(megatron_core, case):
    from megatron_flops.params import parameter_count

    fields, _ = CASES[case]
    model = ModelShape(**{**BASE, **fields, "max_position_embeddings": SEQ})
    gpt = _build(model, Recompute())
    assert parameter_count(model).total == sum(p.numel() for p in gpt.parameters())
