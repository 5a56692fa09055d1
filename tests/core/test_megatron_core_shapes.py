"""Megatron-LM's model and run options that Megatron-Core ground truth cannot reach on CPU.

The layer pattern parser, sliding-window and packed-sequence counting conventions, and
context parallelism, each against a hand derivation written next to it.  (What Megatron-Core
executes for MoE, MLA, MTP and windows is proven in tests/megatron_core.)
"""

import pytest

from megatron_flops.flops import FlopsPerSample, attention_core_flops, flops_breakdown
from megatron_flops.megatron.args import parse_megatron_args, shapes_from_args
from megatron_flops.meter import ThroughputMeter
from megatron_flops.components import REGISTRY
from megatron_flops.shapes import ModelShape, Recompute, RunShape, ShapeError, parse_layer_pattern

SMALL = dict(num_layers=4, hidden_size=8, num_attention_heads=2, vocab_size=16)


# ---- --moe-layer-freq / --window-attn-skip-freq patterns -------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("([0]*3+[1]*29)", (0,) * 3 + (1,) * 29),     # the first-3-dense example
    ("([1]*3+[0]*1)*3", (1, 1, 1, 0) * 3),        # Megatron-LM's help text example
    ("[1,1,1,0]*3", (1, 1, 1, 0) * 3),            # --window-attn-skip-freq's help example
    ("([0]+[1]*23)", (0,) + (1,) * 23),
    ("2", 2),
    (" 3 ", 3),
])
def test_layer_patterns_parse_like_megatron_lm(text, expected):
    assert parse_layer_pattern(text) == expected


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "[0]*3+1", "[[0]]*2", "[0]*10**9", "[0]*100000*100000",
    "[x for x in (1,)]", "lambda: 0", "[0.5]", "[True]*2", "", "[0]*",
])
def test_anything_but_integers_lists_plus_and_times_is_refused(text):
    with pytest.raises(ShapeError) as error:
        parse_layer_pattern(text)
    assert error.value.flag == "--moe-layer-freq"


def test_moe_layer_freq_int_counts_from_layer_zero():
    # Megatron-Core: layer i (0-based) is MoE when i % N == 0; the microsoft fork's
    # --expert-interval 2 instead makes layers 1, 3 (0-based) MoE
    core = ModelShape(**SMALL, num_experts=4, moe_layer_freq=2)
    fork = ModelShape(**SMALL, num_experts=4, expert_interval=2)
    assert core.moe_layer_pattern == (1, 0, 1, 0)
    assert fork.moe_layer_pattern == (0, 1, 0, 1)
    assert [core.experts_in_layer(i) for i in range(4)] == [4, 1, 4, 1]
    every = ModelShape(**SMALL, num_experts=4, moe_layer_freq=1)  # Megatron-LM's default
    assert every.moe_layer_pattern == (1, 1, 1, 1)


def test_pattern_length_and_entries_are_checked():
    with pytest.raises(ShapeError, match=r"--moe-layer-freq pattern has 3 entries but --num-layers is 4"):
        ModelShape(**SMALL, num_experts=4, moe_layer_freq="[0]*3")
    with pytest.raises(ShapeError, match="must be 0 or 1"):
        ModelShape(**SMALL, num_experts=4, moe_layer_freq=(0, 2, 1, 1))


def test_mtp_layers_are_built_like_the_last_decoder_layer():
    moe_last = ModelShape(**SMALL, num_experts=4, moe_layer_freq=(0, 0, 0, 1), mtp_num_layers=2)
    dense_last = ModelShape(**SMALL, num_experts=4, moe_layer_freq=(1, 1, 1, 0), mtp_num_layers=2)
    assert [moe_last.experts_in_layer(i) for i in (4, 5)] == [4, 4]
    assert [dense_last.experts_in_layer(i) for i in (4, 5)] == [1, 1]


def test_mtp_by_hand():
    # h 8, V 16, s 4, B 1, m 2: mtp_projection 2 layers × 2·s·2h·h, mtp_logits 2 × 2·s·h·V,
    # and every layer component counted over 4 + 2 layers
    model = ModelShape(**SMALL, mtp_num_layers=2)
    base = flops_breakdown(ModelShape(**SMALL), 4)
    b = flops_breakdown(model, 4)
    assert b["mtp_projection"].forward == 2 * (2 * 4 * 16 * 8)
    assert b["mtp_logits"].forward == 2 * (2 * 4 * 8 * 16)
    assert b["query"].forward == base["query"].forward * 6 // 4


