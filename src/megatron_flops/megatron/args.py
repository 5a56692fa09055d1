"""Read Megatron arguments into a ModelShape and a RunShape.

Works on the ``argparse.Namespace`` that either Megatron-DeepSpeed fork builds (bigscience:
``glu_activation``, ``position_embedding_type`` enum, ``pad_vocab_size_to``,
``embed_layernorm``, ``checkpoint_activations``; microsoft/deepspeedai: ``swiglu``,
``num_key_value_heads``, ``num_experts`` list, ``topk``, ``expert_interval``,
``recompute_granularity``, ``untie_embeddings_and_output_weights``, ``normalization``,
``add_bias_linear``), on NVIDIA Megatron-LM's (``num_experts`` int, ``moe_layer_freq``,
``moe_router_topk``, ``moe_ffn_hidden_size``, ``moe_shared_expert_intermediate_size``,
``multi_latent_attention`` and its ranks/head dims, ``mtp_num_layers``, ``window_size``,
``window_attn_skip_freq``, ``context_parallel_size``) and on a command line parsed by
:func:`megatron_argument_parser`, which uses the same flag names and destinations.  Standard library only.
"""

import argparse
from typing import Iterable, List, Optional, Sequence, Tuple

from ..shapes import (GLU_ACTIVATIONS, ModelShape, Recompute, RunShape, ShapeError)

GPT2_BPE_VOCAB_SIZE = 50257


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int = 128,
                      tensor_model_parallel_size: int = 1,
                      pad_vocab_size_to: Optional[int] = None) -> int:
    """Megatron's padding: round up to a multiple of ``divisible_by × TP``.

    bigscience's ``--pad-vocab-size-to`` sets the size outright; like the fork we require it
    to be at least the tokenizer's size and a multiple of ``--make-vocab-size-divisible-by``,
    and (as the fork's help text says, though its code does not check) divisible by TP.
    """
    if vocab_size <= 0:
        raise ShapeError(f"--vocab-size must be a positive integer, got {vocab_size}", "--vocab-size")
    if pad_vocab_size_to is not None:
        if pad_vocab_size_to < vocab_size:
            raise ShapeError(
                f"--pad-vocab-size-to ({pad_vocab_size_to}) must be at least the tokenizer's "
                f"vocabulary size ({vocab_size})", "--pad-vocab-size-to")
        if make_vocab_size_divisible_by and pad_vocab_size_to % make_vocab_size_divisible_by:
            raise ShapeError(
                f"--pad-vocab-size-to ({pad_vocab_size_to}) must be a multiple of "
                f"--make-vocab-size-divisible-by ({make_vocab_size_divisible_by})",
                "--pad-vocab-size-to")
        if pad_vocab_size_to % tensor_model_parallel_size:
            raise ShapeError(
                f"--pad-vocab-size-to ({pad_vocab_size_to}) must be divisible by "
                f"--tensor-model-parallel-size ({tensor_model_parallel_size})",
                "--pad-vocab-size-to")
        return pad_vocab_size_to
    if make_vocab_size_divisible_by <= 0:
        raise ShapeError(
            f"--make-vocab-size-divisible-by must be a positive integer, got "
            f"{make_vocab_size_divisible_by}", "--make-vocab-size-divisible-by")
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple


def _int_list(values) -> Optional[Tuple[int, ...]]:
    if values is None:
        return None
    if isinstance(values, (int, str)):
        values = [values]
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ShapeError(f"expected integers, got {values!r}") from None


