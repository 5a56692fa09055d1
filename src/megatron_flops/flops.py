"""Exact matmul FLOPs of one Megatron GPT training iteration, component by component.

Notation (per iteration): ``B`` samples, ``s`` sequence length, ``T = B·s`` tokens,
``h`` hidden size, ``n`` attention heads, ``d`` head dimension (kv_channels), ``g`` KV
heads (query groups), ``f`` FFN size (one branch for a GLU), ``V`` padded vocabulary,
``E`` experts and ``k`` experts per token in an MoE layer.

A matmul of an ``(m × K)`` by a ``(K × N)`` matrix costs ``2·m·K·N`` FLOPs (one multiply,
one add).  The components and their formulas are declared once, in
:mod:`megatron_flops.components` (its docstring decomposes a layer's 24·s·h² + 4·s²·h into
them); this module sums them over layers, samples and passes.  The backward pass
of a matmul computes two matmuls of the same size (gradient w.r.t. input and w.r.t. weight),
so backward = 2 × forward for every component.  Elementwise work (norms, softmax,
activations, rotary, dropout, residual adds) is not counted, as in every peer formula.

*Model FLOPs* are forward + backward (PaLM's MFU numerator).  *Hardware FLOPs* add what
activation recomputation re-runs: the forward of every recomputed layer (full recompute;
never the logits layer) or the attention scores and attention·V of every layer (selective),
and a distillation teacher's forward (``teacher_forward``, ``--kd``/``--mos``), which is
not the trained model's work and so never in model FLOPs.
"""

from collections import Counter
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from . import components
from .components import ONCE, REGISTRY, VISION_TILES, register_component
from .errors import ShapeError, UsageError
from .shapes import NO_RECOMPUTE, PARTS, ModelShape, Recompute


def __getattr__(attribute: str):
    # COMPONENTS (names in table order) and DESCRIPTIONS, derived live from the registry
    if attribute in ("COMPONENTS", "DESCRIPTIONS"):
        return getattr(components, attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def layer_forward_flops(model: ModelShape, s: int, layer_index: int, causal: bool = False,
                        document_lengths: Optional[Sequence[int]] = None) -> Dict[str, int]:
    """Forward FLOPs of one transformer layer for one sample, by component.

    Every registered component that occurs in this layer (dense or MoE) has an entry, zero
    included (``mlp_gate`` without a GLU).  Indices from ``model.num_layers`` on are the
    multi-token-prediction layers.  ``causal`` and ``document_lengths`` change only the
    attention core: see :func:`attention_core_flops`.
    """
    return _layer_forward_flops(model, s, model.experts_in_layer(layer_index),
                                layer_index >= model.num_layers, model.windowed_layer(layer_index),
                                causal, document_lengths)


def _layer_forward_flops(model: ModelShape, s: int, experts: int, mtp_layer: bool,
                         windowed: bool, causal: bool = False,
                         document_lengths: Optional[Sequence[int]] = None) -> Dict[str, int]:
    """:func:`layer_forward_flops` of a layer of one kind: ``experts`` (1: dense), an MTP
    layer or not, windowed attention or not."""
    window = model.window_size if windowed else None
    terms = {}
    for name, spec in REGISTRY.items():
        if spec.in_layer(model, experts, mtp_layer):
            if spec.attention_core:
                terms[name] = attention_core_flops(spec.formula, model, s, experts, causal, window,
                                                   document_lengths)
            else:
                terms[name] = spec.formula(model, s, experts)
    return terms


def attention_core_flops(formula, model: ModelShape, s: int, experts: int = 1, causal: bool = False,
                         window: Optional[int] = None,
                         document_lengths: Optional[Sequence[int]] = None) -> int:
    """An s×s component (scores or attention·V) of one sample, under a counting convention.

    - dense (``causal=False``): the whole s×s product, what an unfused kernel multiplies
      (Megatron-Core's local ``DotProductAttention`` masks after a full ``baddbmm``, sliding
      window or not);
    - ``causal``: half of it (s²/2 query-key pairs); with a sliding window of ``w`` keys
      behind each query (``--window-size w,0``) the band's area s·w − w²/2 instead (s²/2 once
      w ≥ s) — the same continuous convention, what a window-aware kernel needs;
    - ``document_lengths`` (a packed sample, THD): each document attends only to itself,
      so the sample's work is the sum over documents of the above at the document's length
      (Σ Lᵢ² dense); tokens past the last document (padding) attend to nothing.
    """
    lengths = (s,) if document_lengths is None else document_lengths
    total = 0
    for length in lengths:
        full = formula(model, length, experts)
        if not causal:
            total += full
        elif window is None or window >= length:
            total += full // 2
        else:  # full = c·L², band = c·(2·L·w − w²)/2
            total += full * (2 * length * window - window * window) // (2 * length * length)
    return total


def _check_document_lengths(document_lengths, seq_length: int, batch_size: int):
    if len(document_lengths) != batch_size:
        raise UsageError(f"document lengths are given for {len(document_lengths)} samples but "
                         f"the batch has {batch_size}")
    for sample in document_lengths:
        if any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in sample):
            raise UsageError(f"document lengths must be positive integers, got {list(sample)}")
        if sum(sample) > seq_length:
            raise UsageError(f"document lengths {list(sample)} add up to {sum(sample)}, more than "
                             f"--seq-length ({seq_length})")


