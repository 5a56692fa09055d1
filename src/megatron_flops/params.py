"""Parameter count of a Megatron GPT model, as Megatron builds it.

Counted: word embeddings (shared with the output layer when tied, so counted once), learned
absolute position embeddings (``max_position_embeddings × h``), the optional embedding
LayerNorm (BLOOM's ``--embed-layernorm``), per layer two norms, fused QKV, output projection,
MLP (GLU: first dense ``h -> 2f``) or MoE (bias-free router ``h -> E`` plus ``E`` expert MLPs
of ``--moe-ffn-hidden-size`` and the shared experts' MLP; with PR-MoE also a dense MLP and a
``h -> 2`` coefficient linear with bias), MLA's projections in place of QKV,
multi-token-prediction layers (a layer plus three norms and a ``2h -> h`` projection),
biases unless ``add_bias_linear`` is off, the final norm, and an untied output layer
(``V × h``, no bias).  A LayerNorm has a weight and a bias, an RMSNorm a weight only.
"""

from dataclasses import dataclass

from .errors import ShapeError
from .flops import layer_kinds
from .shapes import ModelShape


@dataclass(frozen=True)
class ParameterCount:
    """``total`` parameters; ``embedding`` = word + position embeddings + untied output layer."""

    total: int
    embedding: int

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def billions(self) -> float:
        """``total`` in billions (the microsoft fork's ``approx_parameters_in_billions``)."""
        return self.total / 1e9


def _norm(model: ModelShape) -> int:
    return model.hidden_size * (2 if model.normalization == "layernorm" else 1)


def _mlp(model: ModelShape, f: int = None, h: int = None) -> int:
    """One MLP ``h -> f (x2 with a GLU) -> h``; ``h`` defaults to the hidden size (latent MoE's
    routed experts run at ``--moe-latent-size``)."""
    bias = model.add_bias_linear
    h = model.hidden_size if h is None else h
    f = model.ffn_hidden_size if f is None else f
    branches = 2 if model.glu else 1
    up = h * branches * f + (branches * f if bias else 0)
    down = f * h + (h if bias else 0)
    return up + down


def layer_parameters(model: ModelShape, layer_index: int) -> int:
    """Parameters of one transformer layer (0-based index; MoE and MTP layers differ)."""
    return layer_kind_parameters(model, model.experts_in_layer(layer_index),
                                 layer_index >= model.num_layers)


def layer_kind_parameters(model: ModelShape, experts: int, mtp_layer: bool = False) -> int:
    """Parameters of a transformer layer with ``experts`` experts (1: dense); ``mtp_layer``:
    a multi-token-prediction layer."""
    h, bias = model.hidden_size, model.add_bias_linear
    if model.multi_latent_attention:
        attention = _mla_attention(model)
    else:
        qkv_width = model.query_projection_size + 2 * model.kv_projection_size
        attention = h * qkv_width + (qkv_width if bias else 0)
        attention += model.query_projection_size * h + (h if bias else 0)
    if experts == 1:
        mlp = _mlp(model)
    else:
        mlp = h * experts + experts * _mlp(model, model.expert_ffn_hidden_size,
                                           model.expert_hidden_size)
        if model.shared_expert_ffn_hidden_size:
            mlp += _mlp(model, model.shared_expert_ffn_hidden_size)
        if model.moe_residual:
            mlp += _mlp(model) + h * 2 + 2  # PR-MoE: the dense MLP and the h -> 2 coefficient
    layer = 2 * _norm(model) + attention + mlp + _issue_20_parameters(model, experts)
    if mtp_layer:
        # an MTP layer: its two input norms, the 2h -> h projection (no bias), a final norm
        layer += 3 * _norm(model) + 2 * h * h
    return layer


def expert_parameters(model: ModelShape) -> int:
    """Parameters of one routed expert's MLP (``--moe-ffn-hidden-size``, at the latent size
    with latent MoE)."""
    return _mlp(model, model.expert_ffn_hidden_size, model.expert_hidden_size)


