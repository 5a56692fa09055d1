"""Megatron-LM's hybrid flags read as Megatron-LM reads them (``validate_args`` at d98e8a64):
the pattern sets the layer and MTP counts, the deprecated names, the ratios of Megatron-Core
≤ 0.16, the standard ``--spec``, the ``|`` stages, and what Megatron-LM refuses."""

import argparse
import contextlib
import io
import json

import pytest

from megatron_flops.commands import main
from megatron_flops.megatron.args import parse_megatron_args, shapes_from_args
from megatron_flops.megatron.hybrid import pattern_from_ratios, standard_spec

BASE = ("--hidden-size 64 --num-attention-heads 4 --seq-length 32 --vocab-size 128 "
        "--micro-batch-size 1 --mamba-head-dim 16 --mamba-num-groups 2 --mamba-state-dim 8 "
        "--num-experts 4 --moe-router-topk 2").split()
SPEC = ["--spec", "megatron.core.models.hybrid.hybrid_layer_specs", "hybrid_stack_spec"]


def shapes(*argv):
    ns, _ = parse_megatron_args([*BASE, *argv])
    return shapes_from_args(ns)


def estimate(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["estimate", *BASE, *argv, "--json"])
    return code, out.getvalue(), err.getvalue()


def test_the_pattern_sets_the_layers_and_ignores_num_layers():
    model, _ = shapes("--num-layers", "99", "--hybrid-layer-pattern", "M*M-ME")
    assert model.num_layers == 6 and model.hybrid_layer_types == "M*M-ME"


def test_the_deprecated_name_is_the_same_pattern():
    new, _ = shapes("--hybrid-layer-pattern", "M*M-ME")
    old, _ = shapes("--hybrid-override-pattern", "M*M-ME")
    assert new == old
    with pytest.raises(Exception, match="cannot both be given"):
        shapes("--hybrid-override-pattern", "M*M-ME", "--hybrid-layer-pattern", "MM*-ME")


def test_mtp_depths_come_from_the_pattern_and_the_legacy_flag():
    model, _ = shapes("--hybrid-layer-pattern", "M*M-ME/*E/*E", "--mtp-num-layers", "5")
    assert model.mtp_num_layers == 2 and model.hybrid_mtp_pattern == "*E"
    legacy, _ = shapes("--hybrid-layer-pattern", "M*M-ME", "--mtp-hybrid-override-pattern", "*E",
                       "--mtp-num-layers", "2")
    assert legacy == model


def test_the_ratios_place_layers_as_megatron_core_does():
    """Against Megatron-Core 0.16.1's own ``allocate_layers`` where it is installed, and the
    file's own examples otherwise (48 layers, 0.5 attention, 0.2 MLP)."""
    cases = [(10, 0.2, 0.0), (48, 0.1, 0.0), (10, 0.0, 0.3), (48, 0.2, 0.3), (48, 0.5, 0.2),
             (9, 0.3, 0.3), (52, 0.08, 0.5)]
    try:
        from megatron.core.ssm.mamba_hybrid_layer_allocation import allocate_layers
    except ImportError:
        pytest.skip("megatron-core is not installed")
    for layers, attention, mlp in cases:
        assert pattern_from_ratios(layers, attention, mlp) == "".join(
            allocate_layers(layers, attention, mlp)), (layers, attention, mlp)


def test_ratio_flags_build_the_pattern():
    model, _ = shapes("--num-layers", "10", "--hybrid-attention-ratio", "0.2", "--num-experts", "1")
    assert model.hybrid_layer_types == pattern_from_ratios(10, 0.2, 0.0)
    assert model.hybrid_layer_types.count("*") == 2
    with pytest.raises(Exception, match="as many layers of each kind"):
        shapes("--hybrid-override-pattern", "MMMMMMMMMM", "--hybrid-attention-ratio", "0.2")