# the last MoE layout counted, by identity: one model is asked many times per estimate
_LAST_MOE_LAYOUT: Tuple[Tuple[int, ...], Counter] = ((), Counter())


def _moe_layer_counts(num_experts: Tuple[int, ...]) -> Counter:
    """Expert count -> MoE layers with it (counted once per layout, not once per call)."""
    global _LAST_MOE_LAYOUT
    layout, counts = _LAST_MOE_LAYOUT
    if layout is not num_experts:
        counts = Counter(num_experts)
        _LAST_MOE_LAYOUT = (num_experts, counts)
    return counts


LayerKind = Tuple[int, bool, bool, bool]  # (experts, MTP layer, windowed, fully recomputed)


def layer_kinds(model: ModelShape, recompute: Recompute = NO_RECOMPUTE,
                pipeline_parallel_size: int = 1) -> Dict[LayerKind, int]:
    """How many layers there are of each kind: ``(experts, mtp, windowed, recomputed) -> layers``.

    ``experts`` is 1 for a dense layer; ``mtp`` marks the multi-token-prediction layers,
    ``windowed`` sliding-window attention, ``recomputed`` a layer whose whole forward is re-run.
    Layers of one kind have the same FLOPs, so the breakdown evaluates each kind once: for
    repeated layers its cost does not grow with ``--num-layers`` (``--num-layers 100000000``
    returns at once); only a per-layer window pattern or block recompute visits layers.
    Kinds with no layer are left out.
    """
    every = recompute.recomputes_every_layer
    layers, mtp = model.num_layers, model.mtp_num_layers
    partial = (recompute.recomputed_layers(layers, pipeline_parallel_size, mtp)
               if recompute.granularity == "full" and not every else frozenset())
    kinds: Counter = Counter()
    if model.window_attn_skip_freq is None:  # every decoder layer alike but for its experts
        windowed = model.window_size is not None
        by_experts = Counter({1: layers - len(model.num_experts)})
        by_experts.update(_moe_layer_counts(model.num_experts))
        for experts, count in by_experts.items():
            kinds[(experts, False, windowed, every)] += count
        for index in partial:
            if index < layers:
                experts = model.experts_in_layer(index)
                kinds[(experts, False, windowed, False)] -= 1
                kinds[(experts, False, windowed, True)] += 1
    else:
        for index in range(layers):
            kinds[(model.experts_in_layer(index), False, model.windowed_layer(index),
                   every or index in partial)] += 1
    for index in range(layers, layers + mtp):
        kinds[(model.experts_in_layer(index), True, model.windowed_layer(index),
               every or index in partial)] += 1
    return {kind: count for kind, count in kinds.items() if count}


