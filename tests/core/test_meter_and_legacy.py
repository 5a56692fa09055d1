"""The meter (per-iteration accounting, definitions) and the legacy formulas as the forks compute."""

import json

import pytest

from megatron_flops.cli import main
from megatron_flops.flops import flops_breakdown
from megatron_flops.hardware import canonical_device, peak_tflops, resolve_peak
from megatron_flops.legacy import (bigscience_tflops, legacy_error, microsoft_eq3_tflops,
                                   microsoft_tflops)
from megatron_flops.meter import ThroughputMeter
from megatron_flops.shapes import ModelShape, Recompute

MODEL = ModelShape(num_layers=2, hidden_size=8, num_attention_heads=2, vocab_size=16)


def forward_by_hand(B, s):
    # per layer per sample: Q 2·s·8·8 + KV 2·s·8·16 + scores/AV 2·(2·2·s·s·4) + O 2·s·8·8
    # + MLP 2·(2·s·8·32); logits 2·s·8·16
    layer = 128 * s + 256 * s + 32 * s * s + 128 * s + 1024 * s
    return B * (2 * layer + 256 * s)


def test_meter_counts_each_iteration_with_its_own_batch_and_seq():
    meter = ThroughputMeter(MODEL, world_size=4)
    # a ramp-up step and a curriculum change inside one interval
    iterations = [(4, 8), (4, 8), (8, 16), (8, 16)]
    for B, s in iterations:
        meter.add_iteration(batch_size=B, seq_length=s)
    report = meter.report(2.0)
    model_flops = sum(3 * forward_by_hand(B, s) for B, s in iterations)
    assert report.model_flops == model_flops
    assert report.samples == 24 and report.tokens == 4 * 8 * 2 + 8 * 16 * 2
    assert report.samples_per_second == 12.0
    assert report.tokens_per_second_per_gpu == report.tokens / 2.0 / 4
    assert report.model_tflops_per_gpu == pytest.approx(model_flops / (2.0 * 4 * 1e12))
    assert report.mfu is None and report.hfu is None
    # log-time arithmetic (last batch × mean time) would have said 8·4 samples per 2 s
    assert report.samples != 8 * len(iterations)
    # the window restarts
    meter.add_iteration(batch_size=4, seq_length=8)
    assert meter.report(1.0).samples == 4
    assert meter.consumed_samples == 28


def test_add_iteration_takes_its_numbers_by_name_only():
    # batch size and sequence length are both integers: positionally, swapping them would
    # count a different (wrong) run without a word (STYLE.md 4: keyword-only accumulators)
    meter = ThroughputMeter(ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4,
                                       vocab_size=128))
    with pytest.raises(TypeError):
        meter.add_iteration(4, 8)


def test_meter_mfu_and_hfu_with_full_recompute():
    meter = ThroughputMeter(MODEL, world_size=1, recompute=Recompute("full"), peak_tflops=1e-6)
    meter.add_iteration(batch_size=2, seq_length=8)
    report = meter.report(1.0)
    b = flops_breakdown(MODEL, 8, 2, Recompute("full"))
    assert report.hardware_flops == b.hardware_flops > report.model_flops == b.model_flops
    assert report.mfu == pytest.approx(b.model_flops / 1e12 / 1e-6)
    assert report.hfu == pytest.approx(b.hardware_flops / 1e12 / 1e-6)


def test_peak_is_a_tag_beside_the_mfu_only_when_known():
    """``throughput/peak_tflops`` carries the denominator of ``throughput/mfu`` (issue 13)."""
    from megatron_flops.sinks import scalars
    with_peak = ThroughputMeter(MODEL, world_size=1, peak_tflops=2.5e-6)
    with_peak.add_iteration(batch_size=2, seq_length=8)
    tags = scalars(with_peak.report(1.0))
    assert tags["throughput/peak_tflops"] == 2.5e-6
    # MFU = model TFLOP/s / the tagged peak: 3·forward / 1e12 / 2.5e-6
    assert tags["throughput/mfu"] == pytest.approx(3 * forward_by_hand(2, 8) / 1e12 / 2.5e-6)
    without = ThroughputMeter(MODEL, world_size=1)
    without.add_iteration(batch_size=2, seq_length=8)
    tags = scalars(without.report(1.0))
    assert not {"throughput/peak_tflops", "throughput/mfu", "throughput/hfu"} & set(tags)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_meter_rejects_non_positive_time(bad):
    meter = ThroughputMeter(MODEL)
    meter.add_iteration(batch_size=1, seq_length=8)
    with pytest.raises(ValueError, match="positive"):
        meter.report(bad)


