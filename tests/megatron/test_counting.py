"""The counting engine on the fixture forks' tiny torch GPTs: every FLOP FlopCounterMode
counts is attributed by the forks' module names, the table is exact when the formula
describes the model, and a deliberately wrong model shows on exactly its component; then the
hook's counting mode (install(count_flops=…), the runner's --count-flops/--strict, the env
variables) on the fixture forks' training runs."""

import os
import sys

import pytest

torch = pytest.importorskip("torch")

from megatron_flops.megatron.args import shapes_from_args  # noqa: E402
from megatron_flops.megatron.counting import count_step  # noqa: E402
from megatron_flops.megatron.hook import STRATEGIES  # noqa: E402
from megatron_flops.megatron.module_names import NameRule, one  # noqa: E402

NAME_TABLES = {strategy.name: strategy.module_names for strategy in STRATEGIES}

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


def test_block_recompute_ignored_caught_in_recompute(monkeypatch):
    # every layer checkpointed whatever the method
    result = count_fixture("microsoft", BLOCK, bug="ignore-block-recompute",
                           monkeypatch=monkeypatch)
    assert names(result.mismatches()) == LAYER_COMPONENTS
    for row in result.mismatches():
        assert row.counted["forward"] == row.analytic["forward"]
        assert row.counted["backward"] == row.analytic["backward"]
        # block recomputes layer 1 of 2 (the formula); the model recomputed both layers
        assert row.counted["recompute"] == 2 * row.analytic["recompute"]


def test_pipeline_model_ignoring_block_recompute_is_what_the_formula_counts():
    """The fork's DeepSpeed pipeline model (f4157bea) recomputes nothing with block recompute;
    shapes_from_args applies that rule for --deepspeed, so the count is exact: no recompute
    counted, none in the formula."""
    result = count_fixture("microsoft", BLOCK + ["--deepspeed"])
    assert result.passes() and not result.mismatches()
    assert all(row.counted["recompute"] == row.analytic["recompute"] == 0 for row in result.rows)


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


