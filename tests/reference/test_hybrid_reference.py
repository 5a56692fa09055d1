"""Hybrid Mamba models counted: FlopCounterMode on the reference model equals the registry.

Megatron-Core's ``MambaMixer`` needs mamba_ssm's CUDA/Triton kernels, so the Mamba-2 mixer
here is the reference one (``megatron_flops.reference.mamba``): the same matmul shapes, the
chunked SSD written as plain ``bmm`` s.  First it is shown to *be* the SSD — its output equals
the SSM's token-by-token recurrence — and its convolution Megatron's causal depthwise conv;
then whole hybrid models are counted, component by component and phase by phase (forward,
backward, recompute), against ``flops_breakdown`` (hand derivations: tests/core/test_hybrid.py).
"""

import itertools

import pytest

torch = pytest.importorskip("torch")

from megatron_flops.reference.mamba import CausalConv1d, ChunkedSSD, MambaMixer  # noqa: E402
from megatron_flops.reference.verify import count_flops, verify  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

MAMBA = dict(mamba_head_dim=8, mamba_num_groups=2, mamba_state_dim=4)


def shape(pattern="M*-EM", **changes):
    fields = dict(num_layers=len(pattern.split("/")[0].replace("|", "")), hidden_size=32,
                  num_attention_heads=4, vocab_size=64, hybrid_layer_pattern=pattern,
                  num_experts=4, moe_topk=2, normalization="rmsnorm",
                  max_position_embeddings=64, mamba_chunk_size=4, **MAMBA)
    fields.update(changes)
    return ModelShape(**fields)


