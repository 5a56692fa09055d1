"""Layers grouped by kind give exactly the per-layer sums, at a cost independent of --num-layers.

The reference here is the plain loop the breakdown used to run: every layer, one by one, its
own forward FLOPs (``layer_forward_flops`` by layer index) and parameters (``layer_parameters``),
recomputed when :meth:`Recompute.recomputed_layers` lists its index, the attention core again
under selective recompute, the logits once.  The grouped breakdown must equal it to the FLOP.
"""

import dataclasses
import time

import pytest

from megatron_flops import components, flops, params
from megatron_flops.commands import main
from megatron_flops.flops import flops_breakdown, layer_forward_flops
from megatron_flops.params import layer_parameters, parameter_count
from megatron_flops.shapes import ModelShape, Recompute


def per_layer_loop(model, s, batch, recompute, pp, causal):
    """(forward, recompute) per component, summed layer by layer (the old loop, rewritten)."""
    forward, recomputed = {}, {}
    full_layers = recompute.recomputed_layers(model.num_layers, pp)
    for layer in range(model.num_layers):
        for name, value in layer_forward_flops(model, s, layer, causal).items():
            forward[name] = forward.get(name, 0) + value * batch
            if layer in full_layers or (recompute.granularity == "selective"
                                        and components.REGISTRY[name].attention_core):
                recomputed[name] = recomputed.get(name, 0) + value * batch
    forward["logits"] = components.logits_flops(model, s) * batch
    keep = {name for name, value in forward.items() if value}
    return ({n: forward[n] for n in keep}, {n: recomputed.get(n, 0) for n in keep})


def per_layer_parameters(model):
    h = model.hidden_size
    norm = h * (2 if model.normalization == "layernorm" else 1)
    total = model.vocab_size * h * (1 if model.tie_embeddings else 2)
    total += (model.max_position_embeddings or 0) * h
    total += sum(layer_parameters(model, i) for i in range(model.num_layers)) + norm
    return total