# ---- per pipeline stage (issue 22): the kinds of a subset of the layers ---------------------
def stage_layer_kinds(model: ModelShape, layers: Sequence[int], recompute: Recompute = NO_RECOMPUTE,
                      pipeline_parallel_size: int = 1) -> Dict[LayerKind, int]:
    """:func:`layer_kinds` of the layers ``layers`` only (0-based; ``num_layers`` on: MTP).

    Which layers are recomputed is decided over the whole model (block recompute: the first
    ``--recompute-num-layers`` of each real stage), so a stage's kinds are its share of the
    whole model's, and the kinds of stages that partition the layers add up to
    :func:`layer_kinds`.
    """
    every = recompute.recomputes_every_layer
    partial = (recompute.recomputed_layers(model.num_layers, pipeline_parallel_size,
                                           model.mtp_num_layers)
               if recompute.granularity == "full" and not every else frozenset())
    kinds: Counter = Counter()
    decoder = getattr(layers, "layers", None)  # a stage's range of transformer layers
    if (decoder is not None and not model.is_moe and model.window_attn_skip_freq is None
            and not partial):
        # every decoder layer alike: counted, not visited (a stage may hold 10⁸ layers)
        count = max(0, decoder.stop - decoder.start)   # len() stops at 2⁶³ layers
        if count:
            kinds[(1, False, model.window_size is not None, every)] += count
        layers = layers.mtp_layers
    for index in layers:
        kinds[(model.experts_in_layer(index), index >= model.num_layers,
               model.windowed_layer(index), every or index in partial)] += 1
    return dict(kinds)