def sequential_ssm(x, dt, A, B, C, heads_per_group):
    """The SSM one token at a time: h ← exp(dt·A)·h + dt·B·xᵀ, y = C·h (per head)."""
    batch, s, heads, head_dim = x.shape
    state = torch.zeros(batch, heads, B.shape[-1], head_dim, dtype=x.dtype)
    Bh = B.repeat_interleave(heads_per_group, dim=2)
    Ch = C.repeat_interleave(heads_per_group, dim=2)
    ys = []
    for t in range(s):
        decay = torch.exp(dt[:, t] * A)[..., None, None]                      # [b, H, 1, 1]
        state = decay * state + (dt[:, t, :, None, None] * Bh[:, t, :, :, None]
                                 * x[:, t, :, None, :])
        ys.append(torch.einsum("bhn,bhnp->bhp", Ch[:, t], state))
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize("s, chunk", [(12, 4), (10, 4), (3, 4), (8, 8)])
def test_the_chunked_ssd_is_the_recurrence(s, chunk):
    torch.manual_seed(0)
    model = shape(mamba_chunk_size=chunk)
    heads, groups = model.mamba_heads, model.mamba_num_groups
    x = torch.randn(2, s, heads, model.mamba_head_dim, dtype=torch.float64)
    dt = torch.rand(2, s, heads, dtype=torch.float64) * 0.5
    A = -torch.rand(heads, dtype=torch.float64) * 2
    B = torch.randn(2, s, groups, model.mamba_state_dim, dtype=torch.float64)
    C = torch.randn(2, s, groups, model.mamba_state_dim, dtype=torch.float64)
    chunked = ChunkedSSD(model)(x, dt, A, B, C)
    assert torch.allclose(chunked, sequential_ssm(x, dt, A, B, C, heads // groups), atol=1e-10)


def test_the_conv_is_megatrons_causal_depthwise_conv():
    """MambaMixer's fallback without causal_conv1d: nn.Conv1d(C, C, K, groups=C, padding=K-1),
    the first s outputs."""
    torch.manual_seed(0)
    conv = CausalConv1d(6, 4, {"dtype": torch.float64})
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    reference = torch.nn.functional.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=3,
                                           groups=6)[..., :9].transpose(1, 2)
    assert torch.allclose(conv(x), reference, atol=1e-12)


def test_the_mixer_has_megatrons_parameter_shapes():
    """MambaMixer at d98e8a64: in_proj [2·di + 2·G·N + H, h], conv1d [di + 2·G·N, 1, K] and
    bias, dt_bias/A_log/D [H], norm [di], out_proj [h, di]; no projection bias."""
    model = shape()
    mixer = MambaMixer(model, {})
    h, di, heads = 32, model.mamba_inner_size, model.mamba_heads
    assert (di, heads) == (64, 8)
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {"in_proj.weight": (2 * 64 + 2 * 2 * 4 + 8, h), "conv.weight": (80, 1, 4),
                      "conv.bias": (80,), "dt_bias": (8,), "A_log": (8,), "D": (8,),
                      "norm.weight": (64,), "out_proj.weight": (h, 64)}


RECOMPUTES = {"none": Recompute(), "full": Recompute("full"),
              "selective": Recompute("selective"), "block": Recompute("full", "block", 2)}
CASES = [
    # pattern, seq length (chunk 4: 10 leaves a chunk of 2; 3 is one short chunk), changes
    ("M*-EM", 10, {}),
    ("MM*M-", 8, dict(glu_activation="swiglu", num_query_groups=2, num_experts=1)),
    ("M-M-|M*M-", 12, dict(position_embedding="rotary", tie_embeddings=False, num_experts=1)),
    ("MEM*E", 3, dict(glu_activation="geglu", mamba_num_heads=6, mamba_head_dim=4)),
]


@pytest.mark.parametrize("case, recompute", list(itertools.product(range(len(CASES)), RECOMPUTES)))
def test_a_hybrid_model_counted_equals_the_registry(case, recompute):
    pattern, s, changes = CASES[case]
    model = shape(pattern, **changes)
    result = verify(model, s, batch_size=2, recompute=RECOMPUTES[recompute], meta=False)
    assert result.exact and not result.problems, [r for r in result.rows if not r.exact]
    names = {row.name for row in result.rows}
    assert {"mamba_in_proj", "mamba_conv", "mamba_ssd", "mamba_out_proj"} <= names
    assert result.counted_total == result.flop_counter_total  # nothing unattributed


@pytest.mark.slow
def test_a_nemotron_h_8b_shape_on_meta_tensors():
    """Nemotron-H 8B's layers (h 4096, 128 Mamba heads of 64, G 8, N 128, GQA 32/8, squared
    ReLU MLP 21504) at s 512, as meta tensors: every component exact (4 chunks of Q = 128)."""
    pattern = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
    model = ModelShape(num_layers=len(pattern), hidden_size=4096, num_attention_heads=32,
                       num_query_groups=8, ffn_hidden_size=21504, vocab_size=131072,
                       hybrid_layer_pattern=pattern, mamba_num_heads=128, mamba_head_dim=64,
                       mamba_num_groups=8, mamba_state_dim=128, normalization="rmsnorm",
                       add_bias_linear=False, position_embedding="none", tie_embeddings=False)
    result = verify(model, 512, batch_size=1, meta=True)
    assert result.mode == "meta" and result.exact, [r for r in result.rows if not r.exact]


def test_the_ssd_is_what_flop_counter_sees_in_a_bare_mixer():
    """One mixer's forward under FlopCounterMode = in_proj + conv + SSD + out_proj of the
    registry (nothing else in it is a counted op)."""
    from torch.utils.flop_counter import FlopCounterMode
    from megatron_flops.flops import layer_forward_flops
    model = shape("M")
    mixer = MambaMixer(model, {})
    torch.nn.init.normal_(mixer.conv.weight)
    with FlopCounterMode(display=False) as counter:
        mixer(torch.randn(3, 10, 32))
    assert counter.get_total_flops() == 3 * sum(layer_forward_flops(model, 10, 0).values())


def test_count_flops_runs_the_hybrid_layers():
    counter, mode = count_flops(shape(), 10, 1, meta=True)
    assert mode == "meta" and counter.counted[("mamba_ssd", "forward")] > 0
