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
``--json``, the README table and the verifier all read :data:`REGISTRY`.  The last row, a
distillation teacher's forward (``teacher_forward``), is declared in :mod:`megatron_flops.flops`:
the teacher is a whole model, counted by a breakdown of its own.

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

from .shapes import PARTS, ModelShape

__all__ = [
    "DENSE_LAYERS", "EVERY_LAYER", "MOE_LAYERS", "MTP_LAYERS", "ONCE", "REGISTRY",
    "RESIDUAL_MOE_LAYERS", "VISION_TILES", "ComponentSpec", "component_names", "markdown_table", "matmul_flops",
    "register_component", "unregister_component",
]

# where a component occurs
EVERY_LAYER = "every layer"
DENSE_LAYERS = "dense-MLP layers"  # dense layers, and the residual MLP of PR-MoE layers
MOE_LAYERS = "MoE layers"
RESIDUAL_MOE_LAYERS = "PR-MoE layers"  # MoE layers with --mlp-type residual
MTP_LAYERS = "MTP layers"
ONCE = "once per model"
OCCURRENCES = (EVERY_LAYER, DENSE_LAYERS, MOE_LAYERS, RESIDUAL_MOE_LAYERS, MTP_LAYERS, ONCE)
# vision-language runs (issue 20 item 3): the vision encoder and projection, per image tile
VISION_TILES = "per image tile"
OCCURRENCES += (VISION_TILES,)

Formula = Callable[[ModelShape, int, int], int]


@dataclass(frozen=True)
class ComponentSpec:
    """One declared component.

    ``attention_core`` marks the s×s products: halved when counted causal, and the only
    thing selective recompute re-runs.  ``hardware_only`` marks work that runs but is not the
    trained model's (the distillation teacher's forward): forward only, no backward, counted
    in hardware FLOPs and never in model FLOPs (so MFU stays the student's).
    """

    name: str
    occurs: str
    title: str
    matmul: str
    flops_text: str
    formula: Formula
    attention_core: bool = False
    hardware_only: bool = False
    # frozen weights (issue 20 item 3): which trainable part the matmul belongs to
    # (shapes.PARTS), whether it has no weight operand (both operands are activations, as in
    # the attention core), and whether it is the first matmul of its part (its input then
    # carries no gradient from inside the part: the patch embedding reads pixels)
    part: str = "language"
    weightless: bool = False
    first_in_part: bool = False

    @property
    def has_weights(self) -> bool:
        """Whether one operand is a weight (its backward has a weight-gradient matmul)."""
        return not (self.attention_core or self.weightless)

    @property
    def description(self) -> str:
        return f"{self.title}  {self.matmul}"

    def in_layer(self, model: ModelShape, experts: int, mtp_layer: bool = False) -> bool:
        """Whether this component occurs in a layer of ``model`` with ``experts`` experts (1: dense).

        A PR-MoE layer (``--mlp-type residual``) runs a dense MLP beside its experts.  A
        multi-token-prediction layer (``mtp_layer``) is a whole transformer layer plus its own
        projection, so it has every layer component too.
        """
        moe = experts > 1
        return (self.occurs == EVERY_LAYER
                or (self.occurs == DENSE_LAYERS and (not moe or model.moe_residual))
                or (self.occurs == MOE_LAYERS and moe)
                or (self.occurs == RESIDUAL_MOE_LAYERS and moe and model.moe_residual)
                or (self.occurs == MTP_LAYERS and mtp_layer))


# name -> declaration, in the order the forward pass meets them (the order of every table)
REGISTRY: Dict[str, ComponentSpec] = {}


def register_component(name: str, occurs: str, title: str, matmul: str, flops_text: str,
                       attention_core: bool = False, hardware_only: bool = False,
                       part: str = "language", weightless: bool = False,
                       first_in_part: bool = False):
    """Decorator: declare the component ``name`` whose forward FLOPs the function computes."""
    if occurs not in OCCURRENCES:
        raise ValueError(f"occurs must be one of {OCCURRENCES}, got {occurs!r}")
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")

    def register(formula: Formula) -> Formula:
        if name in REGISTRY:
            raise ValueError(f"component {name!r} is already registered")
        REGISTRY[name] = ComponentSpec(name, occurs, title, matmul, flops_text, formula,
                                       attention_core, hardware_only, part, weightless,
                                       first_in_part)
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

