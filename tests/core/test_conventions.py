"""Each framework's convention reproduces that framework's own published figures.

Expected values are the published numbers (cited per test) or hand derivations written next
to them — never our own output.
"""

import json

import pytest

from megatron_flops.cli import main
from megatron_flops.conventions import (CONVENTIONS_BY_NAME, compare_conventions, convention,
                                        llm_foundry_flops_per_sequence, megatron_lm_era,
                                        six_n_plus_attention)
from megatron_flops.fp8 import Fp8Recipe, fp8_flops, mixed_peak_tflops
from megatron_flops.flops import flops_breakdown
from megatron_flops.hardware import implausible_utilisation_warning, peak_tflops
from megatron_flops.params import parameter_count
from megatron_flops.shapes import ModelShape, Recompute

GPT2_124M = ModelShape(num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=50304,
                       max_position_embeddings=1024)


def per_token(name, model, seq):
    return compare_conventions(model, 1, seq, names=[name])[name].flops_per_iteration / seq


def test_nanogpt_gpt2_124m_is_855383040_flops_per_token():
    # karpathy/nanoGPT model.py estimate_mfu, GPT-2 124M with vocab 50,304, block 1,024:
    # N = get_num_params() = 124,475,904 - wpe 786,432 = 123,689,472;
    # 6N = 742,136,832; 12·L·H·Q·T = 12·12·12·64·1024 = 113,246,208; sum 855,383,040
    assert per_token("nanogpt", GPT2_124M, 1024) == 855_383_040


def test_torchtitan_palm_6n_parameter_sets_on_gpt2():
    # torchtitan before 4ed3c536 dropped the nn.Embedding modules (wte 38,633,472 and wpe
    # 786,432), the tied output head with them: N = 85,056,000 -> 6N + 113,246,208 = 623,582,208
    assert per_token("torchtitan@2026-04", GPT2_124M, 1024) == 623_582_208
    # since, the tied head stays in: N = 123,689,472, nanoGPT's figure
    assert per_token("torchtitan", GPT2_124M, 1024) == 855_383_040
    # untied: the output layer (38,633,472 more parameters) is in either way
    untied = ModelShape(num_layers=12, hidden_size=768, num_attention_heads=12,
                        vocab_size=50304, max_position_embeddings=1024, tie_embeddings=False)
    assert per_token("torchtitan", untied, 1024) == 855_383_040
    assert per_token("torchtitan@2026-04", untied, 1024) == 855_383_040
    # PaLM and 6N count every parameter once: N = 124,475,904
    assert per_token("palm", GPT2_124M, 1024) == 6 * 124_475_904 + 113_246_208
    assert per_token("6n", GPT2_124M, 1024) == 6 * 124_475_904


def test_palm_540b_mfu_46_2_percent():
    # Chowdhery et al. 2022, PaLM, Appendix B: 540.35B parameters, L 118, H 48, Q 256,
    # T 2048, 238.3K tokens/s on 6144 TPU v4 chips (275 TFLOP/s bf16 each): MFU 46.2 %
    flops_per_token = six_n_plus_attention(540.35e9, 118, 48, 256, 2048)
    assert round(100 * flops_per_token * 238.3e3 / (6144 * 275e12), 1) == 46.2


# mosaicml/llm-foundry scripts/train/benchmarking/README.md (read at 061f2c7c): model, seq,
# GPUs, tokens/s, MFU, HFU, activation checkpointing, NumParams; n_layers / d_model from the
# MPT yamls (7b: 32 × 4096; 70b: 80 × 8192).  The H100 peak that reproduces every row to the
# printed two decimals is 989.5e12 (1979/2); the A100 one 312e12.
LLM_FOUNDRY_ROWS = [
    # (layers, d_model, seq, gpus, tokens/s, params, checkpointing, peak, mfu %, hfu %)
    (32, 4096, 2048, 8, 85144, 6658859008, False, 989.5e12, 46.44, 46.44),   # 7b H100
    (80, 8192, 2048, 64, 66523, 64862437376, True, 989.5e12, 42.57, 56.76),  # 70b H100
    (32, 4096, 2048, 8, 37130, 6658859008, False, 312e12, 64.23, 64.23),     # 7b A100 80GB
]


