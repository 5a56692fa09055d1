"""The flag catalogue: every fork flag known, old names read, unknown flags reported."""

import json

import pytest

from megatron_flops.commands import main
from megatron_flops.megatron import flags as catalogue
from megatron_flops.megatron.args import megatron_argument_parser

BASE = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "32", "--vocab-size", "1000"]


def run(argv, capsys):
    code = main(["estimate", *BASE, *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_sources_are_the_three_frameworks_at_a_commit():
    assert set(catalogue.FORK_FLAGS) == {"bigscience", "microsoft", "megatron-lm"}
    for source in catalogue.FORK_FLAGS.values():
        assert len(source.commit) == 40 and len(source.flags) > 150
    # spot checks read in the sources
    assert "--pp-partition-method" in catalogue.FORK_FLAGS["bigscience"].flags
    assert "--mlp-type" in catalogue.FORK_FLAGS["microsoft"].flags
    assert "--moe-router-topk" in catalogue.FORK_FLAGS["megatron-lm"].flags


def test_every_flag_this_tool_reads_is_a_real_flag():
    ours = {"--world-size", "--strict", "--lenient", "--framework"}
    for action in megatron_argument_parser()._actions:
        for option in action.option_strings:
            if option not in ours:
                assert option in catalogue.KNOWN_FLAGS, option


def test_our_own_options_never_collide_with_a_run_flag():
    from megatron_flops.commands.estimate import estimate_main  # noqa: F401 (the parser lives there)
    import megatron_flops.commands.estimate as estimate_module
    import argparse
    captured = {}

    class Spy(argparse.ArgumentParser):
        def parse_known_args(self, *a, **k):
            captured["parser"] = self
            raise SystemExit(0)
    original = estimate_module.command_parser
    try:
        estimate_module.command_parser = lambda prog, d: Spy(prog=prog)
        with pytest.raises(SystemExit):
            estimate_module.estimate_main([])
    finally:
        estimate_module.command_parser = original
    own = {o for a in captured["parser"]._actions for o in a.option_strings} - {"-h", "--help"}
    assert own and not own & catalogue.KNOWN_FLAGS, own & catalogue.KNOWN_FLAGS


def test_the_runs_train_tokens_is_accepted_and_ours_is_renamed(capsys):
    code, result, err = run(["--train-tokens", "300000000000", "--train-samples", "10"], capsys)
    assert code == 0 and "--train-tokens" in err and "do not change FLOPs" in err
    code, result, _ = run(["--plan-tokens", "1e9", "--plan-tflops-per-gpu", "100"], capsys)
    assert code == 0 and result["training_days"] > 0


def test_unknown_flag_is_reported_with_a_near_miss(capsys):
    # issue 24: a typo of a flag that changes FLOPs is an error (exit 0 with wrong numbers
    # before); --lenient makes it the warning it was
    code, result, err = run(["--hiden-size", "512", "--lenient"], capsys)
    assert code == 0
    assert "unknown flag --hiden-size" in err and "did you mean --hidden-size?" in err
    assert "do not change FLOPs" not in err  # never called FLOP-neutral


def test_a_typo_of_a_flop_changing_flag_is_an_error_naming_the_flag(capsys):
    code, _, err = run(["--hiden-size", "512"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "megatron-flops: error: unknown flag --hiden-size (did you mean --hidden-size?): "
        "--hidden-size changes FLOPs, so a typo would miscount (--lenient makes this a warning)"]
    # a near miss of a FLOP-neutral flag stays a warning
    code, _, err = run(["--log-intervall", "10"], capsys)
    assert code == 0 and "unknown flag --log-intervall" in err and "did you mean" in err


def test_strict_makes_an_unknown_flag_an_error(capsys):
    code, _, err = run(["--hiden-size", "512", "--strict", "--lenient"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "megatron-flops: error: unknown flag --hiden-size (did you mean --hidden-size?)"]


@pytest.mark.parametrize("flag", ["--num-experts-switch", "--dsa-indexer-topk",
                                  "--mtp-use-repeated-layer"])
def test_flop_changing_flags_we_cannot_count_are_errors_naming_them(flag, capsys):
    code, _, err = run([flag, "1"] if "topk" in flag or "size" in flag else [flag], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"megatron-flops: error: not supported yet: {flag}")


def test_old_names_read_as_their_modern_meaning(capsys):
    # 2021 DeepSpeedExamples spelling: micro batch 4, TP 2, PP 2 on 16 GPUs -> DP 4;
    # gas 8 -> global batch 4 × 4 × 8 = 128
    code, result, err = run(["--batch-size", "4", "--gas", "8", "--model-parallel-size", "2",
                             "--pipe-parallel-size", "2", "--world-size", "16"], capsys)
    assert code == 0, err
    assert result["batch_size"] == 128 and result["world_size"] == 16
    code, same, _ = run(["--micro-batch-size", "4", "--global-batch-size", "128",
                         "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size",
                         "2", "--world-size", "16"], capsys)
    assert same["flops_per_iteration"] == result["flops_per_iteration"]


def test_old_and_new_name_disagreeing_is_an_error(capsys):
    code, _, err = run(["--batch-size", "4", "--micro-batch-size", "2"], capsys)
    assert code == 2 and "--batch-size (4) contradicts --micro-batch-size (2)" in err


def test_megatron_lm_moe_spellings(capsys):
    # Megatron-LM: --num-experts 4 --moe-router-topk 2, --moe-layer-freq 1 = every layer MoE
    code, result, err = run(["--num-experts", "4", "--moe-router-topk", "2",
                             "--moe-layer-freq", "1"], capsys)
    assert code == 0, err
    names = {c["name"]: c for c in result["components"]}
    # router on all 4 layers: 2·s·h·E = 2·32·64·4 per layer, batch 1
    assert names["moe_router"]["forward"] == 4 * 2 * 32 * 64 * 4
    # top-2: each token through two expert MLPs: up 2·s·h·4h per expert, 4 layers
    assert names["expert_up"]["forward"] == 4 * 2 * (2 * 32 * 64 * 256)
