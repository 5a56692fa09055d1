"""A Mamba-2 mixer in plain torch ops, with Megatron-Core's ``MambaMixer`` matmul shapes.

Megatron-Core's mixer runs mamba_ssm's fused CUDA/Triton kernels (``causal_conv1d``,
``mamba_chunk_scan_combined``), which neither run on a CPU nor show their matmuls to
``FlopCounterMode``.  This module computes the same function with ordinary torch ops, so that
every matrix product the chunked SSD algorithm does is a counted ``bmm``:

    x [B, s, h] -> in_proj (h -> 2·di + 2·G·N + H): z, xBC, dt
                -> xBC = silu(causal depthwise conv1d over di + 2·G·N channels, K taps)
                -> x, B, C = split(xBC);  dt = softplus(dt + dt_bias);  A = -exp(A_log)
                -> y = SSD(x, dt, A, B, C) + D·x        chunked, chunk length Q (ChunkedSSD)
                -> y = rmsnorm(y · silu(z)) per group of di/G channels (the gated norm)
                -> out_proj (di -> h)

(di = H·P: H heads of P channels; G groups share B and C of state size N.)  Megatron-Core's
defaults: K = 4, Q = 128, no in/out projection bias, a conv bias, ``D`` per head, the norm
before the gate off (norm of ``y · silu(z)``).  Elementwise ops (the gate, softplus, the
exponentials of the decays, D·x, the norm) are free for ``FlopCounterMode``, as for the
formulas.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..components import ssd_chunk_lengths
from ..shapes import ModelShape

__all__ = ["CausalConv1d", "ChunkedSSD", "MambaMixer"]


class CausalConv1d(nn.Module):
    """Depthwise conv over time, each output from its own and the ``K - 1`` previous tokens:
    ``F.conv1d(pad_left(x), weight, bias, groups=C)``, written as one ``[T × K]·[K × 1]``
    product per channel (a ``bmm``), because ``FlopCounterMode``'s convolution-backward formula
    ignores ``groups`` (it counts a depthwise conv's input gradient C times over)."""

    def __init__(self, channels: int, kernel: int, factory: dict):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel, **factory))  # as nn.Conv1d
        self.bias = nn.Parameter(torch.zeros(channels, **factory))

    def forward(self, x):                                       # [B, s, C]
        batch, s, channels = x.shape
        windows = F.pad(x, (0, 0, self.kernel - 1, 0)).unfold(1, self.kernel, 1)  # [B, s, C, K]
        windows = windows.permute(2, 0, 1, 3).reshape(channels, batch * s, self.kernel)
        out = torch.matmul(windows, self.weight.transpose(1, 2))  # [C, B·s, 1]
        return out.reshape(channels, batch, s).permute(1, 2, 0) + self.bias