@pytest.mark.parametrize("row", LLM_FOUNDRY_ROWS)
def test_llm_foundry_benchmark_rows(row):
    layers, d, seq, gpus, tokens_per_s, params, ckpt, peak, mfu, hfu = row
    sequences_per_s = tokens_per_s / seq
    model = llm_foundry_flops_per_sequence(params, layers, d, seq) * sequences_per_s
    hardware = llm_foundry_flops_per_sequence(params, layers, d, seq, 4 if ckpt else 3) \
        * sequences_per_s
    assert round(100 * model / (gpus * peak), 2) == mfu
    assert round(100 * hardware / (gpus * peak), 2) == hfu


def test_llm_foundry_hfu_is_four_thirds_with_full_recompute():
    r = compare_conventions(GPT2_124M, 8, 1024, Recompute("full"), seconds_per_iteration=1.0,
                            peak_tflops=100.0, names=["llm-foundry"])["llm-foundry"]
    assert r.hfu == pytest.approx(4 / 3 * r.mfu)
    r = compare_conventions(GPT2_124M, 8, 1024, seconds_per_iteration=1.0, peak_tflops=100.0,
                            names=["llm-foundry"])["llm-foundry"]
    assert r.hfu == r.mfu


def gpt3_175b():
    return ModelShape(num_layers=96, hidden_size=12288, num_attention_heads=96,
                      vocab_size=51200, max_position_embeddings=2048)


def test_megatron_lm_jan_2021_readme_gpt3_paragraph():
    # NVIDIA/Megatron-LM README at 7cabbe67 (2021-01-27), "GPT-3 Example": global batch 1536
    # on 1024 A100s, ~32 s per iteration, "138 teraFLOPs per GPU which is 44% of the
    # theoretical peak" — Narayanan et al. Eq. 3 (full recompute), seq 2048, V 51,200.
    r = compare_conventions(gpt3_175b(), 1536, 2048, Recompute("full"),
                            seconds_per_iteration=32.0, world_size=1024,
                            peak_tflops=peak_tflops("a100", "bf16"),
                            names=["bigscience"])["bigscience"]
    assert round(r.tflops_per_gpu) == 138 and round(100 * r.mfu) == 44


# Narayanan et al. 2021 Table 1 (also images/cases_jan2021.png in Megatron-LM's README):
# heads, hidden, layers, parameters (billions), TFLOP/s per GPU, % of peak; V 51,200, s 2048.
NARAYANAN_TABLE_1 = [
    (24, 2304, 24, 1.7, 137, 44), (32, 3072, 30, 3.6, 131, 42), (32, 4096, 36, 7.5, 128, 41),
    (48, 6144, 40, 18.4, 127, 41), (64, 8192, 48, 39.1, 128, 41), (80, 10240, 60, 76.1, 133, 43),
    (96, 12288, 80, 145.6, 136, 44), (128, 16384, 90, 290.8, 142, 45),
    (128, 20480, 105, 529.6, 152, 49), (160, 25600, 128, 1008.0, 154, 49),
]


@pytest.mark.parametrize("row", NARAYANAN_TABLE_1)
def test_narayanan_table_1(row):
    heads, h, l, billions, tflops, percent = row
    model = ModelShape(num_layers=l, hidden_size=h, num_attention_heads=heads, vocab_size=51200,
                       max_position_embeddings=2048)
    # Eq. 2: P = 12·l·h²·(1 + 13/(12h) + (V + s)/(12·l·h)); we add the final LayerNorm (2h)
    eq2 = 12 * l * h * h * (1 + 13 / (12 * h) + (51200 + 2048) / (12 * l * h))
    assert parameter_count(model).total == pytest.approx(eq2 + 2 * h, rel=1e-12)
    assert round(parameter_count(model).total / 1e9, 1) == pytest.approx(billions, abs=0.1)
    # both columns are rounded: the intervals they stand for overlap at the 312 TFLOP/s peak
    peak = peak_tflops("NVIDIA A100-SXM4-80GB", "bf16")
    assert 100 * (tflops - 0.5) / peak <= percent + 0.5 and 100 * (tflops + 0.5) / peak >= percent - 0.5
    # the paper's TFLOP/s are Eq. 3 (what the bigscience convention computes): at the implied
    # time the convention gives the table's figure back, and the causal count is lower
    run = compare_conventions(model, 512, 2048, Recompute("full"), names=["bigscience"])
    assert run["bigscience"].flops_per_iteration == pytest.approx(
        96 * 512 * 2048 * l * h * h * (1 + 2048 / (6 * h) + 51200 / (16 * l * h)))