@register_component("query", EVERY_LAYER, "Q projection", "[T × h]·[h × n·d]", "2·T·h·n·d·(1-mla)")
def query_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if model.multi_latent_attention:  # MLA has its own projections (mla_* below)
        return 0
    return matmul_flops(s, model.hidden_size, model.query_projection_size)


@register_component("key_value", EVERY_LAYER, "K and V projections", "[T × h]·[h × 2·g·d]",
                    "2·T·h·2·g·d·(1-mla)")
def key_value_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if model.multi_latent_attention:
        return 0
    return matmul_flops(s, model.hidden_size, 2 * model.kv_projection_size)


# Multi-head latent attention (DeepSeek-V2; Megatron-Core's MLASelfAttention): queries through
# a rank-rq bottleneck (or one projection without --q-lora-rank), keys and values through a
# shared rank-rkv latent plus a dpe-wide rotary key; heads are dqk (+ dpe rotary) wide for
# Q·Kᵀ and dv wide for V.  Zero for other attention.

def _mla_q_head(model: ModelShape) -> int:
    return model.num_attention_heads * (model.qk_head_dim + model.qk_pos_emb_head_dim)


@register_component("mla_q", EVERY_LAYER, "MLA Q projection (no --q-lora-rank)",
                    "[T × h]·[h × n·(dqk+dpe)]", "2·T·h·n·(dqk+dpe)·(1-lq)")
def mla_q_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if not model.multi_latent_attention or model.q_lora_rank is not None:
        return 0
    return matmul_flops(s, model.hidden_size, _mla_q_head(model))


@register_component("mla_q_down", EVERY_LAYER, "MLA Q down-projection", "[T × h]·[h × rq]",
                    "2·T·h·rq")
def mla_q_down_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if not model.multi_latent_attention or model.q_lora_rank is None:
        return 0
    return matmul_flops(s, model.hidden_size, model.q_lora_rank)


@register_component("mla_q_up", EVERY_LAYER, "MLA Q up-projection", "[T × rq]·[rq × n·(dqk+dpe)]",
                    "2·T·rq·n·(dqk+dpe)")
def mla_q_up_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if not model.multi_latent_attention or model.q_lora_rank is None:
        return 0
    return matmul_flops(s, model.q_lora_rank, _mla_q_head(model))


@register_component("mla_kv_down", EVERY_LAYER, "MLA KV down-projection (+ rotary key)",
                    "[T × h]·[h × (rkv+dpe)]", "2·T·h·(rkv+dpe)")
def mla_kv_down_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if not model.multi_latent_attention:
        return 0
    return matmul_flops(s, model.hidden_size, model.kv_lora_rank + model.qk_pos_emb_head_dim)


@register_component("mla_kv_up", EVERY_LAYER, "MLA KV up-projection",
                    "[T × rkv]·[rkv × n·(dqk+dv)]", "2·T·rkv·n·(dqk+dv)")
def mla_kv_up_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if not model.multi_latent_attention:
        return 0
    return matmul_flops(s, model.kv_lora_rank,
                        model.num_attention_heads * (model.qk_head_dim + model.v_head_dim))


# dk: d, or dqk + dpe with MLA; dv: d, or v_head_dim with MLA
@register_component("attention_scores", EVERY_LAYER, "scores Q·Kᵀ", "B·n × [s × dk]·[dk × s]",
                    "2·B·n·s²·dk", attention_core=True)
def attention_scores_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.num_attention_heads * matmul_flops(s, model.attention_key_head_dim, s)


@register_component("attention_over_values", EVERY_LAYER, "attention·V",
                    "B·n × [s × s]·[s × dv]", "2·B·n·s²·dv", attention_core=True)
def attention_over_values_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.num_attention_heads * matmul_flops(s, s, model.attention_value_head_dim)


@register_component("attention_output", EVERY_LAYER, "output projection",
                    "[T × n·dv]·[n·dv × h]", "2·T·n·dv·h")
def attention_output_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.num_attention_heads * model.attention_value_head_dim,
                        model.hidden_size)


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


# every token visits its top-k experts, each a full MLP of fe = --moe-ffn-hidden-size (default
# f) (no capacity dropping counted)
# (he: the experts' width, h, or L with latent MoE, --moe-latent-size: they run in latent space)
@register_component("expert_up", MOE_LAYERS, "experts up", "k × [T × he]·[he × fe]", "k·2·T·he·fe")
def expert_up_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.moe_topk * matmul_flops(s, model.expert_hidden_size, model.expert_ffn_hidden_size)


