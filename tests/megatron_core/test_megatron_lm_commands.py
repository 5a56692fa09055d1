"""Shrunk real Megatron-LM commands: what Megatron-Core 0.16.1 executes equals ``estimate --json``.

Each case is a real configuration of NVIDIA/Megatron-LM at d98e8a64 (path below) with its sizes
shrunk to run on CPU and the flags under test kept verbatim.  The Megatron-Core side is built
from the command's meaning as Megatron-LM reads it, written out by hand here (not through
this tool's reader): a flag the command does not give is left to Megatron-Core's own default
(``unset``), a flag it gives is set as Megatron-LM's ``core_transformer_config_from_args`` sets
it.  FlopCounterMode counts one training step (recompute included); it must equal the
hardware FLOPs ``estimate --json`` prints for the same command, component by component.
"""

import json
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import mcore_counting  # noqa: E402

from megatron_flops.commands import main  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

SEQ, BATCH = 16, 2
SHRUNK = ["--seq-length", str(SEQ), "--max-position-embeddings", str(SEQ), "--micro-batch-size",
          str(BATCH), "--global-batch-size", str(BATCH), "--vocab-size", "128"]
GLU = ["--swiglu", "--normalization", "RMSNorm", "--disable-bias-linear",
       "--untie-embeddings-and-output-weights", "--position-embedding-type", "rope"]
SHAPE = dict(hidden_size=64, num_attention_heads=4, vocab_size=128, glu_activation="swiglu",
             normalization="rmsnorm", add_bias_linear=False, tie_embeddings=False,
             position_embedding="rotary")

CASES = {
    # examples/mixtral/train_mixtral_8x7b_distributed.sh: 8 experts top-2, GQA 8 of 32 heads,
    # no --moe-layer-freq (Megatron-LM: every layer is MoE); shrunk to 3 layers, 4 experts
    "mixtral 8x7b example, no --moe-layer-freq": dict(
        argv=["--num-layers", "3", "--hidden-size", "64", "--ffn-hidden-size", "96",
              "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
              "--num-experts", "4", "--moe-router-topk", "2", *GLU],
        shape=dict(num_layers=3, ffn_hidden_size=96, num_query_groups=2, num_experts=4,
                   moe_topk=2, moe_layer_freq=1),
        recompute=Recompute(), unset=("moe_layer_freq",), config={}),
    # examples/post_training/modelopt/conf/deepseek-ai/DeepSeek-R1.sh: dense first layers, MoE
    # with a shared expert, --recompute-activations --moe-layer-recompute (MLA left out);
    # shrunk to 3 layers ([0]*1+[1]*2), 4 experts
    "deepseek-r1 config, --moe-layer-recompute": dict(
        argv=["--num-layers", "3", "--hidden-size", "64", "--ffn-hidden-size", "96",
              "--num-attention-heads", "4", "--kv-channels", "16", "--num-experts", "4",
              "--moe-layer-freq", "[0]*1+[1]*2", "--moe-ffn-hidden-size", "40",
              "--moe-router-topk", "2", "--moe-shared-expert-intermediate-size", "32",
              "--recompute-activations", "--moe-layer-recompute", *GLU],
        shape=dict(num_layers=3, ffn_hidden_size=96, num_experts=4, moe_topk=2,
                   moe_layer_freq=(0, 1, 1), moe_ffn_hidden_size=40,
                   moe_shared_expert_intermediate_size=32),
        recompute=Recompute("selective"), unset=(), config=dict(moe_layer_recompute=True)),
    # tests/functional_tests/test_cases/moe/deepseekv3_proxy_flex_tp1pp4emp16etp1cp1_release:
    # 14 layers on PP 4 (not divisible) placed by the layout, ([0]*3+[1]*11), MTP 1 (MLA left
    # out); shrunk to 4 experts.  One process runs every stage: the iteration's FLOPs are the
    # stages' sum, which the layout does not change.
    "deepseek-v3 proxy, --pipeline-model-parallel-layout": dict(
        argv=["--num-layers", "14", "--hidden-size", "64", "--ffn-hidden-size", "96",
              "--num-attention-heads", "4", "--num-experts", "4",
              "--moe-layer-freq", "([0]*3+[1]*11)", "--moe-ffn-hidden-size", "40",
              "--moe-router-topk", "2", "--mtp-num-layers", "1",
              "--pipeline-model-parallel-size", "4", "--world-size", "4",
              "--pipeline-model-parallel-layout", "Et*2|(tt|)*5t|tmL", *GLU],
        shape=dict(num_layers=14, ffn_hidden_size=96, num_experts=4, moe_topk=2,
                   moe_layer_freq=(0,) * 3 + (1,) * 11, moe_ffn_hidden_size=40, mtp_num_layers=1),
        recompute=Recompute(), unset=(), config={}),
}


def estimate_json(argv):
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["estimate", *argv, *SHRUNK, "--json"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


def _cases():
    for case in sorted(CASES):
        yield pytest.param(case)


@pytest.mark.parametrize("case", list(_cases()))
def test_estimate_of_the_command_is_what_megatron_core_runs(megatron_core, case):
    spec = CASES[case]
    result = estimate_json(spec["argv"])
    model = ModelShape(**{**SHAPE, **spec["shape"]})
    gpt = mcore_counting.build_gpt(model, spec["recompute"], max_sequence_length=SEQ,
                                   unset=spec["unset"], **spec["config"])
    counted = mcore_counting.count_training_step(
        gpt, *mcore_counting.training_inputs(BATCH, SEQ, model.vocab_size))
    ours = [SimpleNamespace(**c) for c in result["components"]]
    assert mcore_counting.counted_by_component(counted) == \
        mcore_counting.expected_by_component(ours)
    assert counted.total_flops == result["flops_per_iteration"]["hardware"]


def test_the_default_places_moe_in_every_layer_in_megatron_core(megatron_core):
    """Without --moe-layer-freq Megatron-Core builds an MoE layer everywhere (its default 1)."""
    spec = CASES["mixtral 8x7b example, no --moe-layer-freq"]
    model = ModelShape(**{**SHAPE, **spec["shape"]})
    gpt = mcore_counting.build_gpt(model, Recompute(), max_sequence_length=SEQ,
                                   unset=spec["unset"])
    assert [type(layer.mlp).__name__ for layer in gpt.decoder.layers] == ["MoELayer"] * 3


def test_moe_layer_recompute_re_runs_the_moe_layers_and_the_attention_core(megatron_core):
    """--moe-layer-recompute: Megatron-Core re-runs router, experts and shared experts of every
    MoE layer, and (its default module list) the attention core of every layer."""
    spec = CASES["deepseek-r1 config, --moe-layer-recompute"]
    model = ModelShape(**{**SHAPE, **spec["shape"]})
    gpt = mcore_counting.build_gpt(model, spec["recompute"], max_sequence_length=SEQ,
                                   **spec["config"])
    counted = mcore_counting.counted_by_component(mcore_counting.count_training_step(
        gpt, *mcore_counting.training_inputs(BATCH, SEQ, model.vocab_size)))
    recomputed = {group for group, phases in counted.items() if phases["recompute"]}
    assert recomputed == {"attention_scores+attention_over_values", "moe_router",
                          "expert_up+expert_gate", "expert_down",
                          "shared_expert_up+shared_expert_gate", "shared_expert_down"}