# NVIDIA/Megatron-LM README at c230e0d7 (2024-11), images/model_table.png: V 131,072,
# s 4096, H100; (heads, hidden, layers, GPUs, batch, TFLOP/s per GPU, MFU %) against 989.
MEGATRON_2024_TABLE = [
    (16, 2048, 24, 48, 192, 408.8, 41), (32, 4096, 30, 96, 192, 465.9, 47),
    (48, 6144, 32, 192, 192, 489.1, 49), (56, 7168, 48, 384, 192, 459.6, 46),
    (64, 8192, 84, 768, 384, 419.7, 42), (80, 10240, 92, 1536, 768, 420.5, 43),
    (96, 12288, 96, 2304, 1152, 432.8, 44), (128, 16384, 96, 3072, 1536, 474.4, 48),
    (144, 18432, 112, 6144, 3072, 459.9, 47),
]


@pytest.mark.parametrize("row", MEGATRON_2024_TABLE)
def test_megatron_lm_2024_readme_table_by_era(row):
    heads, h, l, gpus, batch, tflops, mfu = row
    s, V = 4096, 131072
    model = ModelShape(num_layers=l, hidden_size=h, num_attention_heads=heads, vocab_size=V,
                       max_position_embeddings=s)
    noncausal = compare_conventions(model, batch, s, names=["megatron-lm@2024-04"])
    seconds = noncausal["megatron-lm@2024-04"].flops_per_iteration / (tflops * 1e12 * gpus)
    r = compare_conventions(model, batch, s, seconds_per_iteration=seconds, world_size=gpus,
                            peak_tflops=989.0)
    assert round(100 * r["megatron-lm@2024-04"].mfu) == mfu
    # every pre-2025 era counts this GPT (ffn 4h, no GLU, MHA, d = h/n) the same
    for era in ("megatron-lm@2023-11", "megatron-lm@2024-03", "megatron-lm@2024-03-25"):
        assert r[era].tflops_per_gpu == pytest.approx(tflops, rel=1e-12)
    # by hand, per token per layer in units of 12·h²: 1 + 1 + s/h + 4 + V/(2lh) dense;
    # the causal era halves s/h
    dense = 2 + s / h + 4 + V / (2 * l * h)
    causal = dense - s / (2 * h)
    assert r["megatron-lm"].tflops_per_gpu == pytest.approx(tflops * causal / dense, rel=1e-12)
    assert r["megatron-lm@2025-03"].tflops_per_gpu == r["megatron-lm"].tflops_per_gpu


def test_megatron_lm_1_7b_today_prints_365_0():
    # the 1.7B row: 25/3 over 28/3 of 408.8
    assert round(408.8 * 25 / 28, 1) == 365.0
    model = ModelShape(num_layers=24, hidden_size=2048, num_attention_heads=16,
                       vocab_size=131072, max_position_embeddings=4096)
    r = compare_conventions(model, 192, 4096, names=["megatron-lm", "megatron-lm@2024-04"])
    seconds = r["megatron-lm@2024-04"].flops_per_iteration / (408.8e12 * 48)
    today = compare_conventions(model, 192, 4096, seconds_per_iteration=seconds, world_size=48,
                                names=["megatron-lm"])["megatron-lm"]
    assert round(today.tflops_per_gpu, 1) == 365.0


# A SwiGLU GQA model where every era differs: l 2, h 8, n 2, g 1, d 8 (kv_channels, n·d = 16
# = 2h), f 12 (GLU), V 16, s 4, B 1.
ERA_MODEL = ModelShape(num_layers=2, hidden_size=8, num_attention_heads=2, num_query_groups=1,
                       kv_channels=8, ffn_hidden_size=12, glu_activation="swiglu",
                       vocab_size=16, position_embedding="rotary")
ERAS_BY_HAND = {
    # 60·B·s·l·h² = 30720 × (1 + g/5n + s/5h + V/10lh) = 1 + 0.1 + 0.1 + 0.1
    "megatron-lm@2023-11": 30720 * 1.3,
    # 12·B·s·l·h² = 6144 × (1 + f/h + g/n + s/h + V/2lh) = 1 + 1.5 + 0.5 + 0.5 + 0.5
    "megatron-lm@2024-03": 6144 * 4.0,
    # MLP × 3/2: 1 + 2.25 + 0.5 + 0.5 + 0.5
    "megatron-lm@2024-03-25": 6144 * 4.75,
    # attention × n·d/h = 2: (1 + 0.5 + 0.5)·2 + 2.25 + 0.5
    "megatron-lm@2024-04": 6144 * 6.75,
    # causal: (1 + 0.5 + 0.25)·2 + 2.25 + 0.5
    "megatron-lm@2025-03": 6144 * 6.25,
    "megatron-lm": 6144 * 6.25,
}


