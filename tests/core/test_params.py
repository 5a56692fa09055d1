"""Parameter counts against Narayanan et al. 2021 (Efficient Large-Scale Language Model Training
on GPU Clusters Using Megatron-LM), Table 1, and a count by hand."""

import pytest

from megatron_flops.params import parameter_count
from megatron_flops.shapes import ModelShape

# Table 1 of the paper: (published billions, heads, hidden, layers); V = 51,200, s = 2048
TABLE_1 = [
    (1.7, 24, 2304, 24),
    (3.6, 32, 3072, 30),
    (7.5, 32, 4096, 36),
    (18.4, 48, 6144, 40),
    (39.1, 64, 8192, 48),
    (76.1, 80, 10240, 60),
    (145.6, 96, 12288, 80),
    (310.1, 128, 16384, 96),
    (529.6, 128, 20480, 105),
    (1008.0, 160, 25600, 128),
]


@pytest.mark.parametrize("billions,heads,hidden,layers", TABLE_1)
def test_narayanan_table_1(billions, heads, hidden, layers):
    model = ModelShape(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                       vocab_size=51200, max_position_embeddings=2048)
    # the table rounds to 0.1 B
    assert round(parameter_count(model).total / 1e9, 1) == billions


def test_count_by_hand():
    # l=2, h=8, n=2, f=32, V=16, learned positions 4, tied, LayerNorm, biases
    model = ModelShape(num_layers=2, hidden_size=8, num_attention_heads=2, vocab_size=16,
                       max_position_embeddings=4)
    embeddings = 16 * 8 + 4 * 8                   # word + position
    layer = (2 * 8                                # input LayerNorm weight + bias
             + 8 * 24 + 24                        # fused QKV h -> 3h
             + 8 * 8 + 8                          # output projection
             + 2 * 8                              # post-attention LayerNorm
             + 8 * 32 + 32 + 32 * 8 + 8)          # MLP up, down
    final_norm = 2 * 8
    count = parameter_count(model)
    assert count.total == embeddings + 2 * layer + final_norm
    assert count.non_embedding == 2 * layer + final_norm


def test_llama_like_count_by_hand():
    # untied, rotary (no position table), RMSNorm, no biases, swiglu f=11008, GQA g=8
    h, n, g, f, V, l = 4096, 32, 8, 11008, 32000, 2
    model = ModelShape(num_layers=l, hidden_size=h, num_attention_heads=n, num_query_groups=g,
                       vocab_size=V, ffn_hidden_size=f, glu_activation="swiglu",
                       tie_embeddings=False, position_embedding="rotary", add_bias_linear=False,
                       normalization="rmsnorm")
    d = h // n
    layer = h + h * (n * d + 2 * g * d) + n * d * h + h + h * 2 * f + f * h
    assert parameter_count(model).total == 2 * V * h + l * layer + h


def test_moe_and_embedding_layernorm():
    model = ModelShape(num_layers=2, hidden_size=8, num_attention_heads=2, vocab_size=16,
                       position_embedding="alibi", num_experts=4, expert_interval=2,
                       embedding_layernorm=True)
    mlp = 8 * 32 + 32 + 32 * 8 + 8
    attention_and_norms = 4 * 8 + 8 * 24 + 24 + 8 * 8 + 8
    dense_layer = attention_and_norms + mlp
    moe_layer = attention_and_norms + 8 * 4 + 4 * mlp     # bias-free router + 4 experts
    assert parameter_count(model).total == 16 * 8 + 2 * 8 + dense_layer + moe_layer + 2 * 8


def test_bloom_176b():
    # BLOOM-176B (BigScience 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual Language
    # Model", Table 3 / model card: 176,247,271,424 parameters): 70 layers, h 14336, 112 heads,
    # ALiBi, embedding LayerNorm, padded vocabulary 250,880, tied
    model = ModelShape(num_layers=70, hidden_size=14336, num_attention_heads=112,
                       vocab_size=250880, position_embedding="alibi", embedding_layernorm=True)
    assert parameter_count(model).total == 176_247_271_424