class ChunkedSSD(nn.Module):
    """The SSD (Mamba-2's selective state space, scalar decay per head) computed chunk by chunk.

    Per chunk of ``L ≤ Q`` tokens, with ``a = cumsum(dt·A)`` inside the chunk:

    - scores ``C·Bᵀ`` per group ([L × N]·[N × L]), masked by the decay ``exp(aᵢ - aⱼ)`` (i ≥ j)
      and scaled by ``dtⱼ``, times ``X`` per head ([L × L]·[L × P]): the intra-chunk output;
    - ``C·state`` per head ([L × N]·[N × P]), decayed by ``exp(aᵢ)``: the earlier chunks' share
      (not in the first chunk: no earlier state);
    - the chunk's own state ``Bᵀ·(decay·dt·X)`` per head ([N × L]·[L × P]), added to the decayed
      running state (an elementwise recurrence between chunks; not after the last chunk: no
      later chunk reads it).
    """

    def __init__(self, model: ModelShape):
        super().__init__()
        self.chunk = model.mamba_chunk_size
        self.heads_per_group = model.mamba_heads // model.mamba_num_groups

    def forward(self, x, dt, A, B, C):
        # x [b, s, H, P]; dt [b, s, H]; A [H]; B, C [b, s, G, N]
        batch, s, heads, head_dim = x.shape
        state = None                                                  # [b, H, N, P]
        outputs, start = [], 0
        lengths = ssd_chunk_lengths(s, self.chunk)
        for index, length in enumerate(lengths):
            end = start + length
            xc = x[:, start:end].transpose(1, 2)                      # [b, H, L, P]
            dtc = dt[:, start:end].transpose(1, 2)                    # [b, H, L]
            Bc = B[:, start:end].transpose(1, 2)                      # [b, G, L, N]
            Cc = C[:, start:end].transpose(1, 2)                      # [b, G, L, N]
            decay = torch.cumsum(dtc * A[None, :, None], dim=-1)      # [b, H, L]
            scores = torch.matmul(Cc, Bc.transpose(-1, -2))           # [b, G, L, L]
            scores = scores.repeat_interleave(self.heads_per_group, dim=1)  # [b, H, L, L]
            segment = decay[..., :, None] - decay[..., None, :]       # aᵢ - aⱼ
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            mask = torch.exp(segment.masked_fill(~causal, float("-inf")))
            y = torch.matmul(scores * mask * dtc[..., None, :], xc)   # [b, H, L, P]
            if state is not None:
                Ch = Cc.repeat_interleave(self.heads_per_group, dim=1)  # [b, H, L, N]
                y = y + torch.matmul(Ch, state) * torch.exp(decay)[..., None]
            if index + 1 < len(lengths):
                Bh = Bc.repeat_interleave(self.heads_per_group, dim=1)  # [b, H, L, N]
                to_end = torch.exp(decay[..., -1:] - decay) * dtc       # [b, H, L]
                chunk_state = torch.matmul(Bh.transpose(-1, -2), xc * to_end[..., None])
                carried = torch.exp(decay[..., -1])[..., None, None]  # [b, H, 1, 1]
                state = chunk_state if state is None else state * carried + chunk_state
            outputs.append(y.transpose(1, 2))                         # [b, L, H, P]
            start = end
        return torch.cat(outputs, dim=1)                              # [b, s, H, P]


class GatedRMSNorm(nn.Module):
    """RMSNorm of ``y · silu(z)`` over groups of ``di / G`` channels (Megatron's gated norm)."""

    def __init__(self, size: int, groups: int, factory: dict, eps: float = 1e-5):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(size, **factory))

    def forward(self, y, z):
        y = y * F.silu(z)
        grouped = y.unflatten(-1, (self.groups, -1))
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return grouped.flatten(-2) * self.weight


class MambaMixer(nn.Module):
    """Megatron-Core's ``MambaMixer`` (see the module docstring), on ``[B, s, h]``."""

    def __init__(self, model: ModelShape, factory: dict):
        super().__init__()
        h, heads = model.hidden_size, model.mamba_heads
        self.inner, self.heads, self.head_dim = model.mamba_inner_size, heads, model.mamba_head_dim
        self.groups, self.state = model.mamba_num_groups, model.mamba_state_dim
        self.in_proj = nn.Linear(h, model.mamba_in_proj_size, bias=False, **factory)
        self.conv = CausalConv1d(model.mamba_conv_channels, model.mamba_conv_kernel, factory)
        self.ssd = ChunkedSSD(model)
        self.dt_bias = nn.Parameter(torch.zeros(heads, **factory))
        self.A_log = nn.Parameter(torch.zeros(heads, **factory))
        self.D = nn.Parameter(torch.ones(heads, **factory))
        self.norm = GatedRMSNorm(self.inner, self.groups, factory)
        self.out_proj = nn.Linear(self.inner, h, bias=False, **factory)

    def forward(self, x):
        batch, s, _ = x.shape
        group_state = self.groups * self.state
        z, xBC, dt = self.in_proj(x).split([self.inner, self.inner + 2 * group_state, self.heads],
                                           dim=-1)
        xBC = F.silu(self.conv(xBC))
        xs, B, C = xBC.split([self.inner, group_state, group_state], dim=-1)
        xs = xs.reshape(batch, s, self.heads, self.head_dim)
        dt = F.softplus(dt + self.dt_bias)
        y = self.ssd(xs, dt, -torch.exp(self.A_log), B.reshape(batch, s, self.groups, self.state),
                     C.reshape(batch, s, self.groups, self.state))
        y = y + xs * self.D[:, None]
        return self.out_proj(self.norm(y.reshape(batch, s, self.inner), z))
