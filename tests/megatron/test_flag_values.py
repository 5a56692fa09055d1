"""Zero and negative values are refused like every other bad value, naming the flag as typed
(issue 23, item 5): ``--micro-batch-size 0`` was counted as 1, TP/PP 0 as 1, ``--topk 0`` as
1, ``--expert-interval 0`` as 2, ``--make-vocab-size-divisible-by 0`` as 128, …; and an old
spelling (``--batch-size``) was answered with the modern name the user never typed."""

import contextlib
import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_flops.commands import main
from megatron_flops.megatron.args import megatron_argument_parser
from megatron_flops.megatron.flags import OLD_NAMES

BASE = {"--num-layers": "4", "--hidden-size": "64", "--num-attention-heads": "4",
        "--seq-length": "32", "--vocab-size": "1000"}
# what a flag needs beside it to be read at all
CONTEXT = {
    "--topk": ["--num-experts", "4"], "--moe-router-topk": ["--num-experts", "4"],
    "--expert-interval": ["--num-experts", "4"], "--moe-ffn-hidden-size": ["--num-experts", "4"],
    "--checkpoint-num-layers": ["--checkpoint-activations", "--deepspeed"],
    "--recompute-num-layers": ["--recompute-granularity", "full", "--recompute-method", "block"],
    "--activations-checkpoint-num-layers": ["--recompute-granularity", "full",
                                            "--recompute-method", "block"],
    "--num-layers-teacher": ["--kd"], "--hidden-size-teacher": ["--kd"],
    "--num-attention-heads-teacher": ["--kd"],
    "--decoder-first-pipeline-num-layers": ["--pipeline-model-parallel-size", "2"],
    "--decoder-last-pipeline-num-layers": ["--pipeline-model-parallel-size", "2"],
    "--num-layers-per-virtual-pipeline-stage": ["--pipeline-model-parallel-size", "2"],
    "--num-virtual-stages-per-pipeline-rank": ["--pipeline-model-parallel-size", "2"],
}
TEACHER = {"--num-layers-teacher": "2", "--hidden-size-teacher": "64",
           "--num-attention-heads-teacher": "4"}
# 0 is a real value for these (no MTP layer; no BF16 layer kept): only negatives are bad
ZERO_IS_VALID = {"--mtp-num-layers", "--num-layers-at-start-in-bf16", "--num-layers-at-end-in-bf16",
                 "--class-token-len"}  # a ViT without class tokens (SigLIP's)
# sizes whose valid range is not "positive": checked elsewhere
NOT_A_SIZE = {"--world-size"}


def int_options():
    for action in megatron_argument_parser()._actions:
        if action.type is int:
            for option in action.option_strings:
                if option not in NOT_A_SIZE:
                    yield option


def estimate(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["estimate", *argv, "--json"])
    return code, err.getvalue()


def command(option, value):
    flags = dict(BASE)
    if "--kd" in CONTEXT.get(option, []):
        flags.update(TEACHER)
    flags[option] = value
    words = [word for pair in flags.items() for word in pair]
    if option.startswith("--num-layers-at"):
        words += ["--bf16", "--fp8-format", "hybrid", "--first-last-layers-bf16"]
    return words + CONTEXT.get(option, [])


CASES = [(option, value) for option in sorted(set(int_options())) for value in ("0", "-1")
         if not (value == "0" and option in ZERO_IS_VALID)]


@pytest.mark.parametrize("option, value", CASES)
def test_zero_and_negative_are_refused_naming_the_flag_typed(option, value):
    code, err = estimate(command(option, value))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert re.search(r"--[a-z][a-z0-9-]*", lines[0]).group(0) == option, lines[0]


def test_the_twelve_silent_defaults_of_issue_23():
    for option in ("--micro-batch-size", "--tensor-model-parallel-size",
                   "--pipeline-model-parallel-size", "--topk", "--expert-interval",
                   "--make-vocab-size-divisible-by", "--moe-router-topk", "--batch-size",
                   "--model-parallel-size", "--pipe-parallel-size", "--checkpoint-num-layers",
                   "--ds-sequence-parallel-size"):
        code, err = estimate(command(option, "0"))
        assert code == 2 and option in err, (option, err)


# an old spelling with a value that fails a later check (not the value check itself)
LATER_FAILURES = {
    "--batch-size": (["--batch-size", "3", "--global-batch-size", "8"], "--batch-size (3)"),
    "--model-parallel-size": (["--model-parallel-size", "3", "--world-size", "4"],
                              "--model-parallel-size (3)"),
    "--pipe-parallel-size": (["--pipe-parallel-size", "3"], "--pipe-parallel-size (3)"),
    "--encoder-seq-length": (["--encoder-seq-length", "33", "--context-parallel-size", "2"],
                             "--encoder-seq-length (33)"),
}


@pytest.mark.parametrize("old", sorted(LATER_FAILURES))
def test_later_checks_name_the_old_spelling_typed(old):
    argv, text = LATER_FAILURES[old]
    flags = {k: v for k, v in BASE.items() if not (old == "--encoder-seq-length" and k == "--seq-length")}
    code, err = estimate([w for pair in flags.items() for w in pair] + argv)
    assert code == 2 and text in err, err
    assert OLD_NAMES[old] not in err  # the modern name was not typed


ALIASES = [(old, new) for old, new in OLD_NAMES.items() if new.startswith("--")]


@settings(max_examples=60, deadline=None)
@given(pair=st.sampled_from(ALIASES), use_old=st.booleans(),
       value=st.sampled_from(["0", "-1", "-7", "3"]))
def test_an_error_names_only_what_was_typed(pair, use_old, value):
    """Whatever spelling is typed with whatever value, the flag an error is about is one the
    command line holds."""
    typed = pair[0] if use_old else pair[1]
    if typed in ("--num-moe-experts", "--num-experts"):
        argv = command(typed, value) + ["--moe-router-topk", "1"]
    elif typed in ("--activations-checkpoint-method", "--recompute-method"):
        argv = command(typed, "block" if value == "3" else "sideways") + [
            "--recompute-granularity", "full"]
    else:
        argv = command(typed, value)
    code, err = estimate(argv)
    if code == 0:
        return
    line = err.strip().splitlines()[-1]
    subject = re.search(r"--[a-z][a-z0-9-]*", line).group(0)
    assert subject in argv, (argv, line)
