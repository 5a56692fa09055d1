"""The breakdown against independent derivations: by hand, Narayanan et al. 2021 Eq. 3, and
the seed's 24/32·B·s·h² per-layer identities.  Property tests check structure."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_flops.flops import COMPONENTS, flops_breakdown
from megatron_flops.shapes import ModelShape, Recompute

FULL = Recompute("full")
SELECTIVE = Recompute("selective")


def tiny(**overrides):
    shape = dict(num_layers=2, hidden_size=8, num_attention_heads=2, vocab_size=16)
    shape.update(overrides)
    return ModelShape(**shape)


def test_tiny_model_by_hand():
    # l=2, h=8, n=2 -> d=4, g=2, f=4h=32, V=16; B=3, s=4 (T = 12 tokens)
    b = flops_breakdown(tiny(), seq_length=4, batch_size=3)
    layers = 2
    # Q: [12 × 8]·[8 × 8] = 2·12·8·8 = 1536 per layer
    assert b["query"].forward == layers * 1536
    # K,V: [12 × 8]·[8 × 16] = 2·12·8·16 = 3072 per layer
    assert b["key_value"].forward == layers * 3072
    # scores: B·n = 6 products [4 × 4]·[4 × 4] = 6 · 2·4·4·4 = 768 per layer
    assert b["attention_scores"].forward == layers * 768
    # A·V: 6 products [4 × 4]·[4 × 4] = 768 per layer
    assert b["attention_over_values"].forward == layers * 768
    # output projection: [12 × 8]·[8 × 8] = 1536
    assert b["attention_output"].forward == layers * 1536
    # MLP up [12 × 8]·[8 × 32] = 6144, down [12 × 32]·[32 × 8] = 6144
    assert b["mlp_up"].forward == layers * 6144
    assert b["mlp_down"].forward == layers * 6144
    # logits once: [12 × 8]·[8 × 16] = 3072
    assert b["logits"].forward == 3072
    names = [c.name for c in b]
    assert "mlp_gate" not in names and "moe_router" not in names
    forward = layers * (1536 + 3072 + 768 + 768 + 1536 + 6144 + 6144) + 3072
    assert b.forward_flops == forward
    assert b.model_flops == 3 * forward
    assert b.hardware_flops == b.model_flops  # no recompute
    for c in b:
        assert c.backward == 2 * c.forward
        assert c.recompute == 0


def eq3_hardware(B, s, l, h, V):
    """Narayanan et al. 2021, Eq. 3: 96·B·s·l·h²·(1 + s/6h + V/16lh), exactly."""
    return 96 * B * s * l * h * h * (1 + Fraction(s, 6 * h) + Fraction(V, 16 * l * h))


@pytest.mark.parametrize("B,s,l,h,n,V", [
    (512, 2048, 24, 2304, 24, 51200),      # Table 1, 1.7B
    (1536, 2048, 96, 12288, 96, 51200),    # GPT-3 175B shape
    (1, 128, 3, 96, 4, 1000),
])
def test_narayanan_eq3_is_full_recompute_hardware_flops(B, s, l, h, n, V):
    model = ModelShape(num_layers=l, hidden_size=h, num_attention_heads=n, vocab_size=V)
    b = flops_breakdown(model, s, B, FULL)
    assert b.hardware_flops == eq3_hardware(B, s, l, h, V)
    # model FLOPs: the same without the recompute forward of the layers
    assert b.model_flops == 72 * B * s * l * h * h + 12 * B * s * s * l * h + 6 * B * s * h * V


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 64), s=st.integers(1, 4096), l=st.integers(1, 64),
       n=st.integers(1, 32), d=st.integers(1, 256), V=st.integers(1, 300000))
def test_eq3_identity_holds_for_any_default_shape(B, s, l, n, d, V):
    h = n * d
    model = ModelShape(num_layers=l, hidden_size=h, num_attention_heads=n, vocab_size=V)
    assert flops_breakdown(model, s, B, FULL).hardware_flops == eq3_hardware(B, s, l, h, V)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 16), s=st.integers(1, 2048), n=st.integers(1, 16), d=st.integers(1, 128),
       glu=st.sampled_from([None, "geglu", "liglu", "reglu", "swiglu"]))
def test_per_layer_24_and_32_coefficients(B, s, n, d, glu):
    # the seed's identity: a layer is 24·B·s·h² + 4·B·s²·h forward, 32·B·s·h² + 4·B·s²·h with
    # a GLU whose branches are f = 4h each (only the MLP term grows: 16 -> 24 B·s·h²)
    h = n * d
    model = ModelShape(num_layers=1, hidden_size=h, num_attention_heads=n, vocab_size=1,
                       glu_activation=glu)
    b = flops_breakdown(model, s, B)
    layer = b.forward_flops - b["logits"].forward
    coefficient = 32 if glu else 24
    assert layer == coefficient * B * s * h * h + 4 * B * s * s * h


def test_glu_with_llama_ffn_by_hand():
    # LLaMA-7B-like layer: h=4096, n=32, f=11008 per branch (swiglu), s=2048, B=1
    model = ModelShape(num_layers=1, hidden_size=4096, num_attention_heads=32, vocab_size=32000,
                       ffn_hidden_size=11008, glu_activation="swiglu")
    b = flops_breakdown(model, 2048, 1)
    T, h, f = 2048, 4096, 11008
    # up and gate each [T × h]·[h × f], down [T × f]·[f × h]
    assert b["mlp_up"].forward == 2 * T * h * f
    assert b["mlp_gate"].forward == 2 * T * h * f
    assert b["mlp_down"].forward == 2 * T * f * h
    # the bigscience formula assumes 32·B·s·h² for the whole layer, i.e. an MLP of 24·T·h²
    mlp = b["mlp_up"].forward + b["mlp_gate"].forward + b["mlp_down"].forward
    assert mlp == 6 * T * h * f
    assert Fraction(24 * T * h * h, mlp) == Fraction(4 * h, f)  # 1.488× too much at this f


def test_gqa_and_kv_channels_by_hand():
    # h=12, n=6 heads of d=5 (kv_channels ≠ h/n), g=2 KV heads; B=1, s=3
    model = ModelShape(num_layers=1, hidden_size=12, num_attention_heads=6, kv_channels=5,
                       num_query_groups=2, vocab_size=7, ffn_hidden_size=20)
    b = flops_breakdown(model, 3, 1)
    assert b["query"].forward == 2 * 3 * 12 * 30          # [3 × 12]·[12 × n·d=30]
    assert b["key_value"].forward == 2 * 3 * 12 * 20      # [3 × 12]·[12 × 2·g·d=20]
    assert b["attention_scores"].forward == 6 * 2 * 3 * 5 * 3   # n × [3 × 5]·[5 × 3]
    assert b["attention_over_values"].forward == 6 * 2 * 3 * 3 * 5
    assert b["attention_output"].forward == 2 * 3 * 30 * 12
    assert b["mlp_up"].forward == 2 * 3 * 12 * 20
    assert b["logits"].forward == 2 * 3 * 12 * 7


def test_mqa_key_value_is_one_head():
    model = ModelShape(num_layers=1, hidden_size=64, num_attention_heads=8, num_query_groups=1,
                       vocab_size=10)
    # K and V: [s × 64]·[64 × 2·1·8]
    assert flops_breakdown(model, 10, 1)["key_value"].forward == 2 * 10 * 64 * 16


def test_causal_halves_only_the_attention_core():
    model = tiny(num_layers=3)
    dense = flops_breakdown(model, 16, 2)
    causal = flops_breakdown(model, 16, 2, causal=True)
    for c in dense:
        expected = c.forward // 2 if c.name in ("attention_scores", "attention_over_values") else c.forward
        assert causal[c.name].forward == expected


def test_selective_recompute_reruns_the_attention_core_of_every_layer():
    model = tiny(num_layers=4)
    b = flops_breakdown(model, 16, 2, SELECTIVE)
    for c in b:
        if c.name in ("attention_scores", "attention_over_values"):
            assert c.recompute == c.forward
        else:
            assert c.recompute == 0


def test_full_recompute_never_reruns_logits():
    b = flops_breakdown(tiny(), 16, 2, FULL)
    assert b["logits"].recompute == 0
    assert all(c.recompute == c.forward for c in b if c.name != "logits")


def test_block_recompute_counts_first_layers_of_each_stage():
    # 8 layers on 2 stages (4 each); block method with 1 layer -> layers 0 and 4 recomputed
    model = tiny(num_layers=8)
    block = Recompute("full", "block", 1)
    assert block.recomputed_layers(8, 2) == frozenset({0, 4})
    b = flops_breakdown(model, 16, 2, block, pipeline_parallel_size=2)
    per_layer_query = flops_breakdown(tiny(num_layers=1), 16, 2)["query"].forward
    assert b["query"].recompute == 2 * per_layer_query
    # uniform recomputes every layer whatever --recompute-num-layers says
    assert Recompute("full", "uniform", 3).recomputed_layers(8, 2) == frozenset(range(8))


def test_moe_layers_by_hand():
    # 4 layers, expert_interval 2 -> layers 2 and 4 (1-based) are MoE with E=8, top-2
    model = ModelShape(num_layers=4, hidden_size=16, num_attention_heads=2, vocab_size=32,
                       num_experts=8, moe_topk=2, expert_interval=2)
    assert [model.experts_in_layer(i) for i in range(4)] == [1, 8, 1, 8]
    B, s, T, h, f = 2, 5, 10, 16, 64
    b = flops_breakdown(model, s, B)
    assert b["mlp_up"].forward == 2 * (2 * T * h * f)            # two dense layers
    assert b["moe_router"].forward == 2 * (2 * T * h * 8)        # [T × h]·[h × E], two layers
    assert b["expert_up"].forward == 2 * (2 * (2 * T * h * f))   # top-2 per token
    assert b["expert_down"].forward == 2 * (2 * (2 * T * f * h))


def test_pyramid_moe_list_of_experts():
    model = ModelShape(num_layers=4, hidden_size=16, num_attention_heads=2, vocab_size=32,
                       num_experts=(4, 16), expert_interval=2)
    assert [model.experts_in_layer(i) for i in range(4)] == [1, 4, 1, 16]
    b = flops_breakdown(model, 5, 1)
    assert b["moe_router"].forward == 2 * 5 * 16 * 4 + 2 * 5 * 16 * 16


shapes = st.builds(
    lambda l, n, d, g_div, ffn, V, glu, tie: ModelShape(
        num_layers=l, hidden_size=n * d, num_attention_heads=n, vocab_size=V,
        num_query_groups=n // g_div if n % g_div == 0 else n, ffn_hidden_size=ffn,
        glu_activation=glu, tie_embeddings=tie),
    l=st.integers(1, 8), n=st.integers(1, 8), d=st.integers(1, 16), g_div=st.integers(1, 4),
    ffn=st.integers(1, 200), V=st.integers(1, 1000),
    glu=st.sampled_from([None, "geglu", "swiglu"]), tie=st.booleans())
recomputes = st.sampled_from([Recompute(), FULL, SELECTIVE, Recompute("full", "block", 1)])


@settings(max_examples=80, deadline=None)
@given(model=shapes, s=st.integers(1, 64), B=st.integers(1, 32), k=st.integers(2, 5),
       recompute=recomputes, causal=st.booleans())
def test_linear_in_batch_size(model, s, B, k, recompute, causal):
    one = flops_breakdown(model, s, B, recompute, causal=causal)
    many = flops_breakdown(model, s, k * B, recompute, causal=causal)
    for a, b in zip(one, many):
        assert (b.forward, b.backward, b.recompute) == (k * a.forward, k * a.backward, k * a.recompute)
    assert many.hardware_flops == k * one.hardware_flops


@settings(max_examples=80, deadline=None)
@given(model=shapes, s=st.integers(1, 64), B=st.integers(1, 8), recompute=recomputes)
def test_breakdown_sums_to_totals(model, s, B, recompute):
    b = flops_breakdown(model, s, B, recompute)
    assert sum(c.forward + c.backward for c in b) == b.model_flops
    assert sum(c.hardware_flops for c in b) == b.hardware_flops
    assert b.hardware_flops - b.model_flops == sum(c.recompute for c in b)
    assert [c.name for c in b] == [n for n in COMPONENTS if n in {c.name for c in b}]


@settings(max_examples=60, deadline=None)
@given(model=shapes, s=st.integers(1, 64), B=st.integers(1, 8), recompute=recomputes,
       glu=st.sampled_from(["geglu", "liglu", "reglu", "swiglu"]))
def test_glu_touches_only_mlp_terms(model, s, B, recompute, glu):
    from dataclasses import replace
    plain = flops_breakdown(replace(model, glu_activation=None), s, B, recompute)
    gated = flops_breakdown(replace(model, glu_activation=glu), s, B, recompute)
    for c in gated:
        if c.name == "mlp_gate":
            assert c.forward == gated["mlp_up"].forward
        else:
            assert c == plain[c.name]


@settings(max_examples=60, deadline=None)
@given(l=st.integers(1, 8), n=st.integers(1, 8), d=st.integers(1, 16), V=st.integers(1, 500),
       s=st.integers(1, 64), B=st.integers(1, 8), recompute=recomputes)
def test_gqa_with_g_equal_n_is_mha(l, n, d, V, s, B, recompute):
    mha = ModelShape(num_layers=l, hidden_size=n * d, num_attention_heads=n, vocab_size=V)
    gqa = ModelShape(num_layers=l, hidden_size=n * d, num_attention_heads=n, vocab_size=V,
                     num_query_groups=n)
    assert flops_breakdown(mha, s, B, recompute) == flops_breakdown(gqa, s, B, recompute)
    # by hand, MHA: K and V are each [T × h]·[h × n·d], as wide as Q -> key_value = 2 × query
    b = flops_breakdown(gqa, s, B, recompute)
    h = n * d
    assert b["query"].forward == l * 2 * B * s * h * n * d
    assert b["key_value"].forward == l * 2 * B * s * h * 2 * n * d


def test_untied_embeddings_do_not_change_flops():
    # the logits matmul is the same whether its weight is the embedding table or its own
    assert (flops_breakdown(tiny(), 8, 2).hardware_flops
            == flops_breakdown(tiny(tie_embeddings=False), 8, 2).hardware_flops)
    # by hand: B=2, s=8 -> T=16; logits [16 × 8]·[8 × 16] once, 3 passes, never recomputed;
    # layers as in test_tiny_model_by_hand at T=16 (4/3 of its T=12 counts; attention at s=8)
    untied = flops_breakdown(tiny(tie_embeddings=False), 8, 2, FULL)
    assert untied["logits"].forward == 2 * 16 * 8 * 16
    layer = 2 * 16 * 8 * (8 + 16 + 8 + 32 + 32) + 2 * 2 * (2 * 8 * 4 * 8) * 2
    assert untied.hardware_flops == 4 * 2 * layer + 3 * untied["logits"].forward
