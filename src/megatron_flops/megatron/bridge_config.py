"""NVIDIA Megatron-Bridge's config field names, read into our shapes.

Megatron-Bridge configures a run with a ``ConfigContainer`` (``megatron.bridge.training.config``),
not flags: ``model`` is a Megatron-Core ``TransformerConfig`` subclass (``GPTModelProvider``,
``MLATransformerConfig`` for DeepSeek-like models), ``train`` holds ``micro_batch_size`` and
``global_batch_size``, ``dataset`` its ``seq_length``.  Its saved YAML (``to_yaml``; callables
as ``{_target_: torch.nn.functional.silu, _call_: false}``) or the start-up block
``Configuration Summary (Non-Default Values vs Megatron Core)`` (fields equal to Megatron-Core's
defaults left out, callables left out) is read here as a mapping of sections, into a Megatron-LM
``args`` namespace, so :func:`~megatron_flops.megatron.args.shapes_from_args` validates and
counts it the one way.  Field names and defaults read at Megatron-Bridge v0.3.1
(``src/megatron/bridge/models/gpt_provider.py``, ``training/config.py``) and Megatron-Core
0.16.1 (``transformer_config.py``).
"""

from argparse import Namespace
from typing import Any, Mapping, Optional, Tuple

from ..errors import UsageError
from ..flops import FlopsPerSample, flops_breakdown
from ..shapes import ModelShape, RunShape
from .args import shapes_from_args

__all__ = ["MEGATRON_CORE_DEFAULTS", "GPT_PROVIDER_DEFAULTS", "bridge_namespace",
           "shapes_from_bridge_config", "load_config_yaml", "typed_flags",
           "exact_num_floating_point_operations"]

# Megatron-Core 0.16.1 TransformerConfig defaults of the fields that change the count (the
# Configuration Summary leaves a field out when it equals these).
MEGATRON_CORE_DEFAULTS: Mapping[str, Any] = {
    "num_query_groups": None, "kv_channels": None, "ffn_hidden_size": None,
    "gated_linear_unit": False, "activation_func": "torch.nn.functional.gelu",
    "num_moe_experts": None, "moe_router_topk": 2, "moe_layer_freq": 1,
    "moe_ffn_hidden_size": None, "moe_shared_expert_intermediate_size": None,
    "multi_latent_attention": False, "mtp_num_layers": None, "window_size": None,
    "window_attn_skip_freq": None, "add_bias_linear": True, "normalization": "LayerNorm",
    "recompute_granularity": None, "recompute_method": None, "recompute_num_layers": None,
    "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
    "context_parallel_size": 1, "bf16": False, "fp16": False,
}
# Megatron-Bridge v0.3.1 GPTModelProvider's own fields (not in Megatron-Core's config, so never
# in the Configuration Summary's model section).
GPT_PROVIDER_DEFAULTS: Mapping[str, Any] = {
    "seq_length": 1024, "vocab_size": None, "make_vocab_size_divisible_by": 128,
    "should_pad_vocab": False, "share_embeddings_and_output_weights": True,
    "position_embedding_type": "learned_absolute",
}
# MLATransformerConfig (Megatron-Core 0.16.1) defaults, for multi_latent_attention models.
_MLA_DEFAULTS: Mapping[str, Any] = {"q_lora_rank": 512, "kv_lora_rank": 512, "qk_head_dim": 128,
                                    "qk_pos_emb_head_dim": 64, "v_head_dim": 128}

_GLU_OF_ACTIVATION = {"silu": "swiglu", "gelu": "geglu", "relu": "reglu"}
# model fields that Bridge (Megatron-Core) counts differently, not counted here yet: field ->
# what it is (the whole run is refused rather than miscounted)
_UNSUPPORTED_MODEL_FIELDS = {
    "is_hybrid_model": "a hybrid Mamba model",
    "hybrid_override_pattern": "a hybrid layer pattern",
    "hybrid_layer_pattern": "a hybrid layer pattern",
    "experimental_attention_variant": "an experimental attention variant (GDN, DSA)",
    "attention_output_gate": "the attention output gate",
    "moe_latent_size": "latent MoE",
    "linear_attention_freq": "linear attention layers",
}


def _section(config: Any, name: str) -> Mapping[str, Any]:
    section = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
    if section is None:
        return {}
    if isinstance(section, Mapping):
        return section
    return {key: value for key, value in vars(section).items() if not key.startswith("_")}


