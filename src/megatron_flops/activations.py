"""Activation memory: the bytes one micro-batch leaves saved for the backward pass, by component.

Declared once per component, in the spirit of :mod:`megatron_flops.components`: each
``@register_activation`` function returns the bytes a micro-batch of ``b`` samples of ``s``
tokens saves in one layer (or once per model), on one rank without tensor parallelism.  What
is saved is what autograd keeps between the forward and the backward pass of Megatron's
unfused (local) layer — proven on Megatron-Core's GPTModel — and of
:class:`megatron_flops.reference.model.ReferenceGPT`, which ``verify --memory`` measures with
``saved_tensors_hooks``; where the two differ, :class:`ActivationSettings` names it.

Notation: ``T = b·s`` tokens, ``β`` bytes of the activation dtype, ``m`` bytes of a dropout
mask (1: CUDA's fused dropout keeps a bool mask; a CPU keeps a mask of the activation dtype),
``σ`` bytes of a LayerNorm's per-token statistics (4 on CUDA: fp32; β on a CPU), ``h n g d f V``
as in :mod:`megatron_flops.components`, ``E`` experts, ``k`` experts per token, ``w`` the
f-wide tensors an unfused GLU keeps beside its input (``glu_kept_widths``).  Each storage
counts once, whole.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
§4.1) count a layer as ``s·b·h·(34 + 5·n·s/h)`` bytes: with their conventions (β = 2, m = 1,
softmax in 16 bits, no norm statistics, one causal mask for the whole model) the per-layer
components below sum to exactly that (``tests/core/test_memory_formulas.py``)::

    component (per layer)         bytes             Korthikanti
    norm_inputs                   2·(T·h·β + 2·T·σ)     4·sbh (+ statistics)
    qkv_input                     T·h·β                 2·sbh
    query_key                     2·b·n·s·d·β           4·sbh
    attention_mask                s² (reference only)   (shared: one per model)
    attention_softmax             b·n·s²·(4 | β)        2·a·s²·b
    attention_dropout_mask        b·n·s²·m              a·s²·b
    attention_probs               b·n·s²·β              2·a·s²·b
    value                         b·n·s·d·β             2·sbh
    attention_output_input        T·n·d·β               2·sbh
    hidden_dropout_masks          2·T·h·m               2·sbh
    mlp_input                     T·h·β                 2·sbh
    mlp_activation                T·f·β (GLU (2+w)·T·f·β) 8·sbh
    mlp_down_input                T·f·β                 8·sbh

Recompute frees and re-materialises: ``selective`` (core_attn) frees the attention core
(``query_key`` … ``value``) and holds its inputs instead (``core_attention_inputs``); ``full``
frees every component of a recomputed layer and holds each checkpointed chunk's input
(``checkpoint_input``, T·h·β).  Tensor parallelism divides the head- and FFN-sized terms
(``split = "tp"``); the hidden-sized ones only with sequence parallelism (``"sp"``); the
loss's log-softmax is vocab-parallel (``"tp"``).  Context parallelism divides ``s`` (a rank
holds ``s/c`` queries; unfused scores ``n·(s/c)·s``).  Expert terms assume balanced routing
under expert parallelism (each rank processes ``k·T`` token-slots on average).

Not modelled (``unmodelled``): MLA, shared experts, PR-MoE, MTP; rotary/ALiBi add nothing per
token under Megatron's fused RoPE and ALiBi bias (the reference GPT's written-out rotary does).
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import UsageError
from .shapes import NO_RECOMPUTE, ModelShape, Recompute

__all__ = [
    "ACTIVATIONS", "ActivationSettings", "ActivationSpec", "Parallel", "activation_breakdown",
    "check_modelled", "checkpoint_chunk_bytes", "markdown_table", "CORE_ATTENTION", "EVERY_LAYER",
    "DENSE_LAYERS", "MOE_LAYERS", "ONCE", "SELECTIVE_ONLY", "FULL_ONLY", "layer_activation_bytes",
    "once_activation_bytes", "register_activation", "unmodelled",
]

EVERY_LAYER = "every layer"
DENSE_LAYERS = "dense-MLP layers"
MOE_LAYERS = "MoE layers"
ONCE = "once per model"
SELECTIVE_ONLY = "selective recompute"   # held only when the attention core is recomputed
FULL_ONLY = "full recompute"            # held only by a fully recomputed chunk
OCCURRENCES = (EVERY_LAYER, DENSE_LAYERS, MOE_LAYERS, ONCE, SELECTIVE_ONLY, FULL_ONLY)
SPLITS = ("tp", "sp", "none")
CORE_ATTENTION = "core_attn"

INDEX_BYTES = 8   # int64 token ids, targets, top-k indices
FP32 = 4


@dataclass(frozen=True)
class ActivationSettings:
    """What the formulas need beyond the shapes: dtypes, dropout and the attention kernel."""

    dtype_bytes: int = 2
    """``β``: bytes of an activation (2: bf16/fp16; 4: fp32)."""
    hidden_dropout: bool = False
    """``--hidden-dropout`` > 0: masks after the embeddings, the attention and the MLP."""
    attention_dropout: bool = False
    """``--attention-dropout`` > 0: a mask over the attention probabilities (unfused only)."""
    dropout_mask_bytes: int = 1
    """``m``: 1 for CUDA's bool mask; the activation's bytes on a CPU (``for_cpu``)."""
    statistics_bytes: int = FP32
    """``σ``: bytes of a LayerNorm per-token statistic (its mean and rstd)."""
    flash_attention: bool = False
    """A fused (flash) attention kernel: no s×s terms, a log-sum-exp ``4·b·n·s`` instead."""
    softmax_in_fp32: bool = True
    """The unfused softmax runs in fp32 (``--attention-softmax-in-fp32``; the reference model)."""
    causal_mask_per_layer: bool = False
    """Each layer builds its own ``s×s`` causal mask (the reference GPT); False: Megatron's one
    ``[1, 1, s, s]`` bool mask, an input every layer shares (``shared_attention_mask``)."""
    glu_kept_widths: int = 0
    """f-wide tensors a GLU keeps beside its 2f input: 0 for Megatron's fused swiglu
    (``--bias-activation-fusion``, its default), 1 for ``act(gate)·up`` written out (the
    reference GPT), 2 for Megatron-Core 0.16's unfused path (also ``up + glu_linear_offset``)."""
    checkpoint_mask_type_bytes: int = 4
    """Megatron-Core's selective checkpoint passes the mask type as a 4-byte int tensor,
    kept per layer; 0 for the reference GPT."""
    loss_target_mask: bool = True
    """Megatron's vocabulary-parallel cross-entropy keeps a bool target mask (T bytes) beside
    the softmax and the targets; False: torch's cross-entropy keeps a 4-byte weight total."""
    norm_statistics: bool = True
    """Count the norms' per-token statistics (Korthikanti et al. leave them out)."""

    @classmethod
    def for_cpu(cls, dtype_bytes: int, dropout: bool, **overrides) -> "ActivationSettings":
        """The conventions of a CPU run (masks and statistics in the activation dtype)."""
        return cls(dtype_bytes=dtype_bytes, hidden_dropout=dropout, attention_dropout=dropout,
                   dropout_mask_bytes=dtype_bytes, statistics_bytes=dtype_bytes, **overrides)

    @classmethod
    def for_reference(cls, dtype_bytes: int, dropout: bool, cuda: bool = False,
                      **overrides) -> "ActivationSettings":
        """The reference GPT's conventions (a causal mask per layer, torch's cross-entropy) on
        a CPU, or on CUDA (a bool dropout mask, fp32 LayerNorm statistics)."""
        overrides = {"causal_mask_per_layer": True, "loss_target_mask": False,
                     "glu_kept_widths": 1, "checkpoint_mask_type_bytes": 0, **overrides}
        if cuda:
            return cls(dtype_bytes=dtype_bytes, hidden_dropout=dropout,
                       attention_dropout=dropout, **overrides)
        return cls.for_cpu(dtype_bytes, dropout, **overrides)