def assert_eras_by_hand(model, by_hand):
    """One sample of 4 tokens: each convention in ``by_hand`` gives its hand-derived FLOPs."""
    r = compare_conventions(model, 1, 4, names=list(by_hand))
    for name, flops in by_hand.items():
        assert r[name].flops_per_iteration == pytest.approx(flops, rel=1e-12), name


def test_megatron_lm_eras_by_hand():
    assert_eras_by_hand(ERA_MODEL, ERAS_BY_HAND)
    # 2024-04 is our exact dense count, 2025-03 our exact causal count, for a dense model
    assert ERAS_BY_HAND["megatron-lm@2024-04"] == flops_breakdown(ERA_MODEL, 4).model_flops
    assert ERAS_BY_HAND["megatron-lm@2025-03"] == flops_breakdown(ERA_MODEL, 4,
                                                                  causal=True).model_flops



# ERA_MODEL with experts: layer 0 dense, layer 1 MoE (4 experts, top-2, --moe-ffn-hidden-size
# 4, shared experts 6), one MTP layer (built like layer 1: MoE).  n·d = 16, g·d = 8, f 12.
MOE_MTP_MODEL = ModelShape(num_layers=2, hidden_size=8, num_attention_heads=2,
                           num_query_groups=1, kv_channels=8, ffn_hidden_size=12,
                           glu_activation="swiglu", vocab_size=16, position_embedding="rotary",
                           num_experts=4, moe_topk=2, moe_layer_freq=(0, 1),
                           moe_ffn_hidden_size=4, moe_shared_expert_intermediate_size=6,
                           mtp_num_layers=1)
# per token (B 1, s 4: 4 tokens, Σs² = 16), every term × 3 passes × 2 per MAC = 6:
#   attention projections 6·(8·(16 + 2·8) + 16·8) = 2304 per layer; core 6·16 = 96 per s²
#   MLP (GLU: 3 GEMMs of h·f): dense 6·3·8·12 = 1728; MoE layer 6·3·8·(4·2 + 6) = 2016
#   logits 6·8·16 = 768 per prediction head; MTP's 2h -> h projection and 3h: 6·(128 + 24)
MOE_MTP_BY_HAND = {
    # 2025-04 on: 3 layers (dense, MoE, MTP-MoE), 2 logits, the MTP projection
    "megatron-lm": 4 * (3 * 2304 + 1728 + 2 * 2016 + 2 * 768 + 912) + 16 * 96 * 3,
    "megatron-lm@2025-04": 4 * (3 * 2304 + 1728 + 2 * 2016 + 2 * 768 + 912) + 16 * 96 * 3,
    # 8873b55d: no MTP; the dense/MoE split with moe-ffn × top-k + shared on the MoE layer
    "megatron-lm@2025-03": 4 * (2 * 2304 + 1728 + 2016 + 768) + 16 * 96 * 2,
    # the 2024 form 6144·((1 + g/n + s/h)·(n·d/h) + (f/h)·k·3/2 + (S/h)·3/2 + V/2lh) with
    # every layer MoE: 0d389f5e takes f = moe-ffn 4: (2)·2 + 0.5·2·1.5 + 0.75·1.5 + 0.5
    "megatron-lm@2025-02": 6144 * 7.125,
    # 1fa9464e: f = ffn 12 (1.5·2·1.5 = 4.5), shared 1.125
    "megatron-lm@2024-09": 6144 * 10.125,
    # before: no shared experts
    "megatron-lm@2024-04": 6144 * 9.0,
}


def test_megatron_lm_eras_by_hand_with_moe_ffn_shared_experts_and_mtp():
    assert_eras_by_hand(MOE_MTP_MODEL, MOE_MTP_BY_HAND)
    assert megatron_lm_era("2025-01-31").name == "megatron-lm@2024-09"
    assert megatron_lm_era("0d389f5e").name == "megatron-lm@2025-02"
    assert megatron_lm_era("2025-04-03").name == "megatron-lm@2025-04"