class LinearWithGradAccumulationFunc(torch.autograd.Function):
    """Like the microsoft fork's LinearWithGradAccumulationAndAsyncCommunication: a custom
    function whose forward and backward are torch matmuls — counted, so not listed."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad @ weight, grad.t() @ x


def test_a_custom_function_that_calls_torch_matmuls_is_counted_not_listed():
    from megatron_flops.shapes import NO_RECOMPUTE, ModelShape
    weight = torch.nn.Parameter(torch.randn(16, 16))
    x = torch.randn(8, 16, requires_grad=True)

    def step():
        LinearWithGradAccumulationFunc.apply(x, weight).sum().backward()

    shape = ModelShape(num_layers=1, hidden_size=16, num_attention_heads=1, vocab_size=128)
    result, _ = count_step(step, shape, (), 8, 1, NO_RECOMPUTE)
    assert result.uncountable == ()
    assert result.flop_counter_total == 3 * 2 * 8 * 16 * 16  # forward + two grads, by hand
    assert result.unattributed == result.flop_counter_total  # no rule for it here: said so


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


# ---- the hook's counting mode on the fixture runs -------------------------------------------

RUN = BASE[:-2] + ["--train-iters", "4", "--log-interval", "2",
                   "--fake-seconds-per-iteration", "1e-6"]


def log_lines(out):
    return [line for line in out.splitlines() if line.startswith(" iteration ")]


def run_fixture(runner, capsys, fork, extra=(), **install):
    """(output, SystemExit code or None) of a fixture run with the hook installed."""
    from megatron_flops.megatron import hook
    try:
        return runner.run(os.path.join(FIXTURES, f"{fork}_fork"), RUN + list(extra),
                          **install), None
    except SystemExit as exit_:
        hook.uninstall()
        return capsys.readouterr().out, exit_.code


@pytest.mark.parametrize("fork,extra", [("bigscience", ["--glu-activation", "geglu"]),
                                        ("microsoft", ["--num-experts", "2", "--deepspeed"])])
def test_counting_mode_prints_an_exact_table_and_training_continues(runner, capsys, fork, extra):
    out, code = run_fixture(runner, capsys, fork, extra, count_flops=3, strict=True)
    assert code is None, out
    assert out.count("counting mode: iteration 3 counted") == 1
    assert "match: every component equals the formula" in out
    assert "unattributed 0" in out and "operators that could not be counted: none" in out
    assert "counting took" in out
    assert len(log_lines(out)) == 2  # iterations 2 and 4: training went on after the count


def test_counting_mode_is_off_by_default(runner, capsys):
    out, code = run_fixture(runner, capsys, "bigscience")
    assert code is None and "counting mode" not in out and len(log_lines(out)) == 2


def test_environment_variable_turns_it_on(runner, capsys, monkeypatch):
    monkeypatch.setenv("MEGATRON_FLOPS_COUNT_FLOPS", "1")
    out, code = run_fixture(runner, capsys, "microsoft")
    assert code is None and "counting mode: iteration 1 counted" in out


@pytest.mark.parametrize("bug,component", [("extra-matmul", "mlp_up"), ("ffn-size", "mlp_down")])
def test_strict_fails_on_a_wrong_model_with_the_table_in_the_log(runner, capsys, monkeypatch,
                                                                bug, component):
    monkeypatch.setenv("MEGATRON_FLOPS_FIXTURE_BUG", bug)
    out, code = run_fixture(runner, capsys, "bigscience", count_flops=2, strict=True)
    assert code == 1
    assert f"MISMATCH {component}" in out and "--strict" in out
    assert "component" in out and "formula" in out  # the table is in the log
    assert len(log_lines(out)) == 0  # the run ended right after the counted iteration 2


def test_without_strict_a_mismatch_is_reported_and_training_continues(runner, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("MEGATRON_FLOPS_FIXTURE_BUG", "ignore-block-recompute")
    out, code = run_fixture(runner, capsys, "microsoft", BLOCK, count_flops=1)
    assert code is None
    assert "MISMATCH query: recompute counted 1,048,576 formula 524,288" in out
    assert len(log_lines(out)) == 2


def test_the_hooks_pipeline_model_accounting_is_what_the_pipeline_model_executes(runner, capsys):
    # the hook counts no recompute for block in the DeepSpeed pipeline model
    # (calculator.pipeline_model_recompute); the counted model agrees, component by component
    out, code = run_fixture(runner, capsys, "microsoft", BLOCK + ["--deepspeed"], count_flops=1,
                            strict=True)
    assert code is None, out
    assert "recompute none" in out and "match: every component" in out


def test_tolerance_lets_a_small_difference_pass_strict(runner, capsys, monkeypatch):
    monkeypatch.setenv("MEGATRON_FLOPS_FIXTURE_BUG", "ffn-size")  # mlp 25 % over
    out, code = run_fixture(runner, capsys, "bigscience", count_flops=1, strict=True,
                            tolerance="25%")
    assert code is None, out
    out, code = run_fixture(runner, capsys, "bigscience", count_flops=1, strict=True,
                            tolerance=0.2)
    assert code == 1


@pytest.mark.parametrize("strict", [False, True])
def test_a_failure_of_the_counting_steps_aside_unless_strict(runner, capsys, monkeypatch, strict):
    from megatron_flops.megatron import counting

    def broken(*args, **kwargs):
        raise RuntimeError("deliberately broken")

    monkeypatch.setattr(counting, "count_result", broken)
    out, code = run_fixture(runner, capsys, "bigscience", count_flops=2, strict=strict)
    assert out.count("counting mode failed in building the table") == 1
    assert "deliberately broken" in out
    if strict:
        assert code == 1
    else:
        assert code is None and len(log_lines(out)) == 2
        assert "samples per second" in log_lines(out)[0]


@pytest.mark.slow
def test_runner_options_and_exit_status(tmp_path):
    script = os.path.join(FIXTURES, "microsoft_fork", "pretrain_gpt.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def launch(*options, extra=()):
        from subprocess_progress import run_with_progress   # progress, not wall time
        return run_with_progress([sys.executable, "-m", "megatron_flops.run", "--local_rank=0",
                                  *options, script, *RUN, *extra], env=env)

    good = launch("--count-flops", "--strict")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "counting mode: iteration 1 counted" in good.stdout and "match:" in good.stdout
    env["MEGATRON_FLOPS_FIXTURE_BUG"] = "ignore-block-recompute"
    bad = launch("--count-flops=2", "--strict", extra=BLOCK)
    assert bad.returncode == 1
    assert "MISMATCH mlp_up: recompute" in bad.stdout
    wrong = launch("--count-flops=two")
    assert wrong.returncode == 2 and "--count-flops" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
