"""What is counted: every matmul component of a Megatron GPT, declared once.

Notation: ``s`` sequence length, ``h`` hidden size, ``n`` attention heads, ``d`` head
dimension (kv_channels), ``g`` KV heads (query groups), ``f`` FFN size (one branch for a
GLU), ``V`` padded vocabulary, ``E`` experts in the layer, ``k`` experts per token; with a
batch, ``T = B·s`` tokens.  A matmul of an ``(m × K)`` by a ``(K × N)`` matrix costs
``2·m·K·N`` FLOPs.

Each component is one function decorated with :func:`register_component`, in the spirit of
torch's ``utils/flop_counter.py`` ``register_flop_formula``: its name, where it occurs, the
matmul it comes from, the same count as text (the README table), and the formula itself
— forward FLOPs of one sample, ``formula(model, s, experts)`` with ``experts`` the layer's
expert count (1 in a dense layer).  The breakdown (:mod:`megatron_flops.flops`), its order,
``--json``, the README table and the verifier all read :data:`REGISTRY`.

The default layer (d = h/n, g = n, f = 4h), forward, per sample, as a sum of named parts::

    component                 s·h²   s²·h
    query                        2
    key_value                    4
    attention_scores                    2
    attention_over_values               2
    attention_output             2
    mlp_up                       8
    mlp_down                     8
    layer                       24      4
    mlp_gate (GLU)               8
    layer with a GLU            32      4

so a layer is 24·s·h² + 4·s²·h, and a GLU's gate (a second h -> f branch, f = 4h) adds 8·s·h²:
32·s·h² + 4·s²·h.  ``tests/core/test_components.py`` holds the formulas to this table.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from .shapes import ModelShape

# where a component occurs
EVERY_LAYER = "every layer"
DENSE_LAYERS = "dense-MLP layers"  # dense layers, and the residual MLP of PR-MoE layers
MOE_LAYERS = "MoE layers"
RESIDUAL_MOE_LAYERS = "PR-MoE layers"  # MoE layers with --mlp-type residual
ONCE = "once per model"
OCCURRENCES = (EVERY_LAYER, DENSE_LAYERS, MOE_LAYERS, RESIDUAL_MOE_LAYERS, ONCE)

Formula = Callable[[ModelShape, int, int], int]


@dataclass(frozen=True)
class ComponentSpec:
    """One declared component.

    ``attention_core`` marks the s×s products: halved when counted causal, and the only
    thing selective recompute re-runs.
    """

    name: str
    occurs: str
    title: str
    matmul: str
    flops_text: str
    formula: Formula
    attention_core: bool = False

    @property
    def description(self) -> str:
        return f"{self.title}  {self.matmul}"

    def in_layer(self, model: ModelShape, experts: int) -> bool:
        """Whether this component occurs in a layer of ``model`` with ``experts`` experts (1: dense).

        A PR-MoE layer (``--mlp-type residual``) runs a dense MLP beside its experts."""
        moe = experts > 1
        return (self.occurs == EVERY_LAYER
                or (self.occurs == DENSE_LAYERS and (not moe or model.moe_residual))
                or (self.occurs == MOE_LAYERS and moe)
                or (self.occurs == RESIDUAL_MOE_LAYERS and moe and model.moe_residual))


# name -> declaration, in the order the forward pass meets them (the order of every table)
REGISTRY: Dict[str, ComponentSpec] = {}


def register_component(name: str, occurs: str, title: str, matmul: str, flops_text: str,
                       attention_core: bool = False):
    """Decorator: declare the component ``name`` whose forward FLOPs the function computes."""
    if occurs not in OCCURRENCES:
        raise ValueError(f"occurs must be one of {OCCURRENCES}, got {occurs!r}")

    def register(formula: Formula) -> Formula:
        if name in REGISTRY:
            raise ValueError(f"component {name!r} is already registered")
        REGISTRY[name] = ComponentSpec(name, occurs, title, matmul, flops_text, formula,
                                       attention_core)
        return formula
    return register


def unregister_component(name: str) -> None:
    del REGISTRY[name]


def component_names() -> Tuple[str, ...]:
    return tuple(REGISTRY)


def __getattr__(attribute: str):
    # derived names, read live so that a component registered later shows up too
    if attribute == "COMPONENTS":
        return component_names()
    if attribute == "DESCRIPTIONS":
        return {name: spec.description for name, spec in REGISTRY.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an ``(m × k)·(k × n)`` matrix product."""
    return 2 * m * k * n