@dataclass(frozen=True)
class Component:
    """FLOPs of one component over a whole iteration (all layers, all samples)."""

    name: str
    forward: int
    backward: int
    recompute: int
    # frozen weights (issue 20 item 3): the weight-gradient part of ``backward`` (None: half of
    # it, both gradients), and input-gradient work the framework runs that training does not
    # need (Megatron's linear computes dX whenever its weight trains, even on a frozen part's
    # output): in hardware FLOPs only
    weight_gradient: Optional[int] = None
    extra_backward: int = 0

    @property
    def model_flops(self) -> int:
        """Forward + backward; 0 for work that is not the trained model's (the teacher)."""
        return 0 if REGISTRY[self.name].hardware_only else self.forward + self.backward

    @property
    def hardware_flops(self) -> int:
        return self.forward + self.backward + self.recompute + self.extra_backward

    @property
    def description(self) -> str:
        return REGISTRY[self.name].description


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
        """Forward + backward of the trained model: the FLOPs the model needs (MFU numerator).
        A distillation teacher's forward is not in it."""
        return sum(c.model_flops for c in self.components)

    @property
    def hardware_flops(self) -> int:
        """Model FLOPs plus recomputation and the teacher's forward: the FLOPs the devices
        execute (HFU numerator)."""
        return sum(c.hardware_flops for c in self.components)

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
                {"name": c.name, "forward": c.forward, "backward": c.backward, "recompute": c.recompute,
                 # only where the framework runs backward work training does not need
                 **({"extra_backward": c.extra_backward} if c.extra_backward else {})}
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
    document_lengths: Optional[Sequence[Sequence[int]]] = None,
    layer_indices: Optional[Sequence[int]] = None,
    output_layer: bool = True,
    input_layer: bool = True,
) -> Breakdown:
    """Per-component forward, backward and recompute FLOPs of one iteration.

    ``causal=True`` counts half of the attention-score and attention·V products (what a
    causal kernel needs); the default counts what dense kernels execute.
    ``document_lengths``: packed (variable-length) samples, one list of document lengths per
    sample of the batch; attention is then Σ Lᵢ² per sample instead of s² (see
    :func:`attention_core_flops`), every other component still runs over all s tokens.
    Multi-token-prediction layers (``model.mtp_num_layers``) are counted as layers.
    Components that are zero for this model (e.g. ``mlp_gate`` without a GLU, MoE terms in
    a dense model) are left out.
    ``layer_indices`` (one pipeline stage, :mod:`megatron_flops.pipeline`): count only these layers
    (0-based indices, MTP layers from ``num_layers`` on) instead of all; ``output_layer``:
    whether the logits, MTP logits and a distillation teacher's forward are counted (the
    stage that holds the output layer and the loss); ``input_layer``: whether a vision-language
    run's vision encoder and projection are counted (the stage with the input embedding).
    """
    if seq_length <= 0:
        raise ShapeError(f"--seq-length must be a positive integer, got {seq_length}")
    if batch_size <= 0:
        raise ShapeError(f"batch size must be a positive integer, got {batch_size}")
    documents = None
    if document_lengths is not None:
        _check_document_lengths(document_lengths, seq_length, batch_size)
        documents = [length for sample in document_lengths for length in sample]
    names = tuple(REGISTRY)
    forward: Dict[str, int] = dict.fromkeys(names, 0)
    recomputed: Dict[str, int] = dict.fromkeys(names, 0)
    selective = recompute.granularity == "selective"
    kinds = (layer_kinds(model, recompute, pipeline_parallel_size) if layer_indices is None else
             stage_layer_kinds(model, layer_indices, recompute, pipeline_parallel_size))
    for (experts, mtp_layer, windowed, is_recomputed), layers in kinds.items():
        # per sample, times B; with documents, the attention core is already the whole
        # batch's (every document attends only to itself, so the batch's documents are summed)
        terms = {name: flops if documents is not None and REGISTRY[name].attention_core
                 else flops * batch_size
                 for name, flops in _layer_forward_flops(model, seq_length, experts, mtp_layer,
                                                         windowed, causal, documents).items()}
        for name, flops in terms.items():
            forward[name] += layers * flops
            if is_recomputed or (selective and _selective_reruns(recompute, name, experts)):
                recomputed[name] += layers * flops
    for name, spec in REGISTRY.items():
        if spec.occurs == ONCE and not spec.hardware_only and output_layer:
            # outside the layers: never recomputed
            forward[name] = spec.formula(model, seq_length, 1) * batch_size
    if model.vision is not None and input_layer:
        # the vision encoder and projection, on every tile (on the stage with the embedding)
        for name, spec in REGISTRY.items():
            if spec.occurs == VISION_TILES:
                forward[name] = spec.formula(model, seq_length, 1) * batch_size
                if _vision_recomputed(model, recompute, name):
                    recomputed[name] = forward[name]
    if model.teacher is not None and output_layer:
        # --kd/--mos: the teacher's forward on the same tokens, under the same attention
        # convention; no backward, no recompute (it runs under torch.no_grad)
        forward["teacher_forward"] = flops_breakdown(
            model.teacher, seq_length, batch_size, causal=causal,
            document_lengths=document_lengths).forward_flops

    components: List[Component] = []
    for name in names:
        fwd = forward[name]
        if fwd == 0:
            continue
        spec = REGISTRY[name]
        backward = backward_flops(spec, fwd, model)
        # a recomputed forward is re-run only for a backward through it (none: nothing re-runs)
        components.append(
            Component(name=name, forward=fwd, backward=backward,
                      recompute=recomputed[name] if backward else 0,
                      weight_gradient=fwd if backward and _weight_trains(spec, model) else 0,
                      extra_backward=fwd if _unneeded_input_gradient(spec, model) else 0)
        )
    return Breakdown(
        batch_size=batch_size,
        seq_length=seq_length,
        components=tuple(components),
        recompute=recompute,
        causal=causal,
    )


# ---- frozen weights (issue 20 item 3) -------------------------------------------------------
# The backward of a matmul Y = X·W is two matmuls of its forward's size: the input gradient
# dX = dY·Wᵀ and the weight gradient dW = Xᵀ·dY.  Autograd runs dW only where W trains
# (requires_grad) and dX only where something before X trains (X requires grad): so a frozen
# part's matmuls keep dX while a trained part runs before them (the frozen language model of
# a LLaVA run whose projection trains), and run nothing at all where nothing before them trains
# (the ViT under --freeze-ViT); the first matmul of a part (the patch embedding, on pixels)
# has no dX from inside its part.  A weightless matmul (attention core: Q·Kᵀ, A·V) has two
# input gradients.  With nothing frozen this is 2 × forward everywhere but the patch embedding.

