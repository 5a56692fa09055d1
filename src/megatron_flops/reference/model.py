"""A reference GPT with Megatron's layer structure, built from a :class:`ModelShape`.

Its job is to be *obviously* the network that :mod:`megatron_flops.flops` describes, so that
counting its matmuls proves the formulas (``megatron-flops verify``), and to be a real model
that trains.  Read it top to bottom:

    tokens -> word embeddings (+ learned positions) [-> embedding norm] -> dropout
           -> num_layers x TransformerLayer:
                x = x + attention(norm(x))      fused QKV (GQA layout), core, output projection
                x = x + mlp_or_moe(norm(x))     GeLU MLP, GLU MLP (h -> 2f, split, gate) or MoE
           -> final norm -> logits (tied to the word embeddings, or a separate output layer)

Every matmul lives in a small leaf module (``query_key_value``, ``query_key``,
``probs_value``, ``dense``, ``up``, ``down``, ``router``, ``output_layer``), and where it is
built :func:`carries` declares which registered components (:mod:`megatron_flops.components`)
its output columns belong to; the verifier attributes counted FLOPs by reading those
declarations.  The attention core is written with explicit matmuls:
PyTorch's CPU flash SDPA kernel is not counted by ``FlopCounterMode``.

Recompute mirrors Megatron: ``full`` runs each recomputed layer under
``torch.utils.checkpoint`` (uniform: every layer, grouped in chunks of ``num_layers``;
block: the first ``num_layers`` layers of each pipeline stage); ``selective`` checkpoints
only the attention core.
"""

import math
from itertools import takewhile
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ShapeError
from ..shapes import NO_RECOMPUTE, ModelShape, Recompute

__all__ = ["ReferenceGPT"]

