"""Build ``tests/data/megatron_lm_corpus.json``: NVIDIA Megatron-LM's own launch configurations
as argv (run by hand, not by the tests).

Three sources, all read from the mirror of NVIDIA/Megatron-LM at its recorded commit:

- ``tests/functional_tests/test_cases/{gpt,moe,mixtral,hybrid,nemotron,multimodal-llava,mimo}/
  **/model_config.yaml``: the ``MODEL_ARGS`` mapping turned into flags the way the test runner
  ``tests/functional_tests/shell_test_utils/_run_training.sh`` does it (``yq … | to_entries``):
  anchors and merge keys expanded (``explode``), a ``true`` value is the bare flag, an empty
  value drops the flag, a value in ``[ ]`` loses its brackets and splits on spaces, any other
  value is one word (quoted when it holds spaces, ``|`` or parentheses).  ``${VAR}`` is left as
  text (the runner's ``envsubst`` fills in paths only).  ``bert``, ``t5`` (not GPT),
  ``gpt-nemo`` (NeMo ``key=value`` recipes, not Megatron flags) and ``common`` (a checkpoint
  converter) are left out.
- ``examples/**/*.sh``: the arguments after the ``*.py`` entry point, shell variables and bash
  arrays resolved by :mod:`extract` (the same evaluator as the forks' corpus).
- ``examples/post_training/modelopt/conf/**.sh``: each model's ``MODEL_ARGS`` (the ModelOpt
  model configurations, one per Hugging Face model).

Usage: ``/path/to/python-with-PyYAML megatron_lm.py ../megatron_lm_corpus.json`` (needs the
mirror under /work/.mirror; PyYAML only here, never in the tests).
"""

import json
import re
import shlex
import sys

import yaml

import extract

REPO = "NVIDIA/Megatron-LM"
TEST_CASES = "tests/functional_tests/test_cases/"
CATEGORIES = ("gpt", "moe", "mixtral", "hybrid", "nemotron", "multimodal-llava", "mimo")
MODELOPT = "examples/post_training/modelopt/conf/"
CARD = "https://huggingface.co/{}"
# training entry points of GPT-like models (text generation, inference servers, BERT, the
# dialogue-prompting ``main.py`` are left out); ``train.py``: examples/multimodal and mimo
TRAINING_ENTRY_POINTS = ("pretrain_gpt.py", "pretrain_hybrid.py", "pretrain_mamba.py",
                         "finetune_gpt.py", "train.py")

# Published sizes (the model card's total parameter count, as written there) and the true
# vocabulary (the released checkpoint's config.json ``vocab_size``, the embedding's rows) for
# the configurations that name a real model.  ``vocab_size`` is given only where the command
# names a tokenizer it cannot read (a hub name or a path argument) and no --padded-vocab-size.
PUBLISHED = {
    "examples/mixtral/train_mixtral_8x7b_distributed.sh": dict(
        size="46.7B", vocab_size=32000,
        source="https://mistral.ai/news/mixtral-of-experts (\"46.7B total parameters\"); "
               "vocab: huggingface.co/mistralai/Mixtral-8x7B-v0.1 config.json"),
    "examples/llama/train_llama3_8b_h100_fp8.sh": dict(
        size="8B", source="https://huggingface.co/meta-llama/Meta-Llama-3-8B (\"8B\")"),
    "examples/megatron_fsdp/train_llama3_8b_fsdp_h100_fp8.sh": dict(
        size="8B", source="https://huggingface.co/meta-llama/Meta-Llama-3-8B (\"8B\")"),
    "examples/gpt3/train_gpt3_175b_distributed.sh": dict(
        size="175B", source="Brown et al. 2020, Language Models are Few-Shot Learners, Table 2.1"),
    MODELOPT + "meta-llama/Llama-3.1-8B-Instruct.sh": dict(
        size="8B", vocab_size=128256, source=CARD.format("meta-llama/Llama-3.1-8B-Instruct")),
    MODELOPT + "meta-llama/Llama-3.2-1B-Instruct.sh": dict(
        size="1.23B", vocab_size=128256, source=CARD.format("meta-llama/Llama-3.2-1B-Instruct")),
    MODELOPT + "Qwen/Qwen2.5-0.5B-Instruct.sh": dict(
        size="0.49B", source=CARD.format("Qwen/Qwen2.5-0.5B-Instruct")),
    MODELOPT + "Qwen/Qwen2.5-7B-Instruct.sh": dict(
        size="7.61B", source=CARD.format("Qwen/Qwen2.5-7B-Instruct")),
    MODELOPT + "Qwen/Qwen3-0.6B.sh": dict(
        size="0.6B", vocab_size=151936, source=CARD.format("Qwen/Qwen3-0.6B")),
    MODELOPT + "Qwen/Qwen3-8B.sh": dict(
        size="8.2B", vocab_size=151936, source=CARD.format("Qwen/Qwen3-8B")),
    MODELOPT + "Qwen/Qwen3-30B-A3B.sh": dict(
        size="30.5B", vocab_size=151936, source=CARD.format("Qwen/Qwen3-30B-A3B")),
    MODELOPT + "Qwen/Qwen3-235B-A22B.sh": dict(
        size="235B", vocab_size=151936, source=CARD.format("Qwen/Qwen3-235B-A22B")),
    MODELOPT + "deepseek-ai/DeepSeek-R1.sh": dict(
        size="671B", vocab_size=129280,
        source=CARD.format("deepseek-ai/DeepSeek-R1") + " (671B main model; the 14B MTP "
               "module is not in this configuration)"),
    MODELOPT + "deepseek-ai/DeepSeek-V2-Lite.sh": dict(
        size="15.7B", vocab_size=102400, source=CARD.format("deepseek-ai/DeepSeek-V2-Lite")),
    MODELOPT + "moonshotai/Kimi-K2-Instruct.sh": dict(
        size="1T", source=CARD.format("moonshotai/Kimi-K2-Instruct")),
    MODELOPT + "nvidia/Nemotron-Mini-4B-Instruct.sh": dict(
        size="4B", vocab_size=256000, source=CARD.format("nvidia/Nemotron-Mini-4B-Instruct")),
    # vision-language (issue 20 item 3): NVLM-D-72B, Qwen2-72B-Instruct + InternViT-6B
    "examples/multimodal/nvlm/pretrain_qwen20_72b_internvit_6b.sh": dict(
        size="79.38B", vocab_size=152064,
        source="https://huggingface.co/nvidia/NVLM-D-72B (79.38B parameters in its safetensors, as mirrored at free2aitools.com/model/nvidia/nvlm-d-72b; trained with Megatron at TP 8, its InternViT keeps 32 heads, 7 of them dummy); vocab: huggingface.co/Qwen/Qwen2-72B-Instruct config.json"),
}


