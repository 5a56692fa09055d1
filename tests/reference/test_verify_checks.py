"""verify fails where the formula is wrong, the CLI speaks JSON and exit codes, BLOOM verifies."""

import dataclasses
import json
import time
from fractions import Fraction

import pytest

pytest.importorskip("torch")

from megatron_flops.cli import main
from megatron_flops.components import REGISTRY
from megatron_flops.shapes import ModelShape, Recompute
from megatron_flops.reference.verify import choose_meta, verify

TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--seq-length", "8", "--micro-batch-size", "2", "--vocab-size", "100",
        "--make-vocab-size-divisible-by", "64"]


def perturb(monkeypatch, component, extra):
    """Replace ``component``'s registered formula by one that counts ``extra`` more FLOPs."""
    spec = REGISTRY[component]
    original = spec.formula
    monkeypatch.setitem(REGISTRY, component, dataclasses.replace(
        spec, formula=lambda *args: original(*args) + extra))


@pytest.mark.parametrize("component", ["mlp_down", "key_value", "attention_scores", "logits"])
def test_a_perturbed_formula_fails_on_exactly_that_component(monkeypatch, component):
    perturb(monkeypatch, component, 2)
    model = ModelShape(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=64)
    result = verify(model, seq_length=8, batch_size=2, recompute=Recompute("full"), meta=False)
    assert not result.exact
    assert [r.name for r in result.mismatches] == [component]