def _position_embedding(ns) -> str:
    kind = getattr(ns, "position_embedding_type", None)
    if kind is not None:
        kind = getattr(kind, "name", kind)  # bigscience stores an enum
        kind = str(kind).lower()
    rotary_flag = bool(getattr(ns, "use_rotary_position_embeddings", False))
    mapping = {"absolute": "learned", "learned_absolute": "learned", "learned": "learned",
               "rotary": "rotary", "rope": "rotary", "alibi": "alibi", "none": "none"}
    if kind is not None and kind not in mapping:
        raise ShapeError(
            f"--position-embedding-type must be one of absolute, rotary, alibi, none, got {kind!r}",
            "--position-embedding-type")
    resolved = mapping.get(kind) if kind is not None else None
    if rotary_flag:
        if resolved not in (None, "learned", "rotary"):
            raise ShapeError(
                f"--use-rotary-position-embeddings contradicts --position-embedding-type {kind}",
                "--use-rotary-position-embeddings")
        return "rotary"
    if resolved is None:
        resolved = "learned"
    if resolved == "learned" and getattr(ns, "add_position_embedding", True) is False:
        return "none"
    return resolved


def _glu(ns) -> Optional[str]:
    glu = getattr(ns, "glu_activation", None)
    swiglu = bool(getattr(ns, "swiglu", False))
    if glu is not None and glu not in GLU_ACTIVATIONS:
        raise ShapeError(
            f"--glu-activation must be one of {', '.join(GLU_ACTIVATIONS)}, got {glu!r}",
            "--glu-activation")
    if swiglu:
        if glu not in (None, "swiglu"):
            raise ShapeError(f"--swiglu contradicts --glu-activation {glu}", "--swiglu")
        return "swiglu"
    return glu


def _query_groups(ns) -> Optional[int]:
    kv_heads = getattr(ns, "num_key_value_heads", None)
    gqa = bool(getattr(ns, "group_query_attention", False))
    groups = getattr(ns, "num_query_groups", None)
    if groups is not None and not gqa and kv_heads is None and getattr(ns, "_cli", False):
        raise ShapeError("--num-query-groups has no effect without --group-query-attention",
                         "--num-query-groups")
    if gqa:
        groups = 1 if groups is None else groups
        if kv_heads is not None and kv_heads != groups:
            raise ShapeError(
                f"--num-key-value-heads ({kv_heads}) contradicts --num-query-groups ({groups})",
                "--num-key-value-heads")
        return groups
    return kv_heads


def _recompute(ns) -> Recompute:
    checkpoint = bool(getattr(ns, "checkpoint_activations", False))
    selective_flag = bool(getattr(ns, "recompute_activations", False))
    granularity = getattr(ns, "recompute_granularity", None)
    method = getattr(ns, "recompute_method", None)
    num_layers = getattr(ns, "recompute_num_layers", None)
    if checkpoint:
        if granularity == "selective":
            raise ShapeError("--checkpoint-activations contradicts --recompute-granularity selective",
                             "--checkpoint-activations")
        if selective_flag:
            raise ShapeError("--checkpoint-activations contradicts --recompute-activations",
                             "--recompute-activations")
        granularity = "full"
    if selective_flag:
        if granularity == "full":
            raise ShapeError("--recompute-activations (selective) contradicts "
                             "--recompute-granularity full", "--recompute-activations")
        granularity = "selective"
    if granularity != "full":
        # a namespace from a real run carries the parser's defaults; only a CLI user can
        # have asked for these without full recompute
        if getattr(ns, "_cli", False) and (method is not None or num_layers is not None):
            flag = "--recompute-method" if method is not None else "--recompute-num-layers"
            raise ShapeError(f"{flag} needs --recompute-granularity full (or --checkpoint-activations)",
                             flag)
        return Recompute(granularity)
    method = method or "uniform"
    if method == "block" and num_layers is None:
        raise ShapeError("--recompute-method block needs --recompute-num-layers",
                         "--recompute-num-layers")
    return Recompute("full", method, num_layers if method == "block" else None)


def _dtype(ns) -> str:
    fp16, bf16 = bool(getattr(ns, "fp16", False)), bool(getattr(ns, "bf16", False))
    if fp16 and bf16:
        raise ShapeError("--fp16 and --bf16 cannot both be set", "--bf16")
    return "bf16" if bf16 else "fp16" if fp16 else "fp32"


