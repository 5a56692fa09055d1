"""Which modules of a framework's model compute which matmul component, by name (no torch).

Each framework strategy (:mod:`megatron_flops.megatron.hook`) declares its table as
``module_names``; the counting mode (:mod:`megatron_flops.megatron.counting`) matches every
module's qualified name (``model.named_modules()``, wrapper prefixes such as DeepSpeed's
``module.`` included) against it, first rule first.

A *unit* is ``((component, output columns), ...)`` — one entry for a plain layer, several
for a fused one, whose counted FLOPs are split by output columns as in the verifier — or
``{operator: unit}`` for a module that computes several components inline (the forks'
attention core: ``baddbmm`` is QKᵀ, ``bmm`` is A·V).
"""

from typing import Callable, Dict, NamedTuple, Tuple

from ..shapes import ModelShape

Unit = Tuple[Tuple[str, int], ...]


class NameRule(NamedTuple):
    """Modules whose qualified name ends with ``pattern`` (dotted; ``*`` is one name segment)
    belong to ``unit(shape)``."""

    pattern: str
    unit: Callable[[ModelShape], object]


def one(component: str) -> Callable[[ModelShape], Unit]:
    return lambda shape: ((component, 1),)


def fused_qkv(shape: ModelShape) -> Unit:
    """The fused QKV projection, split by output columns: n·d query, 2·g·d keys and values
    (and n·d gate columns with Megatron-LM's ``--attention-output-gate``)."""
    d = shape.kv_channels
    unit = (("query", shape.num_attention_heads * d), ("key_value", 2 * shape.num_query_groups * d))
    if shape.attention_output_gate:
        unit += (("attention_gate", shape.num_attention_heads * d),)
    return unit


def mlp_in(prefix: str) -> Callable[[ModelShape], Unit]:
    """``dense_h_to_4h``: h -> f, or h -> 2f for a GLU (up and gate, f columns each)."""
    def unit(shape: ModelShape) -> Unit:
        f = shape.ffn_hidden_size
        return ((f"{prefix}_up", f), (f"{prefix}_gate", f)) if shape.glu else ((f"{prefix}_up", 1),)
    return unit


def core_attention(shape: ModelShape) -> Dict[str, Unit]:
    """The attention core computed with torch ops (both forks inline, Megatron-Core's local
    ``DotProductAttention``): QKᵀ is ``baddbmm``, attention·V is ``bmm``."""
    return {"baddbmm": (("attention_scores", 1),), "bmm": (("attention_over_values", 1),)}


_ATTENTION = (
    NameRule("self_attention.query_key_value", fused_qkv),
    NameRule("self_attention.dense", one("attention_output")),
)
_MLP = (
    NameRule("mlp.dense_h_to_4h", mlp_in("mlp")),
    NameRule("mlp.dense_4h_to_h", one("mlp_down")),
)

# bigscience 8387ae17 megatron/model/transformer.py: ParallelAttention computes the core
# inline (torch.baddbmm, torch.bmm); ParallelMLP dense_h_to_4h (2f with --glu-activation)
BIGSCIENCE = _ATTENTION + (NameRule("self_attention", core_attention),) + _MLP

# microsoft f4157bea: a CoreAttention module (older versions: inline; with Ulysses inside
# self_attention.dist_attn, found by the self_attention rule); DeepSpeed's MoE
# (deepspeed.moe.layer.MoE: deepspeed_moe.gate is the router — its TopKGate calls
# F.linear on wg.weight, not the wg module —
# deepspeed_moe.experts.deepspeed_experts[i] are ParallelMLPs) and Megatron-LM's SwitchMLP
# (--num-experts-switch: mlp.router, mlp.experts[i])
MICROSOFT = (
    NameRule("deepspeed_moe.gate", one("moe_router")),  # TopKGate: F.linear(x, wg.weight)
    NameRule("deepspeed_experts.*.dense_h_to_4h", mlp_in("expert")),
    NameRule("deepspeed_experts.*.dense_4h_to_h", one("expert_down")),
    NameRule("mlp.router", one("moe_router")),
    NameRule("mlp.experts.*.dense_h_to_4h", mlp_in("expert")),
    NameRule("mlp.experts.*.dense_4h_to_h", one("expert_down")),
) + _ATTENTION + (
    NameRule("self_attention.core_attention", core_attention),
    NameRule("self_attention", core_attention),
) + _MLP




