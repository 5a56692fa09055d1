"""Exact matmul FLOPs of one Megatron GPT training iteration, component by component.

Notation (per iteration): ``B`` samples, ``s`` sequence length, ``T = B·s`` tokens,
``h`` hidden size, ``n`` attention heads, ``d`` head dimension (kv_channels), ``g`` KV
heads (query groups), ``f`` FFN size (one branch for a GLU), ``V`` padded vocabulary,
``E`` experts and ``k`` experts per token in an MoE layer.

A matmul of an ``(m × K)`` by a ``(K × N)`` matrix costs ``2·m·K·N`` FLOPs (one multiply,
one add).  Every component below is written as the matmul it comes from.  The backward pass
of a matmul computes two matmuls of the same size (gradient w.r.t. input and w.r.t. weight),
so backward = 2 × forward for every component.  Elementwise work (norms, softmax,
activations, rotary, dropout, residual adds) is not counted, as in every peer formula.

*Model FLOPs* are forward + backward (PaLM's MFU numerator).  *Hardware FLOPs* add what
activation recomputation re-runs: the forward of every recomputed layer (full recompute;
never the logits layer) or the attention scores and attention·V of every layer (selective).
"""

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from .shapes import NO_RECOMPUTE, ModelShape, Recompute

# The components in the order they appear in a layer; a reader of a breakdown table sees the
# forward pass top to bottom.
COMPONENTS = (
    "query",
    "key_value",
    "attention_scores",
    "attention_over_values",
    "attention_output",
    "mlp_up",
    "mlp_gate",
    "mlp_down",
    "moe_router",
    "moe_coefficient",
    "expert_up",
    "expert_gate",
    "expert_down",
    "logits",
)

ATTENTION_CORE = ("attention_scores", "attention_over_values")

