"""Megatron-Core's own ``MambaMixer`` (0.16.1), built on CPU, counted against the registry.

The mixer needs mamba_ssm's fused kernels (``causal_conv1d_fn``, ``mamba_chunk_scan_combined``,
the Triton gated RMSNorm), which do not run on a CPU; everything else is Megatron-Core's: its
``in_proj`` (ColumnParallelLinear ``h -> 2·di + 2·G·N + H``), ``out_proj`` (RowParallelLinear),
its ``conv1d``, ``dt_bias``, ``A_log``, ``D`` and norm parameters, its splits and reshapes.  The
three kernels are replaced by the reference's torch equivalents (``megatron_flops.reference.
mamba``: the depthwise conv as per-channel products, the chunked SSD as ``bmm`` s, the gated
norm), each in a module of its own; the mixer's non-memory-efficient path
(``use_mamba_mem_eff_path=False``) calls them by name.  One training step under
FlopCounterMode, attributed per module, must equal ``flops_breakdown`` per component and phase,
and the mixer's parameters ``params``' Mamba count.

Megatron-Core imports an inference-only Triton module (``…attention_context.triton.tensor_ops``)
at import time; a stand-in module whose functions refuse to run takes its place (training never
calls them).
"""

import sys
import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from megatron_flops.flops import flops_breakdown  # noqa: E402
from megatron_flops.params import layer_parameters  # noqa: E402
from megatron_flops.reference.mamba import ChunkedSSD, GatedRMSNorm  # noqa: E402
from megatron_flops.reference.verify import ComponentFlopCounter  # noqa: E402
from megatron_flops.shapes import ModelShape  # noqa: E402

TRITON_OPS = "megatron.core.inference.contexts.attention_context.triton.tensor_ops"


def _refuse(*args, **kwargs):
    raise RuntimeError("an inference-only Triton op ran in a training step")


@pytest.fixture
def mamba_mixer_module(monkeypatch):
    """megatron.core.ssm.mamba_mixer, importable without Triton."""
    if TRITON_OPS not in sys.modules:
        try:
            __import__(TRITON_OPS)
        except ImportError:
            stand_in = types.ModuleType(TRITON_OPS)
            stand_in.tensor_get_slice_after = stand_in.tensor_masked_update = _refuse
            stand_in.tensor_merge = _refuse
            monkeypatch.setitem(sys.modules, TRITON_OPS, stand_in)
    import megatron.core.ssm.mamba_mixer as mamba_mixer
    return mamba_mixer


class Conv(nn.Module):
    """``causal_conv1d_fn(x [b, d, l], weight [d, K], bias [d])`` as one product per channel."""

    def forward(self, x, weight, bias):
        batch, channels, length = x.shape
        kernel = weight.shape[1]
        windows = F.pad(x, (kernel - 1, 0)).unfold(2, kernel, 1)              # [b, d, l, K]
        windows = windows.permute(1, 0, 2, 3).reshape(channels, batch * length, kernel)
        out = torch.matmul(windows, weight[:, :, None])                       # [d, b·l, 1]
        return out.reshape(channels, batch, length).permute(1, 0, 2) + bias[None, :, None]


class SSD(nn.Module):
    """``mamba_chunk_scan_combined`` with ``dt_softplus`` and the ``D`` skip, chunk by chunk."""

    def __init__(self, model: ModelShape):
        super().__init__()
        self.ssd = ChunkedSSD(model)

    def forward(self, x, dt, A, B, C, D, dt_bias):
        return self.ssd(x, F.softplus(dt + dt_bias), A, B, C) + x * D[:, None]


class GatedNorm(nn.Module):
    """mamba_ssm's ``RMSNormGated`` constructor, the reference's gated norm inside."""

    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=False,
                 device=None, dtype=None):
        super().__init__()
        assert not norm_before_gate
        self.inner = GatedRMSNorm(hidden_size, hidden_size // group_size,
                                  {"device": device, "dtype": dtype}, eps)
        self.weight = self.inner.weight

    def forward(self, y, z):
        return self.inner(y, z)


@pytest.mark.parametrize("s, chunk, heads", [(10, 4, None), (12, 4, 6), (9, 128, None)])
def test_megatron_cores_mamba_mixer_counted_equals_the_registry(
        megatron_core, mamba_mixer_module, monkeypatch, s, chunk, heads):
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer import TransformerConfig

    model = ModelShape(num_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=64,
                       hybrid_layer_pattern="M", mamba_head_dim=8, mamba_num_groups=2,
                       mamba_state_dim=4, mamba_num_heads=heads, mamba_chunk_size=chunk,
                       normalization="rmsnorm")
    conv, ssd = Conv(), SSD(model)

    def causal_conv1d_fn(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None):
        assert activation in ("silu", "swish") and seq_idx is None and initial_states is None
        return F.silu(conv(x, weight, bias))

    def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                                  dt_softplus=False, return_final_states=False, **varlen):
        assert chunk_size == chunk and z is None and dt_softplus and not return_final_states
        assert not any(varlen.values())
        return ssd(x, dt, A, B, C, D, dt_bias)

    monkeypatch.setattr(mamba_mixer_module, "HAVE_MAMBA_SSM", True)
    monkeypatch.setattr(mamba_mixer_module, "causal_conv1d_fn", causal_conv1d_fn)
    monkeypatch.setattr(mamba_mixer_module, "mamba_chunk_scan_combined", mamba_chunk_scan_combined,
                        raising=False)  # never imported without mamba_ssm
    monkeypatch.setattr(mamba_mixer_module, "ExtendedRMSNorm", GatedNorm)
    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4,
                               mamba_state_dim=4, mamba_head_dim=8, mamba_num_groups=2,
                               mamba_num_heads=heads, use_mamba_mem_eff_path=False,
                               use_cpu_initialization=True, gradient_accumulation_fusion=False)
    mixer = mamba_mixer_module.MambaMixer(
        config, mamba_mixer_module.MambaMixerSubmodules(in_proj=ColumnParallelLinear,
                                                        out_proj=RowParallelLinear),
        d_model=32, chunk_size=chunk, pg_collection=ProcessGroupCollection.use_mpu_process_groups())

    # its parameters: the Mamba layer's, less the layer's pre-norm (h weights)
    assert sum(p.numel() for p in mixer.parameters()) == layer_parameters(model, 0) - 32
    assert mixer.in_proj.weight.shape == (model.mamba_in_proj_size, 32)

    counter = ComponentFlopCounter(units={mixer.in_proj: (("mamba_in_proj", 1),),
                                          conv: (("mamba_conv", 1),), ssd: (("mamba_ssd", 1),),
                                          mixer.out_proj: (("mamba_out_proj", 1),)})
    hidden = torch.randn(s, 3, 32, requires_grad=True)                        # [s, b, h]
    try:
        with counter:
            out, _ = mixer(hidden)
            counter.phase = "backward"
            out.square().sum().backward()
    finally:
        counter.remove_hooks()
    expected = {}
    for c in flops_breakdown(model, s, 3):
        if c.name.startswith("mamba"):
            expected[(c.name, "forward")] = c.forward
            expected[(c.name, "backward")] = c.backward
    assert dict(counter.counted) == expected
    assert counter.get_total_flops() == sum(expected.values())  # no matmul outside the four