def test_peak_table():
    assert canonical_device("NVIDIA A100-SXM4-80GB") == "a100"
    assert canonical_device("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert canonical_device("NVIDIA H100 PCIe") == "h100-pcie"
    assert canonical_device("NVIDIA H200") == "h200"
    assert peak_tflops("a100", "bf16") == 312.0 and peak_tflops("a100", "fp32") == 19.5
    assert peak_tflops("a100", "tf32") == 156.0
    assert peak_tflops("v100", "bf16") is None          # no bf16 on Volta: no guess
    assert resolve_peak("Some New Accelerator", "bf16").tflops is None
    assert resolve_peak(None, "bf16", 123.0).tflops == 123.0


def test_bigscience_formula_equals_exact_only_for_default_shapes_with_recompute():
    # Eq. 3 with factor 4 is exactly our full-recompute hardware count for f = 4h, MHA
    model = ModelShape(num_layers=4, hidden_size=64, num_attention_heads=8, vocab_size=512)
    b = flops_breakdown(model, 128, 16, Recompute("full"))
    legacy = bigscience_tflops(16, 128, 4, 64, 512, glu=False, checkpoint_activations=True,
                               seconds_per_iteration=1.0, world_size=1)
    assert legacy == pytest.approx(b.hardware_flops / 1e12, rel=1e-12)


def test_bigscience_glu_overcount_for_llama_shape():
    # h=4096, f=11008 swiglu, s=2048, no recompute.  Exact model FLOPs per layer per token:
    # 3 × (2·(h·h + 2·h·h + h·h) [Q, KV, O] + 4·s·h [attention core] + 6·h·f [MLP])
    h, f, s, n = 4096, 11008, 2048, 32
    model = ModelShape(num_layers=32, hidden_size=h, num_attention_heads=n, vocab_size=32000,
                       ffn_hidden_size=f, glu_activation="swiglu")
    b = flops_breakdown(model, s, 1)
    per_token_layer = 3 * (8 * h * h + 4 * s * h + 6 * h * f)
    per_token_logits = 3 * 2 * h * 32000
    assert b.model_flops == s * (32 * per_token_layer + per_token_logits)
    legacy = bigscience_tflops(1, s, 32, h, 32000, glu=True, checkpoint_activations=False,
                               seconds_per_iteration=1.0, world_size=1) * 1e12
    over = legacy / b.model_flops - 1
    assert 0.25 < over < 0.35     # the ~30 % over-report of LLaMA-shaped runs


def test_microsoft_formula_drops_kv_for_gqa_of_3_or_more():
    # h=64, n=8, B=1, s=4, l=1, V=16, f=256, no recompute.  MACs by the fork's expression:
    # projections (1 + 2//gqa + 1)·h²·s; core 2·d·n·s²; ffn 2·f·h·s; logits V·h·s; × 2 × 3
    def expected(kv_heads):
        gqa = 8 // kv_heads
        macs = (2 + 2 // gqa) * 64 * 64 * 4 + 2 * 8 * 8 * 16 + 2 * 256 * 64 * 4 + 16 * 64 * 4
        return 6 * macs / 1e12
    for kv_heads in (8, 4, 2, 1):
        got = microsoft_tflops(1, 4, 1, 64, 8, kv_heads, 256, 16, False, None, 1.0, 1)
        assert got == pytest.approx(expected(kv_heads))
    # 2 // 4 == 0: the K/V projections vanish for GQA 4:1
    assert microsoft_tflops(1, 4, 1, 64, 8, 2, 256, 16, False, None, 1.0, 1) == pytest.approx(
        microsoft_tflops(1, 4, 1, 64, 8, 1, 256, 16, False, None, 1.0, 1))


def test_estimate_json_schema_and_sums(capsys):
    argv = ["estimate", "--num-layers", "4", "--hidden-size", "256", "--num-attention-heads", "8",
            "--num-key-value-heads", "2", "--swiglu", "--seq-length", "512", "--vocab-size", "32000",
            "--micro-batch-size", "2", "--global-batch-size", "64", "--world-size", "8",
            "--recompute-activations", "--bf16", "--iteration-time", "0.5", "--gpu", "h100",
            "--plan-tokens", "1e9", "--plan-tflops-per-gpu", "100", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["parameters"], int)
    comps = out["components"]
    assert sum(c["forward"] + c["backward"] for c in comps) == out["flops_per_iteration"]["model"]
    assert (sum(c["forward"] + c["backward"] + c["recompute"] for c in comps)
            == out["flops_per_iteration"]["hardware"])
    t = out["throughput"]
    assert t["samples_per_second"] == 128.0 and t["tokens_per_second"] == 128.0 * 512
    assert t["tflops_per_gpu"]["model"] == pytest.approx(
        out["flops_per_iteration"]["model"] / (0.5 * 8 * 1e12))
    assert t["mfu"] == pytest.approx(t["tflops_per_gpu"]["model"] / 989.4)
    assert set(t["legacy_tflops_per_gpu"]) == {"bigscience", "microsoft"}
    # training days: tokens / tokens per iteration × hardware FLOPs / (GPUs × X)
    days = 1e9 / (64 * 512) * out["flops_per_iteration"]["hardware"] / (8 * 100e12) / 86400
    assert out["training_days"] == pytest.approx(days)


def test_estimate_without_time_has_null_throughput(capsys):
    assert main(["estimate", "--num-layers", "2", "--hidden-size", "64",
                 "--num-attention-heads", "8", "--seq-length", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["throughput"] is None and out["training_days"] is None


def test_estimate_human_output(capsys):
    assert main(["estimate", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads",
                 "8", "--seq-length", "32", "--glu-activation", "geglu", "--iteration-time", "1"]) == 0
    text = capsys.readouterr().out
    for needle in ("mlp_gate", "total", "model FLOPs per iteration", "bigscience fork would log",
                   "MFU / HFU:                 n/a"):
        assert needle in text


def test_meter_interval_of_several_iterations():
    """add_iterations(count, samples, seq): ``count`` iterations that together consumed
    ``samples`` samples, as a log line tells them; FLOPs are per sample, so 3 iterations
    of 4 + 4 + 8 samples at s = 8 are 16 samples' worth."""
    meter = ThroughputMeter(MODEL, world_size=2)
    meter.add_iterations(3, 16, 8)
    report = meter.report(3.0)
    assert report.iterations == 3
    assert report.samples == 16 and report.tokens == 16 * 8
    assert report.model_flops == 3 * forward_by_hand(16, 8)
    assert report.samples_per_second == pytest.approx(16 / 3.0)
    assert report.model_tflops_per_gpu == pytest.approx(3 * forward_by_hand(16, 8) / (3.0 * 2e12))
    assert meter.consumed_samples == 16 and meter.consumed_tokens == 128
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="at least one iteration"):
            meter.add_iterations(bad, 16, 8)


def test_legacy_error_is_logged_over_exact_minus_one():
    assert legacy_error(130.0, 100.0) == pytest.approx(0.3)
    assert legacy_error(75.0, 100.0) == pytest.approx(-0.25)
    for logged, exact in ((None, 100.0), (float("inf"), 100.0), (float("nan"), 100.0),
                          (50.0, 0.0)):
        assert legacy_error(logged, exact) is None


def test_microsoft_eq3_form_before_b7b2d5ef():
    """The microsoft fork's throughput_calculator before commit b7b2d5ef (2024-08-19;
    megatron/utils.py at its parent cdf51944), restated: Narayanan et al. 2021 Eq. 3 with
    coefficient 24 whatever the MLP, factor 4 when --checkpoint-activations is set or
    --recompute-granularity is 'selective' or 'full', else 3:

        F = 24 · factor · B · s · l · h² · (1 + s / (6h) + V / (16 l h))

    With factor 4 that is Eq. 3 itself, 96·B·s·l·h²·(1 + s/6h + V/16lh); expanded by hand
    for B 8, s 1024, l 4, h 256, V 1000: 96·B·s·l·h² + 16·B·s²·l·h + 6·B·s·h·V."""
    B, s, l, h, V, seconds, world = 8, 1024, 4, 256, 1000, 2.0, 4
    eq3 = 96 * B * s * l * h * h + 16 * B * s * s * l * h + 6 * B * s * h * V
    assert microsoft_eq3_tflops(B, s, l, h, V, True, seconds, world) == pytest.approx(
        eq3 / (seconds * world * 1e12), rel=1e-12)
    assert microsoft_eq3_tflops(B, s, l, h, V, False, seconds, world) == pytest.approx(
        0.75 * eq3 / (seconds * world * 1e12), rel=1e-12)

    def fork(checkpoint_activations, recompute_granularity):
        factor = 3
        if checkpoint_activations or recompute_granularity in ("selective", "full"):
            factor = 4
        flops = (24 * factor * B * s * l * h ** 2) * (1.0 + s / (6.0 * h) + V / (16.0 * l * h))
        return flops / (seconds * world * 1e12)

    for checkpoint, granularity in ((False, None), (True, None), (False, "selective"),
                                    (False, "full")):
        recompute = checkpoint or granularity is not None
        assert microsoft_eq3_tflops(B, s, l, h, V, recompute, seconds, world) == pytest.approx(
            fork(checkpoint, granularity), rel=1e-12)


def test_estimate_legacy_error_by_hand(capsys):
    """estimate's legacy_error = each fork's figure / exact hardware − 1, derived by hand.

    l 2, h 64, n 8 heads, 2 KV heads (d 8, GQA 4:1), ffn 4h, s 32, V 256, no recompute.
    Exact forward per sample: per layer Q 2sh² + KV 2·s·h·(2·2·8) = sh² + O 2sh² +
    MLP 16sh² + scores and A·V 4s²h, i.e. 21sh² + 4s²h; plus logits 2shV.
    bigscience counts 72·s·l·h²·(1 + s/6h + V/16lh) = 3 × (24slh² + 4s²lh + 1.5shV).
    microsoft counts 2 × 3 × MACs with (1 + 2//4 + 1)·h²·s = 2sh² for Q, K, V, O: its
    forward is l·(4sh² + 16sh² + 4s²h) + 2shV (K and V dropped).
    B, the time and the world size cancel in the ratio.  bigscience is over by 3slh² − 0.5shV
    = 256sh (it assumes full K and V heads, undercounts the logits), microsoft under by slh²."""
    l, h, s, V = 2, 64, 32, 256
    exact = l * (21 * s * h * h + 4 * s * s * h) + 2 * s * h * V
    bigscience = 24 * s * l * h * h + 4 * s * s * l * h + 1.5 * s * h * V
    microsoft = l * (20 * s * h * h + 4 * s * s * h) + 2 * s * h * V
    assert main(["estimate", "--num-layers", str(l), "--hidden-size", str(h),
                 "--num-attention-heads", "8", "--num-key-value-heads", "2", "--seq-length",
                 str(s), "--padded-vocab-size", str(V), "--global-batch-size", "4",
                 "--world-size", "2", "--iteration-time", "0.25", "--json"]) == 0
    errors = json.loads(capsys.readouterr().out)["throughput"]["legacy_error"]
    assert errors["bigscience"] == pytest.approx(bigscience / exact - 1, rel=1e-12)
    assert errors["microsoft"] == pytest.approx(microsoft / exact - 1, rel=1e-12)
    assert errors["bigscience"] == pytest.approx(256 * s * h / exact, rel=1e-12)
    assert errors["microsoft"] == pytest.approx(-l * s * h * h / exact, rel=1e-12)
    # and as printed
    assert main(["estimate", "--num-layers", str(l), "--hidden-size", str(h),
                 "--num-attention-heads", "8", "--num-key-value-heads", "2", "--seq-length",
                 str(s), "--padded-vocab-size", str(V), "--iteration-time", "0.25"]) == 0
    text = capsys.readouterr().out
    assert f"({100 * (microsoft / exact - 1):+.1f}% vs hardware)" in text


@pytest.mark.parametrize("dtype_flags, dtype, tflops", [
    ([], "fp32", 19.5),                 # no --fp16/--bf16: fp32 (A100 datasheet 19.5)
    (["--fp16"], "fp16", 312.0),        # A100 datasheet dense FP16 Tensor Core
    (["--bf16"], "bf16", 312.0),
])
def test_estimate_peak_follows_the_run_dtype(capsys, dtype_flags, dtype, tflops):
    """The peak estimate divides by is the dense peak of the run's own dtype (A100 datasheet:
    19.5 TFLOP/s fp32, 312 bf16/fp16), and MFU = model TFLOP/s per GPU / that peak."""
    assert main(["estimate", "--num-layers", "2", "--hidden-size", "64",
                 "--num-attention-heads", "8", "--seq-length", "32", "--gpu", "a100",
                 "--iteration-time", "1", *dtype_flags, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peak"]["tflops"] == tflops
    assert f"dense {dtype}" in out["peak"]["source"]
    t = out["throughput"]
    assert t["mfu"] == pytest.approx(t["tflops_per_gpu"]["model"] / tflops, rel=1e-12)