def _activation_name(value: Any) -> str:
    """``torch.nn.functional.silu``, ``{_target_: …silu}`` or the function itself → ``silu``."""
    if isinstance(value, Mapping):
        value = value.get("_target_", "")
    name = getattr(value, "__name__", None) or str(value)
    return name.rsplit(".", 1)[-1].strip("'\"<> ").replace("built-in function ", "")


def bridge_namespace(config: Any, provider_defaults: bool = True) -> Namespace:
    """A Megatron-LM ``args`` namespace from a Bridge ``ConfigContainer`` (an object, or its YAML
    as a mapping of sections).  Fields a section leaves out take Megatron-Core's and (with
    ``provider_defaults``; not for the Configuration Summary, which never prints them) the
    GPTModelProvider's defaults; without them a missing sequence length or vocabulary stays
    None (the flags typed supply it)."""
    given = _section(config, "model")
    provider = GPT_PROVIDER_DEFAULTS if provider_defaults else {
        "make_vocab_size_divisible_by": 128, "should_pad_vocab": False,
        "share_embeddings_and_output_weights": True, "position_embedding_type": None}
    model = {**MEGATRON_CORE_DEFAULTS, **provider, **given}
    if model.get("multi_latent_attention"):
        model = {**_MLA_DEFAULTS, **model}
    for name, what in _UNSUPPORTED_MODEL_FIELDS.items():
        if model.get(name):
            raise UsageError(f"model.{name} ({model[name]!r}): {what} is not counted yet")
    train, dataset = _section(config, "train"), _section(config, "dataset")
    if model.get("vocab_size") is None and provider_defaults:
        raise UsageError("model.vocab_size is required (the tokenizer's vocabulary)")
    seq_length = dataset.get("seq_length") or model.get("seq_length")
    if dataset.get("seq_length") and given.get("seq_length") and \
            dataset["seq_length"] != given["seq_length"]:
        raise UsageError(f"dataset.seq_length ({dataset['seq_length']}) contradicts "
                         f"model.seq_length ({given['seq_length']})")
    glu = None
    if model.get("gated_linear_unit"):
        activation = _activation_name(model.get("activation_func"))
        glu = _GLU_OF_ACTIVATION.get(activation)
        if glu is None:
            raise UsageError(f"model.activation_func ({activation}) with gated_linear_unit is "
                             f"not one of {', '.join(_GLU_OF_ACTIVATION)}")
    tp = model.get("tensor_model_parallel_size") or 1
    vocab = None if model.get("vocab_size") is None else int(model["vocab_size"])
    ns = Namespace(
        num_layers=model.get("num_layers"), hidden_size=model.get("hidden_size"),
        num_attention_heads=model.get("num_attention_heads"),
        kv_channels=model.get("kv_channels"),
        group_query_attention=model.get("num_query_groups") is not None,
        num_query_groups=model.get("num_query_groups"),
        ffn_hidden_size=model.get("ffn_hidden_size"), glu_activation=glu,
        num_experts=model.get("num_moe_experts"), moe_router_topk=model.get("moe_router_topk"),
        moe_layer_freq=model.get("moe_layer_freq"),
        moe_ffn_hidden_size=model.get("moe_ffn_hidden_size"),
        moe_shared_expert_intermediate_size=model.get("moe_shared_expert_intermediate_size"),
        mtp_num_layers=model.get("mtp_num_layers"),
        window_size=model.get("window_size"),
        window_attn_skip_freq=model.get("window_attn_skip_freq"),
        multi_latent_attention=bool(model.get("multi_latent_attention")),
        q_lora_rank=model.get("q_lora_rank"), kv_lora_rank=model.get("kv_lora_rank"),
        qk_head_dim=model.get("qk_head_dim"), qk_pos_emb_head_dim=model.get("qk_pos_emb_head_dim"),
        v_head_dim=model.get("v_head_dim"),
        untie_embeddings_and_output_weights=not model.get("share_embeddings_and_output_weights"),
        # yarn is rotary with a scaled base: the same GEMMs
        position_embedding_type={"yarn": "rope"}.get(model.get("position_embedding_type"),
                                                     model.get("position_embedding_type")),
        normalization=model.get("normalization"),
        add_bias_linear=model.get("add_bias_linear"),
        recompute_granularity=model.get("recompute_granularity"),
        recompute_method=model.get("recompute_method"),
        recompute_num_layers=model.get("recompute_num_layers"),
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=model.get("pipeline_model_parallel_size") or 1,
        context_parallel_size=model.get("context_parallel_size") or 1,
        seq_length=seq_length, max_position_embeddings=seq_length,
        micro_batch_size=train.get("micro_batch_size"),
        global_batch_size=train.get("global_batch_size"),
        bf16=bool(model.get("bf16")), fp16=bool(model.get("fp16")),
        # the model pads only with should_pad_vocab (GPTModelProvider.provide); Bridge's
        # FLOPs formula always pads (a named difference: docs/megatron-bridge.md)
        padded_vocab_size=None if model.get("should_pad_vocab") or vocab is None else vocab,
        vocab_size=vocab, make_vocab_size_divisible_by=model.get("make_vocab_size_divisible_by"),
    )
    if isinstance(ns.window_size, (list, tuple)) and len(ns.window_size) == 2 \
            and ns.window_size[0] is not None and ns.window_size[0] < 0:
        ns.window_size = None
    return ns


