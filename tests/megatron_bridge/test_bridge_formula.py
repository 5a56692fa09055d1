"""The ``megatron-bridge`` convention equals Megatron-Bridge's own ``num_floating_point_operations``.

Our value of Bridge's formula is computed from the shapes that our reader of Bridge's config
field names (``megatron_flops.megatron.bridge_config``) makes of each ``ConfigContainer``
section; Bridge's own function runs on a real Megatron-Core ``TransformerConfig`` built from the
same fields (as its ``GPTModelProvider`` is).  Needs Bridge's source (the ``megatron-bridge``
wheel, installed with ``--no-deps``, or ``MEGATRON_BRIDGE_SRC`` + ``MEGATRON_BRIDGE_ERA``) and
``megatron-core``; skipped without them.
"""

import os
from importlib import metadata

import pytest

from megatron_flops.conventions import RunFacts, convention, megatron_bridge_era
from megatron_flops.megatron.bridge_config import shapes_from_bridge_config

import bridge_formula

LLAMA3_8B = {  # Megatron-Bridge Llama3ModelProvider8B fields (llama_provider.py, v0.3.1)
    "num_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_query_groups": 8,
    "ffn_hidden_size": 14336, "gated_linear_unit": True,
    "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False},
    "vocab_size": 128256, "seq_length": 8192, "position_embedding_type": "rope",
    "share_embeddings_and_output_weights": False, "add_bias_linear": False,
    "normalization": "RMSNorm", "bf16": True}
QWEN3_30B_A3B = {  # Qwen3MoEModelProvider30B_A3B (qwen3_moe_provider.py, v0.3.1)
    "num_layers": 48, "hidden_size": 2048, "num_attention_heads": 32, "num_query_groups": 4,
    "kv_channels": 128, "ffn_hidden_size": 6144, "moe_ffn_hidden_size": 768,
    "num_moe_experts": 128, "moe_router_topk": 8, "gated_linear_unit": True,
    "activation_func": "torch.nn.functional.silu", "vocab_size": 151936, "seq_length": 4096,
    "position_embedding_type": "rope", "share_embeddings_and_output_weights": False,
    "add_bias_linear": False, "normalization": "RMSNorm", "bf16": True}
GEGLU = {  # a Gemma-like GeGLU MLP: Bridge 0.3.1 counts its MLP as 2 GEMMs, not 3
    "num_layers": 4, "hidden_size": 256, "num_attention_heads": 8, "num_query_groups": 1,
    "kv_channels": 64, "ffn_hidden_size": 1024, "gated_linear_unit": True,
    "activation_func": {"_target_": "torch.nn.functional.gelu", "_call_": False},
    "vocab_size": 32768, "seq_length": 512, "position_embedding_type": "rope",
    "add_bias_linear": False}
MLA_MOE_MTP = {  # DeepSeek-V3-like, small: MLA with q-lora, shared experts, first layer dense
    "num_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "multi_latent_attention": True,
    "q_lora_rank": 128, "kv_lora_rank": 64, "qk_head_dim": 32, "qk_pos_emb_head_dim": 16,
    "v_head_dim": 32, "ffn_hidden_size": 1536, "moe_ffn_hidden_size": 256,
    "num_moe_experts": 16, "moe_router_topk": 4, "moe_layer_freq": [0, 1, 1, 1],
    "moe_shared_expert_intermediate_size": 512, "mtp_num_layers": 1, "gated_linear_unit": True,
    "activation_func": "torch.nn.functional.silu", "vocab_size": 32000, "seq_length": 1024,
    "position_embedding_type": "rope", "share_embeddings_and_output_weights": False,
    "add_bias_linear": False}
GPT_PLAIN = {  # GeLU MLP, MHA, tied embeddings, TP 2 (vocab padded to 128·2 by the model too)
    "num_layers": 6, "hidden_size": 768, "num_attention_heads": 12, "vocab_size": 50304,
    "seq_length": 2048, "tensor_model_parallel_size": 2, "should_pad_vocab": True}
WINDOWED = {  # sliding window (127, 0) on all but every 3rd layer (Gemma-2/3-like), one MTP layer
    "num_layers": 6, "hidden_size": 256, "num_attention_heads": 4, "num_query_groups": 2,
    "ffn_hidden_size": 1024, "window_size": (127, 0), "window_attn_skip_freq": 3,
    "mtp_num_layers": 1, "vocab_size": 32768, "seq_length": 1024,
    "position_embedding_type": "rope", "add_bias_linear": False}
CASES = {"windowed": (WINDOWED, 2, 8), "llama3-8b": (LLAMA3_8B, 1, 128), "qwen3-30b-a3b": (QWEN3_30B_A3B, 2, 64),
         "geglu": (GEGLU, 4, 32), "mla-moe-mtp": (MLA_MOE_MTP, 2, 16),
         "gpt-plain": (GPT_PLAIN, 8, 64)}


@pytest.fixture(scope="module")
def bridge():
    """(Bridge's flop_utils module, the convention era of that source)."""
    root = bridge_formula.bridge_source_root()
    if root is None:
        pytest.skip("Megatron-Bridge's source is not here (pip install --no-deps "
                    "megatron-bridge==0.3.1, or MEGATRON_BRIDGE_SRC=…/src)")
    pytest.importorskip("megatron.core")
    era = os.environ.get("MEGATRON_BRIDGE_ERA")
    if era is None:
        try:
            era = metadata.version("megatron-bridge")
        except metadata.PackageNotFoundError:
            pytest.skip("MEGATRON_BRIDGE_SRC needs MEGATRON_BRIDGE_ERA (a release or date)")
    return bridge_formula.load_flop_utils(root), megatron_bridge_era(era)


def _transformer_config(fields: dict):
    """A Megatron-Core TransformerConfig (MLATransformerConfig for MLA) with the provider's
    own fields set beside it, as Bridge's GPTModelProvider carries them."""
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import (MLATransformerConfig,
                                                              TransformerConfig)

    provider_only = {"vocab_size", "seq_length", "make_vocab_size_divisible_by",
                     "share_embeddings_and_output_weights", "position_embedding_type",
                     "should_pad_vocab"}
    core = {k: v for k, v in fields.items() if k not in provider_only and k != "bf16"}
    activation = core.pop("activation_func", None)
    if activation is not None:
        target = activation["_target_"] if isinstance(activation, dict) else activation
        core["activation_func"] = getattr(F, target.rsplit(".", 1)[1])
    cls = MLATransformerConfig if core.get("multi_latent_attention") else TransformerConfig
    config = cls(**core)
    config.make_vocab_size_divisible_by = 128
    for name in provider_only:
        if name in fields:
            setattr(config, name, fields[name])
    return config


class _Section:
    def __init__(self, **values):
        self.__dict__.update(values)


@pytest.mark.parametrize("name", sorted(CASES))
def test_convention_equals_bridges_own_function(bridge, name):
    flop_utils, era = bridge
    fields, micro, global_batch = CASES[name]
    config = {"model": fields, "train": {"micro_batch_size": micro,
                                         "global_batch_size": global_batch}}
    model, run = shapes_from_bridge_config(config)
    ours = convention(era.name).flops(RunFacts(model, global_batch, run.seq_length))
    container = _Section(model=_transformer_config(fields), peft=None, dataset=None,
                         train=_Section(micro_batch_size=micro, global_batch_size=global_batch))
    theirs = flop_utils.num_floating_point_operations(container, global_batch)
    assert ours == pytest.approx(theirs, rel=1e-12)