# MLA (d4f9a6f7, 2025-04): l 1, h 8, n 2, q-lora 4, kv-lora 2, qk 3, rope 1, v 5, no GLU f 32,
# V 16, B 1, s 4.  Per token: q 4·(8 + 2·4 + 1) = 68, kv 2·(8 + 2·(3 + 5) + 1) = 50, rope key
# 8·1 = 8, output 2·5·8 = 80: 6·206 = 1236; MLP 6·2·8·32 = 3072; logits 768.  Core per s²:
# 6·(2·4/2 + 2·5/2) = 54.
MLA_MODEL = ModelShape(num_layers=1, hidden_size=8, num_attention_heads=2, vocab_size=16,
                       position_embedding="rotary", multi_latent_attention=True, q_lora_rank=4,
                       kv_lora_rank=2, qk_head_dim=3, qk_pos_emb_head_dim=1, v_head_dim=5)


def test_megatron_lm_counts_multi_latent_attention_since_2025_04():
    r = compare_conventions(MLA_MODEL, 1, 4, names=["megatron-lm", "megatron-lm@2025-03"])
    assert r["megatron-lm"].flops_per_iteration == 4 * (1236 + 3072 + 768) + 16 * 54
    # 8873b55d knew no MLA: the GQA terms with kv_channels (h/n = 4): 6·(8·(8 + 16) + 64)
    # = 1536 per token, core 6·8 = 48 per s²
    assert r["megatron-lm@2025-03"].flops_per_iteration == 4 * (1536 + 3072 + 768) + 16 * 48

def test_torchtitan_counts_active_experts_only():
    # MoE layers 2 and 4 of 4 (interval 2), 4 experts top-1, h 8, f 32, no GLU, biases: one
    # expert MLP = 8·32 + 32 + 32·8 + 8 = 552 parameters; a token skips 3 per MoE layer
    moe = ModelShape(num_layers=4, hidden_size=8, num_attention_heads=2, vocab_size=16,
                     position_embedding="rotary", num_experts=4, moe_topk=1)
    dense = ModelShape(num_layers=4, hidden_size=8, num_attention_heads=2, vocab_size=16,
                       position_embedding="rotary")
    routers = 2 * 8 * 4
    skipped = 2 * 3 * 552
    extra = parameter_count(moe).total - parameter_count(dense).total
    assert extra == routers + 2 * 3 * 552
    assert per_token("torchtitan", moe, 4) - per_token("torchtitan", dense, 4) == \
        6 * (extra - skipped)


def test_maxtext_before_and_after_its_causal_change():
    r = compare_conventions(ERA_MODEL, 1, 4, names=["maxtext", "maxtext@2025-06"])
    assert r["maxtext@2025-06"].flops_per_iteration == 6144 * 6.75   # dense, as above
    assert r["maxtext"].flops_per_iteration == 6144 * 6.25           # causal since a4c01726


def test_megatron_lm_era_by_date_and_commit():
    assert megatron_lm_era("2024-03-20").name == "megatron-lm@2024-03"
    assert megatron_lm_era("2024-03").name == "megatron-lm@2024-03-25"   # a month: its end
    assert megatron_lm_era("2024-09-10").name == "megatron-lm@2024-04"
    assert megatron_lm_era("2024-12-31").name == "megatron-lm@2024-09"
    assert megatron_lm_era("2025-03-06").name == "megatron-lm@2025-03"
    assert megatron_lm_era("8873b55d").name == "megatron-lm@2025-03"
    assert megatron_lm_era("2748e7c7d4").name == "megatron-lm@2023-11"
    assert megatron_lm_era("2026-06-01").name == "megatron-lm@2026-05"
    assert convention("megatron-lm@2024-06-30").name == "megatron-lm@2024-04"
    with pytest.raises(ValueError, match="no throughput before"):
        megatron_lm_era("2023-06")
    with pytest.raises(ValueError, match="give its date"):
        megatron_lm_era("deadbeef")
    with pytest.raises(ValueError, match="--convention must be one of"):
        convention("flopsy")


