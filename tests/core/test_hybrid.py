"""Hybrid Mamba models (Megatron-LM ``--hybrid-layer-pattern``): placement, the Mamba
components by hand, parameters by hand, and Megatron-LM's refusals.

Each hybrid layer holds one block (Megatron-Core's HybridStack): M a Mamba-2 mixer, * attention,
- an MLP, E an MoE.  The hand derivations below are written out next to each number.
"""

import pytest

from megatron_flops.components import REGISTRY, ssd_chunk_lengths
from megatron_flops.errors import ShapeError
from megatron_flops.flops import flops_breakdown, layer_forward_flops, layer_groups
from megatron_flops.params import layer_parameters, parameter_count
from megatron_flops.shapes import ModelShape, Recompute

# a small hybrid model: h 64, 4 heads (d 16), 2 KV groups, ffn 96, 4 experts top-2, vocab 100;
# Mamba: P 16 -> H = 2h/P = 8 heads, di = 128; G 2, N 8, Q 16, K 4
SMALL = dict(num_layers=6, hidden_size=64, num_attention_heads=4, num_query_groups=2,
             ffn_hidden_size=96, vocab_size=100, hybrid_layer_pattern="M*M-|ME",
             num_experts=4, moe_topk=2, mamba_head_dim=16, mamba_num_groups=2,
             mamba_state_dim=8, mamba_chunk_size=16, normalization="rmsnorm",
             add_bias_linear=False, position_embedding="rotary", tie_embeddings=False)


def small(**changes):
    return ModelShape(**dict(SMALL, **changes))


def test_each_layer_counts_only_its_symbols_block():
    model = small()
    attention = {"query", "key_value", "attention_scores", "attention_over_values",
                 "attention_output"}
    mamba = {"mamba_in_proj", "mamba_conv", "mamba_ssd", "mamba_out_proj"}
    mlp = {"mlp_up", "mlp_down"}                      # no GLU: no gate
    moe = {"moe_router", "expert_up", "expert_down"}  # no GLU, no shared experts
    expected = [mamba, attention, mamba, mlp, mamba, moe]
    for index, names in enumerate(expected):
        terms = layer_forward_flops(model, 32, index)
        assert {name for name, flops in terms.items() if flops} == names, index
    assert [model.layer_symbol(i) for i in range(6)] == list("M*M-ME")
    assert model.num_moe_layers == 1 and model.experts_in_layer(5) == 4


def test_mamba_components_by_hand():
    """s = 40, Q = 16: chunks 16, 16, 8 (c = 256 + 256 + 64 = 576, e = 16 + 8 = 24).

    in_proj  h -> 2·di + 2·G·N + H = 256 + 32 + 8 = 296:      2·40·64·296   = 1,515,520
    conv     di + 2·G·N = 160 channels × K 4:                 2·40·160·4    =    51,200
    SSD      scores 2·c·G·N = 2·576·16 = 18,432; diagonal 2·c·di = 2·576·128 = 147,456;
             states (chunks 1, 2) 2·32·N·di = 65,536; outputs (chunks 2, 3) 2·24·N·di = 49,152:
             18,432 + 147,456 + 65,536 + 49,152                            =   280,576
    out_proj di -> h:                                          2·40·128·64   =   655,360
    """
    model, s = small(), 40
    assert ssd_chunk_lengths(s, 16) == (16, 16, 8)
    terms = layer_forward_flops(model, s, 0)
    assert terms == {"mamba_in_proj": 1_515_520, "mamba_conv": 51_200, "mamba_ssd": 280_576,
                     "mamba_out_proj": 655_360}


def test_one_chunk_needs_no_state():
    """A sequence inside one chunk: the SSD is its L×L part only (no state is read or kept):
    s = 16 = Q: 2·256·(G·N + di) = 2·256·144 = 73,728."""
    assert REGISTRY["mamba_ssd"].formula(small(), 16, 1) == 73_728