@pytest.mark.parametrize("glu", [None, "swiglu"])
def test_shared_experts_by_hand(glu):
    # h 8, layers (0, 1, 1, 0): 2 MoE layers, fs 12 (the total of the shared experts), s 4,
    # B 3: per MoE layer and token, up 2·h·fs, a GLU's gate as much again, down 2·fs·h; the
    # dense layers have none; the routed experts (f_e 6, top-2 of 4) are apart from them
    model = ModelShape(**SMALL, glu_activation=glu, num_experts=4, moe_topk=2,
                       moe_layer_freq=(0, 1, 1, 0), moe_ffn_hidden_size=6,
                       moe_shared_expert_intermediate_size=12)
    b = flops_breakdown(model, 4, 3)
    tokens, moe_layers, h, fs = 3 * 4, 2, 8, 12
    assert b["shared_expert_up"].forward == moe_layers * tokens * 2 * h * fs
    assert b["shared_expert_down"].forward == moe_layers * tokens * 2 * fs * h
    if glu:
        assert b["shared_expert_gate"].forward == moe_layers * tokens * 2 * h * fs
    else:
        assert "shared_expert_gate" not in [component.name for component in b]
    assert b["expert_down"].forward == moe_layers * tokens * 2 * (2 * 6 * h)  # top-2 × f_e 6
    without = flops_breakdown(ModelShape(**SMALL, glu_activation=glu, num_experts=4, moe_topk=2,
                                         moe_layer_freq=(0, 1, 1, 0), moe_ffn_hidden_size=6), 4, 3)
    assert b.model_flops - without.model_flops == 3 * ((2 if glu else 1) + 1) * moe_layers * \
        tokens * 2 * h * fs    # forward + backward (2 × forward) of the shared experts only


# ---- sliding window and packed sequences: the causal convention ------------------------------

def test_causal_window_counts_the_band_area():
    # one head of width 1: scores = 2·(query-key pairs); dense s² = 64 pairs, causal s²/2 = 32,
    # window w = 3 on s = 8: band area s·w − w²/2 = 24 − 4.5 = 19.5 pairs -> 39 FLOPs
    model = ModelShape(num_layers=1, hidden_size=1, num_attention_heads=1, vocab_size=2)
    scores = REGISTRY["attention_scores"].formula
    assert attention_core_flops(scores, model, 8) == 2 * 64
    assert attention_core_flops(scores, model, 8, causal=True) == 2 * 32
    assert attention_core_flops(scores, model, 8, causal=True, window=3) == 39
    assert attention_core_flops(scores, model, 8, causal=True, window=8) == 2 * 32
    assert attention_core_flops(scores, model, 8, causal=True, window=100) == 2 * 32


def test_window_applies_to_windowed_layers_only():
    # --window-attn-skip-freq 2: layer numbers 2 and 4 (1-based) keep full attention
    model = ModelShape(**SMALL, window_size=2, window_attn_skip_freq=2)
    assert [model.windowed_layer(i) for i in range(4)] == [True, False, True, False]
    s, n, d = 8, 2, 4
    b = flops_breakdown(model, s, causal=True)
    # 2 windowed layers: n·d·(2·s·w − w²) each; 2 full layers: n·2·s²·d/2 each
    assert b["attention_scores"].forward == 2 * n * d * (2 * s * 2 - 4) + 2 * n * s * s * d
    dense = flops_breakdown(model, s)  # what the unfused kernel runs: unchanged by the window
    assert dense["attention_scores"].forward == 4 * n * 2 * s * s * d


def test_packed_documents_attend_within_themselves():
    model = ModelShape(**SMALL)
    s, n, d, l = 8, 2, 4, 4
    docs = [[3, 5], [8], [2, 2, 2]]  # the last sample has 2 tokens of padding
    b = flops_breakdown(model, s, 3, document_lengths=docs)
    dense = flops_breakdown(model, s, 3)
    squares = 9 + 25 + 64 + 4 + 4 + 4
    assert b["attention_scores"].forward == l * n * 2 * squares * d
    assert b["attention_over_values"].forward == l * n * 2 * squares * d
    for name in ("query", "key_value", "mlp_up", "logits"):  # still all s tokens per sample
        assert b[name].forward == dense[name].forward
    causal = flops_breakdown(model, s, 3, causal=True, document_lengths=docs)
    assert causal["attention_scores"].forward == l * n * squares * d


def test_packed_samples_through_the_meter_and_the_per_sample_cache():
    model = ModelShape(**SMALL)
    docs = [[3, 5], [8], [2, 2, 2]]
    expected = flops_breakdown(model, 8, 3, document_lengths=docs)
    assert FlopsPerSample(model).packed_batch(8, docs) == (expected.model_flops, expected.hardware_flops)
    meter = ThroughputMeter(model)
    meter.add_iteration(batch_size=3, seq_length=8, document_lengths=docs)
    meter.add_iteration(batch_size=3, seq_length=8)
    report = meter.report(1.0)
    assert report.model_flops == expected.model_flops + flops_breakdown(model, 8, 3).model_flops
    with pytest.raises(ValueError, match="for 2 samples but the batch has 3"):
        meter.add_iteration(batch_size=3, seq_length=8, document_lengths=[[8], [8]])
    with pytest.raises(ValueError, match="more than --seq-length"):
        flops_breakdown(model, 8, 1, document_lengths=[[5, 5]])


# ---- context parallelism ----------------------------------------------------------------------

