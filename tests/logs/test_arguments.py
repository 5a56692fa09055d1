"""The run's arguments dump read back from its console log: typed values, launcher prefixes,
restarts (a dump per segment), the padded vocab line, flags typed laid over the dump.

The dump format is Megatron's ``_print_args`` (both Megatron-DeepSpeed forks and Megatron-LM,
read, not copied): a ``------------------------ arguments ------------------------`` line,
``  name <dots to 48 characters> str(value)`` per argument, sorted, then
``-------------------- end of arguments ---------------------``.  The padded vocab line is
the tokenizer builder's `` > padded vocab (size: V) with K dummy tokens (new size: Vp)``.
"""

import pytest

from megatron_flops.logs import arguments
from megatron_flops.logs.console import ParseStats, parse_console_log
from megatron_flops.megatron.args import megatron_argument_parser, shapes_from_args


def dump(prefix="", **values):
    lines = [prefix + arguments.DUMP_START]
    for name, value in sorted(values.items(), key=lambda item: item[0].lower()):
        lines.append(prefix + "  {} {} {}".format(name, "." * (48 - len(name)), value))
    lines.append(prefix + arguments.DUMP_END)
    return lines


@pytest.mark.parametrize("text, value", [
    ("None", None), ("True", True), ("False", False), ("64", 64), ("-1", -1),
    ("6e-05", 6e-05), ("0.95", 0.95), ("[1]", [1]), ("[8, 8, 16]", [8, 8, 16]),
    ("['16', '16', '6_000_000']", ["16", "16", "6_000_000"]),
    ("PositionEmbeddingType.alibi", "alibi"), ("swiglu", "swiglu"),
    ("torch.bfloat16", "torch.bfloat16"), ("type:transformer|embedding",
                                           "type:transformer|embedding"),
    ("/path/to/data_text_document", "/path/to/data_text_document"), ("[", "["),
])
def test_typed_value(text, value):
    assert arguments.typed_value(text) == value
    assert type(arguments.typed_value(text)) is type(value)


@pytest.mark.parametrize("prefix", ["", "[default0]:", "stdout: ", "0: ", "[1,0]<stdout>:"])
def test_dump_behind_launcher_prefixes_is_read_whole(prefix):
    lines = dump(prefix, num_layers=24, hidden_size=2048, skip_train_iteration_range="None",
                 rampup_batch_size="['16', '16', '6_000_000']", world_size=64,
                 position_embedding_type="PositionEmbeddingType.alibi")
    lines.append(prefix + " > padded vocab (size: 50257) with 431 dummy tokens "
                          "(new size: 50688)")
    stats = ParseStats()
    assert list(parse_console_log(lines, stats)) == []
    assert stats.argument_dumps == 1 and stats.arguments_line == 1
    # every line of the block, "iteration" in a name included (skip_train_iteration_range)
    assert stats.arguments == {"hidden_size": "2048", "num_layers": "24",
                               "position_embedding_type": "PositionEmbeddingType.alibi",
                               "rampup_batch_size": "['16', '16', '6_000_000']",
                               "skip_train_iteration_range": "None", "world_size": "64"}
    assert stats.padded_vocab == 50688 and stats.padded_vocab_line == len(lines)
    namespace = arguments.namespace_from_arguments(stats.arguments)
    assert namespace.rampup_batch_size == ["16", "16", "6_000_000"]
    assert namespace.position_embedding_type == "alibi"


def test_a_restarts_dump_replaces_the_first(logfmt):
    first = dump(world_size=64, tensor_model_parallel_size=4)
    second = dump(world_size=128, tensor_model_parallel_size=8)
    line = logfmt.bigscience_line(10, 640, 640 * 2048, 2.0, 64, 32.0, 1.0)
    stats = ParseStats()
    seen = []
    for record in parse_console_log(first + [line] + second + [line], stats):
        seen.append((stats.argument_dumps, stats.arguments["world_size"]))
    assert seen == [(1, "64"), (2, "128")]


def test_the_dumps_namespace_gives_the_runs_shapes():
    """A microsoft-fork dump (values as its validate_args leaves them) read like its args."""
    lines = dump(num_layers=32, hidden_size=4096, num_attention_heads=32,
                 num_key_value_heads=8, ffn_hidden_size=11008, swiglu=True, seq_length=4096,
                 max_position_embeddings=4096, micro_batch_size=1, global_batch_size=1024,
                 rampup_batch_size=None, tensor_model_parallel_size=2,
                 pipeline_model_parallel_size=4, world_size=64, num_experts=[1], topk=1,
                 checkpoint_activations=True, recompute_granularity="full",
                 recompute_method="uniform", recompute_num_layers=1, bf16=True, fp16=False,
                 untie_embeddings_and_output_weights=True, normalization="rmsnorm",
                 add_bias_linear=False, position_embedding_type="rope", deepspeed=True,
                 kv_channels=128, make_vocab_size_divisible_by=128, log_interval=10)
    stats = ParseStats()
    list(parse_console_log(lines + [" > padded vocab (size: 32000) with 0 dummy tokens "
                                    "(new size: 32000)"], stats))
    namespace, sources = arguments.merge_flags(
        megatron_argument_parser().parse_args([]), set(), stats.arguments, stats.padded_vocab)
    model, run = shapes_from_args(namespace)
    assert (model.num_layers, model.hidden_size, model.num_query_groups) == (32, 4096, 8)
    assert model.ffn_hidden_size == 11008 and model.glu_activation == "swiglu"
    assert model.vocab_size == 32000 and not model.tie_embeddings
    assert model.position_embedding == "rotary" and model.normalization == "rmsnorm"
    assert (run.world_size, run.tensor_model_parallel_size, run.data_parallel_size) == (64, 2, 8)
    assert run.recompute.granularity == "full" and run.dtype == "bf16"
    assert sources["num_layers"] == arguments.FROM_DUMP
    assert sources["padded_vocab_size"] == arguments.FROM_PADDED_VOCAB
    assert sources["world_size"] == arguments.FROM_DUMP
    assert arguments.fork_from_arguments(stats.arguments) == "microsoft"


