"""The counting engine on the fixture forks' tiny torch GPTs: every FLOP FlopCounterMode
counts is attributed by the forks' module names, the table is exact when the formula
describes the model, and a deliberately wrong model shows on exactly its component."""

import os
import sys

import pytest

torch = pytest.importorskip("torch")

from megatron_flops.megatron.args import shapes_from_args  # noqa: E402
from megatron_flops.megatron.counting import NAME_TABLES, NameRule, count_step, one  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# l=2, h=64, n=4 (d=16), s=32, micro-batch 2, vocab 1000 padded to 1024
BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--vocab-size", "1000", "--seq-length", "32", "--micro-batch-size", "2",
        "--train-iters", "1"]


def count_fixture(fork, extra=(), bug=None, monkeypatch=None):
    """Count one fixture train step of ``fork``'s tiny GPT with flags BASE + extra."""
    if bug is not None:
        monkeypatch.setenv("MEGATRON_FLOPS_FIXTURE_BUG", bug)
    checkout = os.path.join(FIXTURES, f"{fork}_fork")
    purge = [name for name in sys.modules if name == "megatron" or name.startswith("megatron.")]
    for name in purge:
        del sys.modules[name]
    sys.path.insert(0, checkout)
    try:
        from megatron.arguments import parse_args
        from megatron.global_vars import set_global_variables
        from megatron.model import run_model_step
        args = parse_args(BASE + list(extra))
        set_global_variables(args)
        model, run = shapes_from_args(args)
        result, loss = count_step(lambda: run_model_step(args), model, NAME_TABLES[fork],
                                  run.seq_length, run.global_batch_size, run.recompute)
    finally:
        sys.path.remove(checkout)
        for name in [n for n in sys.modules if n == "megatron" or n.startswith("megatron.")]:
            del sys.modules[name]
    assert loss > 0  # the step ran and returned its loss: training goes on
    return result


def hand_dense_step_flops(s=32, b=2, l=2, h=64, V=1024):
    """One step of the dense fixture GPT, derived by hand (DESIGN.md §2): per layer
    24·s·h² + 4·s²·h forward per sample, logits 2·s·h·V; model FLOPs = 3 × forward."""
    return 3 * b * (l * (24 * s * h * h + 4 * s * s * h) + 2 * s * h * V)


MATCHING = [
    ("bigscience", []),
    ("bigscience", ["--glu-activation", "swiglu", "--checkpoint-activations"]),
    ("microsoft", ["--num-key-value-heads", "2", "--swiglu"]),
    ("microsoft", ["--num-experts", "4", "--topk", "2", "--recompute-granularity", "full",
                   "--recompute-method", "block"]),
    ("microsoft", ["--recompute-granularity", "selective", "--deepspeed"]),
    ("microsoft", ["--checkpoint-activations", "--deepspeed"]),
]


@pytest.mark.parametrize("fork,extra", MATCHING)
def test_every_flop_attributed_and_exact_when_formula_matches(fork, extra):
    result = count_fixture(fork, extra)
    assert result.unattributed == 0
    assert result.counted_total == result.flop_counter_total > 0
    assert result.uncountable == ()
    assert result.mismatches() == [], "\n".join(result.lines())
    assert result.passes()
    assert "match: every component equals the formula" in "\n".join(result.lines())


def test_dense_step_total_equals_hand_derivation():
    result = count_fixture("bigscience")
    assert result.flop_counter_total == hand_dense_step_flops()
    # the fused QKV's counted FLOPs split n·d : 2·g·d = 1 : 2
    assert 2 * result["query"].counted_total == result["key_value"].counted_total


def test_moe_components_are_counted():
    result = count_fixture("microsoft", ["--num-experts", "4", "--topk", "2"])
    for name in ("moe_router", "expert_up", "expert_down"):
        assert result[name].counted["forward"] > 0
    # layer 2 of 2 is MoE (expert interval 2): one dense MLP remains
    assert result["mlp_up"].counted["forward"] == result["expert_up"].counted["forward"] // 2