BASE = dict(hidden_size=64, num_attention_heads=8, vocab_size=512, max_position_embeddings=64)
MODELS = {
    "dense": ModelShape(num_layers=7, **BASE),
    "glu-gqa": ModelShape(num_layers=6, num_query_groups=2, glu_activation="swiglu",
                          ffn_hidden_size=160, **BASE),
    "moe-every-2nd": ModelShape(num_layers=8, num_experts=4, moe_topk=2, **BASE),
    "moe-list": ModelShape(num_layers=9, num_experts=(4, 16, 1, 8), expert_interval=2, **BASE),
    "moe-all": ModelShape(num_layers=5, num_experts=(2, 4, 4, 8, 2), expert_interval=1, **BASE),
}
RECOMPUTES = {
    "none": (Recompute(), 1),
    "full": (Recompute("full"), 1),
    "selective": (Recompute("selective"), 1),
    "block-1-pp2": (Recompute("full", "block", 1), 2),
    "block-3-pp3": (Recompute("full", "block", 3), 3),
    "block-2-pp1": (Recompute("full", "block", 2), 1),
}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("recompute_name", RECOMPUTES)
@pytest.mark.parametrize("model_name", MODELS)
def test_grouped_breakdown_equals_the_per_layer_loop(model_name, recompute_name, causal):
    model = MODELS[model_name]
    recompute, pp = RECOMPUTES[recompute_name]
    if recompute.method == "block" and model.num_layers % pp:
        # uneven stages are given outright (Megatron's default split needs pp | layers)
        n = model.num_layers
        recompute = dataclasses.replace(
            recompute, stage_layers=tuple(n // pp + (i < n % pp) for i in range(pp)))
    forward, recomputed = per_layer_loop(model, 48, 3, recompute, pp, causal)
    breakdown = flops_breakdown(model, 48, 3, recompute, pp, causal)
    assert {c.name: c.forward for c in breakdown} == forward
    assert {c.name: c.recompute for c in breakdown} == recomputed
    assert {c.name: c.backward for c in breakdown} == {n: 2 * v for n, v in forward.items()}


@pytest.mark.parametrize("model_name", MODELS)
def test_grouped_parameters_equal_the_per_layer_sum(model_name):
    model = MODELS[model_name]
    assert parameter_count(model).total == per_layer_parameters(model)
    untied = dataclasses.replace(model, tie_embeddings=False, normalization="rmsnorm")
    assert parameter_count(untied).total == per_layer_parameters(untied)


def test_layer_kinds_count_every_layer_once():
    # keys: (experts, MTP layer, windowed, fully recomputed)
    model = MODELS["moe-list"]  # layer numbers 2, 4, 6, 8 (indices 1, 3, 5, 7): 4, 16, 1, 8 experts
    assert flops.layer_kinds(model) == {(1, False, False, False): 6, (4, False, False, False): 1, (16, False, False, False): 1, (8, False, False, False): 1}
    # block recompute, first layer of each of 3 stages of 3: indices 0, 3, 6 (dense, 16, dense)
    kinds = flops.layer_kinds(model, Recompute("full", "block", 1), 3)
    assert kinds == {(1, False, False, False): 4, (1, False, False, True): 2, (4, False, False, False): 1, (16, False, False, True): 1, (8, False, False, False): 1}
    # first two of each stage: indices 0, 1, 3, 4, 6, 7 (dense, 4, 16, dense, dense, 8)
    kinds = flops.layer_kinds(model, Recompute("full", "block", 2), 3)
    assert kinds == {(1, False, False, False): 3, (1, False, False, True): 3, (4, False, False, True): 1, (16, False, False, True): 1, (8, False, False, True): 1}
    assert sum(flops.layer_kinds(model, Recompute("full")).values()) == 9


@pytest.fixture
def counted_formulas(monkeypatch):
    """Every registered formula wrapped to count its calls."""
    calls = {"n": 0}
    for name, spec in list(components.REGISTRY.items()):
        def counting(model, s, experts=1, _formula=spec.formula):
            calls["n"] += 1
            return _formula(model, s, experts)
        monkeypatch.setitem(components.REGISTRY, name, dataclasses.replace(spec, formula=counting))
    return calls


@pytest.mark.parametrize("recompute", [Recompute(), Recompute("full"), Recompute("selective"),
                                       Recompute("full", "block", 1)])
def test_formula_evaluations_do_not_grow_with_the_number_of_layers(counted_formulas, recompute):
    evaluations = []
    for layers in (10, 10 ** 4, 10 ** 30):
        counted_formulas["n"] = 0
        flops_breakdown(ModelShape(num_layers=layers, **BASE), 32, 1, recompute)
        evaluations.append(counted_formulas["n"])
    assert evaluations[0] == evaluations[1] == evaluations[2] > 0


def test_a_hundred_million_layers_estimate_at_once(capsys):
    """`estimate --num-layers 100000000` must not loop over layers (it took ~12 minutes)."""
    flags = ["estimate", "--hidden-size", "64", "--num-attention-heads", "8", "--seq-length", "32",
             "--checkpoint-activations", "--json", "--num-layers"]
    seconds = {}
    for layers in ("10", "100000000"):
        start = time.perf_counter()
        assert main(flags + [layers]) == 0
        seconds[layers] = time.perf_counter() - start
    capsys.readouterr()
    # 10^7 times the layers; a per-layer loop would be ~10^6 times slower, not 30
    assert seconds["100000000"] < 30 * seconds["10"] + 2.0, seconds


def test_huge_layer_counts_are_exact_multiples():
    # a dense model: each layer and its parameters are the same, so l layers are l × one
    one = flops_breakdown(ModelShape(num_layers=1, **BASE), 32)
    many = flops_breakdown(ModelShape(num_layers=10 ** 30, **BASE), 32)
    for c1, cn in zip(one, many):
        assert cn.forward == (c1.forward if c1.name == "logits" else 10 ** 30 * c1.forward)
    layer = params.layer_parameters(ModelShape(num_layers=1, **BASE), 0)
    assert (parameter_count(ModelShape(num_layers=10 ** 30, **BASE)).total
            - parameter_count(ModelShape(num_layers=1, **BASE)).total) == (10 ** 30 - 1) * layer


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("start,end", [(0, 0), (1, 0), (0, 1), (1, 1), (2, 3), (3, 2)])
def test_fp8_layer_shares_equal_the_layer_by_layer_count(model_name, start, end):
    """fp8_fraction counts the layers in FP8 without enumerating them; the list it replaced:"""
    from megatron_flops.fp8 import ALWAYS_BF16, Fp8Recipe, fp8_fraction
    model = MODELS[model_name]
    recipe = Fp8Recipe(fp8_format="hybrid", bf16_layers_at_start=start, bf16_layers_at_end=end)
    for name, spec in components.REGISTRY.items():
        if spec.occurs == components.ONCE or spec.attention_core or name in ALWAYS_BF16:
            continue  # not decided per layer
        layers = [i for i in range(model.num_layers) if spec.in_layer(model, model.experts_in_layer(i))]
        in_fp8 = [i for i in layers if start <= i < model.num_layers - end]
        expected = len(in_fp8) / len(layers) if layers else 0.0
        assert fp8_fraction(model, name, recipe) == expected, name


def test_fp8_estimate_of_a_hundred_million_layers_returns_at_once(capsys):
    start = time.perf_counter()
    assert main(["estimate", "--hidden-size", "64", "--num-attention-heads", "8", "--seq-length",
                 "32", "--num-layers", "100000000", "--fp8-format", "hybrid", "--bf16",
                 "--iteration-time", "1", "--gpu", "h100", "--json"]) == 0
    assert time.perf_counter() - start < 10  # enumerating the layers took ~4 minutes
    capsys.readouterr()