def test_the_breakdown_places_every_layer_once():
    """5 decoder layers... of 6: 3 M, 1 *, 1 -, 1 E; backward 2× forward, recompute per layer."""
    model, s, B = small(), 32, 3
    b = flops_breakdown(model, s, B)
    one = {name: sum(layer_forward_flops(model, s, i).get(name, 0) for i in range(6))
           for name in REGISTRY}
    for c in b:
        if c.name == "logits":
            assert c.forward == B * 2 * s * 64 * 100
            continue
        assert c.forward == B * one[c.name], c.name
        assert c.backward == 2 * c.forward and c.recompute == 0
    assert b["mamba_in_proj"].forward == 3 * B * 2 * s * 64 * 296
    full = flops_breakdown(model, s, B, Recompute("full"))
    assert full.recompute_flops == full.forward_flops - full["logits"].forward


def test_selective_recompute_reruns_only_the_attention_core():
    model, s = small(), 32
    b = flops_breakdown(model, s, 2, Recompute("selective"))
    rerun = {c.name for c in b if c.recompute}
    assert rerun == {"attention_scores", "attention_over_values"}


def test_block_recompute_uses_the_pipes_as_stages():
    """``M*M-|ME`` on 2 stages: stage 0 holds layers 0-3, stage 1 layers 4-5; block recompute
    of 1 layer per stage re-runs layers 0 (M) and 4 (M)."""
    model = small()
    recompute = Recompute("full", "block", 1, stage_layers=(4, 2))
    groups = layer_groups(model, recompute, 2)
    rerun = {kind[4]: n for kind, n in groups.items() if kind[3]}
    assert rerun == {"M": 2}


def test_parameters_by_hand():
    """h 64, untied, RMSNorm, no biases.
    Mamba layer: norm 64 + in_proj 64·296 = 18,944 + conv 160·(4 + 1) = 800 + dt_bias, A_log, D
      3·8 = 24 + gated norm 128 + out_proj 128·64 = 8,192                     = 28,152
    attention layer: norm 64 + QKV 64·(64 + 2·2·16) = 8,192 + proj 64·64 = 4,096 = 12,352
    MLP layer (squared-ReLU-like plain MLP): norm 64 + 64·96 + 96·64          = 12,352
    MoE layer: norm 64 + router 64·4 + 4 experts × 12,288                      = 49,472
    model: 3·28,152 + 12,352 + 12,352 + 49,472 + final norm 64 + embeddings 2·100·64 = 171,496
    """
    model = small()
    assert [layer_parameters(model, i) for i in range(6)] == [28_152, 12_352, 28_152, 12_352,
                                                              28_152, 49_472]
    assert parameter_count(model).total == 171_496


def test_mtp_depths_follow_the_main_pattern():
    """``/*E/*E``: two MTP depths of an attention and an MoE layer, each depth with one 2h -> h
    projection and its logits; their layers are counted like the decoder's."""
    model = small(hybrid_layer_pattern="M*M-ME/*E/*E", mtp_num_layers=2)
    symbols = [model.layer_symbol(i) for i in range(6, 10)]
    assert symbols == list("*E*E")
    assert [model.starts_mtp_depth(i) for i in range(6, 10)] == [True, False, True, False]
    s, B = 32, 1
    b = flops_breakdown(model, s, B)
    plain = flops_breakdown(small(), s, B)
    assert b["mtp_projection"].forward == 2 * 2 * s * 128 * 64
    assert b["mtp_logits"].forward == 2 * plain["logits"].forward
    assert b["expert_up"].forward == 3 * plain["expert_up"].forward
    assert b["query"].forward == 3 * plain["query"].forward
    assert b["mamba_in_proj"].forward == plain["mamba_in_proj"].forward
    # parameters: 2 × (the * layer + the E layer + 3 norms + the 2h -> h projection)
    extra = 2 * (12_352 + 49_472 + 3 * 64 + 2 * 64 * 64)
    assert parameter_count(model).total == 171_496 + extra


