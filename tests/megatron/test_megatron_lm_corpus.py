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
    # Megatron-LM itself raises for this script at d98e8a64 (tile tags for nvlm-yi-34b)
    "examples/multimodal/nvlm/sft_34b_internvit.sh": "--use-tile-tags",
    "tests/functional_tests/test_cases/multimodal-llava/multimodal_llava_mcore_te_tp1_pp1/"
    "model_config.yaml": "--img-h",
    "examples/mimo/scripts/run_vlm_train.sh": "--model-provider",
    "examples/post_training/modelopt/conf/nvidia/Nemotron-H-8B-Base-8K.sh": "--hybrid-layer-pattern",
    "examples/post_training/modelopt/conf/openai/gpt-oss-20b.sh": "--quick-geglu",
    "examples/gpt3/train_gpt3_175b_distributed.sh": "--step-batch-size-schedule",
}


# vision-language runs of examples/multimodal/train.py: counted since issue 20 item 3 (they were
# refused before, naming --decoder-seq-length or --img-h)
ACCEPTED_MULTIMODAL = (
    "examples/multimodal/pretrain_mistral_clip.sh", "examples/multimodal/sft_mistral_clip.sh",
    "examples/multimodal/nvlm/pretrain_yi_34b_internvit_6b.sh",
    "examples/multimodal/nvlm/pretrain_qwen20_72b_internvit_6b.sh",
    "examples/multimodal/nvlm/sft_qwen20_72b_internvit_6b.sh",
    "examples/multimodal/nvlm/sft_qwen2p5_7b_internvit_6b_video.sh",
    "examples/multimodal/llama_3p1_nemotron_nano_vl_8b_v1/"
    "pretraining_llama_3p1_nemotron_nano_vl_8b_v1.sh",
    "examples/multimodal/llama_3p1_nemotron_nano_vl_8b_v1/sft_llama_3p1_nemotron_nano_vl_8b_v1.sh",
)


@pytest.mark.parametrize("path", ACCEPTED_MULTIMODAL)
def test_multimodal_examples_are_counted_with_their_vision_encoder(path):
    code, out, err = estimate(argv_of(BY_PATH[path]))
    assert code == 0, err
    names = {row["name"] for row in json.loads(out)["components"]}
    assert {"vision_patch_embedding", "vision_layers", "vision_attention",
            "vision_projection_up"} <= names


@pytest.mark.parametrize("path", sorted(REFUSED_FOR))
def test_known_refusals_name_their_feature(path):
    code, _, err = estimate(argv_of(BY_PATH[path]))
    assert code == 2 and REFUSED_FOR[path] in err.strip().splitlines()[-1], err