def input_gradient_needed(spec: "components.ComponentSpec", model: ModelShape) -> bool:
    """Whether autograd computes the gradient w.r.t. this component's activation input(s):
    some weight before it in the forward pass trains."""
    position = PARTS.index(spec.part)
    before = [part for part in PARTS[:position] if _has_part(model, part)]
    if any(part not in model.frozen for part in before):
        return True
    return spec.part not in model.frozen and not spec.first_in_part


def backward_flops(spec: "components.ComponentSpec", forward: int, model: ModelShape) -> int:
    """Backward FLOPs of a component whose forward is ``forward``, under ``model.frozen``:
    ``forward`` per gradient autograd computes (input, weight; two inputs when weightless)."""
    if spec.hardware_only:  # the distillation teacher: forward only
        return 0
    dx = input_gradient_needed(spec, model)
    if not spec.has_weights:
        return 2 * forward if dx else 0
    return forward * (int(dx) + int(_weight_trains(spec, model)))


def _weight_trains(spec: "components.ComponentSpec", model: ModelShape) -> bool:
    return spec.has_weights and not spec.hardware_only and spec.part not in model.frozen


def _unneeded_input_gradient(spec: "components.ComponentSpec", model: ModelShape) -> bool:
    """Megatron-Core's linear (``LinearWithGradAccumulationAndAsyncCommunication``) computes
    ``dX = dY·W`` in every backward it runs, i.e. whenever its weight trains, needed or not:
    the first matmul of a trained part whose input carries no gradient (the projection after
    a frozen ViT; RADIO's linear patch embedding on pixels) still runs it.  A convolution
    (CLIP/SigLIP/InternViT's patch embedding) does not: torch asks only for the gradients
    needed."""
    if not (spec.first_in_part and _weight_trains(spec, model)):
        return False
    if input_gradient_needed(spec, model):
        return False  # counted in backward already
    if spec.name == "vision_patch_embedding":
        return model.vision is not None and model.vision.linear_patch_embedding
    return True


def _has_part(model: ModelShape, part: str) -> bool:
    return part == "language" or model.vision is not None


def _vision_recomputed(model: ModelShape, recompute: Recompute, name: str) -> bool:
    """Whether ``--recompute-vision`` re-runs this vision row: the examples' model provider
    keeps the run's granularity for the ViT (full: every ViT layer, recompute_num_layers =
    its layers; selective: the modules named, of which only core_attn has a ViT row of its
    own); the projection is never recomputed."""
    if not model.vision.recompute or name not in ("vision_layers", "vision_attention"):
        return False
    if recompute.granularity == "full":
        return True
    return (recompute.granularity == "selective" and name == "vision_attention"
            and "core_attn" in recompute.modules)


# What each selective recompute module re-runs (Megatron-Core at d98e8a64): ``core_attn`` the
# attention core; ``moe`` the whole MoE layer (router, experts, shared experts: MoELayer.forward
# under checkpoint); ``shared_experts`` the shared experts; ``mlp`` the MLP of dense layers only
# (TransformerLayer: ``if not self.is_moe_layer``); ``mla_up_proj`` MLA's Q (up-)projection and
# KV up-projection (qkv_up_proj_and_rope_apply).  ``moe_act`` and ``layernorm`` re-run no matmul.
SELECTIVE_MODULES = {
    "core_attn": lambda name, experts: REGISTRY[name].attention_core,
    "moe": lambda name, experts: experts > 1 and REGISTRY[name].occurs == components.MOE_LAYERS,
    "shared_experts": lambda name, experts: name.startswith("shared_expert_"),
    "mlp": lambda name, experts: experts == 1 and REGISTRY[name].occurs == components.DENSE_LAYERS,
    "mla_up_proj": lambda name, experts: name in ("mla_q", "mla_q_up", "mla_kv_up"),
    "moe_act": lambda name, experts: False,
    "layernorm": lambda name, experts: False,
}


