"""``profile TRACE --arguments-from LOG``: the model and run shape read from a training log's
arguments dump give the same profile as the flags typed; flags typed override the dump and
the provenance block says which value came from where; a log without a dump is one error.

The log is written here as Megatron-LM prints one (``_print_args`` in
megatron/training/arguments.py, read not copied: a
``------------------------ arguments ------------------------`` line, one
``  name <dots to 48 characters> str(value)`` line per argument sorted by name, then
``-------------------- end of arguments ---------------------``; after it the tokenizer
builder's `` > padded vocab (size: V) with K dummy tokens (new size: Vp)``), holding the
demo run's values as Megatron-LM's ``validate_args`` leaves them: kv_channels = 64 / 4 = 16,
ffn_hidden_size = 4 · 64 = 256, global batch = micro batch × one data-parallel rank, fp32.
"""

import json

import pytest

pytest.importorskip("torch")

from demo_helpers import one_intra_op_thread  # noqa: E402

from megatron_flops.commands import main  # noqa: E402

DEMO = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "48", "--micro-batch-size", "4"]
# the demo's byte vocabulary (256) is its default; the profile command must be told
FLAGS = DEMO + ["--vocab-size", "256"]
PEAK = ["--peak-tflops", "1"]

# the demo run's arguments, as the dump prints them (str() of each value)
DUMPED = {
    "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16,
    "ffn_hidden_size": 256, "num_query_groups": 1, "group_query_attention": False,
    "swiglu": False, "seq_length": 48, "max_position_embeddings": 48,
    "micro_batch_size": 4, "global_batch_size": 4, "rampup_batch_size": None,
    "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
    "context_parallel_size": 1, "data_parallel_size": 1, "world_size": 1,
    "recompute_granularity": None, "recompute_method": None, "fp16": False, "bf16": False,
    "params_dtype": "torch.float32", "vocab_size": 256, "make_vocab_size_divisible_by": 128,
    "padded_vocab_size": None, "num_experts": None, "log_interval": 2, "train_iters": 4,
    "lr": 0.0003, "seed": 1234, "tensorboard_dir": None,
}
PADDED_VOCAB_LINE = " > padded vocab (size: 256) with 0 dummy tokens (new size: 256)"


def write_log(path, values, padded_vocab_line=PADDED_VOCAB_LINE):
    lines = ["using world size: 1, data-parallel size: 1",
             "------------------------ arguments ------------------------"]
    for name, value in sorted(values.items(), key=lambda item: item[0].lower()):
        lines.append("  {} {} {}".format(name, "." * (48 - len(name)), value))
    lines += ["-------------------- end of arguments ---------------------",
              "> building GPT2BPETokenizer tokenizer ...", padded_vocab_line, "training ..."]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def demo_trace(tmp_path_factory):
    """The demo's own trace of two iterations (iterations 2-3 of 4), made once for the
    module (the conftest's per-test settings, set here for the one run)."""
    out_dir = tmp_path_factory.mktemp("profile")
    with one_intra_op_thread(), pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEGATRON_FLOPS_CACHE_DIR", str(out_dir / "cache"))
        code = main(["demo", *DEMO, "--train-iters", "4", "--log-interval", "2", *PEAK,
                     "--profile", "--profile-start", "2", "--profile-iters", "2",
                     "--profile-dir", str(out_dir)])
    assert code == 0
    return out_dir / "trace_rank0.json"


def profile_json(argv, capsys):
    code = main(["profile", *argv, *PEAK, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out), err


def test_shapes_from_the_log_give_the_same_profile(demo_trace, tmp_path, capsys):
    log = write_log(tmp_path / "train.log", DUMPED)
    typed, _ = profile_json([str(demo_trace), *FLAGS], capsys)
    read, err = profile_json([str(demo_trace), "--arguments-from", str(log)], capsys)
    sources = read.pop("arguments_from")
    assert read == typed
    assert "arguments_from" not in typed
    # every FLOP of the two iterations is attributed: the shape read is the one the demo ran
    assert typed["unattributed"] == [] and typed["ambiguous"] == []
    assert sources["path"] == str(log)
    assert sources["sources"]["num_layers"] == "log arguments"
    assert sources["sources"]["padded_vocab_size"] == "log padded vocab line"
    assert "world size 1 from the log's arguments" in err


def test_flags_typed_override_the_log_and_provenance_says_so(demo_trace, tmp_path, capsys):
    # a dump of another batch shape: the flags typed are what the trace ran
    other = dict(DUMPED, micro_batch_size=8, global_batch_size=16)
    log = write_log(tmp_path / "other.log", other)
    assert main(["profile", str(demo_trace), *FLAGS, *PEAK]) == 0
    typed = capsys.readouterr().out
    assert main(["profile", str(demo_trace), "--arguments-from", str(log),
                 "--micro-batch-size", "4", "--global-batch-size", "4", *PEAK]) == 0
    out = capsys.readouterr().out
    block, _, table = out.partition("\n\n")
    assert table == typed
    assert block.startswith(f"shapes from {log}: world size 1 (log arguments); TP 1, PP 1, DP 1")
    lines = [line.strip() for line in block.splitlines()[1:]]
    assert "from the command line: micro_batch_size 4, global_batch_size 4" in lines
    dumped = next(line for line in lines if line.startswith("from the log arguments: "))
    for pair in ("num_layers 2", "hidden_size 64", "num_attention_heads 4", "seq_length 48"):
        assert pair in dumped
    assert "micro_batch_size" not in dumped
    assert "from the log padded vocab line: padded_vocab_size 256" in lines


@pytest.mark.parametrize("content, message", [
    ("training ...\n iteration        2/       4 | consumed samples:            8 |\n",
     "{log!r} has no arguments dump (the '------------------------ arguments "
     "------------------------' block"),
    (None, "{log!r} does not exist"),
], ids=["no-dump", "missing"])
def test_a_log_without_a_dump_is_one_error(content, message, demo_trace, tmp_path, capsys):
    log = tmp_path / "plain.log"
    if content is not None:
        log.write_text(content)
    assert main(["profile", str(demo_trace), "--arguments-from", str(log), *PEAK]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("megatron-flops: error: --arguments-from: ")
    assert message.format(log=str(log)) in err
