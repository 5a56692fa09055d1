"""Parameter count of a Megatron GPT model, as Megatron builds it.

Counted: word embeddings (shared with the output layer when tied, so counted once), learned
absolute position embeddings (``max_position_embeddings × h``), the optional embedding
LayerNorm (BLOOM's ``--embed-layernorm``), per layer two norms, fused QKV, output projection,
MLP (GLU: first dense ``h -> 2f``) or MoE (bias-free router ``h -> E`` plus ``E`` expert MLPs;
with PR-MoE also a dense MLP and a ``h -> 2`` coefficient linear with bias),
biases unless ``add_bias_linear`` is off, the final norm, and an untied output layer
(``V × h``, no bias).  A LayerNorm has a weight and a bias, an RMSNorm a weight only.
"""

from dataclasses import dataclass

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
        return self.total / 1e9


def _norm(model: ModelShape) -> int:
    return model.hidden_size * (2 if model.normalization == "layernorm" else 1)


def _mlp(model: ModelShape) -> int:
    h, f, bias = model.hidden_size, model.ffn_hidden_size, model.add_bias_linear
    branches = 2 if model.glu else 1
    up = h * branches * f + (branches * f if bias else 0)
    down = f * h + (h if bias else 0)
    return up + down


def layer_parameters(model: ModelShape, layer_index: int) -> int:
    """Parameters of one transformer layer (0-based index; MoE layers differ)."""
    h, bias = model.hidden_size, model.add_bias_linear
    qkv_width = model.query_projection_size + 2 * model.kv_projection_size
    attention = h * qkv_width + (qkv_width if bias else 0)
    attention += model.query_projection_size * h + (h if bias else 0)
    experts = model.experts_in_layer(layer_index)
    mlp = _mlp(model) if experts == 1 else h * experts + experts * _mlp(model)
    if experts != 1 and model.moe_residual:
        mlp += _mlp(model) + h * 2 + 2  # PR-MoE: the dense MLP and the h -> 2 coefficient
    return 2 * _norm(model) + attention + mlp


def parameter_count(model: ModelShape) -> ParameterCount:
    h = model.hidden_size
    word = model.vocab_size * h
    position = 0
    if model.position_embedding == "learned":
        if model.max_position_embeddings is None:
            raise ValueError(
                "--max-position-embeddings is needed to count learned position embeddings"
            )
        position = model.max_position_embeddings * h
    output = 0 if model.tie_embeddings else model.vocab_size * h
    total = word + position + output
    if model.embedding_layernorm:
        total += _norm(model)
    total += sum(layer_parameters(model, i) for i in range(model.num_layers))
    total += _norm(model)  # final norm
    return ParameterCount(total=total, embedding=word + position + output)
