"""The demo's fused attention: PyTorch's ``scaled_dot_product_attention`` in place of the
reference model's explicit matmuls (``--attention sdpa``), and its exact FLOP count.

The fused call does the same two products as the matmul path (Q·Kᵀ and attention·V, dense
s × s as counted), so the breakdown is unchanged.  ``FlopCounterMode`` on CPU does not count
the CPU flash kernel (0 FLOPs, DESIGN.md §4): :func:`sdpa_flop_mapping` gives it the count
explicitly, forward the two products, backward twice that (the flash kernels' internal
recompute of Q·Kᵀ is left out, like every other recompute inside a kernel).
"""

import torch
import torch.nn.functional as F

from ..reference.model import CoreAttention


class FusedCoreAttention(CoreAttention):
    """softmax(Q·Kᵀ/√d + mask)·V in one fused call; K and V arrive with ``g`` heads."""

    components = (("attention_scores", 1), ("attention_over_values", 1))

    def forward(self, q, k, v, bias):
        repeat = self.num_heads // self.num_groups
        if repeat > 1:
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        dropout = self.dropout.p if self.training else 0.0
        if bias is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                                  scale=self.scale)
        s = q.shape[2]
        causal = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        mask = bias.masked_fill(causal, float("-inf")).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              scale=self.scale)


def use_sdpa_attention(gpt) -> None:
    """Make every layer's attention core of ``gpt`` the fused one (a subclass with the same
    state; the core holds no parameters)."""
    for layer in gpt.layers:
        layer.attention.core.__class__ = FusedCoreAttention


def _attention_flops(q_shape, k_shape, v_shape) -> int:
    """Q·Kᵀ and attention·V of a ``[B, n, s, d]`` query against ``[B, ·, s_k, ·]`` keys."""
    batch, heads, s_q, d = q_shape[0], q_shape[1], q_shape[-2], q_shape[-1]
    s_k, d_v = k_shape[-2], v_shape[-1]
    return 2 * batch * heads * s_q * s_k * (d + d_v)


def sdpa_flop_mapping() -> dict:
    """``FlopCounterMode(custom_mapping=...)`` entries for the CPU flash kernel."""
    aten = torch.ops.aten

    # FlopCounterMode hands a custom formula the operands' shapes
    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return _attention_flops(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return 2 * _attention_flops(query, key, value)

    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}