def test_every_convention_states_source_and_parameter_set():
    for c in CONVENTIONS_BY_NAME.values():
        assert c.source and c.parameters and c.counts in ("model", "hardware")
    required = {"exact", "exact-causal", "palm", "nanogpt", "torchtitan", "llm-foundry",
                "maxtext", "megatron-lm", "bigscience", "microsoft", "6n"}
    assert required <= set(CONVENTIONS_BY_NAME)


# ---- FP8 ---------------------------------------------------------------------------------
# l 4, h 8, n 2, f 32, V 16, s 4, B 1.  Forward per layer: Q 512, KV 1024, out 512, MLP up
# 2048, down 2048 (linear, FP8-able: 6144); scores 256 + A·V 256 (core, BF16); logits 1024.
FP8_MODEL = ModelShape(num_layers=4, hidden_size=8, num_attention_heads=2, vocab_size=16,
                       max_position_embeddings=4)


def test_fp8_mixed_peak_by_hand():
    b = flops_breakdown(FP8_MODEL, 4)
    assert b.model_flops == 3 * (4 * 6656 + 1024) == 82944
    every = Fp8Recipe("hybrid")
    # FP8: 4·6144·3 = 73728; BF16: 82944 - 73728 = 9216; peaks 1000 / 2000:
    # mixed = 82944 / (73728/2000 + 9216/1000) = 82944 / 46.08 = 1800
    assert fp8_flops(b, FP8_MODEL, every) == {"fp8": 73728, "bf16": 9216}
    assert mixed_peak_tflops(b, FP8_MODEL, every, 1000.0, 2000.0) == pytest.approx(1800.0)
    # first and last layer in BF16: FP8 = 2·6144·3 = 36864 -> 82944 / (18.432 + 46.08) = 9000/7
    ends = Fp8Recipe("e4m3", bf16_layers_at_start=1, bf16_layers_at_end=1)
    assert mixed_peak_tflops(b, FP8_MODEL, ends, 1000.0, 2000.0) == pytest.approx(9000 / 7)
    # weight gradients in BF16: FP8 = 2/3 of 73728 = 49152 -> 82944 / (24.576 + 33.792)
    no_wgrad = Fp8Recipe("hybrid", wgrad=False)
    assert mixed_peak_tflops(b, FP8_MODEL, no_wgrad, 1000.0, 2000.0) == pytest.approx(
        82944 / 58.368)
    # FP8 attention core too: only the logits (3072) stay BF16 -> 82944 / (39.936 + 3.072)
    dpa = Fp8Recipe("hybrid", dot_product_attention=True)
    assert mixed_peak_tflops(b, FP8_MODEL, dpa, 1000.0, 2000.0) == pytest.approx(
        82944 / 43.008)


def test_fp8_moe_layers_and_router_by_hand():
    # the same model with 2 experts top-1 in layers 1 and 3 (0-based; interval 2), first and
    # last layer BF16: FP8 are layer 1 (attention linears 2048 + experts 4096) and layer 2
    # (2048 + MLP 4096) = 12288 forward, 36864 model FLOPs; routers (2·4·8·2 = 128 each),
    # core attention, logits and layers 0 and 3 stay BF16: total 3·(4·6656 + 2·128 + 1024)
    moe = ModelShape(num_layers=4, hidden_size=8, num_attention_heads=2, vocab_size=16,
                     max_position_embeddings=4, num_experts=2, moe_topk=1)
    b = flops_breakdown(moe, 4)
    assert b.model_flops == 3 * (4 * 6656 + 2 * 128 + 1024) == 83712
    recipe = Fp8Recipe("hybrid", bf16_layers_at_start=1, bf16_layers_at_end=1)
    assert fp8_flops(b, moe, recipe) == {"fp8": 36864, "bf16": 83712 - 36864}


def test_fp8_recipe_from_megatron_args():
    from argparse import Namespace
    args = Namespace(fp8="hybrid", fp8_recipe="delayed", first_last_layers_bf16=True,
                     num_layers_at_start_in_bf16=2, num_layers_at_end_in_bf16=1)
    recipe = Fp8Recipe.from_args(args)
    assert (recipe.bf16_layers_at_start, recipe.bf16_layers_at_end) == (2, 1)
    assert not Fp8Recipe.from_args(Namespace()).enabled
    assert Fp8Recipe.from_args(Namespace(fp8="e4m3")).bf16_layers_at_start == 0
    with pytest.raises(ValueError, match="--num-layers-at-start-in-bf16 must be"):
        Fp8Recipe.from_args(Namespace(fp8="e4m3", first_last_layers_bf16=True,
                                      num_layers_at_start_in_bf16=-1))
    with pytest.raises(ValueError, match=r"must not exceed --num-layers \(4\)"):
        fp8_flops(flops_breakdown(FP8_MODEL, 4), FP8_MODEL, Fp8Recipe("e4m3", bf16_layers_at_start=3, bf16_layers_at_end=2))
    with pytest.raises(ValueError, match="--fp8-format must be"):
        Fp8Recipe.from_args(Namespace(fp8="e5m2"))