def _vocab(ns, tp: int) -> int:
    padded = getattr(ns, "padded_vocab_size", None)
    if padded is not None:
        return int(padded)
    vocab = getattr(ns, "vocab_size", None)
    if vocab is None:
        vocab = GPT2_BPE_VOCAB_SIZE
    divisible = getattr(ns, "make_vocab_size_divisible_by", None) or 128
    return padded_vocab_size(int(vocab), int(divisible), tp, getattr(ns, "pad_vocab_size_to", None))


def _ffn(ns, hidden: int, glu: Optional[str]) -> Optional[int]:
    ffn = getattr(ns, "ffn_hidden_size", None)
    if ffn is not None:
        return ffn
    if getattr(ns, "swiglu", False):
        # the microsoft fork: 8h/3 rounded down to a multiple of 64
        return int((4 * hidden * 2 / 3) / 64) * 64
    return None  # 4h


def _window(ns) -> Optional[int]:
    """Megatron-LM's ``--window-size`` (``(w, 0)`` or ``"w,0"``): the keys behind each query."""
    window = getattr(ns, "window_size", None)
    if window is None:
        return None
    if isinstance(window, str):
        try:
            window = tuple(int(part) for part in window.strip("()").split(","))
        except ValueError:
            raise ShapeError(f"--window-size must be two integers such as 4096,0, got {window!r}",
                             "--window-size") from None
    window = tuple(window)
    if len(window) != 2 or window[1] != 0:
        raise ShapeError(f"--window-size must be (w, 0) for a causal GPT, got {window}",
                         "--window-size")
    return None if window[0] < 0 else window[0]  # -1: unlimited, i.e. no window


def _megatron_core_model_fields(ns) -> dict:
    """ModelShape fields of NVIDIA Megatron-LM's (Megatron-Core's) flags; the forks have none."""
    def get(name, default=None):
        value = getattr(ns, name, None)
        return default if value is None else value

    fields = dict(
        moe_layer_freq=get("moe_layer_freq"),
        moe_ffn_hidden_size=get("moe_ffn_hidden_size"),
        moe_shared_expert_intermediate_size=get("moe_shared_expert_intermediate_size"),
        mtp_num_layers=get("mtp_num_layers", 0),
        window_size=_window(ns),
        window_attn_skip_freq=get("window_attn_skip_freq"),
    )
    if isinstance(fields["moe_layer_freq"], list):
        fields["moe_layer_freq"] = tuple(fields["moe_layer_freq"])
    if isinstance(fields["window_attn_skip_freq"], list):
        fields["window_attn_skip_freq"] = tuple(fields["window_attn_skip_freq"])
    if getattr(ns, "multi_latent_attention", False):
        fields.update(multi_latent_attention=True, q_lora_rank=get("q_lora_rank"),
                      kv_lora_rank=get("kv_lora_rank"), qk_head_dim=get("qk_head_dim"),
                      qk_pos_emb_head_dim=get("qk_pos_emb_head_dim"), v_head_dim=get("v_head_dim"))
    return fields


# NVIDIA Megatron-LM features (args destinations at d98e8a64) that change the FLOPs and that
# the shapes do not describe yet: a run using one is refused, never miscounted
UNSUPPORTED_MEGATRON_LM = (
    ("attention_output_gate", "--attention-output-gate",
     "a gate projection in every attention layer"),
    ("experimental_attention_variant", "--experimental-attention-variant",
     "linear or sparse attention layers"),
    ("hybrid_layer_pattern", "--hybrid-layer-pattern", "Mamba (hybrid) layers"),
    ("hybrid_override_pattern", "--hybrid-override-pattern", "Mamba (hybrid) layers"),
    ("heterogeneous_layers_config_path", "--heterogeneous-layers-config-path",
     "layers of different shapes"),
    ("moe_latent_size", "--moe-latent-size", "latent MoE projections"),
)