# (model, b, s, experts, settings) -> bytes of one micro-batch in one layer (or once)
Formula = Callable[[ModelShape, int, int, int, ActivationSettings], int]


@dataclass(frozen=True)
class ActivationSpec:
    """One declared activation term.  ``recomputed_by``: the selective-recompute module that
    frees it (``core_attn``), or None; every per-layer term is freed by full recompute."""

    name: str
    occurs: str
    title: str
    bytes_text: str
    split: str
    formula: Formula
    recomputed_by: Optional[str] = None


ACTIVATIONS: Dict[str, ActivationSpec] = {}


def register_activation(name: str, occurs: str, title: str, bytes_text: str, split: str,
                        recomputed_by: Optional[str] = None):
    """Decorator: declare the activation term ``name`` whose bytes the function computes."""
    if occurs not in OCCURRENCES:
        raise ValueError(f"occurs must be one of {OCCURRENCES}, got {occurs!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def register(formula: Formula) -> Formula:
        if name in ACTIVATIONS:
            raise ValueError(f"activation {name!r} is already registered")
        ACTIVATIONS[name] = ActivationSpec(name, occurs, title, bytes_text, split, formula,
                                           recomputed_by)
        return formula
    return register


def unmodelled(model: ModelShape, positions: bool = False) -> List[str]:
    """Features whose saved tensors these formulas do not describe (empty: all modelled).

    Rotary and ALiBi positions add nothing per token with Megatron's fused RoPE and its ALiBi
    bias (an input, like the mask), so they are modelled for an estimate; ``positions``: also
    refuse them, as the reference GPT's written-out rotary keeps copies these terms omit."""
    missing = []
    if positions and model.position_embedding in ("rotary", "alibi"):
        missing.append(f"{model.position_embedding} position embeddings' intermediates")
    if model.multi_latent_attention:
        missing.append("multi-latent attention")
    if model.shared_expert_ffn_hidden_size:
        missing.append("shared experts")
    if model.moe_residual:
        missing.append("PR-MoE (--mlp-type residual)")
    if model.mtp_num_layers:
        missing.append("multi-token prediction layers")
    if model.teacher is not None:
        missing.append("a distillation teacher")
    return missing


def _norm_bytes(model: ModelShape, tokens: int, c: ActivationSettings) -> int:
    """One norm: LayerNorm keeps its input and per-token mean and rstd (σ bytes each); the
    RMSNorm written as ``x·rsqrt(mean(x²)+ε)·w`` keeps its input, the normalised ``x·rstd``
    and the rstd, computed in the activation dtype."""
    h, beta = model.hidden_size, c.dtype_bytes
    if model.normalization == "rmsnorm":
        return 2 * tokens * h * beta + (tokens * beta if c.norm_statistics else 0)
    return tokens * h * beta + (2 * tokens * c.statistics_bytes if c.norm_statistics else 0)


# ---- every layer: attention ------------------------------------------------------------------

@register_activation("norm_inputs", EVERY_LAYER, "the two norms' inputs and statistics",
                     "2·(T·h·β + 2·T·σ)", "sp")
def norm_inputs_bytes(model, b, s, experts, c):
    return 2 * _norm_bytes(model, b * s, c)


@register_activation("qkv_input", EVERY_LAYER, "QKV projection input", "T·h·β", "sp")
def qkv_input_bytes(model, b, s, experts, c):
    return b * s * model.hidden_size * c.dtype_bytes


# the scaled Q and K (repeated to n heads) of Q·Kᵀ; flash keeps Q, K, V and its output instead
@register_activation("query_key", EVERY_LAYER, "Q·Kᵀ inputs (scaled Q, K)", "2·b·n·s·d·β", "tp",
                     CORE_ATTENTION)
def query_key_bytes(model, b, s, experts, c):
    if c.flash_attention:
        return b * s * (model.query_projection_size + 2 * model.kv_projection_size) * c.dtype_bytes
    return 2 * b * model.num_attention_heads * s * model.kv_channels * c.dtype_bytes


@register_activation("attention_mask", EVERY_LAYER, "causal mask (bool)", "s²", "none",
                     CORE_ATTENTION)
def attention_mask_bytes(model, b, s, experts, c):
    return s * s if c.causal_mask_per_layer and not c.flash_attention else 0


# flash keeps a log-sum-exp per query and head (fp32) instead of the probabilities
@register_activation("attention_softmax", EVERY_LAYER, "softmax output (flash: log-sum-exp)",
                     "b·n·s²·(4|β); flash 4·b·n·s", "tp", CORE_ATTENTION)
def attention_softmax_bytes(model, b, s, experts, c):
    if c.flash_attention:
        return FP32 * b * model.num_attention_heads * s
    return b * model.num_attention_heads * s * s * (FP32 if c.softmax_in_fp32 else c.dtype_bytes)


@register_activation("attention_dropout_mask", EVERY_LAYER, "attention dropout mask",
                     "b·n·s²·m", "tp", CORE_ATTENTION)
def attention_dropout_mask_bytes(model, b, s, experts, c):
    if c.flash_attention or not c.attention_dropout:
        return 0  # flash re-draws its dropout from the RNG state
    return b * model.num_attention_heads * s * s * c.dropout_mask_bytes


# the A·V input: a storage of its own after dropout, or after the cast from an fp32 softmax
@register_activation("attention_probs", EVERY_LAYER, "probabilities (A·V input)", "b·n·s²·β",
                     "tp", CORE_ATTENTION)
def attention_probs_bytes(model, b, s, experts, c):
    distinct = c.attention_dropout or (c.softmax_in_fp32 and c.dtype_bytes != FP32)
    if c.flash_attention or not distinct:
        return 0
    return b * model.num_attention_heads * s * s * c.dtype_bytes


@register_activation("value", EVERY_LAYER, "V (repeated to n heads)", "b·n·s·d·β", "tp",
                     CORE_ATTENTION)
def value_bytes(model, b, s, experts, c):
    if c.flash_attention:
        return 0  # counted with query_key
    return b * model.num_attention_heads * s * model.kv_channels * c.dtype_bytes


@register_activation("attention_output_input", EVERY_LAYER, "output projection input", "T·n·d·β",
                     "tp")
def attention_output_input_bytes(model, b, s, experts, c):
    return b * s * model.query_projection_size * c.dtype_bytes


# selective recompute holds the core's inputs: Q, K and V as the QKV projection left them
# (one storage T·(n+2g)·d); Q is a copy of its own when 1 < g < n (its heads are then not
# adjacent in the fused layout: each group's n/g query heads sit beside that group's K and V)
@register_activation("core_attention_inputs", SELECTIVE_ONLY, "recomputed core's inputs (Q, K, V)",
                     "T·(n+2g)·d·β (+ T·n·d·β if 1<g<n) + 4", "tp")
def core_attention_inputs_bytes(model, b, s, experts, c):
    qkv = b * s * (model.query_projection_size + 2 * model.kv_projection_size) * c.dtype_bytes
    grouped = 1 < model.num_query_groups < model.num_attention_heads
    return (qkv + (b * s * model.query_projection_size * c.dtype_bytes if grouped else 0)
            + c.checkpoint_mask_type_bytes)


@register_activation("hidden_dropout_masks", EVERY_LAYER, "attention and MLP dropout masks",
                     "2·T·h·m", "sp")
def hidden_dropout_masks_bytes(model, b, s, experts, c):
    return 2 * b * s * model.hidden_size * c.dropout_mask_bytes if c.hidden_dropout else 0


# ---- every layer: MLP or MoE -----------------------------------------------------------------

@register_activation("mlp_input", EVERY_LAYER, "MLP (or router) input", "T·h·β", "sp")
def mlp_input_bytes(model, b, s, experts, c):
    return b * s * model.hidden_size * c.dtype_bytes


def _activation_function_bytes(model: ModelShape, tokens: int, f: int,
                               c: "ActivationSettings") -> int:
    # GeLU keeps its input; a GLU its fused up output (2f: up and gate) and, unfused, act(gate)
    # (and Megatron-Core's up + offset): glu_kept_widths more f-wide tensors
    return tokens * ((2 + c.glu_kept_widths) * f if model.glu else f) * c.dtype_bytes


@register_activation("mlp_activation", DENSE_LAYERS, "activation input (GLU: up, gate, act)",
                     "T·f·β (GLU (2+w)·T·f·β)", "tp")
def mlp_activation_bytes(model, b, s, experts, c):
    return _activation_function_bytes(model, b * s, model.ffn_hidden_size, c)


@register_activation("mlp_down_input", DENSE_LAYERS, "MLP down input", "T·f·β", "tp")
def mlp_down_input_bytes(model, b, s, experts, c):
    return b * s * model.ffn_hidden_size * c.dtype_bytes


# the router's fp32 softmax, its top-k indices, and the (token, slot) index pair of each of the
# k·T routed token-slots
@register_activation("moe_router", MOE_LAYERS, "router probabilities, top-k and routing indices",
                     "T·E·4 + T·k·8 + k·T·16", "sp")
def moe_router_bytes(model, b, s, experts, c):
    return b * s * (experts * FP32 + model.moe_topk * INDEX_BYTES
                    + model.moe_topk * 2 * INDEX_BYTES)


@register_activation("expert_inputs", MOE_LAYERS, "routed tokens (experts' up inputs)",
                     "k·T·h·β", "tp")
def expert_inputs_bytes(model, b, s, experts, c):
    return model.moe_topk * b * s * model.hidden_size * c.dtype_bytes


@register_activation("expert_activation", MOE_LAYERS, "experts' activation inputs",
                     "k·T·fe·β (GLU (2+w)·k·T·fe·β)", "tp")
def expert_activation_bytes(model, b, s, experts, c):
    return _activation_function_bytes(model, model.moe_topk * b * s,
                                      model.expert_ffn_hidden_size, c)


@register_activation("expert_down_input", MOE_LAYERS, "experts' down inputs", "k·T·fe·β", "tp")
def expert_down_input_bytes(model, b, s, experts, c):
    return model.moe_topk * b * s * model.expert_ffn_hidden_size * c.dtype_bytes


# weighting each expert output by its router probability keeps both; the weighted output is
# kept again by the scatter-add that combines the experts
@register_activation("expert_combine", MOE_LAYERS, "expert outputs, weights, weighted outputs",
                     "k·T·(2·h + 1)·β", "tp")
def expert_combine_bytes(model, b, s, experts, c):
    return model.moe_topk * b * s * (2 * model.hidden_size + 1) * c.dtype_bytes


# ---- a fully recomputed chunk -----------------------------------------------------------------

@register_activation("checkpoint_input", FULL_ONLY, "recomputed chunk's input", "T·h·β", "sp")
def checkpoint_input_bytes(model, b, s, experts, c):
    return b * s * model.hidden_size * c.dtype_bytes


# ---- once per model ----------------------------------------------------------------------------

@register_activation("embedding", ONCE, "token (and position) ids, embedding norm, dropout mask",
                     "T·8 (+ s·8) (+ norm) (+ T·h·m)", "none")
def embedding_bytes(model, b, s, experts, c):
    total = b * s * INDEX_BYTES
    if model.position_embedding == "learned":
        total += s * INDEX_BYTES  # the position ids, one row for the whole batch
    if model.embedding_layernorm:
        total += _norm_bytes(model, b * s, c)
    if c.hidden_dropout:
        total += b * s * model.hidden_size * c.dropout_mask_bytes
    return total


@register_activation("final_norm", ONCE, "final norm's input and statistics", "T·h·β + 2·T·σ",
                     "sp")
def final_norm_bytes(model, b, s, experts, c):
    return _norm_bytes(model, b * s, c)


@register_activation("logits_input", ONCE, "logits input", "T·h·β", "sp")
def logits_input_bytes(model, b, s, experts, c):
    return b * s * model.hidden_size * c.dtype_bytes


# cross-entropy over fp32 logits keeps the (log-)softmax, the targets and Megatron's bool target
# mask (torch's cross-entropy: a 4-byte weight total instead)
@register_activation("loss", ONCE, "loss: fp32 (log-)softmax, targets, target mask",
                     "T·V·4 + T·8 + T (torch: + 4)", "tp")
def loss_bytes(model, b, s, experts, c):
    return b * s * (model.vocab_size * FP32 + INDEX_BYTES) + (b * s if c.loss_target_mask else FP32)


# Megatron's causal mask: one [1, 1, s, s] bool input every layer (and every stage) shares
@register_activation("shared_attention_mask", ONCE, "the shared causal mask (bool)", "s²", "none")
def shared_attention_mask_bytes(model, b, s, experts, c):
    return 0 if c.causal_mask_per_layer or c.flash_attention else s * s


# ---- sums ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parallel:
    """How one rank's share of a micro-batch is cut: TP (and sequence parallel), CP."""

    tensor: int = 1
    sequence_parallel: bool = False
    context: int = 1


def _split(spec: ActivationSpec, value: int, parallel: Parallel, model, b, s) -> int:
    if spec.name == "loss":   # the vocab-parallel softmax is split, the targets are not
        softmax = b * s * model.vocab_size * FP32
        return softmax // parallel.tensor + value - softmax
    if spec.split == "tp" or (spec.split == "sp" and parallel.sequence_parallel):
        return value // parallel.tensor
    return value


def _evaluate(spec: ActivationSpec, model, b, s, experts, c, parallel: Parallel) -> int:
    local = s // parallel.context
    if parallel.context > 1 and spec.recomputed_by == CORE_ATTENTION and not c.flash_attention:
        # each rank's s/c queries meet all s keys: the s×s terms become (s/c)·s
        value = spec.formula(model, b, s, experts, c) // parallel.context
        if spec.name in ("query_key", "value"):
            value = spec.formula(model, b, local, experts, c)
    else:
        value = spec.formula(model, b, local, experts, c)
    return _split(spec, value, parallel, model, b, local)


def layer_activation_bytes(model: ModelShape, b: int, s: int, experts: int,
                           settings: ActivationSettings, recompute: str = "none",
                           selective_modules: Tuple[str, ...] = (CORE_ATTENTION,),
                           parallel: Parallel = Parallel()) -> Dict[str, int]:
    """Bytes one layer with ``experts`` experts (1: dense) keeps for backward, by component.

    ``recompute``: ``none``, ``selective`` (the core-attention terms freed when ``core_attn``
    is among ``selective_modules``; their inputs held) or ``full`` (this layer is inside a
    recomputed chunk: it keeps nothing; the chunk's input is counted by the caller).
    """
    if recompute == "full":
        return {}
    moe = experts > 1
    selective_core = recompute == "selective" and CORE_ATTENTION in selective_modules
    terms = {}
    for name, spec in ACTIVATIONS.items():
        if spec.occurs in (ONCE, FULL_ONLY):
            continue
        if spec.occurs == SELECTIVE_ONLY and not selective_core:
            continue
        if (spec.occurs == DENSE_LAYERS and moe) or (spec.occurs == MOE_LAYERS and not moe):
            continue
        if selective_core and spec.recomputed_by == CORE_ATTENTION:
            continue
        terms[name] = _evaluate(spec, model, b, s, experts, settings, parallel)
    return terms


def once_activation_bytes(model: ModelShape, b: int, s: int, settings: ActivationSettings,
                          first_stage: bool = True, last_stage: bool = True,
                          parallel: Parallel = Parallel()) -> Dict[str, int]:
    """The once-per-model terms: the embedding's on the first stage, the rest on the last."""
    terms = {}
    for name, spec in ACTIVATIONS.items():
        if spec.occurs != ONCE:
            continue
        if ((name == "embedding" and first_stage) or name == "shared_attention_mask"
                or (name not in ("embedding", "shared_attention_mask") and last_stage)):
            terms[name] = _evaluate(spec, model, b, s, 1, settings, parallel)
    return terms


def checkpoint_chunk_bytes(model: ModelShape, b: int, s: int, settings: ActivationSettings,
                           parallel: Parallel = Parallel()) -> int:
    """What one fully recomputed chunk holds: its input."""
    return _evaluate(ACTIVATIONS["checkpoint_input"], model, b, s, 1, settings, parallel)


def activation_breakdown(model: ModelShape, b: int, s: int, settings: ActivationSettings,
                         recompute: Recompute = NO_RECOMPUTE,
                         layers: Optional[Sequence[int]] = None, first_stage: bool = True,
                         last_stage: bool = True, pipeline_parallel_size: int = 1,
                         parallel: Parallel = Parallel()) -> Dict[str, int]:
    """Bytes one micro-batch keeps for backward on one rank, by term, over ``layers``
    (0-based decoder indices; default all) and the once-per-model terms of its stage.

    Full recompute checkpoints the layers :meth:`Recompute.recomputed_layers` names: uniform
    in chunks of ``--recompute-num-layers`` consecutive layers, block one layer at a time;
    each chunk keeps only its input (``checkpoint_input``).
    """
    layers = range(model.num_layers) if layers is None else layers
    recomputed = recompute.recomputed_layers(model.num_layers, pipeline_parallel_size)
    chunk = (recompute.num_layers or 1) if recompute.method == "uniform" else 1
    selective = "selective" if recompute.granularity == "selective" else "none"
    totals: Dict[str, int] = {}
    kinds: Dict[int, Dict[str, int]] = {}   # experts -> one layer's terms (layers alike)
    layers, i = list(layers), 0
    while i < len(layers):
        index = layers[i]
        if index in recomputed:
            run = 1
            while (run < chunk and i + run < len(layers) and layers[i + run] in recomputed
                   and layers[i + run] == index + run):
                run += 1
            totals["checkpoint_input"] = (totals.get("checkpoint_input", 0)
                                          + checkpoint_chunk_bytes(model, b, s, settings, parallel))
            i += run
            continue
        experts = model.experts_in_layer(index)
        if experts not in kinds:
            kinds[experts] = layer_activation_bytes(model, b, s, experts, settings, selective,
                                                    recompute.modules, parallel)
        for name, value in kinds[experts].items():
            totals[name] = totals.get(name, 0) + value
        i += 1
    for name, value in once_activation_bytes(model, b, s, settings, first_stage, last_stage,
                                             parallel).items():
        totals[name] = totals.get(name, 0) + value
    order = list(ACTIVATIONS)
    return {name: totals[name] for name in sorted(totals, key=order.index)}


def markdown_table() -> str:
    """One row per declared activation term (README)."""
    lines = ["| term | occurs | saved for backward | bytes | split |", "|---|---|---|---|---|"]
    for spec in ACTIVATIONS.values():
        lines.append(f"| `{spec.name}` | {spec.occurs} | {spec.title} | {spec.bytes_text} | "
                     f"{spec.split} |")
    return "\n".join(lines)


def check_modelled(model: ModelShape, positions: bool = False) -> None:
    """UsageError naming what the activation formulas do not describe for ``model``
    (``positions``: as :func:`unmodelled`)."""
    missing = unmodelled(model, positions)
    if missing:
        raise UsageError("activation memory is not modelled for " + ", ".join(missing))
