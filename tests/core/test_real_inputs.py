"""The published launch scripts of both forks and of BigScience, read as their forks read them.

Test data: ``tests/data/launch_scripts.json`` (flag lists extracted from the scripts by
``tests/data/launch_scripts/extract.py``, with repo, commit and path) and
``tests/data/published_parameters.json`` (the BLOOM model cards' exact parameter counts).
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from megatron_flops.commands import main
from megatron_flops.megatron.args import megatron_argument_parser, parse_megatron_args, shapes_from_args
from megatron_flops.params import parameter_count

DATA = Path(__file__).resolve().parents[1] / "data"
SCRIPTS = json.loads((DATA / "launch_scripts.json").read_text())
PUBLISHED = json.loads((DATA / "published_parameters.json").read_text())["scripts"]

# A file name's size ("1.3B", "350M", "176B") is a rounded name, not a count: two significant
# figures (half a unit of the last digit is up to 5 % of a name that starts with 1), and some
# names are loose (30B for 29.3B).  5 % separates a right count from a wrong shape: a missing
# GLU, a wrong FFN or a wrong layer count is off by 10 % or more.
NAME_TOLERANCE = 0.05
GPT3_CONTEXT = 2048

# Names that are not the count of the script's own model, and why (read from the scripts).
NAMED_AFTER_ANOTHER_MODEL = {
    "train/tr1-13B-base/tr1-13B-short.slurm":
        "a short test of the 13B run with an 8-layer, 512-wide model",
    "examples_deepspeed/compression/125M-Int8-test-64gpu-distilled-group48.sh":
        "a 10-layer student distilled from the 12-layer 125M model",
    "examples_deepspeed/compression/125M-L10-Int8-test-64gpu-distilled-group48.sh":
        "a 10-layer student distilled from the 12-layer 125M model",
}

_INT_FLAGS = {option for action in megatron_argument_parser()._actions
              if action.type is int for option in action.option_strings}


def argv_of(entry):
    argv = list(entry["flags"])
    if entry.get("world_size"):
        argv += ["--world-size", str(entry["world_size"])]
    return argv


def expected_refusal(entry):
    """The flags a refusal may name, derived from the script alone; empty: the fork runs it."""
    flags = entry["flags"]
    names = set()
    for i, flag in enumerate(flags[:-1]):
        # a value the script computes at run time (ssh, nvidia-smi, $1): not an integer here,
        # and the fork's own int-typed parser refuses it the same way
        if flag in _INT_FLAGS and "<unresolved" in flags[i + 1]:
            names.add(flag)
    if "--no-pipeline-parallel" in flags:
        i = flags.index("--pipeline-model-parallel-size") if "--pipeline-model-parallel-size" in flags else -1
        if i >= 0 and flags[i + 1] != "1":
            # microsoft megatron/arguments.py: "pipeline_model_parallel_size must be 1 if
            # pipeline parallel is disabled"
            names.add("--no-pipeline-parallel")
    # --kd/--mos (a teacher forward, hardware FLOPs only) and --random-ltd (noted: counted at
    # full length) are counted now: the fork runs them, so they are accepted
    return names


def named_count(model):
    """Parameters of the model the name describes: the dense base of an MoE model (the
    microsoft fork's "1.3B MoE-128"), GPT-3's 2048-token position table, and for BLOOM's file
    names (350M … 6B3, kept from the GPT-3 table) the GPT-2 vocabulary those names count."""
    if model.is_moe:
        model = replace(model, num_experts=1, moe_residual=False)
    if model.position_embedding == "learned" and model.max_position_embeddings > GPT3_CONTEXT:
        model = replace(model, max_position_embeddings=GPT3_CONTEXT)
    if model.vocab_size > 200_000:  # BLOOM's 250880
        model = replace(model, vocab_size=50257, position_embedding="learned",
                        max_position_embeddings=GPT3_CONTEXT, embedding_layernorm=False)
    return parameter_count(model).total


@pytest.fixture(scope="module")
def outcomes():
    """estimate --json on every script: (exit code, JSON or the error line)."""
    import contextlib
    import io
    results = {}
    for entry in SCRIPTS:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["estimate", *argv_of(entry), "--json"])
        results[entry["source"], entry["path"]] = (code, out.getvalue(), err.getvalue())
    return results


def test_corpus_is_broad():
    sources = {e["source"] for e in SCRIPTS}
    assert sources == {"bigscience-workshop/bigscience", "microsoft/Megatron-DeepSpeed",
                       "bigscience-workshop/Megatron-DeepSpeed"}
    assert len(SCRIPTS) >= 150


@pytest.mark.parametrize("entry", SCRIPTS, ids=lambda e: e["source"].split("/")[0] + ":" + e["path"])
def test_accepted_or_refused_as_the_fork_would(entry, outcomes):
    code, out, err = outcomes[entry["source"], entry["path"]]
    refusal = expected_refusal(entry)
    if refusal:
        assert code == 2, out[:200]
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("megatron-flops: error:"), err
        assert any(flag in lines[0] for flag in refusal), (lines[0], refusal)
        return
    assert code == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("entry", [e for e in SCRIPTS if e["published_size"] and not expected_refusal(e)],
                         ids=lambda e: e["source"].split("/")[0] + ":" + e["path"])
def test_parameter_count_matches_the_published_size(entry, outcomes):
    code, out, _ = outcomes[entry["source"], entry["path"]]
    result = json.loads(out)
    ns, _ = parse_megatron_args(argv_of(entry))
    model, _ = shapes_from_args(ns)
    assert result["parameters"] == parameter_count(model).total
    if entry["path"] in PUBLISHED:  # an exact published count
        assert result["parameters"] == PUBLISHED[entry["path"]]["parameters"]
    if entry["path"] in NAMED_AFTER_ANOTHER_MODEL:
        pytest.skip(NAMED_AFTER_ANOTHER_MODEL[entry["path"]])
    named = entry["published_size"]["parameters"]
    # a distillation script (--kd, --mos) is named after its teacher (microsoft
    # examples_deepspeed/compression and MoE/*_MoS.sh: a 10-layer student of the 12-layer 125M,
    # 21-layer students of the 24-layer 1.3B and 350M); the count reported is the student's
    named_model = model.teacher if model.teacher is not None else model
    assert named_count(named_model) == pytest.approx(named, rel=NAME_TOLERANCE), entry["published_size"]


def test_corpus_counts(outcomes):
    """The numbers the issue report quotes (update them only with a reason)."""
    accepted = sum(1 for code, _, _ in outcomes.values() if code == 0)
    refused = sum(1 for code, _, _ in outcomes.values() if code == 2)
    assert accepted + refused == len(SCRIPTS)
    assert refused == sum(1 for e in SCRIPTS if expected_refusal(e))


def test_bloom_176b_and_its_reshaped_restarts_are_accepted(outcomes):
    bloom = [e for e in SCRIPTS if e["path"] == "train/tr11-176B-ml/tr11-176B-ml.slurm"][0]
    result = json.loads(outcomes[bloom["source"], bloom["path"]][1])
    assert result["world_size"] == 192  # 24 nodes × 8 GPUs as the script states
    pp72 = [e for e in SCRIPTS if e["path"].startswith("train/tr13-mtf/tr13-176B")]
    assert pp72 and all("72" == e["flags"][e["flags"].index("--pipeline-model-parallel-size") + 1]
                        for e in pp72)
    assert all(outcomes[e["source"], e["path"]][0] == 0 for e in pp72)


# ---- the rules behind the corpus, each on a small shape with a hand count ---------------------

SMALL = ["--num-layers", "10", "--hidden-size", "64", "--num-attention-heads", "4",
         "--seq-length", "32", "--vocab-size", "1000"]
S, H = 32, 64
LAYER_FORWARD = 24 * S * H * H + 4 * S * S * H  # one default layer, one sample (dense attention)


def estimate_json(argv, capsys):
    code = main(["estimate", *SMALL, *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def recompute_flops(result):
    return sum(c["recompute"] for c in result["components"])


def test_megatron_pipeline_needs_divisible_layers_deepspeed_does_not(capsys):
    code, _, err = estimate_json(["--pipeline-model-parallel-size", "4"], capsys)
    assert code == 2 and "--pipeline-model-parallel-size (4) must divide --num-layers (10)" in err
    # DeepSpeed's PipelineModule partitions 10 layers on 4 (or 12) stages itself
    for pp in ("4", "12"):
        code, result, err = estimate_json(["--pipeline-model-parallel-size", pp, "--deepspeed"], capsys)
        assert code == 0, err


def test_deepspeed_pipeline_ignores_block_recompute_as_the_hook_does(capsys):
    block = ["--recompute-granularity", "full", "--recompute-method", "block",
             "--recompute-num-layers", "1", "--pipeline-model-parallel-size", "2"]
    code, result, _ = estimate_json(block + ["--deepspeed"], capsys)
    assert recompute_flops(result) == 0  # the pipe model recomputes nothing with block
    code, result, _ = estimate_json(block, capsys)  # Megatron's own pipeline: 1 layer per stage
    assert recompute_flops(result) == 2 * LAYER_FORWARD
    code, result, _ = estimate_json(["--checkpoint-activations", "--deepspeed"], capsys)
    assert recompute_flops(result) == 10 * LAYER_FORWARD
    # the hook's accounting reads the same namespace the same way
    import argparse
    from megatron_flops.megatron.calculator import RunAccounting
    from megatron_flops.shapes import Recompute
    ns, _ = parse_megatron_args(SMALL + block)
    fork_args = argparse.Namespace(**{k: v for k, v in vars(ns).items() if k != "_cli"},
                                   deepspeed=True)  # what the fork's parser hands the hook
    _, fork_run = shapes_from_args(fork_args)
    assert fork_run.recompute == RunAccounting(fork_args).run.recompute == Recompute()


def test_block_recompute_per_real_stage_with_uneven_megatron_lm_stages(capsys):
    # 10 layers, PP 3, first stage 2 layers -> stages (2, 4, 4); block 3 recomputes
    # min(3,2) + 3 + 3 = 8 layers
    code, result, err = estimate_json([
        "--pipeline-model-parallel-size", "3", "--decoder-first-pipeline-num-layers", "2",
        "--recompute-granularity", "full", "--recompute-method", "block",
        "--recompute-num-layers", "3"], capsys)
    assert code == 0, err
    assert recompute_flops(result) == 8 * LAYER_FORWARD
    code, _, err = estimate_json(["--pipeline-model-parallel-size", "3",
                                  "--decoder-first-pipeline-num-layers", "3"], capsys)
    assert code == 2 and "--decoder-first/last-pipeline-num-layers" in err


def test_pr_moe_adds_a_dense_mlp_and_a_coefficient(capsys):
    # microsoft fork --mlp-type residual -> DeepSpeed MoE(use_residual=True): the expert MLP
    # template kept as `mlp` (dense, every token) and `coefficient = Linear(h, 2)`
    moe = ["--num-experts", "8", "--expert-interval", "2", "--topk", "1"]
    code, standard, _ = estimate_json(moe, capsys)
    code, residual, err = estimate_json(moe + ["--mlp-type", "residual"], capsys)
    assert code == 0, err
    moe_layers = 10 // 2
    dense_mlp_forward = 2 * S * H * 4 * H * 2          # up and down
    coefficient_forward = 2 * S * H * 2
    extra = moe_layers * (dense_mlp_forward + coefficient_forward)
    assert residual["flops_per_iteration"]["model"] - standard["flops_per_iteration"]["model"] == 3 * extra
    dense_mlp_params = H * 4 * H + 4 * H + 4 * H * H + H
    assert residual["parameters"] - standard["parameters"] == moe_layers * (dense_mlp_params + 2 * H + 2)
    code, _, err = estimate_json(moe + ["--mlp-type", "pyramid"], capsys)
    assert code == 2 and "--mlp-type" in err


def test_per_layer_expert_lists(capsys):
    # microsoft get_num_experts_per_layer: one value per MoE layer (layers 2, 4, …, 10)
    code, result, err = estimate_json(["--num-experts", "2", "2", "4", "4", "8"], capsys)
    assert code == 0, err
    router = {c["name"]: c for c in result["components"]}["moe_router"]["forward"]
    assert router == 2 * S * H * (2 + 2 + 4 + 4 + 8)
    code, _, err = estimate_json(["--num-experts", "2", "4"], capsys)
    assert code == 2 and "--num-experts" in err


def test_ulysses_sequence_parallel_divides_the_data_parallel_size(capsys):
    # microsoft arguments.py: data_parallel_size = world / (PP × TP × ds_sequence_parallel_size)
    code, result, err = estimate_json(["--ds-sequence-parallel-size", "4", "--world-size", "32",
                                       "--tensor-model-parallel-size", "2",
                                       "--micro-batch-size", "2"], capsys)
    assert code == 0, err
    assert result["batch_size"] == 2 * (32 // (2 * 4))
    code, _, err = estimate_json(["--ds-sequence-parallel-size", "3", "--world-size", "8"], capsys)
    assert code == 2 and "--world-size (8) must be a multiple" in err


def test_world_size_from_the_launcher_or_said_to_be_assumed(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "16")
    code, result, _ = estimate_json([], capsys)
    assert result["world_size"] == 16 and result["world_size_source"] == "WORLD_SIZE in the environment"
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["estimate", *SMALL, "--tensor-model-parallel-size", "2",
                 "--iteration-time", "1", "--gpu", "a100", "--bf16"]) == 0
    out = capsys.readouterr().out
    assert "world size 2 ASSUMED" in out and "give --world-size" in out


def test_an_mfu_above_100_percent_names_the_likely_cause(capsys):
    # 1e-9 s per iteration on fp32: far above any peak
    assert main(["estimate", *SMALL, "--iteration-time", "1e-9", "--gpu", "a100"]) == 0
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if "warning" in line.lower()]
    assert len(warning) == 1
    assert "world size was assumed" in warning[0] and "fp32" in warning[0] and "--bf16" in warning[0]
    assert main(["estimate", *SMALL, "--iteration-time", "100", "--gpu", "a100"]) == 0
    assert "warning" not in capsys.readouterr().out.lower()