def names(rows):
    return sorted(row.name for row in rows)


def test_extra_matmul_caught_on_its_component(monkeypatch):
    result = count_fixture("bigscience", bug="extra-matmul", monkeypatch=monkeypatch)
    assert names(result.mismatches()) == ["mlp_up"]
    row = result["mlp_up"]
    assert row.counted_total == 2 * row.analytic_total
    assert not result.passes()
    assert "MISMATCH mlp_up" in "\n".join(result.lines())


def test_changed_ffn_size_caught_on_the_mlp(monkeypatch):
    result = count_fixture("bigscience", bug="ffn-size", monkeypatch=monkeypatch)
    assert names(result.mismatches()) == ["mlp_down", "mlp_up"]
    # f = 4h = 256 in the flags, 320 in the model: 320/256 of the formula
    assert 256 * result["mlp_up"].counted_total == 320 * result["mlp_up"].analytic_total


BLOCK = ["--recompute-granularity", "full", "--recompute-method", "block",
         "--recompute-num-layers", "1"]
LAYER_COMPONENTS = ["attention_output", "attention_over_values", "attention_scores",
                    "key_value", "mlp_down", "mlp_up", "query"]


@pytest.mark.parametrize("how", ["bug", "pipeline model"])
def test_block_recompute_ignored_caught_in_recompute(how, monkeypatch):
    if how == "bug":
        result = count_fixture("microsoft", BLOCK, bug="ignore-block-recompute",
                               monkeypatch=monkeypatch)
    else:  # what the fork's DeepSpeed pipeline model really does
        result = count_fixture("microsoft", BLOCK + ["--deepspeed"])
    assert names(result.mismatches()) == LAYER_COMPONENTS
    for row in result.mismatches():
        assert row.counted["forward"] == row.analytic["forward"]
        assert row.counted["backward"] == row.analytic["backward"]
        # block recomputes layer 1 of 2; the model recomputed both
        assert row.counted["recompute"] == 2 * row.analytic["recompute"]
    assert result["logits"].counted == result["logits"].analytic


def test_tolerance_accepts_a_small_difference(monkeypatch):
    result = count_fixture("bigscience", bug="ffn-size", monkeypatch=monkeypatch)
    assert not result.passes(0.2)   # mlp is 25 % over
    assert result.passes(0.25)


# ---- what FlopCounterMode cannot count -------------------------------------------------

class FusedDenseFunc(torch.autograd.Function):
    """Stands in for apex's fused dense: an autograd function whose matmul the dispatcher
    would not show when done by an extension (here: under no dispatch)."""

    @staticmethod
    def forward(ctx, x, weight):
        with torch.utils._python_dispatch._disable_current_modes():
            return x @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class Kernels(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(16, 16))

    def forward(self, x):
        q = x.view(1, 1, 8, 16)
        x = torch.nn.functional.scaled_dot_product_attention(q, q, q).view(8, 16)
        return FusedDenseFunc.apply(x, self.weight)


def test_uncountable_kernels_listed_by_name_with_calls():
    from megatron_flops.shapes import NO_RECOMPUTE, ModelShape
    module = Kernels()
    x = torch.randn(8, 16, requires_grad=True)

    def step():
        for _ in range(2):
            module(x).sum().backward()

    shape = ModelShape(num_layers=1, hidden_size=16, num_attention_heads=1, vocab_size=128)
    result, _ = count_step(step, shape, (NameRule("weightless", one("query")),), 8, 1,
                           NO_RECOMPUTE)
    listed = dict(result.uncountable)
    assert listed["FusedDenseFunc (custom autograd function, not dispatched)"] == 2
    flash = [name for name in listed if "scaled_dot_product" in name]
    assert flash, listed
    assert all(listed[name] == 2 for name in flash)
    assert not result.passes()
    text = "\n".join(result.lines())
    assert "could not count" in text and "FusedDenseFunc" in text