def test_context_parallelism_divides_data_parallelism_not_flops():
    run = RunShape(seq_length=4096, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                   context_parallel_size=4, world_size=64, global_batch_size=32)
    assert run.data_parallel_size == 64 // (2 * 2 * 4)
    assert run.tokens_per_gpu_per_sample == 1024
    with pytest.raises(ShapeError, match=r"must be a multiple of 2 × --context-parallel-size"):
        RunShape(seq_length=100, context_parallel_size=8)
    with pytest.raises(ShapeError, match=r"--context-parallel-size \(4\)") as error:
        RunShape(seq_length=4096, tensor_model_parallel_size=2, context_parallel_size=4,
                 world_size=12)
    assert error.value.flag == "--world-size"


def test_megatron_lm_flags_are_read():
    ns, ignored = parse_megatron_args(
        "--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 "
        "--num-experts 8 --moe-router-topk 2 --moe-layer-freq ([0]*1+[1]*3) "
        "--moe-ffn-hidden-size 32 --moe-shared-expert-intermediate-size 64 "
        "--multi-latent-attention --q-lora-rank 16 --kv-lora-rank 8 --qk-head-dim 12 "
        "--qk-pos-emb-head-dim 4 --v-head-dim 12 --mtp-num-layers 1 --window-size 8,0 "
        "--window-attn-skip-freq 2 --context-parallel-size 2 --world-size 8".split())
    model, run = shapes_from_args(ns)
    assert ignored == []
    assert (model.moe_layer_pattern, model.num_experts, model.moe_topk) == ((0, 1, 1, 1), (8,) * 3, 2)
    assert (model.expert_ffn_hidden_size, model.shared_expert_ffn_hidden_size) == (32, 64)
    assert (model.q_lora_rank, model.kv_lora_rank, model.attention_key_head_dim,
            model.attention_value_head_dim) == (16, 8, 16, 12)
    assert (model.mtp_num_layers, model.window_size, model.window_attn_skip_freq) == (1, 8, 2)
    assert (run.context_parallel_size, run.data_parallel_size) == (2, 4)


def test_a_megatron_lm_namespace_is_read_with_its_defaults():
    # the attributes Megatron-LM's parser always sets, with its defaults (arguments.py)
    from argparse import Namespace
    ns = Namespace(num_layers=2, hidden_size=8, num_attention_heads=2, seq_length=8,
                   num_experts=None, moe_layer_freq=1, moe_router_topk=2, mtp_num_layers=None,
                   multi_latent_attention=False, q_lora_rank=None, kv_lora_rank=32,
                   qk_head_dim=128, qk_pos_emb_head_dim=64, v_head_dim=128, window_size=None,
                   context_parallel_size=1)
    model, run = shapes_from_args(ns)
    assert not model.is_moe and not model.multi_latent_attention and model.mtp_num_layers == 0
    ns.multi_latent_attention = True
    model, _ = shapes_from_args(ns)
    assert (model.kv_lora_rank, model.qk_head_dim, model.q_lora_rank) == (32, 128, None)
    ns.window_size = (4096, 0)
    assert shapes_from_args(ns)[0].window_size == 4096
    ns.window_size = (4096, 16)
    with pytest.raises(ShapeError, match="must be"):
        shapes_from_args(ns)


def test_packed_batch_from_the_sum_of_squares_alone():
    """Megatron-LM's loop reports a packed iteration only as Σ Lᵢ² over the global batch: the
    s×s work is 2·n·d·L² per document for scores and for A·V in each of the l layers (×3 for
    forward + backward; selective recompute runs them once more), linear in Σ Lᵢ²."""
    model = ModelShape(**SMALL)
    s, n, d, l, B = 8, 2, 4, 4, 3
    docs = [[3, 5], [8], [2, 2, 2]]
    squares = 9 + 25 + 64 + 4 + 4 + 4
    selective = Recompute("selective")
    per_sample = FlopsPerSample(model, selective)
    model_flops, hardware_flops = per_sample.packed_batch_from_squares(s, B, squares)
    dense = flops_breakdown(model, s, B, selective)
    saved = l * 2 * (2 * n * d) * (B * s * s - squares)  # forward FLOPs not spent on s×s
    assert model_flops == dense.model_flops - 3 * saved
    assert hardware_flops == dense.hardware_flops - 4 * saved
    packed = flops_breakdown(model, s, B, selective, document_lengths=docs)
    assert (model_flops, hardware_flops) == (packed.model_flops, packed.hardware_flops)
    causal = FlopsPerSample(model, causal=True).packed_batch_from_squares(s, B, float(squares))
    assert causal[0] == flops_breakdown(model, s, B, causal=True).model_flops - 3 * saved // 2
    meter = ThroughputMeter(model)
    meter.add_iteration(batch_size=B, seq_length=s, seqlen_squared_sum=squares)
    assert meter.report(1.0).model_flops == flops_breakdown(model, s, B,
                                                            document_lengths=docs).model_flops
    with pytest.raises(ValueError, match="not both"):
        meter.add_iteration(batch_size=B, seq_length=s, document_lengths=docs, seqlen_squared_sum=squares)
    with pytest.raises(ValueError, match="whole number in"):
        meter.add_iteration(batch_size=B, seq_length=s, seqlen_squared_sum=B * s * s + 1)
    with pytest.raises(ValueError, match="--window-size"):
        FlopsPerSample(ModelShape(**SMALL, window_size=2)).packed_batch_from_squares(s, B, 9)
