"""A Megatron-Bridge config counted exactly: Megatron-Core's real GPTModel built from the
config's own ``model`` fields (as Bridge's GPTModelProvider passes them to TransformerConfig),
one training step under FlopCounterMode, equals
``megatron_flops.megatron.bridge_config.exact_num_floating_point_operations`` — the drop-in for
Bridge's ``num_floating_point_operations(cfg, batch_size)`` — to the FLOP, and Bridge's own
formula (our ``megatron-bridge`` convention) is below it by half the core attention (and the
router).  The CPU knobs (fp32, fusions off, local spec) are tests/megatron_core's."""

import types

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import mcore_counting  # noqa: E402

from megatron_flops.conventions import RunFacts, convention  # noqa: E402
from megatron_flops.flops import flops_breakdown  # noqa: E402
from megatron_flops.megatron.bridge_config import (  # noqa: E402
    exact_num_floating_point_operations, shapes_from_bridge_config)
from megatron_flops.shapes import Recompute  # noqa: E402

SEQ, MICRO = 16, 2
# Bridge ConfigContainer model sections (field names of GPTModelProvider / TransformerConfig)
CASES = {
    "llama-like": {
        "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
        "kv_channels": 20, "ffn_hidden_size": 96, "gated_linear_unit": True,
        "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False},
        "add_bias_linear": False, "normalization": "RMSNorm", "position_embedding_type": "rope",
        "share_embeddings_and_output_weights": False, "vocab_size": 128, "seq_length": SEQ},
    "qwen3-moe-like": {
        "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
        "ffn_hidden_size": 96, "moe_ffn_hidden_size": 32, "num_moe_experts": 4,
        "moe_router_topk": 2, "gated_linear_unit": True, "activation_func": "silu",
        "add_bias_linear": False, "normalization": "RMSNorm", "position_embedding_type": "rope",
        "share_embeddings_and_output_weights": False, "vocab_size": 128, "seq_length": SEQ},
}
_CORE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                "kv_channels", "ffn_hidden_size", "moe_ffn_hidden_size", "num_moe_experts",
                "moe_router_topk", "gated_linear_unit", "add_bias_linear", "normalization")


def _core_overrides(fields):
    """The config's own Megatron-Core fields, as Bridge's provider hands them over."""
    import torch.nn.functional as F

    overrides = {name: fields[name] for name in _CORE_FIELDS if name in fields}
    activation = fields.get("activation_func")
    if activation is not None:
        name = activation["_target_"] if isinstance(activation, dict) else activation
        overrides["activation_func"] = getattr(F, name.rsplit(".", 1)[-1])
    return overrides


@pytest.mark.parametrize("case", sorted(CASES))
def test_drop_in_equals_flop_counter_on_the_configs_model(megatron_core, case):
    fields = CASES[case]
    config = {"model": fields, "train": {"micro_batch_size": MICRO, "global_batch_size": MICRO}}
    model, _ = shapes_from_bridge_config(config)
    gpt = mcore_counting.build_gpt(model, Recompute(), SEQ, **_core_overrides(fields))
    counted = mcore_counting.count_training_step(
        gpt, *mcore_counting.training_inputs(MICRO, SEQ, fields["vocab_size"]))
    total = sum(sum(phases.values())
                for phases in mcore_counting.counted_by_component(counted).values())
    assert total == exact_num_floating_point_operations(
        types.SimpleNamespace(**config), MICRO)
    # Bridge's own formula: half the core attention and the router fewer
    exact = flops_breakdown(model, SEQ, MICRO)
    core = exact["attention_scores"].model_flops + exact["attention_over_values"].model_flops
    router = exact["moe_router"].model_flops if model.is_moe else 0
    bridge = convention("megatron-bridge").flops(RunFacts(model, MICRO, SEQ))
    assert total - bridge == core / 2 + router


def test_packed_squares_replace_the_core_attention():
    config = {"model": CASES["llama-like"], "train": {"micro_batch_size": 2,
                                                      "global_batch_size": 2}}
    model, _ = shapes_from_bridge_config(config)
    exact = flops_breakdown(model, SEQ, 2)
    core = exact["attention_scores"].model_flops + exact["attention_over_values"].model_flops
    # two documents of 8 per 16-token sample: Σsᵢ² = 2·2·8² = 256 of the 2·16² = 512
    assert exact_num_floating_point_operations(config, 2, 32, 256) == exact.model_flops - core / 2