@register_component("expert_gate", MOE_LAYERS, "experts gate (GLU)", "k × [T × he]·[he × fe]",
                    "k·2·T·he·fe·glu")
def expert_gate_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return expert_up_flops(model, s, experts) if model.glu else 0


@register_component("expert_down", MOE_LAYERS, "experts down", "k × [T × fe]·[fe × he]",
                    "k·2·T·fe·he")
def expert_down_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.moe_topk * matmul_flops(s, model.expert_ffn_hidden_size, model.expert_hidden_size)


# shared experts (--moe-shared-expert-intermediate-size fs: the total size of all of them):
# one MLP every token goes through, beside the routed experts
@register_component("shared_expert_up", MOE_LAYERS, "shared experts up", "[T × h]·[h × fs]",
                    "2·T·h·fs")
def shared_expert_up_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.hidden_size, model.shared_expert_ffn_hidden_size)


@register_component("shared_expert_gate", MOE_LAYERS, "shared experts gate (GLU)",
                    "[T × h]·[h × fs]", "2·T·h·fs·glu")
def shared_expert_gate_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return shared_expert_up_flops(model, s, experts) if model.glu else 0


@register_component("shared_expert_down", MOE_LAYERS, "shared experts down", "[T × fs]·[fs × h]",
                    "2·T·fs·h")
def shared_expert_down_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.shared_expert_ffn_hidden_size, model.hidden_size)


# multi-token prediction (--mtp-num-layers m): each MTP layer projects [embedding; hidden]
# (2h) back to h, runs one transformer layer (built like the last decoder layer: its
# components are counted with the layers'), and predicts through the logits layer again
@register_component("mtp_projection", MTP_LAYERS, "MTP projection", "[T × 2h]·[2h × h]",
                    "4·T·h·h")
def mtp_projection_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, 2 * model.hidden_size, model.hidden_size)


@register_component("logits", ONCE, "logits", "[T × h]·[h × V]", "2·T·h·V")
def logits_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return matmul_flops(s, model.hidden_size, model.vocab_size)


@register_component("mtp_logits", ONCE, "MTP logits", "m × [T × h]·[h × V]", "m·2·T·h·V")
def mtp_logits_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return model.mtp_num_layers * logits_flops(model, s)


# ---- issue 20 item 2: Megatron-Core's attention output gate, latent MoE, shared-expert gate --
# (declared after the rows above, so every table keeps its earlier order)

# --attention-output-gate: linear_qkv is n·d columns wider (Attention.__init__:
# linear_qkv_out_dim += kv_channels · heads), the gate; its sigmoid times the core attention's
# output is elementwise (not counted)
@register_component("attention_gate", EVERY_LAYER, "attention output gate",
                    "[T × h]·[h × n·d]", "2·T·h·n·d·gate")
def attention_gate_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if not model.attention_output_gate:
        return 0
    return matmul_flops(s, model.hidden_size, model.query_projection_size)


# --moe-latent-size L: MoELayer.fc1_latent_proj (h -> L) on every token before dispatch,
# fc2_latent_proj (L -> h) on every token after combine; the routed experts run L -> fe -> L
# (expert_up/gate/down above), the router and the shared experts stay at h
@register_component("moe_latent_down", MOE_LAYERS, "latent MoE down-projection",
                    "[T × h]·[h × L]", "2·T·h·L")
def moe_latent_down_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if model.moe_latent_size is None:
        return 0
    return matmul_flops(s, model.hidden_size, model.moe_latent_size)


@register_component("moe_latent_up", MOE_LAYERS, "latent MoE up-projection",
                    "[T × L]·[L × h]", "2·T·L·h")
def moe_latent_up_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if model.moe_latent_size is None:
        return 0
    return matmul_flops(s, model.moe_latent_size, model.hidden_size)


# --moe-shared-expert-gate: SharedExpertMLP's gate_weight, F.linear(x, [1 × h]) per token;
# its sigmoid scales the shared experts' output (elementwise)
@register_component("shared_expert_output_gate", MOE_LAYERS, "shared-expert gate",
                    "[T × h]·[h × 1]", "2·T·h·sg")
def shared_expert_output_gate_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    if not (model.moe_shared_expert_gate and model.shared_expert_ffn_hidden_size):
        return 0
    return matmul_flops(s, model.hidden_size, 1)