def _selective_reruns(recompute: Recompute, name: str, experts: int) -> bool:
    """Whether selective recompute re-runs component ``name`` in a layer of ``experts``."""
    return any(SELECTIVE_MODULES[module](name, experts) for module in recompute.modules)


# knowledge distillation (the microsoft fork's --kd and --mos): every micro-batch also runs a
# teacher model, under torch.no_grad, on the student's tokens (pretrain_gpt.py
# calculate_mos_loss): its whole forward (layers and logits), no backward, no recompute
# (Ft: one sample's forward through the teacher, by the rows above with its shape).  Declared
# here, after every other component (the last row of every table), because the teacher is a
# whole model of its own: its count is a breakdown, which flops_breakdown above computes
# itself under the student's attention convention and documents.
@register_component("teacher_forward", ONCE, "teacher forward (--kd/--mos)",
                    "the rows above, teacher shape, forward only", "B·Ft",
                    hardware_only=True)
def teacher_forward_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    """Forward FLOPs of one sample through ``model.teacher`` (0 without a teacher), dense
    attention; :func:`flops_breakdown` passes its own counting convention."""
    if model.teacher is None:
        return 0
    return flops_breakdown(model.teacher, s).forward_flops


class FlopsPerSample:
    """Model and hardware FLOPs of one sample, memoised per sequence length.

    The meter calls this once per iteration; the breakdown is computed once per distinct
    sequence length (curriculum learning changes it a few times per run).
    """

    __slots__ = ("model", "recompute", "pipeline_parallel_size", "causal", "_cache", "_core_cache",
                 "_layer_cache")

    def __init__(self, model: ModelShape, recompute: Recompute = NO_RECOMPUTE,
                 pipeline_parallel_size: int = 1, causal: bool = False):
        self.model = model
        self.recompute = recompute
        self.pipeline_parallel_size = pipeline_parallel_size
        self.causal = causal
        self._cache: Dict[int, Tuple[int, int]] = {}
        self._core_cache: Dict[int, Tuple[int, int]] = {}
        self._layer_cache: Dict[int, Tuple[int, int]] = {}

    def __call__(self, seq_length: int) -> Tuple[int, int]:
        """``(model_flops, hardware_flops)`` of one sample of ``seq_length`` tokens."""
        cached = self._cache.get(seq_length)
        if cached is None:
            b = flops_breakdown(self.model, seq_length, 1, self.recompute,
                                self.pipeline_parallel_size, self.causal)
            cached = self._cache[seq_length] = (b.model_flops, b.hardware_flops)
        return cached

    def attention_core(self, length: int) -> Tuple[int, int]:
        """``(model_flops, hardware_flops)`` of the s×s components of one sequence of ``length``."""
        cached = self._core_cache.get(length)
        if cached is None:
            b = flops_breakdown(self.model, length, 1, self.recompute,
                                self.pipeline_parallel_size, self.causal)
            core = [c for c in b if REGISTRY[c.name].attention_core]
            cached = self._core_cache[length] = (sum(c.model_flops for c in core),
                                                 sum(c.hardware_flops for c in core))
        return cached

    def packed_batch(self, seq_length: int,
                     document_lengths: Sequence[Sequence[int]]) -> Tuple[int, int]:
        """``(model_flops, hardware_flops)`` of a batch of packed samples (one list of document
        lengths per sample): every sample's s×s attention replaced by its documents' own."""
        _check_document_lengths(document_lengths, seq_length, len(document_lengths))
        batch_size = len(document_lengths)
        model_flops, hardware_flops = self(seq_length)
        core_model, core_hardware = self.attention_core(seq_length)
        model_total = batch_size * (model_flops - core_model)
        hardware_total = batch_size * (hardware_flops - core_hardware)
        for sample in document_lengths:
            for length in sample:
                doc_model, doc_hardware = self.attention_core(length)
                model_total += doc_model
                hardware_total += doc_hardware
        return model_total, hardware_total

    def packed_batch_from_squares(self, seq_length: int, batch_size: int,
                                  seqlen_squared_sum: float) -> Tuple[int, int]:
        """:meth:`packed_batch` from ``Σ Lᵢ²`` alone (over every document of the batch), as
        Megatron-LM's training loop reports a packed (THD) iteration: the s×s components
        are ``c·L²`` per document (dense, or exactly half of it causal), so the batch's are
        ``c·Σ Lᵢ²``; every other component runs over all ``batch_size × seq_length`` tokens.
        A sliding window (``--window-size``) makes a document's work not quadratic in its
        length: ValueError."""
        if self.model.window_size is not None:
            raise UsageError("--window-size: packed-sequence attention under a sliding window "
                             "needs each document's length, not only the sum of their squares")
        squares = float(seqlen_squared_sum)
        if not squares.is_integer() or not 0 < squares <= batch_size * seq_length ** 2:
            raise UsageError(f"the sum of squared document lengths must be a whole number in "
                             f"(0, batch size × seq length² = {batch_size * seq_length ** 2}], "
                             f"got {seqlen_squared_sum!r}")
        model_flops, hardware_flops = self(seq_length)
        core_model, core_hardware = self.attention_core(seq_length)
        unit_model, unit_hardware = self.attention_core(1)  # c: the s×s work of one token
        if core_model != unit_model * seq_length ** 2:  # not quadratic in L: cannot happen
            raise UsageError("this model's attention is not quadratic in the document length")
        squares = int(squares)
        return (batch_size * (model_flops - core_model) + unit_model * squares,
                batch_size * (hardware_flops - core_hardware) + unit_hardware * squares)

    @property
    def layers_alike(self) -> bool:
        """Every transformer layer does the same work (dense, one attention kind, no MTP, and
        recomputed all or none): what :meth:`token_dropping` needs, since it is not told which
        layers drop tokens."""
        model, recompute = self.model, self.recompute
        return (not model.is_moe and model.window_attn_skip_freq is None
                and not model.mtp_num_layers
                and (recompute.granularity != "full" or recompute.recomputes_every_layer))

    def _one_layer(self, length: int) -> Tuple[int, int]:
        """``(model_flops, hardware_flops)`` of one transformer layer on one sequence of
        ``length`` tokens: a 2-layer model minus a 1-layer one (no teacher)."""
        cached = self._layer_cache.get(length)
        if cached is None:
            counts = []
            for layers in (2, 1):
                b = flops_breakdown(replace(self.model, num_layers=layers, teacher=None), length,
                                    1, self.recompute, 1, self.causal)
                counts.append((b.model_flops, b.hardware_flops))
            (m2, h2), (m1, h1) = counts
            cached = self._layer_cache[length] = (m2 - m1, h2 - h1)
        return cached

    def token_dropping(self, seq_length: int, reserved_length: int,
                       layers: int) -> Tuple[int, int]:
        """``(model_flops, hardware_flops)`` of one sample when ``layers`` transformer layers
        run on only ``reserved_length`` of its ``seq_length`` tokens (DeepSpeed's random-LTD:
        those layers gather the reserved tokens, attend among them, and scatter them back);
        every other layer, the logits and a distillation teacher see all ``seq_length``."""
        if not self.layers_alike:
            raise UsageError("random-LTD is counted per layer only when every layer does the "
                             "same work (dense, no per-layer attention pattern, recompute of "
                             "all layers or none)")
        if not 0 < layers <= self.model.num_layers or not 0 < reserved_length <= seq_length:
            raise UsageError(f"random-LTD of {layers} layers at {reserved_length} tokens does "
                             f"not fit {self.model.num_layers} layers of {seq_length} tokens")
        model_flops, hardware_flops = self(seq_length)
        full_model, full_hardware = self._one_layer(seq_length)
        kept_model, kept_hardware = self._one_layer(reserved_length)
        return (model_flops - layers * (full_model - kept_model),
                hardware_flops - layers * (full_hardware - kept_hardware))
