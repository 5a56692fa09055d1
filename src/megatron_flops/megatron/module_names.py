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
    """The fused QKV projection, split by output columns: n·d query, 2·g·d keys and values."""
    d = shape.kv_channels
    return (("query", shape.num_attention_heads * d), ("key_value", 2 * shape.num_query_groups * d))


def mlp_in(prefix: str) -> Callable[[ModelShape], Unit]:
    """``dense_h_to_4h``: h -> f, or h -> 2f for a GLU (up and gate, f columns each)."""
    def unit(shape: ModelShape) -> Unit:
        f = shape.ffn_hidden_size
        return ((f"{prefix}_up", f), (f"{prefix}_gate", f)) if shape.glu else ((f"{prefix}_up", 1),)
    return unit


def core_attention(shape: ModelShape) -> Dict[str, Unit]:
    """The attention core both forks compute inline with torch ops: QKᵀ is ``baddbmm``,
    attention·V is ``bmm``."""
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


