"""Adding a component is one declaration plus its reference-model leaf: a fictitious per-layer
matmul ``[T × h]·[h × h]`` registered at runtime, and a leaf module in every layer that declares
it carries that component, verify exactly under FlopCounterMode — and each half alone fails."""

import json

import pytest

pytest.importorskip("torch")

from torch import nn

from megatron_flops.cli import main
from megatron_flops.components import EVERY_LAYER, matmul_flops, register_component, unregister_component
from megatron_flops.reference import model as reference
from megatron_flops.reference.verify import verify
from megatron_flops.shapes import ModelShape, Recompute

NAME = "example_probe"
MODEL = ModelShape(num_layers=3, hidden_size=16, num_attention_heads=2, vocab_size=64)
B, S = 2, 8
T, H = B * S, 16


@pytest.fixture
def registered():
    @register_component(NAME, EVERY_LAYER, "example probe", "[T × h]·[h × h]", "2·T·h·h")
    def example_probe_flops(model, s, experts=1):
        return matmul_flops(s, model.hidden_size, model.hidden_size)
    yield
    unregister_component(NAME)


@pytest.fixture
def leaf(monkeypatch):
    """Every TransformerLayer gains ``probe``: a bias-free h -> h linear that carries NAME."""
    build, run = reference.TransformerLayer.__init__, reference.TransformerLayer.forward

    def build_with_probe(self, model, layer_index, dropout, factory):
        build(self, model, layer_index, dropout, factory)
        self.probe = reference.carries(
            nn.Linear(model.hidden_size, model.hidden_size, bias=False, **factory), NAME)

    def run_with_probe(self, x, rotary=None, bias=None):
        x = run(self, x, rotary, bias)
        return x + self.probe(x)

    monkeypatch.setattr(reference.TransformerLayer, "__init__", build_with_probe)
    monkeypatch.setattr(reference.TransformerLayer, "forward", run_with_probe)


@pytest.mark.parametrize("recompute", [Recompute(), Recompute("full")])
def test_declaration_and_leaf_verify_exactly(registered, leaf, recompute):
    result = verify(MODEL, seq_length=S, batch_size=B, recompute=recompute, meta=False)
    assert result.exact, [(r.name, r.counted, r.analytic) for r in result.mismatches]
    probe = result[NAME]
    # by hand: 3 layers × [T × h]·[h × h]; backward: grad of input and of weight, 2×
    forward = 3 * 2 * T * H * H
    recomputed = forward if recompute.granularity == "full" else 0
    assert probe.counted == {"forward": forward, "backward": 2 * forward, "recompute": recomputed}


def test_cli_json_lists_the_added_component(registered, leaf, capsys):
    argv = ["--num-layers", "3", "--hidden-size", "16", "--num-attention-heads", "2",
            "--seq-length", str(S), "--micro-batch-size", str(B), "--vocab-size", "64",
            "--make-vocab-size-divisible-by", "64", "--json"]
    assert main(["verify", *argv]) == 0
    rows = {c["name"]: c for c in json.loads(capsys.readouterr().out)["components"]}
    assert rows[NAME]["forward"] == {"counted": 3 * 2 * T * H * H, "analytic": 3 * 2 * T * H * H}
    assert main(["estimate", *argv]) == 0
    estimate = {c["name"]: c for c in json.loads(capsys.readouterr().out)["components"]}
    assert estimate[NAME] == {"name": NAME, "forward": 3 * 2 * T * H * H,
                              "backward": 2 * 3 * 2 * T * H * H, "recompute": 0}
    assert main(["estimate", *argv[:-1]]) == 0
    assert NAME in capsys.readouterr().out  # the breakdown table


def test_a_declaration_without_its_leaf_fails(registered):
    result = verify(MODEL, seq_length=S, batch_size=B, meta=False)
    assert [r.name for r in result.mismatches] == [NAME]
    assert result[NAME].counted_total == 0


def test_a_leaf_without_its_declaration_fails(leaf):
    result = verify(MODEL, seq_length=S, batch_size=B, meta=False)
    assert [r.name for r in result.mismatches] == [NAME]
    assert result[NAME].analytic_total == 0
    assert result.flop_counter_total == result.counted_total