def shapes_from_bridge_config(config: Any, world_size: Optional[int] = None
                              ) -> Tuple[ModelShape, RunShape]:
    """ModelShape and RunShape of a Bridge ``ConfigContainer`` (object or YAML mapping);
    ``world_size`` (not in the config) sets the data-parallel size."""
    ns = bridge_namespace(config)
    ns.world_size = world_size
    return shapes_from_args(ns)


def load_config_yaml(path: str, flag: str = "--bridge-config") -> Mapping[str, Any]:
    """A saved ``ConfigContainer`` YAML (Bridge's ``to_yaml``: callables and dtypes as
    ``{_target_: …, _call_: false}`` mappings) as a mapping of sections; needs PyYAML (the
    ``bridge`` extra)."""
    try:
        import yaml
    except ImportError:
        raise UsageError(f"{flag} needs PyYAML: pip install -e '.[bridge]' in a megatron-flops "
                         "clone") from None
    try:
        with open(path, encoding="utf-8") as stream:
            config = yaml.safe_load(stream)
    except OSError as error:
        raise UsageError(f"{flag} {path!r}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{flag} {path!r} is not YAML: "
                         f"{str(error).splitlines()[0]}") from None
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise UsageError(f"{flag} {path!r} is not a Megatron-Bridge ConfigContainer (no "
                         "'model' section)")
    return config


def typed_flags(config: Any) -> dict:
    """The Megatron-LM flag destinations a Bridge config sets (None values left out), as if
    typed: a command lays them over a log's arguments.  SwiGLU as ``swiglu`` (Megatron-LM's
    flag), other GLUs as ``glu_activation``."""
    values = {name: value for name, value in vars(bridge_namespace(config)).items()
              if value is not None}
    if values.get("glu_activation") == "swiglu":
        del values["glu_activation"]
        values["swiglu"] = True
    return values


def exact_num_floating_point_operations(cfg: Any, batch_size: int = 1,
                                        seqlen_sum: Optional[int] = None,
                                        seqlen_squared_sum: Optional[int] = None,
                                        *rest: Any, **kwargs: Any) -> float:
    """A drop-in for Megatron-Bridge's ``num_floating_point_operations(cfg, batch_size, …)``
    (``training/utils/flop_utils.py``) that returns the exact model FLOPs (forward + backward,
    every GEMM, dense attention, the router) of ``batch_size`` samples of the config's model:
    assigned to ``megatron.bridge.training.utils.train_utils.num_floating_point_operations``,
    Bridge's own Step Time line, ``throughput per GPU`` field and ``throughput/tflops*``
    scalars become exact.  ``seqlen_squared_sum`` (Bridge's THD statistic Σsᵢ²) counts the
    core attention of packed documents; the other GEMMs run over all ``batch × seq_length``
    tokens (``seqlen_sum`` is that, padded).  Vision and cross-attention statistics are not
    counted (refused models never get here)."""
    model, run = shapes_from_bridge_config(cfg)
    if seqlen_squared_sum is not None:
        model_flops, _ = FlopsPerSample(model).packed_batch_from_squares(
            run.seq_length, batch_size, seqlen_squared_sum)
        return float(model_flops)
    return float(flops_breakdown(model, run.seq_length, batch_size).model_flops)