DESCRIPTIONS = {
    "query": "Q projection  [T × h]·[h × n·d]",
    "key_value": "K and V projections  [T × h]·[h × 2·g·d]",
    "attention_scores": "scores Q·Kᵀ  B·n × [s × d]·[d × s]",
    "attention_over_values": "attention·V  B·n × [s × s]·[s × d]",
    "attention_output": "output projection  [T × n·d]·[n·d × h]",
    "mlp_up": "MLP up  [T × h]·[h × f]",
    "mlp_gate": "MLP gate (GLU)  [T × h]·[h × f]",
    "mlp_down": "MLP down  [T × f]·[f × h]",
    "moe_router": "MoE router  [T × h]·[h × E]",
    "moe_coefficient": "PR-MoE coefficient  [T × h]·[h × 2]",
    "expert_up": "experts up  k × [T × h]·[h × f]",
    "expert_gate": "experts gate (GLU)  k × [T × h]·[h × f]",
    "expert_down": "experts down  k × [T × f]·[f × h]",
    "logits": "logits  [T × h]·[h × V]",
}


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an ``(m × k)·(k × n)`` matrix product."""
    return 2 * m * k * n


# ---- one small formula per component, per sample (B = 1), forward only -------------------
# Every component is linear in B, so a batch is the per-sample count times B, exactly.


def query_flops(model: ModelShape, s: int) -> int:
    return matmul_flops(s, model.hidden_size, model.query_projection_size)


def key_value_flops(model: ModelShape, s: int) -> int:
    return matmul_flops(s, model.hidden_size, 2 * model.kv_projection_size)


def attention_scores_flops(model: ModelShape, s: int, causal: bool = False) -> int:
    full = model.num_attention_heads * matmul_flops(s, model.kv_channels, s)
    return full // 2 if causal else full


def attention_over_values_flops(model: ModelShape, s: int, causal: bool = False) -> int:
    full = model.num_attention_heads * matmul_flops(s, s, model.kv_channels)
    return full // 2 if causal else full


def attention_output_flops(model: ModelShape, s: int) -> int:
    return matmul_flops(s, model.query_projection_size, model.hidden_size)


def mlp_up_flops(model: ModelShape, s: int) -> int:
    return matmul_flops(s, model.hidden_size, model.ffn_hidden_size)


def mlp_gate_flops(model: ModelShape, s: int) -> int:
    return matmul_flops(s, model.hidden_size, model.ffn_hidden_size) if model.glu else 0


def mlp_down_flops(model: ModelShape, s: int) -> int:
    return matmul_flops(s, model.ffn_hidden_size, model.hidden_size)


def moe_router_flops(model: ModelShape, s: int, num_experts: int) -> int:
    return matmul_flops(s, model.hidden_size, num_experts)


def moe_coefficient_flops(model: ModelShape, s: int) -> int:
    """PR-MoE (``--mlp-type residual``): the ``h -> 2`` linear that mixes expert and dense MLP."""
    return matmul_flops(s, model.hidden_size, 2)


def logits_flops(model: ModelShape, s: int) -> int:
    return matmul_flops(s, model.hidden_size, model.vocab_size)


def layer_forward_flops(model: ModelShape, s: int, layer_index: int, causal: bool = False) -> Dict[str, int]:
    """Forward FLOPs of one transformer layer for one sample, by component."""
    terms = {
        "query": query_flops(model, s),
        "key_value": key_value_flops(model, s),
        "attention_scores": attention_scores_flops(model, s, causal),
        "attention_over_values": attention_over_values_flops(model, s, causal),
        "attention_output": attention_output_flops(model, s),
    }
    experts = model.experts_in_layer(layer_index)
    if experts == 1:
        terms["mlp_up"] = mlp_up_flops(model, s)
        terms["mlp_gate"] = mlp_gate_flops(model, s)
        terms["mlp_down"] = mlp_down_flops(model, s)
    else:
        # every token visits top-k experts, each a full MLP (no capacity dropping counted)
        k = model.moe_topk
        terms["moe_router"] = moe_router_flops(model, s, experts)
        terms["expert_up"] = k * mlp_up_flops(model, s)
        terms["expert_gate"] = k * mlp_gate_flops(model, s)
        terms["expert_down"] = k * mlp_down_flops(model, s)
        if model.moe_residual:  # PR-MoE: a dense MLP beside the experts, on every token
            terms["mlp_up"] = mlp_up_flops(model, s)
            terms["mlp_gate"] = mlp_gate_flops(model, s)
            terms["mlp_down"] = mlp_down_flops(model, s)
            terms["moe_coefficient"] = moe_coefficient_flops(model, s)
    return terms


@dataclass(frozen=True)
class Component:
    """FLOPs of one component over a whole iteration (all layers, all samples)."""

    name: str
    forward: int
    backward: int
    recompute: int

    @property
    def model_flops(self) -> int:
        return self.forward + self.backward

    @property
    def hardware_flops(self) -> int:
        return self.forward + self.backward + self.recompute

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.name]


@dataclass(frozen=True)
class Breakdown:
    """Matmul FLOPs of one training iteration of ``batch_size`` samples of ``seq_length``."""

    batch_size: int
    seq_length: int
    components: Tuple[Component, ...]
    recompute: Recompute
    causal: bool

    def __iter__(self) -> Iterator[Component]:
        return iter(self.components)

    def __getitem__(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)

    @property
    def forward_flops(self) -> int:
        return sum(c.forward for c in self.components)

    @property
    def backward_flops(self) -> int:
        return sum(c.backward for c in self.components)

    @property
    def recompute_flops(self) -> int:
        return sum(c.recompute for c in self.components)

    @property
    def model_flops(self) -> int:
        """Forward + backward: the FLOPs the model needs (MFU numerator)."""
        return self.forward_flops + self.backward_flops

    @property
    def hardware_flops(self) -> int:
        """Model FLOPs plus recomputation: the FLOPs the devices execute (HFU numerator)."""
        return self.model_flops + self.recompute_flops

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_length

    def to_dict(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "seq_length": self.seq_length,
            "recompute": self.recompute.label,
            "causal": self.causal,
            "flops_per_iteration": {"model": self.model_flops, "hardware": self.hardware_flops},
            "components": [
                {"name": c.name, "forward": c.forward, "backward": c.backward, "recompute": c.recompute}
                for c in self.components
            ],
        }


def flops_breakdown(
    model: ModelShape,
    seq_length: int,
    batch_size: int = 1,
    recompute: Recompute = NO_RECOMPUTE,
    pipeline_parallel_size: int = 1,
    causal: bool = False,
) -> Breakdown:
    """Per-component forward, backward and recompute FLOPs of one iteration.

    ``causal=True`` counts half of the attention-score and attention·V products (what a
    causal kernel needs); the default counts what dense kernels execute.
    Components that are zero for this model (e.g. ``mlp_gate`` without a GLU, MoE terms in
    a dense model) are left out.
    """
    if seq_length <= 0:
        raise ValueError(f"--seq-length must be a positive integer, got {seq_length}")
    if batch_size <= 0:
        raise ValueError(f"batch size must be a positive integer, got {batch_size}")
    forward: Dict[str, int] = dict.fromkeys(COMPONENTS, 0)
    recomputed: Dict[str, int] = dict.fromkeys(COMPONENTS, 0)
    full_layers = recompute.recomputed_layers(model.num_layers, pipeline_parallel_size)
    for layer in range(model.num_layers):
        terms = layer_forward_flops(model, seq_length, layer, causal)
        for name, flops in terms.items():
            forward[name] += flops
        if layer in full_layers:
            for name, flops in terms.items():
                recomputed[name] += flops
        elif recompute.granularity == "selective":
            for name in ATTENTION_CORE:
                recomputed[name] += terms[name]
    forward["logits"] = logits_flops(model, seq_length)

    components: List[Component] = []
    for name in COMPONENTS:
        fwd = forward[name] * batch_size
        if fwd == 0:
            continue
        components.append(
            Component(name=name, forward=fwd, backward=2 * fwd, recompute=recomputed[name] * batch_size)
        )
    return Breakdown(
        batch_size=batch_size,
        seq_length=seq_length,
        components=tuple(components),
        recompute=recompute,
        causal=causal,
    )


class FlopsPerSample:
    """Model and hardware FLOPs of one sample, memoised per sequence length.

    The meter calls this once per iteration; the breakdown is computed once per distinct
    sequence length (curriculum learning changes it a few times per run).
    """

    __slots__ = ("model", "recompute", "pipeline_parallel_size", "causal", "_cache")

    def __init__(self, model: ModelShape, recompute: Recompute = NO_RECOMPUTE,
                 pipeline_parallel_size: int = 1, causal: bool = False):
        self.model = model
        self.recompute = recompute
        self.pipeline_parallel_size = pipeline_parallel_size
        self.causal = causal
        self._cache: Dict[int, Tuple[int, int]] = {}

    def __call__(self, seq_length: int) -> Tuple[int, int]:
        """``(model_flops, hardware_flops)`` of one sample of ``seq_length`` tokens."""
        cached = self._cache.get(seq_length)
        if cached is None:
            b = flops_breakdown(self.model, seq_length, 1, self.recompute,
                                self.pipeline_parallel_size, self.causal)
            cached = self._cache[seq_length] = (b.model_flops, b.hardware_flops)
        return cached


def model_flops_per_token(model: ModelShape, seq_length: int, causal: bool = False) -> float:
    """Model FLOPs (forward + backward) per trained token at ``seq_length``."""
    return flops_breakdown(model, seq_length, 1, causal=causal).model_flops / seq_length