@pytest.mark.parametrize("changes, flag, words", [
    (dict(hybrid_layer_pattern="M*MX-E"), "--hybrid-layer-pattern", "'X' is not a layer symbol"),
    (dict(hybrid_layer_pattern="M*M-G"), "--hybrid-layer-pattern", "gated delta net"),
    (dict(hybrid_layer_pattern="M*M-D"), "--hybrid-layer-pattern", "sparse attention"),
    (dict(hybrid_layer_pattern="M*M-E"), "--hybrid-layer-pattern", "5 layers but --num-layers is 6"),
    (dict(hybrid_layer_pattern="M*M-ME/*E/E*", mtp_num_layers=2), "--hybrid-layer-pattern",
     "must be identical"),
    (dict(hybrid_layer_pattern="M*M-ME/*E"), "--mtp-num-layers", "1 MTP depths"),
    (dict(hybrid_layer_pattern="M+M-ME", multi_latent_attention=False), "--hybrid-layer-pattern",
     "need --multi-latent-attention"),
    (dict(hybrid_layer_pattern="M*M-ME", num_experts=1), "--num-experts", "MoE layers (E)"),
    (dict(mamba_head_dim=24), "--mamba-head-dim", "must divide 2 × --hidden-size"),
    (dict(mamba_num_groups=3), "--mamba-num-groups", "must divide the Mamba heads (8)"),
    (dict(mamba_state_dim=0), "--mamba-state-dim", "positive integer"),
])
def test_megatron_refusals_name_the_flag(changes, flag, words):
    with pytest.raises(ShapeError) as error:
        small(**changes)
    assert error.value.flag == flag and words in str(error.value)


def test_a_gpt_model_has_no_mamba_work():
    gpt = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=100)
    assert not any(name.startswith("mamba") for name in layer_forward_flops(gpt, 16, 0))
    assert gpt.layer_symbol(0) is None


def test_fp8_layers_follow_the_pattern():
    """``--first-last-layers-bf16`` keeps layer 0 (M) and layer 5 (E) in BF16: of the three
    Mamba layers two run in_proj in FP8; the attention (1) and MLP (3) layers all; the MoE
    layer none; the conv and the SSD are never FP8 GEMMs."""
    from megatron_flops.fp8 import Fp8Recipe, fp8_fraction
    recipe = Fp8Recipe("hybrid", bf16_layers_at_start=1, bf16_layers_at_end=1)
    model = small()
    shares = {name: fp8_fraction(model, name, recipe)
              for name in ("mamba_in_proj", "mamba_conv", "mamba_ssd", "query", "mlp_up",
                           "expert_up")}
    assert shares == {"mamba_in_proj": 2 / 3, "mamba_conv": 0.0, "mamba_ssd": 0.0, "query": 1.0,
                      "mlp_up": 1.0, "expert_up": 0.0}


def test_megatron_lms_hybrid_formula_term_by_term():
    """Megatron-LM's hybrid_flops (d98e8a64) against the exact causal count, per layer kind:
    attention equal (its core is the causal half); MLP equal; MoE equal but for the router;
    Mamba: the same in_proj and out_proj when H·P = 2h, and "7·T·2h·N" for the scan where
    the exact count has the chunked SSD and the conv; logits equal."""
    from megatron_flops.conventions import RunFacts, megatron_lm_hybrid_terms
    model = small(mamba_num_heads=8)  # H·P = 128 = 2h
    s, B = 64, 2
    T = B * s
    terms = megatron_lm_hybrid_terms(RunFacts(model, B, s))
    exact = {c.name: c.model_flops for c in flops_breakdown(model, s, B, causal=True)}
    attention = sum(exact[n] for n in ("query", "key_value", "attention_scores",
                                       "attention_over_values", "attention_output"))
    assert terms["attention"] == attention
    assert terms["mlp"] == exact["mlp_up"] + exact["mlp_down"]
    assert terms["moe"] == exact["expert_up"] + exact["expert_down"]  # no router
    assert terms["logits"] == exact["logits"]
    scan = 3 * 3 * 7 * T * 128 * 8  # 3 M layers × 3 passes × 7·T·d·N
    assert terms["mamba"] - scan == exact["mamba_in_proj"] + exact["mamba_out_proj"]
    # with 4 heads of 16 (di = 64 ≠ 2h) Megatron-LM still takes d = 2h: in/out over-counted
    narrow = small(mamba_num_heads=4)
    wide_terms = megatron_lm_hybrid_terms(RunFacts(narrow, B, s))
    exact_narrow = {c.name: c.model_flops for c in flops_breakdown(narrow, s, B, causal=True)}
    in_out = wide_terms["mamba"] - scan
    assert in_out == 3 * 3 * (2 * T * 64 * (2 * 128 + 2 * 2 * 8 + 4) + 2 * T * 128 * 64)
    assert in_out > exact_narrow["mamba_in_proj"] + exact_narrow["mamba_out_proj"]