def test_flags_typed_override_the_dump_and_say_so():
    parser = megatron_argument_parser()
    argv = ["--hidden-size", "1024", "--tensor-model-parallel-size=1"]
    flags = parser.parse_args(argv)
    given = arguments.given_destinations(parser, argv)
    assert given == {"hidden_size", "tensor_model_parallel_size"}
    dumped = {"num_layers": "24", "hidden_size": "2048", "num_attention_heads": "16",
              "seq_length": "2048", "tensor_model_parallel_size": "2", "world_size": "8",
              "glu_activation": "None", "deepspeed": "True", "embed_layernorm": "False"}
    namespace, sources = arguments.merge_flags(flags, given, dumped, 50304)
    assert (namespace.hidden_size, namespace.num_layers) == (1024, 24)
    assert namespace.tensor_model_parallel_size == 1 and namespace.padded_vocab_size == 50304
    assert sources["hidden_size"] == sources["tensor_model_parallel_size"] == "command line"
    assert sources["num_layers"] == "log arguments"
    assert sources["ffn_hidden_size"] == "default"
    block = arguments.sources_lines(namespace, sources)
    assert block[0] == ("from the command line: hidden_size 1024, "
                        "tensor_model_parallel_size 1")
    assert block[1].startswith("from the log arguments: num_layers 24, num_attention_heads 16")
    assert block[2] == "from the log padded vocab line: padded_vocab_size 50304"
    assert arguments.fork_from_arguments(dumped) == "bigscience"
    # no dump: the flags unchanged, everything typed or a default
    namespace, sources = arguments.merge_flags(flags, given, {}, None)
    assert vars(namespace) == vars(flags)
    assert set(sources.values()) == {"command line", "default"}


def test_fork_from_arguments_needs_a_deepspeed_fork():
    assert arguments.fork_from_arguments({"swiglu": "True"}) is None   # Megatron-LM
    assert arguments.fork_from_arguments({"deepspeed": "True"}) is None
    assert arguments.fork_from_arguments({"deepspeed": "True", "swiglu": "False",
                                          "glu_activation": "None"}) is None


def test_a_hybrid_runs_dump_gives_its_hybrid_shape():
    """A Megatron-LM hybrid run's dump (d98e8a64: the pattern, num_layers derived from it, the
    Mamba sizes, the standard stack spec printed as its list) gives the hybrid model."""
    lines = dump(num_layers=6, hidden_size=64, num_attention_heads=4, group_query_attention=True,
                 num_query_groups=2, ffn_hidden_size=96, seq_length=128,
                 max_position_embeddings=128, micro_batch_size=1, global_batch_size=8,
                 rampup_batch_size=None, tensor_model_parallel_size=1,
                 pipeline_model_parallel_size=1, world_size=8, num_experts=4,
                 moe_router_topk=2, moe_layer_freq=1, hybrid_layer_pattern="M*M-ME",
                 hybrid_override_pattern=None, is_hybrid_model=False, mamba_state_dim=8,
                 mamba_head_dim=16, mamba_num_groups=2, mamba_num_heads=None,
                 spec=["megatron.core.models.hybrid.hybrid_layer_specs", "hybrid_stack_spec"],
                 bf16=True, normalization="RMSNorm", add_bias_linear=False,
                 position_embedding_type="none", untie_embeddings_and_output_weights=True,
                 use_mcore_models=True, log_interval=10)
    stats = ParseStats()
    list(parse_console_log(lines + [" > padded vocab (size: 1000) with 24 dummy tokens "
                                    "(new size: 1024)"], stats))
    namespace, _ = arguments.merge_flags(
        megatron_argument_parser().parse_args([]), set(), stats.arguments, stats.padded_vocab)
    model, run = shapes_from_args(namespace)
    assert model.hybrid_layer_types == "M*M-ME" and model.num_layers == 6
    assert (model.mamba_heads, model.mamba_num_groups, model.mamba_state_dim) == (8, 2, 8)
    assert model.experts_in_layer(5) == 4 and model.vocab_size == 1024