def test_the_standard_spec_is_counted_and_any_other_refused():
    code, out, err = estimate("--hybrid-layer-pattern", "M*M-ME", *SPEC)
    assert code == 0, err
    assert {c["name"] for c in json.loads(out)["components"]} >= {"mamba_ssd", "query"}
    assert standard_spec("megatron.core.models.hybrid.hybrid_layer_specs hybrid_stack_spec")
    assert standard_spec("['megatron.core.models.mamba.mamba_layer_specs', 'mamba_stack_spec']")
    code, _, err = estimate("--hybrid-layer-pattern", "M*M-ME", "--spec",
                            "megatron.core.models.hybrid.hybrid_layer_specs", "gdp_stack_spec")
    assert code == 2 and "--spec" in err.strip().splitlines()[-1]
    code, _, err = estimate("--num-layers", "2", *SPEC)  # a GPT model from a spec: refused
    assert code == 2 and "--spec" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, flag", [
    (["--hybrid-layer-pattern", "M*M-MG"], "--hybrid-layer-pattern"),
    (["--hybrid-layer-pattern", "M*M-MD"], "--hybrid-layer-pattern"),
    (["--hybrid-layer-pattern", "M*M-ME", "--linear-attention-freq", "3"],
     "--linear-attention-freq"),
    (["--hybrid-layer-pattern", "M*M-|ME", "--pipeline-model-parallel-size", "2",
      "--decoder-first-pipeline-num-layers", "2"], "--decoder-first-pipeline-num-layers"),
    (["--hybrid-layer-pattern", "M*M-ME", "--num-layers-per-virtual-pipeline-stage", "1"],
     "--num-layers-per-virtual-pipeline-stage"),
    (["--hybrid-layer-pattern", "M*|M-|ME", "--pipeline-model-parallel-size", "2"],
     "--hybrid-layer-pattern"),
    (["--hybrid-layer-pattern", "M*M-ME", "--pipeline-model-parallel-size", "4"],
     "--pipeline-model-parallel-size"),
    (["--num-layers", "4", "--is-hybrid-model"], "--is-hybrid-model"),
])
def test_what_megatron_refuses_is_refused_naming_the_flag(argv, flag):
    code, _, err = estimate(*argv)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("megatron-flops: error:") and flag in last, err


def test_the_pipes_are_the_stages_of_block_recompute():
    """``M*M-|ME`` on 2 stages, block recompute of 1 layer per stage: layers 0 and 4 (both
    Mamba) are re-run, so the recompute is two Mamba layers' forward."""
    model, run = shapes("--hybrid-layer-pattern", "M*M-|ME", "--pipeline-model-parallel-size", "2",
                        "--recompute-granularity", "full", "--recompute-method", "block",
                        "--recompute-num-layers", "1")
    assert run.recompute.stage_layers == (4, 2)
    assert run.recompute.recomputed_layers(6, 2) == frozenset({0, 4})


def test_a_run_namespace_as_megatron_lm_leaves_it():
    """The hook reads the run's own ``args``: the pattern, num_layers already derived, the spec
    as a list, ``is_hybrid_model`` from the config."""
    ns, _ = parse_megatron_args([*BASE, "--hybrid-layer-pattern", "M*M-ME"])
    values = vars(ns)
    values.update(num_layers=6, spec=["megatron.core.models.hybrid.hybrid_layer_specs",
                                      "hybrid_stack_spec"], is_hybrid_model=True,
                  hybrid_override_pattern=None)
    model, _ = shapes_from_args(argparse.Namespace(**values))
    assert model.hybrid_layer_types == "M*M-ME" and model.num_moe_layers == 1


def test_estimate_names_the_hybrid_layers():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["estimate", *BASE, "--hybrid-layer-pattern", "M*M-ME"])
    assert code == 0, err.getvalue()
    assert "hybrid (3 Mamba, 1 attention, 1 MLP, 1 MoE; Mamba 8 heads × 16" in out.getvalue()