# ---- the components, per sample (B = 1), forward only ---------------------------------------
# Every component is linear in B, so a batch is the per-sample count times B, exactly.

@register_component("query", EVERY_LAYER, "Q projection", "[T × h]·[h × n·d]", "2·T·h·n·d")
def query_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.hidden_size, model.query_projection_size)


@register_component("key_value", EVERY_LAYER, "K and V projections", "[T × h]·[h × 2·g·d]",
                    "2·T·h·2·g·d")
def key_value_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.hidden_size, 2 * model.kv_projection_size)


@register_component("attention_scores", EVERY_LAYER, "scores Q·Kᵀ", "B·n × [s × d]·[d × s]",
                    "2·B·n·s²·d", attention_core=True)
def attention_scores_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.num_attention_heads * matmul_flops(s, model.kv_channels, s)


@register_component("attention_over_values", EVERY_LAYER, "attention·V", "B·n × [s × s]·[s × d]",
                    "2·B·n·s²·d", attention_core=True)
def attention_over_values_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.num_attention_heads * matmul_flops(s, s, model.kv_channels)


@register_component("attention_output", EVERY_LAYER, "output projection", "[T × n·d]·[n·d × h]",
                    "2·T·n·d·h")
def attention_output_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.query_projection_size, model.hidden_size)


@register_component("mlp_up", DENSE_LAYERS, "MLP up", "[T × h]·[h × f]", "2·T·h·f")
def mlp_up_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.hidden_size, model.ffn_hidden_size)


@register_component("mlp_gate", DENSE_LAYERS, "MLP gate (GLU)", "[T × h]·[h × f]", "2·T·h·f·glu")
def mlp_gate_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.hidden_size, model.ffn_hidden_size) if model.glu else 0


@register_component("mlp_down", DENSE_LAYERS, "MLP down", "[T × f]·[f × h]", "2·T·f·h")
def mlp_down_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.ffn_hidden_size, model.hidden_size)


@register_component("moe_router", MOE_LAYERS, "MoE router", "[T × h]·[h × E]", "2·T·h·E")
def moe_router_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.hidden_size, experts)


@register_component("moe_coefficient", RESIDUAL_MOE_LAYERS, "PR-MoE coefficient",
                    "[T × h]·[h × 2]", "2·T·h·2")
def moe_coefficient_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    """The ``h -> 2`` linear that mixes a PR-MoE layer's expert and residual MLP outputs."""
    return matmul_flops(s, model.hidden_size, 2)


# every token visits its top-k experts, each a full MLP (no capacity dropping counted)
@register_component("expert_up", MOE_LAYERS, "experts up", "k × [T × h]·[h × f]", "k·2·T·h·f")
def expert_up_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.moe_topk * mlp_up_flops(model, s)


@register_component("expert_gate", MOE_LAYERS, "experts gate (GLU)", "k × [T × h]·[h × f]",
                    "k·2·T·h·f·glu")
def expert_gate_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.moe_topk * mlp_gate_flops(model, s)


@register_component("expert_down", MOE_LAYERS, "experts down", "k × [T × f]·[f × h]", "k·2·T·f·h")
def expert_down_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.moe_topk * mlp_down_flops(model, s)


@register_component("logits", ONCE, "logits", "[T × h]·[h × V]", "2·T·h·V")
def logits_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.hidden_size, model.vocab_size)


def markdown_table() -> str:
    """The README's "What is counted" table, one row per registered component."""
    lines = ["| component | occurs | matmul | forward FLOPs |", "|---|---|---|---|"]
    for spec in REGISTRY.values():
        lines.append(f"| `{spec.name}` | {spec.occurs} | {spec.description} | {spec.flops_text} |")
    return "\n".join(lines)