# ---- vision-language runs (issue 20 item 3) ---------------------------------------------------
# LLaVAModel runs its ViT on every image tile of the sample (t tiles), projects the image
# embeddings into the language model, and runs the language model (the rows above) at the
# decoder length.  Per tile: P = (img_h/p)·(img_w/p) patches, Sv = P + class tokens ViT tokens,
# N image embeddings (Sv, less dropped class tokens, a quarter of it after the pixel shuffle),
# hi the projection's input width (hv, 4·hv after the pixel shuffle), fp its hidden size (h
# for an affine projection, mlp = 0 then); the ViT has lv layers of hv, nv heads of kv, gv
# query groups, an MLP of fv (gluv = 1 when gated).
# The ViT's layers are the layer rows above at the vision shape (hv, its heads, ffn) and Sv
# tokens, split into the weight matmuls and the attention core; the ViT's attention has no
# causal mask, so its core is never halved.  Zero without a vision encoder.

_LAYER_OCCURRENCES = (EVERY_LAYER, DENSE_LAYERS)


def _vision_layer_flops(model: ModelShape, core: bool) -> int:
    """Forward FLOPs of all the ViT's layers on one tile: its attention core (``core``) or
    every other layer matmul, from the language rows evaluated at the vision shape."""
    vision = model.vision
    if vision is None:
        return 0
    vit = vision.transformer
    per_layer = sum(spec.formula(vit, vision.seq_length, 1) for spec in REGISTRY.values()
                    if spec.part == "language" and spec.occurs in _LAYER_OCCURRENCES
                    and spec.attention_core == core and not spec.hardware_only)
    return vit.num_layers * per_layer


@register_component("vision_patch_embedding", VISION_TILES, "ViT patch embedding",
                    "t × [P × c]·[c × hv], c = 3·p²", "2·B·t·P·c·hv", part="vision",
                    first_in_part=True)
def vision_patch_embedding_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    # a p×p stride-p convolution over 3 channels is this matmul (RADIO's is a linear)
    vision = model.vision
    if vision is None:
        return 0
    return vision.tiles * matmul_flops(vision.patches, vision.patch_size,
                                       vision.transformer.hidden_size)


@register_component("vision_layers", VISION_TILES, "ViT layers (projections, MLP)",
                    "t·lv × the layer rows at [Sv × hv]",
                    "2·B·t·lv·Sv·hv·(2·nv·kv + 2·gv·kv + (2 + gluv)·fv)",
                    part="vision")
def vision_layers_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return 0 if model.vision is None else model.vision.tiles * _vision_layer_flops(model, False)


@register_component("vision_attention", VISION_TILES, "ViT attention core (no mask)",
                    "t·lv·nv × [Sv × kv]·[kv × Sv], [Sv × Sv]·[Sv × kv]",
                    "4·B·t·lv·nv·Sv²·kv", part="vision", weightless=True)
def vision_attention_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    return 0 if model.vision is None else model.vision.tiles * _vision_layer_flops(model, True)


@register_component("vision_projection_up", VISION_TILES, "vision projection (fc1 / affine)",
                    "t × [N × hi]·[hi × fp] (affine: fp = h)", "2·B·t·N·hi·fp",
                    part="projector", first_in_part=True)
def vision_projection_up_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    vision = model.vision
    if vision is None:
        return 0
    out = vision.projector_ffn_hidden_size if vision.projector == "mlp" else model.hidden_size
    return vision.tiles * matmul_flops(vision.image_embeddings, vision.projector_input_size, out)


@register_component("vision_projection_down", VISION_TILES, "vision projection fc2 (mlp)",
                    "t × [N × fp]·[fp × h]", "2·B·t·N·fp·h·mlp", part="projector")
def vision_projection_down_flops(model: ModelShape, s: int, experts: int = 1) -> int:
    vision = model.vision
    if vision is None or vision.projector != "mlp":
        return 0
    return vision.tiles * matmul_flops(vision.image_embeddings, vision.projector_ffn_hidden_size,
                                       model.hidden_size)


def markdown_table() -> str:
    """The README's "What is counted" table, one row per registered component."""
    lines = ["| component | occurs | matmul | forward FLOPs |", "|---|---|---|---|"]
    for spec in REGISTRY.values():
        lines.append(f"| `{spec.name}` | {spec.occurs} | {spec.description} | {spec.flops_text} |")
    return "\n".join(lines)