def size_range(text):
    """(parameters, lowest, highest) a size written as a name can stand for.

    A card writes its count rounded ("8.2B" for 8.19B) or cut off ("1.23B" for 1.2358B): from
    half a unit of the last digit below to one unit above (exclusive).
    """
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?([MBT])", text)
    whole, frac, unit = m.groups()
    scale = {"M": 1e6, "B": 1e9, "T": 1e12}[unit]
    value = float(f"{whole}.{frac or 0}") * scale
    digit = scale / 10 ** len(frac or "")
    return value, value - 0.5 * digit, value + digit


class _RawLoader(yaml.SafeLoader):
    """Every scalar as its text (as ``yq … | tostring`` prints it); merge keys expanded."""


_RawLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag.endswith(":merge")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def runner_argv(model_args):
    """The runner's MODEL_ARGS → flags (``_run_training.sh``, the non-NeMo branch)."""
    words = []
    for key, value in model_args.items():
        value = "" if value is None else value
        if isinstance(value, list):
            value = "[" + ", ".join(map(str, value)) + "]"
        value = str(value).strip()
        if value == "":
            continue  # select(.value != "")
        if value == "true":
            words.append(key)
        elif re.fullmatch(r"\([^)]+\)", value):
            words += [key, value]
        elif re.fullmatch(r"\[[^]]+\]", value):
            words += [key, *value[1:-1].split()]
        else:
            words += [key, value]
    return words


def functional_cases(commit):
    out = []
    for path in extract.git(REPO, "ls-tree", "-r", "--name-only", commit).splitlines():
        if not (path.startswith(TEST_CASES) and path.endswith("/model_config.yaml")):
            continue
        if path[len(TEST_CASES):].split("/")[0] not in CATEGORIES:
            continue
        config = yaml.load(extract.git(REPO, "show", f"{commit}:{path}"), Loader=_RawLoader)
        model_args = config.get("MODEL_ARGS") or {}
        out.append({"kind": "functional_test", "path": path,
                    "mode": config.get("MODE", "pretraining"),
                    "argv": runner_argv(model_args)})
    return out


def example_cases(commit):
    out = []
    for path in extract.git(REPO, "ls-tree", "-r", "--name-only", commit).splitlines():
        if not (path.startswith("examples/") and path.endswith((".sh", ".slurm"))):
            continue
        text = extract.git(REPO, "show", f"{commit}:{path}")
        shell, commands, notes = extract.run_script(text)
        if path.startswith(MODELOPT):
            args = shell.vars.get("MODEL_ARGS")
            if not args or "--num-layers" not in args and "--hybrid" not in args:
                continue
            out.append({"kind": "modelopt_config", "path": path, "entry_point": None,
                        "argv": shlex.split(args), "notes": notes})
            continue
        found = extract.megatron_args(commands)
        if found is None:
            continue
        entry, words = found
        if entry not in TRAINING_ENTRY_POINTS:
            continue
        out.append({"kind": "example", "path": path, "entry_point": entry,
                    "argv": extract.flag_list(words), "notes": notes,
                    **extract.world(shell, text)})
    return out


def main(out_path):
    commit = extract.git(REPO, "rev-parse", "HEAD").strip()
    cases = functional_cases(commit) + example_cases(commit)
    for case in cases:
        case["source"], case["commit"] = REPO, commit
        published = PUBLISHED.get(case["path"])
        if published:
            parameters, low, high = size_range(published["size"])
            case["published_size"] = dict(published, parameters=parameters, range=[low, high])
    missing = set(PUBLISHED) - {c["path"] for c in cases}
    assert not missing, missing
    with open(out_path, "w") as fh:  # one case a line
        fh.write("[\n" + ",\n".join(json.dumps(case) for case in cases) + "\n]\n")
    print(len(cases), "cases")


if __name__ == "__main__":
    main(sys.argv[1])
