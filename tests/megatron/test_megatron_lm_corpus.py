"""NVIDIA Megatron-LM's own launch configurations, read by ``estimate --json``.

``tests/data/megatron_lm_corpus.json`` (built by ``tests/data/launch_scripts/megatron_lm.py``
from NVIDIA/Megatron-LM at d98e8a64): every GPT / MoE / hybrid / multimodal functional test
case (``model_config.yaml`` turned into flags as its test runner does), every GPT-like
training script of ``examples/`` and every ModelOpt model configuration.  Each is accepted, or
refused with one line naming the flag it cannot count; where a model card publishes the size,
the parameters are that size within the rounding of its name (the true vocabulary given as
``--vocab-size`` when the command names a tokenizer that cannot be read here).
"""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from megatron_flops.commands import main

CORPUS = json.loads((Path(__file__).parents[1] / "data" / "megatron_lm_corpus.json").read_text())
BY_PATH = {case["path"]: case for case in CORPUS}

def estimate(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["estimate", *argv, "--json"])
    return code, out.getvalue(), err.getvalue()


def argv_of(case):
    argv = list(case["argv"])
    vocab = case.get("published_size", {}).get("vocab_size")
    return argv + ["--vocab-size", str(vocab)] if vocab else argv


def _params():
    for case in CORPUS:
        yield pytest.param(case["path"], id=case["path"])


@pytest.mark.parametrize("path", list(_params()))
def test_each_case_is_accepted_and_right_or_refused_in_one_line(path):
    case = BY_PATH[path]
    code, out, err = estimate(argv_of(case))
    if code == 0:
        result = json.loads(out)
        published = case.get("published_size")
        if published:
            low, high = published["range"]
            assert low <= result["parameters"] < high, (published["size"], result["parameters"])
        return
    errors = [line for line in err.splitlines() if line.startswith("megatron-flops: error:")]
    assert code == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert re.search(r"--[a-z][a-z0-9-]*", errors[0]), errors[0]  # it names the flag


def test_the_corpus_covers_the_sources_at_one_commit():
    kinds = {case["kind"] for case in CORPUS}
    assert kinds == {"functional_test", "example", "modelopt_config"}
    assert {case["commit"] for case in CORPUS} == {"d98e8a64ddf34856e74b24714e3bedb2f5a39553"}
    assert len(CORPUS) > 300
    sized = [case for case in CORPUS if "published_size" in case]
    assert len(sized) >= 15 and all(case["published_size"]["source"] for case in sized)


def test_the_runner_conversion_on_a_known_case():
    """``--moe-layer-freq: ([0]*3+[1]*5)`` stays one word, ``true`` is the bare flag, an
    env-substituted path stays as text (moe/…deepseek…proxy… model_config.yaml)."""
    case = next(c for c in CORPUS if c["kind"] == "functional_test"
                and "([0]*3+[1]*5)" in c["argv"])
    argv = case["argv"]
    assert argv[argv.index("--moe-layer-freq") + 1] == "([0]*3+[1]*5)"
    assert argv[argv.index("--swiglu") + 1].startswith("--")
    assert any("${DATA_PATH}" in word for word in argv)


# the refusals a reader can check by eye: the feature each family of cases carries
REFUSED_FOR = {
    "examples/multimodal/nvlm/pretrain_yi_34b_internvit_6b.sh": "--decoder-seq-length",
    "tests/functional_tests/test_cases/multimodal-llava/multimodal_llava_mcore_te_tp1_pp1/"
    "model_config.yaml": "--img-h",
    "examples/mimo/scripts/run_vlm_train.sh": "--model-provider",
    "examples/post_training/modelopt/conf/openai/gpt-oss-20b.sh": "--quick-geglu",
    "examples/gpt3/train_gpt3_175b_distributed.sh": "--step-batch-size-schedule",
}


@pytest.mark.parametrize("path", sorted(REFUSED_FOR))
def test_known_refusals_name_their_feature(path):
    code, _, err = estimate(argv_of(BY_PATH[path]))
    assert code == 2 and REFUSED_FOR[path] in err.strip().splitlines()[-1], err


# hybrid Mamba models, counted since issue 20 (before: refused on --hybrid-layer-pattern /
# --hybrid-override-pattern): Nemotron-H 4B/8B/47B/56B, Nemotron Nano 9B v2, Nemotron-3 Nano
# 30B-A3B, and the hybrid functional tests (with '|' stages, --is-hybrid-model, MoE layers).
# Still refused, on flags of their own: latent MoE (Nemotron-3 Super/Ultra, --moe-latent-size),
# MTP with a repeated layer (--mtp-use-repeated-layer), distillation (--export-kd-teacher-load),
# gated delta net (the gdn cases), the inference runs' --model-provider.
HYBRID_COUNTED = (
    "examples/post_training/modelopt/conf/nvidia/Nemotron-H-4B-Instruct.sh",
    "examples/post_training/modelopt/conf/nvidia/Nemotron-H-8B-Base-8K.sh",
    "examples/post_training/modelopt/conf/nvidia/Nemotron-H-47B-Reasoning-128K.sh",
    "examples/post_training/modelopt/conf/nvidia/Nemotron-H-56B-Base-8K.sh",
    "examples/post_training/modelopt/conf/nvidia/NVIDIA-Nemotron-Nano-9B-v2.sh",
    "examples/post_training/modelopt/conf/nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.sh",
    "tests/functional_tests/test_cases/hybrid/hybrid_mr_mcore_te_tp1_pp2_vpp2_cp1_dgx_a100_1N8G/"
    "model_config.yaml",
    "tests/functional_tests/test_cases/hybrid/hybrid_mr_mcore_te_tp1_pp4_cp1_dgx_a100_1N8G/"
    "model_config.yaml",
    "tests/functional_tests/test_cases/hybrid/hybrid_flextron_nightly_tp2_pp1_ep2_dgx_h100_1N8G/"
    "model_config.yaml",
)


@pytest.mark.parametrize("path", HYBRID_COUNTED)
def test_hybrid_configs_are_counted_layer_by_layer(path):
    case = BY_PATH[path]
    argv = case["argv"]
    flag = "--hybrid-layer-pattern" if "--hybrid-layer-pattern" in argv else "--hybrid-override-pattern"
    pattern = argv[argv.index(flag) + 1].split("/")[0].replace("|", "")
    code, out, err = estimate(argv_of(case))
    assert code == 0, err
    result = json.loads(out)
    names = {c["name"] for c in result["components"]}
    assert {"mamba_in_proj", "mamba_ssd", "mamba_out_proj"} <= names
    assert ("expert_up" in names) == ("E" in pattern)
    assert ("mlp_up" in names) == ("-" in pattern)
