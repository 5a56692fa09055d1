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


# ---- issue 20 item 2: gpt-oss (--quick-geglu) accepted, its parameters the published ones --------
GPT_OSS = "examples/post_training/modelopt/conf/openai/"
# OpenAI, "gpt-oss-120b & gpt-oss-20b Model Card" (arXiv 2508.10925, Aug 2025): 116.8B and 20.9B
# total parameters (its Table 1: 116.83B = MLP 114.71B + attention 0.96B + embed/unembed 1.16B;
# 20.91B = 19.12B + 0.64B + 1.16B)
GPT_OSS_PUBLISHED = {"gpt-oss-20b.sh": (20.85e9, 21.0e9), "gpt-oss-120b.sh": (116.75e9, 116.9e9)}


@pytest.mark.parametrize("name", sorted(GPT_OSS_PUBLISHED))
def test_gpt_oss_is_counted_and_its_parameters_are_published(name):
    """ModelOpt's gpt-oss configurations (``--quick-geglu``, biases on, 64 heads × 64, 8 KV
    heads, top-4 experts of 2880) are accepted and counted as a GLU.

    Their parameters are the published size plus one learned position table: the commands
    give no ``--position-embedding-type``, and ModelOpt's model builder (megatron/post_training/
    model_builder.py at d98e8a64) sets ``config.position_embedding_type = "yarn"`` for
    ``--enable-gpt-oss`` but builds the embedding with ``args.position_embedding_type`` (default
    learned_absolute): Megatron really builds a 40960 × 2880 table (max positions × h), which the
    released model has not.  Without it (rope positions, as the release) the count is the
    model card's."""
    argv = argv_of(BY_PATH[GPT_OSS + name])
    code, out, _ = estimate(argv)
    assert code == 0
    result = json.loads(out)
    low, high = GPT_OSS_PUBLISHED[name]
    assert result["parameters"] - 40960 * 2880 == \
        json.loads(estimate(argv + ["--position-embedding-type", "rope"])[1])["parameters"]
    assert low <= result["parameters"] - 40960 * 2880 < high
    components = {c["name"]: c for c in result["components"]}
    # quick-GeGLU is a GLU: the experts' gate GEMM equals their up GEMM (h -> 2f in one linear)
    assert components["expert_gate"]["forward"] == components["expert_up"]["forward"] > 0