def _issue_20_parameters(model: ModelShape, experts: int) -> int:
    """The attention output gate (``n·d`` more columns of linear_qkv, and their biases), latent
    MoE's two projections ``h -> L -> h`` (biases with ``--add-bias-linear``) and the
    shared-expert gate (``1 × h``, no bias): Megatron-Core 0.16.1's modules."""
    h, bias = model.hidden_size, model.add_bias_linear
    extra = 0
    if model.attention_output_gate:
        gate = model.query_projection_size
        extra += h * gate + (gate if bias else 0)
    if experts > 1 and model.moe_latent_size is not None:
        latent = model.moe_latent_size
        extra += 2 * h * latent + ((latent + h) if bias else 0)
    if experts > 1 and model.moe_shared_expert_gate and model.shared_expert_ffn_hidden_size:
        extra += h
    return extra


def _mla_attention(model: ModelShape) -> int:
    """MLA's projections (Megatron-Core's local spec: no Q/KV latent norms without
    ``--qk-layernorm``, which is not modelled)."""
    h, n, bias = model.hidden_size, model.num_attention_heads, model.add_bias_linear
    q_head = n * (model.qk_head_dim + model.qk_pos_emb_head_dim)
    widths = []  # (in, out) of each linear
    if model.q_lora_rank is None:
        widths.append((h, q_head))
    else:
        widths += [(h, model.q_lora_rank), (model.q_lora_rank, q_head)]
    widths += [(h, model.kv_lora_rank + model.qk_pos_emb_head_dim),
               (model.kv_lora_rank, n * (model.qk_head_dim + model.v_head_dim)),
               (n * model.v_head_dim, h)]
    return sum(i * o + (o if bias else 0) for i, o in widths)


def parameter_count(model: ModelShape) -> ParameterCount:
    h = model.hidden_size
    word = model.vocab_size * h
    position = 0
    if model.position_embedding == "learned":
        if model.max_position_embeddings is None:
            raise ShapeError(
                "--max-position-embeddings is needed to count learned position embeddings"
            )
        position = model.max_position_embeddings * h
    output = 0 if model.tie_embeddings else model.vocab_size * h
    total = word + position + output
    if model.embedding_layernorm:
        total += _norm(model)
    # layers of one kind have the same parameters: one evaluation per kind, whatever --num-layers
    total += sum(layers * layer_kind_parameters(model, experts, mtp_layer)
                 for (experts, mtp_layer, _, _), layers in layer_kinds(model).items())
    total += _norm(model)  # final norm
    total += vision_parameters(model)
    return ParameterCount(total=total, embedding=word + position + output)


def vision_parameters(model: ModelShape) -> int:
    """Parameters of a vision-language run's ViT and projection (0 without; issue 20 item 3).

    The patch embedding ``3·p²·hv``, the class tokens and a position embedding per ViT token
    (``Sv·hv``), the ViT's layers (the layer count above at the vision shape, biases in: the
    multimodal example forces ``add_bias_linear`` for the ViT), one norm (``ln_pre`` /
    ``ln_post``), and the projection's matmuls (``hi·fp + fp·h``, affine ``hi·h``).  Left out,
    each under 0.1 % of any example's model: convolution and projection biases, the
    projection's input norm, InternViT's Q/K norms and layer scales, and the difference of
    RADIO's position table (sized for its largest image) from ``Sv`` rows.
    """
    vision = model.vision
    if vision is None:
        return 0
    vit = vision.transformer
    hv = vit.hidden_size
    embedding = vision.patch_size * hv + vision.class_tokens * hv + vision.seq_length * hv
    layers = vit.num_layers * layer_kind_parameters(vit, 1)
    if vision.projector == "mlp":
        projection = (vision.projector_input_size * vision.projector_ffn_hidden_size
                      + vision.projector_ffn_hidden_size * model.hidden_size)
    else:
        projection = vision.projector_input_size * model.hidden_size
    return embedding + layers + _norm(vit) + projection