def refuse_unsupported(ns) -> None:
    """ShapeError naming the first Megatron-LM feature in ``ns`` that is not counted yet."""
    for name, flag, what in UNSUPPORTED_MEGATRON_LM:
        value = getattr(ns, name, None)
        if value not in (None, False, 0, ""):
            raise ShapeError(f"{flag} ({what}) is not counted yet; megatron-flops cannot "
                             "give this run's FLOPs", flag)
    shards = getattr(ns, "gtp_weight_remat_size", None)
    if isinstance(shards, int) and shards > 1:
        raise ShapeError("--tensor-parallel-num-weight-shards > 1 (GTP weight remat: each peer "
                         "trains its own micro-batch) is not counted yet",
                         "--tensor-parallel-num-weight-shards")


def shapes_from_args(ns) -> Tuple[ModelShape, RunShape]:
    """ModelShape and RunShape from a Megatron ``args`` namespace (either fork) or our CLI."""
    refuse_unsupported(ns)
    def get(name, default=None):
        value = getattr(ns, name, None)
        return default if value is None else value

    for required, flag in (("num_layers", "--num-layers"), ("hidden_size", "--hidden-size"),
                           ("num_attention_heads", "--num-attention-heads"),
                           ("seq_length", "--seq-length")):
        if getattr(ns, required, None) is None:
            raise ShapeError(f"{flag} is required", flag)
    from ..shapes import _require_positive
    _require_positive(ns.seq_length, "--seq-length")
    tp = get("tensor_model_parallel_size", 1)
    pp = get("pipeline_model_parallel_size", 1)
    hidden = ns.hidden_size
    glu = _glu(ns)
    num_experts = _int_list(get("num_experts", 1))
    untie = bool(get("untie_embeddings_and_output_weights", False))
    model = ModelShape(
        num_layers=ns.num_layers,
        hidden_size=hidden,
        num_attention_heads=ns.num_attention_heads,
        vocab_size=_vocab(ns, tp),
        kv_channels=get("kv_channels"),
        num_query_groups=_query_groups(ns),
        ffn_hidden_size=_ffn(ns, hidden, glu),
        glu_activation=glu,
        tie_embeddings=not untie,
        position_embedding=_position_embedding(ns),
        max_position_embeddings=get("max_position_embeddings", ns.seq_length),
        num_experts=num_experts if num_experts is not None else 1,
        moe_topk=get("moe_router_topk") or get("topk", 1),
        expert_interval=get("expert_interval", 2),
        add_bias_linear=bool(get("add_bias_linear", True)),
        normalization=str(get("normalization", "layernorm")).lower(),
        embedding_layernorm=bool(get("embed_layernorm", False)),
        **_megatron_core_model_fields(ns),
    )
    rampup = get("rampup_batch_size")
    run = RunShape(
        seq_length=ns.seq_length,
        micro_batch_size=get("micro_batch_size", 1),
        global_batch_size=get("global_batch_size"),
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        world_size=get("world_size"),
        recompute=_recompute(ns),
        rampup_batch_size=_int_list(rampup),
        dtype=_dtype(ns),
        context_parallel_size=get("context_parallel_size", 1),
    )
    if model.num_layers % pp:
        raise ShapeError(
            f"--pipeline-model-parallel-size ({pp}) must divide --num-layers ({model.num_layers})",
            "--pipeline-model-parallel-size")
    return model, run


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ShapeError instead of printing usage and exiting."""

    def error(self, message):  # pragma: no cover - exercised through the CLI tests
        raise ShapeError(message)


def add_megatron_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the Megatron flags this tool understands, with Megatron's destinations."""
    g = parser.add_argument_group("Megatron model and run flags")
    add = g.add_argument
    add("--num-layers", type=int)
    add("--hidden-size", type=int)
    add("--num-attention-heads", type=int)
    add("--kv-channels", type=int)
    add("--ffn-hidden-size", type=int)
    add("--seq-length", type=int)
    add("--max-position-embeddings", type=int)
    add("--micro-batch-size", type=int)
    add("--global-batch-size", type=int)
    add("--rampup-batch-size", nargs="*", default=None)
    add("--tensor-model-parallel-size", type=int, default=1)
    add("--pipeline-model-parallel-size", type=int, default=1)
    add("--vocab-size", type=int, help="tokenizer vocabulary size before Megatron's padding "
        f"(default: GPT-2 BPE, {GPT2_BPE_VOCAB_SIZE})")
    add("--padded-vocab-size", type=int, help="the padded size outright (skips padding)")
    add("--make-vocab-size-divisible-by", type=int, default=128)
    add("--pad-vocab-size-to", type=int)
    add("--glu-activation", type=str)
    add("--swiglu", action="store_true")
    add("--num-key-value-heads", type=int)
    add("--group-query-attention", action="store_true")
    add("--num-query-groups", type=int)
    add("--checkpoint-activations", action="store_true")
    add("--recompute-activations", action="store_true")
    add("--recompute-granularity", type=str)
    add("--recompute-method", type=str)
    add("--recompute-num-layers", type=int)
    add("--untie-embeddings-and-output-weights", action="store_true")
    add("--num-experts", type=int, nargs="+")
    add("--topk", type=int)
    add("--expert-interval", type=int)
    add("--position-embedding-type", type=str)
    add("--use-rotary-position-embeddings", action="store_true")
    add("--no-position-embedding", action="store_false", dest="add_position_embedding")
    add("--normalization", type=str)
    add("--disable-bias-linear", action="store_false", dest="add_bias_linear")
    add("--embed-layernorm", action="store_true")
    add("--fp16", action="store_true")
    add("--bf16", action="store_true")
    add("--world-size", type=int, help="number of GPUs (default: TP × PP × CP, one replica)")
    # NVIDIA Megatron-LM (Megatron-Core) flags
    add("--context-parallel-size", type=int, default=1)
    add("--moe-router-topk", type=int)
    add("--moe-layer-freq", type=str, help="an int N (layer i is MoE when i %% N == 0) or a "
        "pattern such as ([0]*3+[1]*29)")
    add("--moe-ffn-hidden-size", type=int)
    add("--moe-shared-expert-intermediate-size", type=int)
    add("--multi-latent-attention", action="store_true")
    add("--q-lora-rank", type=int)
    add("--kv-lora-rank", type=int)
    add("--qk-head-dim", type=int)
    add("--qk-pos-emb-head-dim", type=int)
    add("--v-head-dim", type=int)
    add("--mtp-num-layers", type=int)
    add("--window-size", type=str, help="w,0: sliding-window attention over w keys")
    add("--window-attn-skip-freq", type=str, help="every N-th layer full attention, or a pattern")
    parser.set_defaults(_cli=True)
    return parser


def megatron_argument_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    return add_megatron_arguments(_ArgumentParser(prog=prog, add_help=False, allow_abbrev=False))


def parse_megatron_args(argv: Sequence[str], parser: Optional[argparse.ArgumentParser] = None
                        ) -> Tuple[argparse.Namespace, List[str]]:
    """Parse a (possibly pasted) pretrain_gpt.py command line; return (namespace, ignored).

    Flags this tool does not use are returned in ``ignored`` (with their values), so the
    caller can list them once.
    """
    parser = parser or megatron_argument_parser()
    ns, unknown = parser.parse_known_args([a for a in argv if a != "\\"])
    return ns, unknown


def ignored_flags(unknown: Iterable[str]) -> List[str]:
    """Just the flag names among parse_known_args' leftovers."""
    return [u.split("=", 1)[0] for u in unknown if u.startswith("--")]