# ---- docs/conventions.md's hybrid table: Megatron-LM's hybrid formula vs the exact count ------

GROUPS = {"attention layers": ("query", "key_value", "attention_scores", "attention_over_values",
                               "attention_output"),
          "MLP layers": ("mlp_up", "mlp_gate", "mlp_down"),
          "MoE layers": ("moe_router", "expert_up", "expert_gate", "expert_down",
                         "shared_expert_up", "shared_expert_gate", "shared_expert_down"),
          "Mamba layers": ("mamba_in_proj", "mamba_conv", "mamba_ssd", "mamba_out_proj"),
          "logits": ("logits",)}
TERMS = {"attention layers": "attention", "MLP layers": "mlp", "MoE layers": "moe",
         "Mamba layers": "mamba", "logits": "logits"}
H_8B = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
NANO = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
DOC_MODELS = (  # the Megatron-LM ModelOpt configurations of tests/data/megatron_lm_corpus.json
    ModelShape(num_layers=len(H_8B), hidden_size=4096, num_attention_heads=32, num_query_groups=8,
               ffn_hidden_size=21504, vocab_size=131072, hybrid_layer_pattern=H_8B,
               mamba_num_heads=128, mamba_head_dim=64, mamba_num_groups=8, mamba_state_dim=128,
               normalization="rmsnorm", add_bias_linear=False, position_embedding="none",
               tie_embeddings=False),
    ModelShape(num_layers=len(NANO), hidden_size=2688, num_attention_heads=32, num_query_groups=2,
               kv_channels=128, ffn_hidden_size=1856, vocab_size=131072, hybrid_layer_pattern=NANO,
               mamba_num_heads=64, mamba_head_dim=64, num_experts=128, moe_topk=6,
               moe_shared_expert_intermediate_size=3712, normalization="rmsnorm",
               add_bias_linear=False, position_embedding="none", tie_embeddings=False),
)


def _cells(megatron, exact):
    if not exact:
        return ["—", "—", "—"]
    change = f"{100 * (megatron - exact) / exact:+.1f} %".replace("-", "−")
    return [f"{megatron / 1e12:.2f}", f"{exact / 1e12:.2f}", change]


def test_the_docs_hybrid_table_is_what_the_code_counts():
    from pathlib import Path

    from megatron_flops.conventions import RunFacts, megatron_lm_hybrid_terms
    doc = (Path(__file__).resolve().parents[2] / "docs" / "conventions.md").read_text()
    columns = []
    for model in DOC_MODELS:
        exact = {c.name: c.model_flops for c in flops_breakdown(model, 8192, 1, causal=True)}
        terms = megatron_lm_hybrid_terms(RunFacts(model, 1, 8192))
        column = {row: _cells(terms[TERMS[row]], sum(exact.get(n, 0) for n in names))
                  for row, names in GROUPS.items()}
        column["total"] = [f"**{cell}**" for cell in _cells(sum(terms.values()),
                                                             sum(exact.values()))]
        columns.append(column)
    for row in (*GROUPS, "total"):
        label = f"**{row}**" if row == "total" else row
        line = "| " + " | ".join([label, *columns[0][row], *columns[1][row]]) + " |"
        assert line in doc, line


def test_the_counting_mode_finds_megatron_cores_mamba_projections():
    """Megatron-Core names a Mamba layer's GEMMs ``decoder.layers.N.mixer.in_proj`` and
    ``…mixer.out_proj`` (HybridStack → MambaLayer.mixer → MambaMixer): the counting mode's
    Megatron-Core table files them under the Mamba components."""
    from megatron_flops.megatron.counting import _compile
    from megatron_flops.megatron.module_names import MEGATRON_CORE

    def unit(name):
        return next((rule.unit(small()) for rule in MEGATRON_CORE
                     if _compile(rule.pattern).match(name)), None)
    assert unit("module.decoder.layers.0.mixer.in_proj") == (("mamba_in_proj", 1),)
    assert unit("module.decoder.layers.4.mixer.out_proj") == (("mamba_out_proj", 1),)
    assert unit("module.decoder.layers.0.mixer.conv1d") is None
