"""The reference GPT is a real model: its loss falls when trained on real text."""

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import megatron_flops
from megatron_flops.shapes import ModelShape, Recompute
from megatron_flops.reference.model import ReferenceGPT


def text_bytes() -> "torch.Tensor":
    """Real English and Python text: this package's own source files, as bytes (vocab 256)."""
    root = Path(megatron_flops.__file__).parent
    text = "".join(p.read_text() for p in sorted(root.glob("*.py")))
    return torch.tensor(list(text.encode()), dtype=torch.long)


@pytest.mark.parametrize("fields,recompute", [
    (dict(), Recompute()),
    (dict(glu_activation="swiglu", num_query_groups=2, position_embedding="rotary",
          normalization="rmsnorm", tie_embeddings=False), Recompute("full")),
    (dict(num_experts=4, moe_topk=2, expert_interval=2, position_embedding="alibi"),
     Recompute("selective")),
])
def test_loss_falls_on_real_text(fields, recompute):
    data = text_bytes()
    seq, batch, steps = 32, 8, 40
    model = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256,
                       **fields)
    torch.manual_seed(0)
    gpt = ReferenceGPT(model, seq, recompute=recompute, dropout=0.0)
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        start = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
        x = torch.stack([data[i:i + seq] for i in start])
        y = torch.stack([data[i + 1:i + seq + 1] for i in start])
        loss = gpt.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # an untrained model is near uniform over 256 bytes; training must learn byte statistics
    assert abs(losses[0] - math.log(256)) < 0.5
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, losses


def test_forward_shapes_and_dropout_modes():
    model = ModelShape(num_layers=1, hidden_size=16, num_attention_heads=2, vocab_size=64)
    gpt = ReferenceGPT(model, 8, dropout=0.1)
    ids = torch.randint(0, 64, (3, 8))
    assert gpt(ids).shape == (3, 8, 64)
    gpt.eval()
    assert torch.equal(gpt(ids), gpt(ids))


def test_causal_future_tokens_do_not_change_past_logits():
    for position in ("learned", "rotary", "alibi"):
        model = ModelShape(num_layers=2, hidden_size=16, num_attention_heads=2, vocab_size=64,
                           position_embedding=position, num_query_groups=1)
        gpt = ReferenceGPT(model, 8)
        ids = torch.randint(0, 64, (1, 8))
        changed = ids.clone()
        changed[0, 5:] = (ids[0, 5:] + 1) % 64
        assert torch.allclose(gpt(ids)[:, :5], gpt(changed)[:, :5], atol=1e-6)
        assert not torch.allclose(gpt(ids)[:, 5:], gpt(changed)[:, 5:])
