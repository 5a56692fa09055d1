"""--attention sdpa: the fused kernel computes the same attention, and its FLOPs are given
explicitly to FlopCounterMode (which counts 0 for the CPU flash kernel, DESIGN.md §4)."""

import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from megatron_flops.demo.fused import sdpa_flop_mapping, use_sdpa_attention  # noqa: E402
from megatron_flops.reference.model import ReferenceGPT  # noqa: E402
from megatron_flops.shapes import ModelShape  # noqa: E402


@pytest.mark.parametrize("shape", [
    ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256,
               num_query_groups=2),
    ModelShape(num_layers=1, hidden_size=64, num_attention_heads=4, vocab_size=256,
               position_embedding="alibi"),
], ids=["gqa", "alibi-mask"])
def test_fused_attention_matches_and_is_counted_exactly(shape):
    torch.manual_seed(0)
    matmul = ReferenceGPT(shape, 32)
    fused = ReferenceGPT(shape, 32)
    fused.load_state_dict(matmul.state_dict())
    use_sdpa_attention(fused)
    ids = torch.randint(0, 256, (2, 32))
    assert fused.loss(ids, ids).item() == pytest.approx(matmul.loss(ids, ids).item(), rel=1e-5)

    with FlopCounterMode(display=False) as reference:
        matmul.loss(ids, ids).backward()
    with FlopCounterMode(display=False, custom_mapping=sdpa_flop_mapping()) as counted:
        fused.loss(ids, ids).backward()
    with FlopCounterMode(display=False) as uncounted:
        fused.loss(ids, ids).backward()
    assert counted.get_total_flops() == reference.get_total_flops()
    # without the mapping the CPU flash kernel is not counted (if it ran: a float mask
    # may take another kernel that FlopCounterMode does count)
    assert uncounted.get_total_flops() <= reference.get_total_flops()