INIT_STD = 0.02


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` (no mean subtraction, no bias)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(model: ModelShape, factory: dict) -> nn.Module:
    if model.normalization == "rmsnorm":
        return RMSNorm(model.hidden_size, eps=1e-5, **factory)
    return nn.LayerNorm(model.hidden_size, eps=1e-5, **factory)


# the attribute a leaf module's component declaration lives in
CARRIES = "flop_components"


def carries(module: nn.Module, *components) -> nn.Module:
    """Declare the components ``module``'s matmul computes; return ``module``.

    Each is a component name, or ``(name, output_columns)`` for a fused matmul whose
    output columns are split between components (e.g. QKV: ``n·d`` query, ``2·g·d`` K and V).
    """
    setattr(module, CARRIES, tuple((c, 1) if isinstance(c, str) else tuple(c) for c in components))
    return module


class BatchedMatmul(nn.Module):
    """``a @ b`` as a module, so the verifier can tell the two attention products apart."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


# ---- positions ------------------------------------------------------------------------------

def rotary_cos_sin(seq_length: int, head_dim: int, device, dtype):
    """cos and sin tables ``[s, d]`` for rotary embeddings over the whole head (base 10000)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def alibi_slopes(num_heads: int) -> List[float]:
    """Press et al.'s head slopes: a geometric sequence, interleaved for non-powers of two."""
    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]
    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]


def alibi_bias(num_heads: int, seq_length: int, device, dtype) -> torch.Tensor:
    """``[n, s, s]`` bias ``-slope * (i - j)`` added to the scores of key ``j`` for query ``i``."""
    slopes = torch.tensor(alibi_slopes(num_heads), device=device, dtype=torch.float32)
    positions = torch.arange(seq_length, device=device)
    distance = (positions[None, :] - positions[:, None]).clamp(max=0).float()  # j - i <= 0
    return (slopes[:, None, None] * distance[None]).to(dtype)


# ---- attention ------------------------------------------------------------------------------

class CoreAttention(nn.Module):
    """softmax(Q·Kᵀ/√d + mask) · V over ``n`` query heads; K and V arrive with ``g`` heads."""

    def __init__(self, model: ModelShape, dropout: float):
        super().__init__()
        self.num_heads, self.num_groups = model.num_attention_heads, model.num_query_groups
        self.scale = 1.0 / math.sqrt(model.kv_channels)
        self.query_key = carries(BatchedMatmul(), "attention_scores")         # B·n × [s × d]·[d × s]
        self.probs_value = carries(BatchedMatmul(), "attention_over_values")  # B·n × [s × s]·[s × d]
        self.dropout = nn.Dropout(dropout)

    def forward(self, q, k, v, bias: Optional[torch.Tensor]):
        # q: [B, n, s, d]; k, v: [B, g, s, d] -> each KV head serves n/g query heads
        repeat = self.num_heads // self.num_groups
        k = k.repeat_interleave(repeat, dim=1)
        v = v.repeat_interleave(repeat, dim=1)
        s = q.shape[2]
        scores = self.query_key(q * self.scale, k.transpose(-1, -2))  # [B, n, s, s]
        if bias is not None:
            scores = scores + bias
        causal = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
        probs = self.dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype))
        return self.probs_value(probs, v)  # [B, n, s, d]


class SelfAttention(nn.Module):
    """Fused QKV in Megatron's GQA layout: per KV group, its n/g query heads, then K, then V."""

    def __init__(self, model: ModelShape, dropout: float, factory: dict):
        super().__init__()
        n, g, d, h = model.num_attention_heads, model.num_query_groups, model.kv_channels, model.hidden_size
        self.n, self.g, self.d = n, g, d
        bias = model.add_bias_linear
        self.query_key_value = carries(nn.Linear(h, (n + 2 * g) * d, bias=bias, **factory),
                                       ("query", n * d), ("key_value", 2 * g * d))
        self.core = CoreAttention(model, dropout)
        self.dense = carries(nn.Linear(n * d, h, bias=bias, **factory), "attention_output")
        self.recompute_core = False  # selective recompute: checkpoint only the core

    def forward(self, x, rotary=None, bias=None):
        B, s, _ = x.shape
        n, g, d = self.n, self.g, self.d
        qkv = self.query_key_value(x).view(B, s, g, n // g + 2, d)
        q = qkv[:, :, :, : n // g].reshape(B, s, n, d).transpose(1, 2)  # [B, n, s, d]
        k = qkv[:, :, :, n // g].transpose(1, 2)                          # [B, g, s, d]
        v = qkv[:, :, :, n // g + 1].transpose(1, 2)                      # [B, g, s, d]
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if self.recompute_core:
            context = checkpoint(self.core, q, k, v, bias, use_reentrant=False)
        else:
            context = self.core(q, k, v, bias)
        context = context.transpose(1, 2).reshape(B, s, n * d)
        return self.dense(context)


# ---- MLP and MoE ---------------------------------------------------------------------------

GLU_GATES = {"geglu": F.gelu, "liglu": lambda x: x, "reglu": F.relu, "swiglu": F.silu}
# Megatron-LM's --quick-geglu (gpt-oss): quick-GELU, x·sigmoid(1.702·x), elementwise
GLU_GATES["quick_geglu"] = lambda x: x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    """``h -> f -> h`` with GeLU, or a GLU: ``h -> 2f``, split, ``act(gate) * up``, ``f -> h``.

    ``kind`` names its components: ``mlp`` (``mlp_up``, …) or ``expert`` inside an MoE.
    """

    def __init__(self, model: ModelShape, factory: dict, kind: str = "mlp"):
        super().__init__()
        h, f = model.hidden_size, model.ffn_hidden_size
        self.glu = model.glu_activation
        # the GLU's first dense holds the up branch (first f columns) and the gate (last f)
        up = ((f"{kind}_up", f), (f"{kind}_gate", f)) if self.glu else (f"{kind}_up",)
        self.up = carries(nn.Linear(h, 2 * f if self.glu else f, bias=model.add_bias_linear,
                                    **factory), *up)
        self.down = carries(nn.Linear(f, h, bias=model.add_bias_linear, **factory), f"{kind}_down")

    def forward(self, x):
        x = self.up(x)
        if self.glu:
            up, gate = x.chunk(2, dim=-1)
            x = up * GLU_GATES[self.glu](gate)
        else:
            x = F.gelu(x)
        return self.down(x)


class MoE(nn.Module):
    """A bias-free router ``h -> E`` and ``E`` expert MLPs; each token visits its top-k experts.

    No capacity limit: every routed token is processed, so the experts' matmuls cover exactly
    ``k × tokens`` rows whatever the routing.  Each expert runs on the tokens gathered for it,
    and their outputs are summed back weighted by the router's softmax probabilities.
    On meta tensors (no values to route on) tokens go round-robin: token ``t`` to experts
    ``t, t+1, …, t+k-1 (mod E)`` — again ``k × tokens`` rows in all.
    """

    def __init__(self, model: ModelShape, num_experts: int, factory: dict):
        super().__init__()
        self.num_experts, self.topk = num_experts, model.moe_topk
        self.router = carries(nn.Linear(model.hidden_size, num_experts, bias=False, **factory),
                              "moe_router")
        self.experts = nn.ModuleList(MLP(model, factory, "expert") for _ in range(num_experts))

    def forward(self, x):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])                        # [T, h]
        probs = torch.softmax(self.router(tokens).float(), dim=-1)  # [T, E]
        T, E, k = tokens.shape[0], self.num_experts, self.topk
        if tokens.is_meta:
            chosen = (torch.arange(T)[:, None] + torch.arange(k)[None, :]) % E  # [T, k] on CPU
            weights = probs.gather(1, chosen.to(probs.device))
        else:
            weights, chosen = probs.topk(k, dim=-1)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_index, slot = (chosen == e).nonzero(as_tuple=True)  # concrete: CPU or real
            if token_index.numel() == 0:
                continue
            token_index, slot = token_index.to(x.device), slot.to(x.device)
            routed = expert(tokens[token_index]) * weights[token_index, slot, None]
            out = out.index_add(0, token_index, routed)
        return out.view(shape)


# ---- the layer and the model ---------------------------------------------------------------

class TransformerLayer(nn.Module):
    def __init__(self, model: ModelShape, layer_index: int, dropout: float, factory: dict):
        super().__init__()
        self.input_norm = make_norm(model, factory)
        self.attention = SelfAttention(model, dropout, factory)
        self.post_attention_norm = make_norm(model, factory)
        experts = model.experts_in_layer(layer_index)
        self.mlp = MLP(model, factory) if experts == 1 else MoE(model, experts, factory)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, rotary=None, bias=None):
        x = x + self.dropout(self.attention(self.input_norm(x), rotary, bias))
        return x + self.dropout(self.mlp(self.post_attention_norm(x)))


class OutputLayer(nn.Module):
    """Logits ``[T × h]·[h × V]``: the word-embedding matrix when tied, its own weight if not."""

    def __init__(self, model: ModelShape, word_embeddings: nn.Embedding, factory: dict):
        super().__init__()
        self.tied = model.tie_embeddings
        if self.tied:
            self.word_embeddings = [word_embeddings]  # a list: not registered twice
        else:
            self.weight = nn.Parameter(torch.empty(model.vocab_size, model.hidden_size, **factory))

    def forward(self, x):
        weight = self.word_embeddings[0].weight if self.tied else self.weight
        return F.linear(x, weight)


class ReferenceGPT(nn.Module):
    """Megatron-architecture GPT of shape ``model`` for sequences of ``seq_length`` tokens.

    ``forward(input_ids [B, s]) -> logits [B, s, V]``; ``loss(input_ids, labels)`` is the
    mean cross-entropy.  ``recompute`` and ``pipeline_parallel_size`` choose which layers are
    checkpointed exactly as :meth:`Recompute.recomputed_layers` says.  ``device="meta"``
    builds it without memory, for counting FLOPs at full size.
    """

    def __init__(self, model: ModelShape, seq_length: int, recompute: Recompute = NO_RECOMPUTE,
                 pipeline_parallel_size: int = 1, dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.shape, self.seq_length, self.recompute = model, seq_length, recompute
        h, V = model.hidden_size, model.vocab_size
        if model.position_embedding == "rotary" and model.kv_channels % 2:
            raise ShapeError(f"--kv-channels ({model.kv_channels}) must be even for rotary "
                             "position embeddings")
        self.word_embeddings = nn.Embedding(V, h, **factory)
        self.position_embeddings = None
        if model.position_embedding == "learned":
            positions = model.max_position_embeddings or seq_length
            if positions < seq_length:
                raise ShapeError(f"--seq-length ({seq_length}) must not exceed "
                                 f"--max-position-embeddings ({positions})")
            self.position_embeddings = nn.Embedding(positions, h, **factory)
        self.embedding_norm = make_norm(model, factory) if model.embedding_layernorm else None
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(model, i, dropout, factory) for i in range(model.num_layers))
        self.final_norm = make_norm(model, factory)
        self.output_layer = carries(OutputLayer(model, self.word_embeddings, factory), "logits")

        self.recomputed_layers = recompute.recomputed_layers(model.num_layers, pipeline_parallel_size)
        self.recompute_chunk = (recompute.num_layers or 1) if recompute.method == "uniform" else 1
        for layer in self.layers:
            layer.attention.recompute_core = recompute.granularity == "selective"
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Megatron's init: N(0, 0.02), output projections scaled by 1/√(2·layers), zero biases."""
        scaled_std = INIT_STD / math.sqrt(2 * self.shape.num_layers)
        for name, p in self.named_parameters():
            if p.is_meta:
                continue
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            elif name.endswith(("dense.weight", "down.weight")):
                p.normal_(0.0, scaled_std)
            else:
                p.normal_(0.0, INIT_STD)

    def _positions(self, s: int, device, dtype):
        """(rotary cos/sin, ALiBi bias) for this sequence length; either may be None."""
        kind = self.shape.position_embedding
        rotary = rotary_cos_sin(s, self.shape.kv_channels, device, dtype) if kind == "rotary" else None
        bias = alibi_bias(self.shape.num_attention_heads, s, device, dtype) if kind == "alibi" else None
        return rotary, bias

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, s = input_ids.shape
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(torch.arange(s, device=input_ids.device))
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.embedding_dropout(x)
        rotary, bias = self._positions(s, x.device, x.dtype)

        i = 0
        while i < len(self.layers):
            if i in self.recomputed_layers:
                # uniform: a chunk of consecutive layers under one checkpoint; block: one layer
                end = min(i + self.recompute_chunk, len(self.layers))
                chunk = list(takewhile(self.recomputed_layers.__contains__, range(i, end)))
                x = checkpoint(self._run_layers, x, chunk, rotary, bias, use_reentrant=False)
                i += len(chunk)
            else:
                x = self.layers[i](x, rotary, bias)
                i += 1
        return self.output_layer(self.final_norm(x))

    def _run_layers(self, x, indices, rotary, bias):
        for j in indices:
            x = self.layers[j](x, rotary, bias)
        return x

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ``labels`` [B, s] under ``forward(input_ids)``."""
        logits = self.forward(input_ids)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
