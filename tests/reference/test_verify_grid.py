"""Counted FLOPs of the reference GPT equal the formulas, component by component, phase by phase.

Each configuration runs one forward+backward of a tiny model under FlopCounterMode (real
tensors, so MoE routing is the model's own, uneven one) and must match
``flops_breakdown`` exactly in forward, backward and recompute.
"""

import itertools

import pytest

pytest.importorskip("torch")

from megatron_flops.shapes import ModelShape, Recompute
from megatron_flops.reference.verify import verify

ACTIVATIONS = (None, "geglu", "liglu", "reglu", "swiglu")
RECOMPUTES = {
    "none": Recompute(),
    "full": Recompute("full"),
    "selective": Recompute("selective"),
    "partial-block": Recompute("full", "block", 1),  # only the first of the two layers
}
ATTENTION = {"mha": 4, "gqa": 2, "mqa": 1}  # KV heads for 4 query heads
# odd shapes, rotated over the grid so each meets every activation and recompute mode
SHAPES = (
    {},                                          # h/n = 8, ffn 4h, vocab 128
    {"kv_channels": 6},                          # d != h/n (n·d = 24 != h = 32)
    {"ffn_hidden_size": 44},                     # ffn not a multiple of h
    {"vocab_size": 136},                         # 130 tokens padded to a multiple of 8
    {"kv_channels": 10, "ffn_hidden_size": 72, "vocab_size": 200},
)
POSITIONS = ("learned", "rotary", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")

GRID = []
for i, (act, rc, att, tied) in enumerate(itertools.product(ACTIVATIONS, RECOMPUTES, ATTENTION, (True, False))):
    extra = SHAPES[i % len(SHAPES)]
    fields = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128,
                  num_query_groups=ATTENTION[att], glu_activation=act, tie_embeddings=tied,
                  position_embedding=POSITIONS[i % len(POSITIONS)],
                  normalization=NORMS[(i // 4) % 2], add_bias_linear=(i % 3 != 0),
                  embedding_layernorm=(i % 5 == 0))
    fields.update(extra)
    label = f"{act or 'gelu'}-{rc}-{att}-{'tied' if tied else 'untied'}-{i % len(SHAPES)}"
    GRID.append(pytest.param(fields, RECOMPUTES[rc], id=label))

MOE_GRID = []
MOE_FACTORS = ((2, 4), (1, 2), (1, 2), (None, "swiglu"), tuple(RECOMPUTES))
for i, choice in enumerate(itertools.product(*(range(len(f)) for f in MOE_FACTORS))):
    # half fraction: keep combinations whose level indices sum to an even number, so every
    # pair of factors still meets in all its combinations (all recompute modes × E × k × …)
    if sum(choice) % 2:
        continue
    experts, topk, interval, act, rc = (f[c] for f, c in zip(MOE_FACTORS, choice))
    fields = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128,
                  num_experts=experts, moe_topk=topk, expert_interval=interval,
                  glu_activation=act, num_query_groups=(4, 2, 1)[i % 3],
                  tie_embeddings=bool(i % 4), add_bias_linear=bool(i % 3))
    label = f"moe-E{experts}-top{topk}-every{interval}-{act or 'gelu'}-{rc}"
    MOE_GRID.append(pytest.param(fields, RECOMPUTES[rc], id=label))


def assert_exact(result):
    mismatches = [(r.name, r.counted, r.analytic) for r in result.mismatches]
    assert not mismatches, mismatches
    assert not result.problems, result.problems
    assert result.flop_counter_total == result.counted_total == result.analytic_total


@pytest.mark.parametrize("fields,recompute", GRID)
def test_dense_grid_is_exact(fields, recompute):
    result = verify(ModelShape(**fields), seq_length=8, batch_size=2, recompute=recompute, meta=False)
    assert result.mode == "real"
    assert_exact(result)
    if recompute.granularity is not None:
        assert sum(r.counted["recompute"] for r in result.rows) > 0


@pytest.mark.parametrize("fields,recompute", MOE_GRID)
def test_moe_grid_is_exact(fields, recompute):
    model = ModelShape(**fields)
    result = verify(model, seq_length=12, batch_size=2, recompute=recompute, meta=False)
    assert_exact(result)
    assert result["moe_router"].counted["forward"] > 0
    assert result["expert_up"].counted["forward"] > 0


@pytest.mark.parametrize("fields,recompute", GRID[::9] + MOE_GRID[::4])
def test_meta_tensors_count_the_same(fields, recompute):
    model = ModelShape(**fields)
    real = verify(model, seq_length=8, batch_size=2, recompute=recompute, meta=False)
    meta = verify(model, seq_length=8, batch_size=2, recompute=recompute, meta=True)
    assert meta.mode == "meta"
    assert_exact(meta)
    assert [r.counted for r in meta.rows] == [r.counted for r in real.rows]


@pytest.mark.parametrize("recompute,pipeline,recomputed", [
    (Recompute("full", "block", 1), 2, {0, 2}),       # first layer of each of 2 stages
    (Recompute("full", "block", 2), 1, {0, 1}),
    (Recompute("full", "uniform", 2), 1, {0, 1, 2, 3}),  # chunks of 2 layers, all recomputed
    (Recompute("full", "uniform", 3), 1, {0, 1, 2, 3}),  # a chunk of 3 and one of 1
])
def test_partial_and_chunked_recompute(recompute, pipeline, recomputed):
    model = ModelShape(num_layers=4, hidden_size=16, num_attention_heads=2, vocab_size=64,
                       glu_activation="reglu")
    result = verify(model, seq_length=8, batch_size=1, recompute=recompute,
                    pipeline_parallel_size=pipeline, meta=False)
    assert_exact(result)
    # recompute of a component is its forward in the recomputed layers: len(recomputed)/4 of it
    q = result["query"]
    assert q.counted["recompute"] * 4 == q.counted["forward"] * len(recomputed)


def test_counts_match_a_hand_derivation():
    """DESIGN §2 per layer: 24·B·s·h² + 4·B·s²·h forward (defaults), logits 2·B·s·h·V.

    With full recompute the hardware count is 4 × layers' forward + 3 × logits' forward.
    """
    B, s, h, layers, V = 2, 16, 32, 3, 96
    model = ModelShape(num_layers=layers, hidden_size=h, num_attention_heads=4, vocab_size=V)
    result = verify(model, seq_length=s, batch_size=B, recompute=Recompute("full"), meta=False)
    layer_forward = 24 * B * s * h * h + 4 * B * s * s * h
    logits_forward = 2 * B * s * h * V
    assert result.flop_counter_total == 4 * layers * layer_forward + 3 * logits_forward
    assert_exact(result)


def test_moe_counts_every_routed_token():
    """Router 2·T·h·E plus top-k full MLPs per token, whatever the (uneven) routing."""
    B, s, h, E, k = 2, 16, 32, 4, 2
    model = ModelShape(num_layers=1, hidden_size=h, num_attention_heads=4, vocab_size=64,
                       num_experts=E, moe_topk=k, expert_interval=1)
    result = verify(model, seq_length=s, batch_size=B, meta=False)
    T = B * s
    assert result["moe_router"].counted["forward"] == 2 * T * h * E
    assert result["expert_up"].counted["forward"] == k * 2 * T * h * 4 * h
    assert result["expert_down"].counted["forward"] == k * 2 * T * 4 * h * h
    assert_exact(result)