def test_cli_reports_the_differing_row_and_exits_1(monkeypatch, capsys):
    perturb(monkeypatch, "mlp_up", 1)
    assert main(["verify", *TINY]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH mlp_up" in out
    assert "MISMATCH query" not in out


def test_cli_json_exact(capsys):
    assert main(["verify", *TINY, "--swiglu", "--num-key-value-heads", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exact"] is True
    assert result["mode"] == "real"
    assert result["counted_total"] == result["analytic_total"] > 0
    names = [c["name"] for c in result["components"]]
    assert names[:2] == ["query", "key_value"] and "mlp_gate" in names
    for c in result["components"]:
        assert c["counted"] == c["analytic"]
        assert c["counted"] == sum(c[p]["counted"] for p in ("forward", "backward", "recompute"))
    assert result["seconds"] > 0


def test_cli_meta_flag_and_vocab_padding(capsys):
    assert main(["verify", *TINY, "--meta", "--json", "--untie-embeddings-and-output-weights"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "meta" and result["exact"]
    logits = next(c for c in result["components"] if c["name"] == "logits")
    # 100 tokens padded to 128: logits forward 2·B·s·h·V with V = 128
    assert logits["forward"]["counted"] == 2 * 2 * 8 * 32 * 128


@pytest.mark.parametrize("argv,flag", [
    (TINY + ["--meta", "--real"], "--real"),
    (["--num-layers", "2", "--hidden-size", "30", "--num-attention-heads", "4",
      "--seq-length", "8", "--vocab-size", "64"], "--num-attention-heads"),
    (TINY + ["--num-key-value-heads", "3"], "--num-key-value-heads"),
])
def test_bad_input_exits_2_naming_the_flag(capsys, argv, flag):
    assert main(["verify", *argv]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_large_shapes_go_to_meta_automatically():
    tiny = ModelShape(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=64)
    big = ModelShape(num_layers=32, hidden_size=4096, num_attention_heads=32, vocab_size=50304)
    assert not choose_meta(tiny, 16)
    assert choose_meta(big, 2048)


def bloom_hardware_flops(B, s, l, h, V):
    """Narayanan et al. 2021, Eq. 3 (full recompute, dense attention, defaults)."""
    return 96 * B * s * l * h * h * (1 + Fraction(s, 6 * h) + Fraction(V, 16 * l * h))


def test_bloom_176b_verifies_exactly_on_meta_tensors():
    model = ModelShape(num_layers=70, hidden_size=14336, num_attention_heads=112,
                       vocab_size=250880, position_embedding="alibi", embedding_layernorm=True)
    start = time.perf_counter()
    result = verify(model, seq_length=2048, batch_size=1, recompute=Recompute("full"))
    seconds = time.perf_counter() - start
    assert result.mode == "meta"
    assert result.exact, [(r.name, r.counted, r.analytic) for r in result.mismatches]
    assert result.counted_total == bloom_hardware_flops(1, 2048, 70, 14336, 250880)
    assert seconds < 60  # target 30 s on 2 cores: benchmarks/verify_bloom.py measures it


@pytest.mark.parametrize("fields", [
    dict(),
    dict(glu_activation="swiglu", num_query_groups=2, tie_embeddings=False, normalization="rmsnorm"),
    dict(kv_channels=6, ffn_hidden_size=44, add_bias_linear=False, position_embedding="rotary"),
    dict(num_experts=4, moe_topk=2, expert_interval=2, num_layers=4, embedding_layernorm=True),
])
def test_reference_model_has_the_core_parameter_count(fields):
    """The model is the architecture params.py describes: same parameter count."""
    from megatron_flops.params import parameter_count
    from megatron_flops.reference.model import ReferenceGPT
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128,
                max_position_embeddings=16)
    base.update(fields)
    model = ModelShape(**base)
    gpt = ReferenceGPT(model, seq_length=16, device="meta")
    assert sum(p.numel() for p in gpt.parameters()) == parameter_count(model).total


def test_a_matmul_outside_the_components_is_caught(monkeypatch):
    """A matmul the formulas do not know shows up as 'unattributed' and fails the check."""
    import torch
    from megatron_flops.reference import model as reference

    original = reference.TransformerLayer.forward

    def with_an_extra_matmul(self, x, rotary=None, bias=None):
        x = original(self, x, rotary, bias)
        return x + x @ torch.eye(x.shape[-1], device=x.device)

    monkeypatch.setattr(reference.TransformerLayer, "forward", with_an_extra_matmul)
    model = ModelShape(num_layers=2, hidden_size=16, num_attention_heads=2, vocab_size=64)
    result = verify(model, seq_length=8, batch_size=2, meta=False)
    assert not result.exact
    assert [r.name for r in result.mismatches] == ["unattributed"]
    extra = result["unattributed"]
    # 2 layers × forward [T × h]·[h × h] with T = 2·8 = 16, h = 16;
    # backward only the input gradient (the identity matrix needs none)
    assert extra.counted["forward"] == 2 * (2 * 16 * 16 * 16)
    assert extra.counted["backward"] == extra.counted["forward"]
    assert result.flop_counter_total == result.counted_total


def test_causal_and_odd_rotary_are_refused(capsys):
    assert main(["verify", *TINY, "--causal"]) == 2
    assert "--causal" in capsys.readouterr().err
    assert main(["verify", *TINY, "--kv-channels", "7", "--position-embedding-type", "rotary"]) == 2
    assert "--kv-channels" in capsys.readouterr().err


@pytest.mark.parametrize("fields,seq", [
    # Llama-2-70B's widths (4 of its 80 layers): GQA 64:8, SwiGLU f = 28672, untied, rotary
    (dict(num_layers=4, hidden_size=8192, num_attention_heads=64, num_query_groups=8,
          ffn_hidden_size=28672, glu_activation="swiglu", vocab_size=32000,
          tie_embeddings=False, position_embedding="rotary", normalization="rmsnorm",
          add_bias_linear=False), 4096),
    # Mixtral-8x7B's widths (2 of its 32 layers): every layer MoE, 8 experts, top-2
    (dict(num_layers=2, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
          ffn_hidden_size=14336, glu_activation="swiglu", vocab_size=32000,
          tie_embeddings=False, position_embedding="rotary", normalization="rmsnorm",
          add_bias_linear=False, num_experts=8, moe_topk=2, expert_interval=1), 4096),
])
@pytest.mark.parametrize("recompute", [Recompute("full"), Recompute("selective")])
def test_full_width_modern_shapes_verify_on_meta(fields, seq, recompute):
    result = verify(ModelShape(**fields), seq_length=seq, batch_size=1, recompute=recompute)
    assert result.mode == "meta"
    assert result.exact, [(r.name, r.counted, r.analytic) for r in result.mismatches]