# ---- sanity --------------------------------------------------------------------------------

def test_implausible_utilisation_names_the_cause():
    # AMD-AGI/Primus#772: MI355X fell back to the A100 peak and printed 563 %
    warning = implausible_utilisation_warning(5.63, None, False, "bf16",
                                              "a100 dense bf16 datasheet peak (312 TFLOP/s)")
    assert "MFU 563%" in warning and "another part" in warning and "a100" in warning
    assert "--world-size" in implausible_utilisation_warning(1.2, None, True)
    assert "HFU 120%" in implausible_utilisation_warning(0.9, 1.2)
    assert implausible_utilisation_warning(0.99, 0.999) is None
    assert implausible_utilisation_warning(None, None) is None


# ---- estimate ------------------------------------------------------------------------------
FLAGS = ["--num-layers", "24", "--hidden-size", "2048", "--num-attention-heads", "16",
         "--seq-length", "4096", "--max-position-embeddings", "4096", "--vocab-size", "131072",
         "--micro-batch-size", "4", "--global-batch-size", "192", "--world-size", "48", "--bf16"]


def test_estimate_json_always_has_conventions(capsys):
    assert main(["estimate", *FLAGS, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["conventions"]) >= {"exact", "exact-causal", "palm", "nanogpt", "torchtitan",
                                       "llm-foundry", "maxtext", "megatron-lm",
                                       "megatron-lm@2023-11", "bigscience", "microsoft", "6n"}
    exact = out["conventions"]["exact"]
    assert exact["flops_per_iteration"] == out["flops_per_iteration"]["model"]
    assert exact["tflops_per_gpu"] is None and exact["mfu"] is None


def test_estimate_headline_and_table(capsys):
    # the 1.7B row's time: its 2024 (dense) FLOPs at 408.8 TFLOP/s on 48 GPUs
    model = ModelShape(num_layers=24, hidden_size=2048, num_attention_heads=16,
                       vocab_size=131072, max_position_embeddings=4096)
    seconds = flops_breakdown(model, 4096, 192).model_flops / (408.8e12 * 48)
    argv = ["estimate", *FLAGS, "--gpu", "NVIDIA H100 80GB HBM3", "--iteration-time",
            repr(seconds)]
    assert main([*argv, "--json", "--convention", "megatron-lm"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["headline"]["tflops_per_gpu"], 1) == 365.0
    assert out["conventions"]["megatron-lm@2024-04"]["mfu"] == pytest.approx(408.8 / 989.4)
    assert main([*argv, "--conventions", "--convention", "megatron-lm@2024-06-01"]) == 0
    text = capsys.readouterr().out
    assert "megatron-lm@2024-04 would report: 408.80 TFLOP/s per GPU" in text
    assert "torchtitan" in text and "peak: h100-sxm dense bf16" in text
    assert main([*argv, "--convention", "flopsy"]) == 2


def test_estimate_fp8_reports_both_peaks(capsys):
    argv = ["estimate", *FLAGS, "--gpu", "h100-sxm", "--iteration-time", "1", "--json",
            "--fp8-format", "hybrid"]
    assert main(argv) == 0
    f = json.loads(capsys.readouterr().out)["fp8"]
    assert f["peak_tflops"]["bf16"] == 989.4 and f["peak_tflops"]["fp8"] == 1978.9
    assert 989.4 < f["peak_tflops"]["mixed"] < 1978.9
    assert f["mfu"]["vs_mixed"] < f["mfu"]["vs_bf16"]


def test_megatron_lm_thd_packed_sequences_count_sum_of_squares():
    # 5e4fc931 (2026-05): core attention from Σsᵢ²; one sample of 4 tokens packed as two
    # documents of 2: Σsᵢ² = 8 instead of 16; core attention per unit of s² is
    # 6·n·d/2·2·l = 6·16·2 = 192, so 16·192 - 8·192 = 1536 fewer FLOPs than 6144·6.25
    from megatron_flops.conventions import RunFacts, megatron_lm_current_flops
    facts = RunFacts(ERA_MODEL, 1, 4)
    assert megatron_lm_current_flops(facts) == 6144 * 6.25
    assert megatron_lm_current_flops(facts, seqlen_squared_sum=8) == 6144 * 6.25 - 8 * 192


# ---- issue 20 item 2: Megatron-LM's formula on the newer options, by hand --------------------
# One MoE layer (l 1), h 8, n 2, d 4, g 2, V 16, E 4, top-2, fe 6, shared fs 10, latent L 3,
# --quick-geglu, --attention-output-gate, --moe-shared-expert-gate; B 1, s 4 (T 4, Σs² 16).
#
# Megatron-LM (training.py at d98e8a64), per token (6 = 3 passes × 2 per MAC):
#   attention 6·(h·(n·d + 2·g·d + n·d gate) + n·d·h) = 6·(8·32 + 64) = 1920;
#   MLP: ffn_expansion_factor 2 (it reads args.swiglu: quick-GeGLU counted as 2 GEMMs);
#   routed fe·k·2·L/h + 2·L = 24·3/8 + 6 = 15; shared fs·2 = 20; 6·h·35 = 1680;
#   logits 6·h·V = 768  -> 4·(1920 + 1680 + 768) = 17472; core 6·n·d = 48 per s²: + 768.
# Exact, forward per token: query 128, key_value 256, gate 128, output 128, router 2·h·E = 64,
# latent down/up 2·h·L·2 = 96, experts k·2·L·fe·3 = 216, shared 3·2·h·fs = 480, shared gate
# 2·h = 16, logits 256 -> 1768; + scores and A·V 2·2·2·s²·d = 512 per sample (dense):
# 4·1768 + 512 = 7584, model FLOPs 3× = 22752.
# The difference, 4512 = the GLU gates Megatron-LM leaves out (3·4·(72 + 160) = 2784), the
# router (3·4·64 = 768), the shared-expert gate (3·4·16 = 192) and half the core (1536/2 = 768).
NEW_OPTIONS_MODEL = ModelShape(
    num_layers=1, hidden_size=8, num_attention_heads=2, vocab_size=16, position_embedding="rotary",
    glu_activation="quick_geglu", num_experts=4, moe_topk=2, moe_layer_freq=1,
    moe_ffn_hidden_size=6, moe_shared_expert_intermediate_size=10, moe_latent_size=3,
    attention_output_gate=True, moe_shared_expert_gate=True)


def test_megatron_lm_formula_on_latent_moe_gates_and_quick_geglu_by_hand():
    r = compare_conventions(NEW_OPTIONS_MODEL, 1, 4, names=["megatron-lm", "exact"])
    assert r["megatron-lm"].flops_per_iteration == 17472 + 768
    assert r["exact"].flops_per_iteration == 22752
    assert 22752 - (17472 + 768) == 2784 + 768 + 192 + 768


def test_torchtitan_inactive_experts_with_moe_ffn_size_and_shared_experts():
    """torchtitan leaves out the (E − k) experts a token skips: one expert's MLP each, at
    --moe-ffn-hidden-size (it was an MoE layer minus a dense one over E − 1, which went negative
    with a small expert size).  l 2 (both MoE), h 8, f 32, fe 6, fs 10, E 4, top-1, no GLU, no
    bias: one expert 2·8·6 = 96 parameters, skipped 2·3·96 = 576 per token's 6N."""
    fields = dict(num_layers=2, hidden_size=8, num_attention_heads=2, vocab_size=16,
                  position_embedding="rotary", ffn_hidden_size=32, add_bias_linear=False)
    moe = ModelShape(**fields, num_experts=4, moe_topk=1, moe_layer_freq=1,
                     moe_ffn_hidden_size=6, moe_shared_expert_intermediate_size=10)
    dense = ModelShape(**fields)
    extra = parameter_count(moe).total - parameter_count(dense).total
    # per layer: router 8·4, 4 experts 4·96, shared 2·8·10 = 160, minus the dense MLP 2·8·32
    assert extra == 2 * (32 + 384 + 160 - 512)
    assert per_token("torchtitan", moe, 4) - per_token("torchtitan", dense, 4) == \
        6 * (extra - 2 * 3 * 96)
