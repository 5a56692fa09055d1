"""The ``megatron-bridge`` convention's eras and its differences from the exact count, each
derived by hand from the terms of Bridge's ``flop_utils.py`` (read at the commits named in
``MEGATRON_BRIDGE_ERAS``).  Equality with Bridge's own function: tests/megatron_bridge."""

import pytest

from megatron_flops.conventions import (CONVENTIONS_BY_NAME, RunFacts, convention,
                                        megatron_bridge_current_flops, megatron_bridge_era,
                                        megatron_lm_current_flops)
from megatron_flops.errors import UsageError
from megatron_flops.flops import flops_breakdown
from megatron_flops.shapes import ModelShape

# Llama-3-8B as Megatron-Bridge's Llama3ModelProvider8B builds it (vocab 128256 is a multiple
# of 128, so the model's and the formula's vocabularies agree)
LLAMA3_8B = ModelShape(num_layers=32, hidden_size=4096, num_attention_heads=32, vocab_size=128256,
                       num_query_groups=8, ffn_hidden_size=14336, glu_activation="swiglu",
                       tie_embeddings=False, position_embedding="rotary", add_bias_linear=False,
                       normalization="rmsnorm")
# Qwen3-30B-A3B (Qwen3MoEModelProvider30B_A3B): 128 experts, top-8, every layer MoE
QWEN3_30B_A3B = ModelShape(num_layers=48, hidden_size=2048, num_attention_heads=32,
                           vocab_size=151936, num_query_groups=4, kv_channels=128,
                           ffn_hidden_size=6144, moe_ffn_hidden_size=768, num_experts=128,
                           moe_topk=8, moe_layer_freq=1, glu_activation="swiglu",
                           tie_embeddings=False, position_embedding="rotary",
                           add_bias_linear=False, normalization="rmsnorm")


def _facts(model, batch=128, seq=8192):
    return RunFacts(model, batch, seq)


def test_releases_dates_and_commits_pick_the_era_read_at_their_tag():
    assert megatron_bridge_era("0.3.1").name == "megatron-bridge@2025-09"
    assert megatron_bridge_era("v0.4.2").name == "megatron-bridge@2025-09"
    assert megatron_bridge_era("0.5.0").name == "megatron-bridge@2026-05"
    assert megatron_bridge_era("0.6.0").name == "megatron-bridge@2026-06"
    assert megatron_bridge_era("2026-04").name == "megatron-bridge@2026-03"
    assert megatron_bridge_era("2026-05-27").name == "megatron-bridge@2026-03"
    assert megatron_bridge_era("baa0259bd").name == "megatron-bridge@2026-05"
    assert convention("megatron-bridge@0.3.1").name == "megatron-bridge@2025-09"
    for bad in ("2025-01-01", "deadbeef", "yesterday"):
        with pytest.raises(UsageError):
            megatron_bridge_era(bad)


def test_registry_shows_today_and_the_distinct_eras():
    for name in ("megatron-bridge", "megatron-bridge@2025-09", "megatron-bridge@2026-03"):
        assert name in CONVENTIONS_BY_NAME


def test_without_window_or_other_glu_bridge_is_megatron_lms_formula():
    for model in (LLAMA3_8B, QWEN3_30B_A3B):
        facts = _facts(model)
        assert megatron_bridge_current_flops(facts) == megatron_lm_current_flops(facts)
        assert convention("megatron-bridge@0.3.1").flops(facts) == megatron_lm_current_flops(facts)


def test_llama3_8b_differs_from_exact_by_half_the_core_attention_only():
    # Bridge: 6·q·s per token per layer for QKᵀ and A·V together = half the dense 2·2·q·s·3
    facts = _facts(LLAMA3_8B)
    exact = flops_breakdown(LLAMA3_8B, 8192, 128)
    core = exact["attention_scores"].model_flops + exact["attention_over_values"].model_flops
    assert exact.model_flops - convention("megatron-bridge").flops(facts) == core / 2


def test_qwen3_moe_differs_by_half_the_core_attention_and_the_router():
    facts = _facts(QWEN3_30B_A3B, batch=64, seq=4096)
    exact = flops_breakdown(QWEN3_30B_A3B, 4096, 64)
    core = exact["attention_scores"].model_flops + exact["attention_over_values"].model_flops
    router = exact["moe_router"].model_flops
    T, h, E, layers = 64 * 4096, 2048, 128, 48
    assert router == 6 * T * h * E * layers  # [T × h]·[h × E], forward + backward
    assert exact.model_flops - convention("megatron-bridge").flops(facts) == core / 2 + router


def test_geglu_mlp_counted_as_two_gemms_until_2026_05():
    # activation_func == F.silu gated the 3/2 factor: a GeGLU MLP lost its gate GEMM,
    # 2·T·h·f per layer forward, × 3 passes
    geglu = ModelShape(num_layers=4, hidden_size=256, num_attention_heads=8, vocab_size=32768,
                       ffn_hidden_size=1024, glu_activation="geglu")
    facts = _facts(geglu, batch=32, seq=512)
    gate = 6 * (32 * 512) * 256 * 1024 * 4
    assert (convention("megatron-bridge").flops(facts)
            - convention("megatron-bridge@2025-09").flops(facts)) == gate
    swiglu = ModelShape(num_layers=4, hidden_size=256, num_attention_heads=8, vocab_size=32768,
                        ffn_hidden_size=1024, glu_activation="swiglu")
    facts = _facts(swiglu, batch=32, seq=512)
    assert convention("megatron-bridge").flops(facts) == \
        convention("megatron-bridge@2025-09").flops(facts)


def test_sliding_window_layers_by_era():
    # window (127, 0): W = 128 keys (127 behind + self); skip freq 3 keeps layers 3 and 6 full;
    # s = 1024, B = 2, n·d = 256
    model = ModelShape(num_layers=6, hidden_size=256, num_attention_heads=4, vocab_size=32768,
                       ffn_hidden_size=1024, window_size=127, window_attn_skip_freq=3)
    facts = _facts(model, batch=2, seq=1024)
    T, q, s, W, windowed = 2 * 1024, 256, 1024, 128, 4
    full = megatron_lm_current_flops(facts)         # every layer causal: 6·q·s per token
    per_layer_full = 6 * q * s * T
    band = 12 * q * T * (W - W * (W - 1) / (2 * s))   # keys per query over the causal band
    assert convention("megatron-bridge@2025-09").flops(facts) == full
    assert convention("megatron-bridge@2026-03").flops(facts) == pytest.approx(
        full + windowed * (6 * q * W * T - per_layer_full), rel=1e-15)
    assert convention("megatron-bridge").flops(facts) == pytest.approx(
        full + windowed * (band - per_layer_full), rel=1e-15)


def test_packed_squares_replace_the_core_attention_only():
    # THD: two documents of 512 and 512 in each 1024-token sample: Σsᵢ² = B·2·512²
    facts = _facts(LLAMA3_8B, batch=4, seq=1024)
    squares = 4 * 2 * 512 ** 2
    q, layers = 4096, 32
    assert megatron_bridge_current_flops(facts) - megatron_bridge_current_flops(
        facts, seqlen_squared_sum=squares) == 6 * q * layers * (4 * 1024 ** 2 - squares)