def output_layer(shape: ModelShape) -> Unit:
    """Megatron-Core's ``output_layer``: the logits, and once per MTP layer the MTP logits
    (the same module, called 1 + m times on inputs of the same shape): split 1 : m."""
    m = shape.mtp_num_layers
    return (("logits", 1), ("mtp_logits", m)) if m else (("logits", 1),)


def _experts(prefix: str, component: str):
    return (NameRule(f"{prefix}.linear_fc1", mlp_in(component)),
            NameRule(f"{prefix}.linear_fc2", one(f"{component}_down")))


# Megatron-Core (megatron/core/transformer/..., read at Megatron-LM d98e8a64 and core_v0.13.0;
# the same names in the local and the Transformer Engine specs): SelfAttention linear_qkv
# (TE: TELayerNormColumnParallelLinear, the layer norm fused in; the same columns
# [q | k | v] per query group, split by output columns), core_attention (local
# DotProductAttention: torch.baddbmm for QKᵀ, torch.bmm for A·V; TE's fused attention is
# listed as uncountable), linear_proj; MLASelfAttention linear_q_proj or
# linear_q_down_proj + linear_q_up_proj, linear_kv_down_proj, linear_kv_up_proj; MLP
# linear_fc1 (h -> 2f with a GLU: the two halves) and linear_fc2; MoELayer router (its
# gating linear), experts — SequentialMLP experts.local_experts.N.linear_fc1/fc2,
# TEGroupedMLP experts.linear_fc1/fc2 — and shared_experts.linear_fc1/fc2;
# MultiTokenPredictionLayer eh_proj (its transformer_layer is found by the rules above);
# GPTModel output_layer (logits and the MTP logits).  The legacy GroupedMLP (experts with
# weight1/weight2, the grouped_gemm extension) has no per-GEMM module: its kernels are
# listed as uncountable, its FLOPs are missing.
MEGATRON_CORE = (
    NameRule("self_attention.linear_qkv", fused_qkv),
    NameRule("self_attention.linear_q_proj", one("mla_q")),
    NameRule("self_attention.linear_q_down_proj", one("mla_q_down")),
    NameRule("self_attention.linear_q_up_proj", one("mla_q_up")),
    NameRule("self_attention.linear_kv_down_proj", one("mla_kv_down")),
    NameRule("self_attention.linear_kv_up_proj", one("mla_kv_up")),
    NameRule("self_attention.core_attention", core_attention),
    NameRule("self_attention.linear_proj", one("attention_output")),
    NameRule("mlp.router", one("moe_router")),
    *_experts("mlp.experts.local_experts.*", "expert"),
    *_experts("mlp.experts", "expert"),
    *_experts("mlp.shared_experts", "shared_expert"),
    NameRule("mlp.linear_fc1", mlp_in("mlp")),
    NameRule("mlp.linear_fc2", one("mlp_down")),
    NameRule("eh_proj", one("mtp_projection")),
    NameRule("output_layer", output_layer),
    # issue 20 item 2: MoELayer's latent projections (--moe-latent-size) and SharedExpertMLP's
    # own F.linear on gate_weight (--moe-shared-expert-gate; its linear_fc1/fc2 are matched above)
    NameRule("mlp.fc1_latent_proj", one("moe_latent_down")),
    NameRule("mlp.fc2_latent_proj", one("moe_latent_up")),
    NameRule("mlp.shared_experts", one("shared_expert_output_gate")),
)
