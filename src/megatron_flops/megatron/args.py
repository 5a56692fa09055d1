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

This module reads a namespace that is complete: a run's ``args`` (its parser filled every
default) or a pasted command that :mod:`.resolve` has completed in its dialect
(:mod:`.dialects`: the defaults that differ between frameworks), with its vocabulary
(:mod:`.vocab`) and world size (:mod:`.launch`); the provenance of each value it filled is
:mod:`.resolve`'s record, never an attribute written here.
"""

import argparse
from dataclasses import replace
from typing import Iterable, List, Optional, Sequence, Tuple

from ..shapes import (GLU_ACTIVATIONS, QUICK_GEGLU, ModelShape, Recompute, RunShape, ShapeError,
                      _require_positive)
from . import features
from . import flags as catalogue
from . import multimodal

GPT2_BPE_VOCAB_SIZE = 50257


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int = 128,
                      tensor_model_parallel_size: int = 1,
                      pad_vocab_size_to: Optional[int] = None) -> int:
    """Megatron's padding: round up to a multiple of ``divisible_by × TP``.

    bigscience's ``--pad-vocab-size-to`` sets the size outright; like the fork
    (``tokenizer._vocab_size_with_padding``) we require it to be at least the tokenizer's size
    and a multiple of ``--make-vocab-size-divisible-by``, and nothing else (its help text asks
    for divisibility by TP, its code does not check it).
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
    if getattr(ns, "quick_geglu", False):  # Megatron-LM: a GLU with quick-GELU (gpt-oss)
        # (core_transformer_config_from_args: assert not args.swiglu; --squared-relu wins first)
        squared_relu = getattr(ns, "squared_relu", False)
        for other, given in (("--swiglu", swiglu), ("--squared-relu", squared_relu),
                             (f"--glu-activation {glu}", glu is not None)):
            if given:
                raise ShapeError(f"--quick-geglu contradicts {other} (Megatron-LM takes one "
                                 "activation)", "--quick-geglu")
        return QUICK_GEGLU
    if swiglu:
        if glu not in (None, "swiglu"):
            raise ShapeError(f"--swiglu contradicts --glu-activation {glu}", "--swiglu")
        return "swiglu"
    return glu


def _query_groups(ns) -> Optional[int]:
    kv_heads = getattr(ns, "num_key_value_heads", None)
    gqa = bool(getattr(ns, "group_query_attention", False))
    groups = getattr(ns, "num_query_groups", None)
    if gqa:
        groups = 1 if groups is None else groups
        if kv_heads is not None and kv_heads != groups:
            raise ShapeError(
                f"--num-key-value-heads ({kv_heads}) contradicts --num-query-groups ({groups})",
                "--num-key-value-heads")
        return groups
    return kv_heads


def _recompute(ns) -> Recompute:
    """Recompute as the forks resolve it.

    ``--recompute-activations`` means selective (the forks overwrite the granularity with it);
    ``--checkpoint-activations`` (both Megatron-DeepSpeed forks) means full; the 2021 names
    ``--activations-checkpoint-method/-num-layers`` are ``--recompute-method/-num-layers``.
    As in the forks, a method is refused with selective recompute and ignored without any.
    """
    checkpoint = bool(getattr(ns, "checkpoint_activations", False))
    granularity = getattr(ns, "recompute_granularity", None)
    method = _renamed(ns, "recompute_method", "activations_checkpoint_method",
                      "--recompute-method", "--activations-checkpoint-method")
    num_layers = _renamed(ns, "recompute_num_layers", "activations_checkpoint_num_layers",
                          "--recompute-num-layers", "--activations-checkpoint-num-layers")
    if getattr(ns, "recompute_activations", False):
        granularity = "selective"
    if checkpoint:
        if granularity == "selective":
            raise ShapeError("--checkpoint-activations contradicts --recompute-granularity "
                             "selective (full and selective recompute together are not "
                             "counted)", "--checkpoint-activations")
        granularity = "full"
    granularity, modules = features.selective_modules(ns, granularity)
    if granularity == "selective" and method is not None:
        raise ShapeError("--recompute-method is not supported with --recompute-granularity "
                         "selective (the forks refuse it too)", "--recompute-method")
    if granularity != "full":
        return Recompute(granularity, modules=modules)
    method = method or "uniform"
    if method == "block" and num_layers is None:
        raise ShapeError("--recompute-method block needs --recompute-num-layers",
                         "--recompute-num-layers")
    return Recompute("full", method, num_layers if method == "block" else None)


def deepspeed_pipeline(ns) -> bool:
    """True when the fork builds DeepSpeed's pipeline model (``GPTModelPipe``).

    Both Megatron-DeepSpeed forks do with ``--deepspeed``; the microsoft fork not with
    ``--no-pipeline-parallel``.  DeepSpeed's ``PipelineModule`` then partitions the layers
    itself (``partition_method`` ``parameters``, ``uniform``, ``type:…``; bigscience's
    ``--pp-partition-method``): stages may be uneven, empty, or outnumber the transformer
    layers, and DeepSpeed refuses none of it.  Megatron's "layers divisible by stages" rule
    belongs to its own pipeline only.
    """
    # a pasted command line's --deepspeed has its own destination (None when not typed), so
    # that a command defining --deepspeed for itself (the demo: DeepSpeed's engine, no pipeline
    # model) overrides it without meaning the pipeline model; a run's args has ``deepspeed``
    pasted = getattr(ns, "deepspeed_pipeline_model", None)
    chosen = getattr(ns, "deepspeed", False) if pasted is None else pasted
    return bool(chosen) and not getattr(ns, "no_pipeline_parallel", False)


def pipeline_model_recompute(ns, recompute: Recompute) -> Recompute:
    """What the DeepSpeed pipeline model recomputes (the same rule in every command and the hook).

    Its layers are checkpointed only through DeepSpeed's ``activation_checkpoint_interval``:
    every transformer layer with ``--checkpoint-activations`` or full uniform recompute, none
    with full *block* recompute (the microsoft fork sets the interval to 0 there: DeepSpeed's
    pipeline has no block method).  Selective recompute lives inside the attention layer and is
    unaffected.  Seen on a real microsoft-fork run: FlopCounterMode counted no recompute with
    ``--recompute-method block`` in the pipe model.
    """
    if not deepspeed_pipeline(ns) or recompute.granularity != "full":
        return recompute
    if getattr(ns, "checkpoint_activations", False) or recompute.method == "uniform":
        interval = getattr(ns, "checkpoint_num_layers", None) or 1
        if interval > 1:
            # DeepSpeed checkpoints chunks of `interval` specs and skips every chunk that holds a
            # non-transformer spec (embedding, final norm): which layers that leaves depends on
            # the partition; not counted yet
            raise ShapeError(f"not supported yet: --checkpoint-num-layers {interval} with the "
                             "DeepSpeed pipeline model (only 1 is counted)",
                             "--checkpoint-num-layers")
        return Recompute("full")
    return Recompute()


def megatron_stage_layers(ns, num_layers: int, pp: int) -> Optional[Tuple[int, ...]]:
    """Transformer layers per stage of Megatron's own pipeline; refuse what Megatron refuses.

    Megatron-LM's uneven split (``--decoder-first-pipeline-num-layers`` /
    ``--decoder-last-pipeline-num-layers``) gives the first and last stage their own counts and
    the rest an equal share; otherwise every stage holds ``num_layers / pp`` (Megatron's
    divisibility rule).  Returns ``None`` for the even split.
    """
    first = getattr(ns, "decoder_first_pipeline_num_layers", None)
    last = getattr(ns, "decoder_last_pipeline_num_layers", None)
    extra = int(bool(getattr(ns, "account_for_embedding_in_pipeline_split", False))) + \
        int(bool(getattr(ns, "account_for_loss_in_pipeline_split", False)))
    if first is None and last is None:
        if (num_layers + extra) % pp:
            raise ShapeError(
                f"--pipeline-model-parallel-size ({pp}) must divide --num-layers ({num_layers}"
                f"{' + ' + str(extra) + ' for the embedding/loss' if extra else ''}) in "
                "Megatron's own pipeline (with --deepspeed the DeepSpeed pipeline partitions "
                "layers itself)", "--pipeline-model-parallel-size")
        return None
    fixed = [n for n in (first, last) if n is not None]
    middle_stages = pp - len(fixed)
    rest = num_layers - sum(fixed)
    if rest < 0 or middle_stages < 0 or (middle_stages == 0 and rest) or \
            (middle_stages and rest % middle_stages):
        raise ShapeError(
            f"--num-layers ({num_layers}) minus the --decoder-first/last-pipeline-num-layers "
            f"({sum(fixed)}) must divide evenly over the other {middle_stages} pipeline stages",
            "--decoder-first-pipeline-num-layers")
    share = rest // middle_stages if middle_stages else 0
    stages = [share] * middle_stages
    if first is not None:
        stages.insert(0, first)
    if last is not None:
        stages.append(last)
    return tuple(stages)


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


def _renamed(ns, name: str, old_name: str, flag: str, old_flag: str, default=None):
    """The value of a flag given under its modern or its old name (both: they must agree).

    ``default`` is the modern flag's parser default, which does not count as given.
    """
    value, old = getattr(ns, name, None), getattr(ns, old_name, None)
    if old is None:
        return value
    if value is not None and value != default and value != old:
        raise ShapeError(f"{old_flag} ({old}) contradicts {flag} ({value})", old_flag)
    return old


def _experts(ns) -> Tuple[Optional[Tuple[int, ...]], int]:
    """(experts per MoE layer, the microsoft fork's expert interval).

    Megatron-LM's ``--moe-layer-freq`` (which layers are MoE) is a ModelShape field of its
    own: see :func:`_megatron_core_model_fields`."""
    experts = _int_list(_renamed(ns, "num_experts", "num_moe_experts", "--num-experts",
                                 "--num-moe-experts"))
    return experts, getattr(ns, "expert_interval", None) or 2


def _moe_residual(ns) -> bool:
    kind = getattr(ns, "mlp_type", None) or "standard"
    if kind not in ("standard", "residual"):
        raise ShapeError(f"--mlp-type must be standard or residual, got {kind!r}", "--mlp-type")
    return kind == "residual"


def _sequence_parallel(ns) -> int:
    """The microsoft fork's Ulysses size (Megatron-LM's context parallelism is its own field)."""
    ulysses = getattr(ns, "ds_sequence_parallel_size", None) or 1
    context = getattr(ns, "context_parallel_size", None) or 1
    if ulysses > 1 and context > 1:
        raise ShapeError("--ds-sequence-parallel-size and --context-parallel-size come from "
                         "different frameworks; give one", "--context-parallel-size")
    return ulysses


def _world_size(ns) -> Optional[int]:
    """The run's world size (None: TP × PP × SP × CP, one replica).  A pasted command's comes
    from :func:`megatron_flops.megatron.launch.world_size` (flag, launch line, environment)."""
    return getattr(ns, "world_size", None)


def _global_batch(ns, micro: int, data_parallel: int) -> Optional[int]:
    gas = getattr(ns, "gas", None)
    global_batch = getattr(ns, "global_batch_size", None)
    if gas is None:
        return global_batch
    _require_positive(gas, "--gas")
    implied = micro * data_parallel * gas
    if global_batch is not None and global_batch != implied:
        raise ShapeError(f"--gas ({gas}) × micro batch ({micro}) × data parallel "
                         f"({data_parallel}) = {implied} contradicts --global-batch-size "
                         f"({global_batch})", "--gas")
    return implied


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
    # issue 20 item 2: latent MoE, the attention output gate, the shared-expert gate
    fields.update(moe_latent_size=get("moe_latent_size"),
                  attention_output_gate=bool(get("attention_output_gate", False)),
                  moe_shared_expert_gate=bool(get("moe_shared_expert_gate", False)))
    if getattr(ns, "multi_latent_attention", False):
        fields.update(multi_latent_attention=True, q_lora_rank=get("q_lora_rank"),
                      kv_lora_rank=get("kv_lora_rank"), qk_head_dim=get("qk_head_dim"),
                      qk_pos_emb_head_dim=get("qk_pos_emb_head_dim"), v_head_dim=get("v_head_dim"))
    return fields


# The one list of unsupported features is the flag catalogue's (:data:`.flags.UNSUPPORTED`);
# a run's ``args`` (or a log's dump) uses one when its switch is True, or, for these features
# whose argument is a value (off: None / 0 / ""), when the value is set.  Values Megatron sets
# on every run (``encoder_num_layers``) are not here: only a switch refuses those.
UNSUPPORTED_VALUE_ARGS = frozenset((
    "num_experts_switch", "experimental_attention_variant",
    "dsa_indexer_topk", "hybrid_override_pattern", "hybrid_layer_pattern",
    "linear_attention_freq", "heterogeneous_layers_config_path",
    "heterogeneous_layers_config_encoded_json",
    # off (None) in every run's args unless given (the vision flags --img-h/--patch-dim are
    # not: they default to 224/16 in all of them, so a live run cannot be told multimodal by them)
    "decoder_seq_length", "export_kd_teacher_load", "spec",
))


def unsupported_features(values) -> List[Tuple[str, object, str]]:
    """(flag, value, why) for each feature of :data:`.flags.UNSUPPORTED` that ``values`` (a
    run's ``args`` as a dict, or a dump's typed values) uses, in the catalogue's order."""
    out = []
    for flag, why in catalogue.UNSUPPORTED.items():
        dest = flag[2:].replace("-", "_")
        if dest not in values:
            continue
        value = values[dest]
        if value is True or (dest in UNSUPPORTED_VALUE_ARGS and value not in (None, False, 0, "")):
            out.append((flag, value, why))
    return out


def refuse_unsupported(ns) -> None:
    """ShapeError naming the first feature in ``ns`` that is not counted yet."""
    for flag, _, why in unsupported_features(vars(ns)):
        raise ShapeError(f"{flag}: {why}", flag)
    shards = getattr(ns, "gtp_weight_remat_size", None)
    if isinstance(shards, int) and shards > 1:
        raise ShapeError("--tensor-parallel-num-weight-shards > 1 (GTP weight remat: each peer "
                         "trains its own micro-batch) is not counted yet",
                         "--tensor-parallel-num-weight-shards")


_TEACHER_FLAGS = (("num_layers_teacher", "--num-layers-teacher"),
                  ("hidden_size_teacher", "--hidden-size-teacher"),
                  ("num_attention_heads_teacher", "--num-attention-heads-teacher"))


def _with_teacher(ns, student: ModelShape) -> ModelShape:
    """The student with its distillation teacher (the microsoft fork's ``--kd`` / ``--mos``).

    As the fork's ``setup_teacher_model`` builds it: the student's arguments with only
    ``num_layers``, ``num_experts``, ``hidden_size`` and ``num_attention_heads`` swapped for the
    ``--*-teacher`` values, so everything else — ffn_hidden_size and kv_channels as
    ``validate_args`` already resolved them for the student, vocabulary, GLU, expert interval,
    top-k, ``--mlp-type`` — is the student's.  The fork asserts no GQA with distillation, so
    the teacher's attention is multi-head.  ``pretrain_gpt.py`` runs it under torch.no_grad
    on every training micro-batch (``forward_step`` → ``calculate_mos_loss``).
    """
    flag = "--mos" if getattr(ns, "mos", False) else "--kd" if getattr(ns, "kd", False) else None
    if flag is None:
        return student
    if student.num_query_groups != student.num_attention_heads:
        # microsoft megatron/arguments.py: "GQA currently does not support args.kd"
        raise ShapeError(f"{flag} does not support GQA (--num-key-value-heads "
                         f"{student.num_query_groups} < --num-attention-heads "
                         f"{student.num_attention_heads}), as in the fork", flag)
    values = {}
    for name, teacher_flag in _TEACHER_FLAGS:
        value = getattr(ns, name, None)
        if value is None:  # the fork would build its teacher with num_layers=None and fail
            raise ShapeError(f"{flag} needs {teacher_flag} (the teacher's shape)", teacher_flag)
        values[name[:-len("_teacher")]] = value
    experts = _int_list(getattr(ns, "num_experts_teacher", None)) or (1,)
    teacher = replace(student, num_experts=experts, num_query_groups=values["num_attention_heads"],
                      kv_channels=student.kv_channels, ffn_hidden_size=student.ffn_hidden_size,
                      **values)
    return replace(student, teacher=teacher)


def shapes_from_args(ns) -> Tuple[ModelShape, RunShape]:
    """ModelShape and RunShape from a Megatron ``args`` namespace (either fork) or our CLI.

    The recompute is what the model really runs (:func:`pipeline_model_recompute` for the
    DeepSpeed pipeline model, per real stage for Megatron's own pipeline).
    """
    refuse_unsupported(ns)
    features.check_given_values(ns)
    features.refuse_weight_shards(ns)

    def get(name, default=None):
        value = getattr(ns, name, None)
        return default if value is None else value

    seq_length = _renamed(ns, "seq_length", "encoder_seq_length", "--seq-length",
                          "--encoder-seq-length")
    for value, flag in ((get("num_layers"), "--num-layers"), (get("hidden_size"), "--hidden-size"),
                        (get("num_attention_heads"), "--num-attention-heads"),
                        (seq_length, "--seq-length")):
        if value is None:
            raise ShapeError(f"{flag} is required", flag)
    _require_positive(seq_length, "--seq-length")
    tp = _renamed(ns, "tensor_model_parallel_size", "model_parallel_size",
                  "--tensor-model-parallel-size", "--model-parallel-size", 1) or 1
    pp = _renamed(ns, "pipeline_model_parallel_size", "pipe_parallel_size",
                  "--pipeline-model-parallel-size", "--pipe-parallel-size", 1) or 1
    micro = _renamed(ns, "micro_batch_size", "batch_size", "--micro-batch-size",
                     "--batch-size") or 1
    hidden = ns.hidden_size
    glu = _glu(ns)
    ffn = _ffn(ns, hidden, glu)
    num_experts, interval = _experts(ns)
    untie = bool(get("untie_embeddings_and_output_weights", False))
    max_positions = get("max_position_embeddings", seq_length)
    model = ModelShape(
        num_layers=ns.num_layers,
        hidden_size=hidden,
        num_attention_heads=ns.num_attention_heads,
        vocab_size=_vocab(ns, tp),
        kv_channels=get("kv_channels"),
        num_query_groups=_query_groups(ns),
        ffn_hidden_size=ffn,
        glu_activation=glu,
        tie_embeddings=not untie,
        position_embedding=_position_embedding(ns),
        max_position_embeddings=max_positions,
        num_experts=num_experts if num_experts is not None else 1,
        moe_topk=_renamed(ns, "topk", "moe_router_topk", "--topk", "--moe-router-topk") or 1,
        expert_interval=interval,
        add_bias_linear=bool(get("add_bias_linear", True)),
        normalization=str(get("normalization", "layernorm")).lower(),
        embedding_layernorm=bool(get("embed_layernorm", False)),
        moe_residual=_moe_residual(ns),
        **_megatron_core_model_fields(ns),
    )
    if not deepspeed_pipeline(ns):  # the pipeline engine never calls forward_step: no teacher
        model = _with_teacher(ns, model)
    if getattr(ns, "no_pipeline_parallel", False) and pp != 1:
        raise ShapeError(f"--pipeline-model-parallel-size ({pp}) must be 1 with "
                         "--no-pipeline-parallel", "--no-pipeline-parallel")
    recompute = declared = _recompute(ns)
    if deepspeed_pipeline(ns):
        recompute = pipeline_model_recompute(ns, recompute)
    elif getattr(ns, "pipeline_model_parallel_layout", None):
        # Megatron-LM skips the divisibility rule: the layout places every layer itself
        if any(getattr(ns, name, None) is not None for name in (
                "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers")):
            raise ShapeError("--pipeline-model-parallel-layout cannot be combined with "
                             "--decoder-first/last-pipeline-num-layers (Megatron-LM refuses it)",
                             "--pipeline-model-parallel-layout")
        features.pipeline_layout_stages(ns.pipeline_model_parallel_layout, model.num_layers, pp,
                                        model.mtp_num_layers)
        if recompute.method == "block" and recompute.granularity == "full":
            raise ShapeError("not supported yet: --recompute-method block with a "
                             "--pipeline-model-parallel-layout", "--recompute-method")
    else:
        stages = megatron_stage_layers(ns, model.num_layers, pp)
        if recompute.method == "block" and recompute.granularity == "full":
            if any(getattr(ns, name, False) for name in (
                    "account_for_embedding_in_pipeline_split", "account_for_loss_in_pipeline_split",
                    "pipeline_model_parallel_layout", "num_layers_per_virtual_pipeline_stage",
                    "num_virtual_stages_per_pipeline_rank")):
                raise ShapeError("not supported yet: --recompute-method block with a virtual or "
                                 "embedding-aware pipeline split", "--recompute-method")
            if stages is not None:
                recompute = Recompute("full", "block", recompute.num_layers, stages)
    sequence_parallel = _sequence_parallel(ns)
    world = _world_size(ns)
    probe = RunShape(seq_length=seq_length, micro_batch_size=micro,
                     tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                     world_size=world, sequence_parallel_size=sequence_parallel,
                     context_parallel_size=get("context_parallel_size", 1))
    rampup = get("rampup_batch_size")
    schedule = features.step_batch_schedule(ns, seq_length)
    run = RunShape(
        seq_length=seq_length,
        micro_batch_size=micro,
        global_batch_size=(None if schedule is not None else features.decreased_global_batch(
            ns, _global_batch(ns, micro, probe.data_parallel_size),
            micro * probe.data_parallel_size)),
        batch_schedule=schedule,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        world_size=world,
        recompute=recompute,
        flags_recompute=declared if declared.granularity != recompute.granularity else None,
        rampup_batch_size=_int_list(rampup),
        dtype=_dtype(ns),
        sequence_parallel_size=sequence_parallel,
        context_parallel_size=get("context_parallel_size", 1),
    )
    # vision-language runs (examples/multimodal) and frozen weights (issue 20 item 3)
    model, run = multimodal.apply(ns, model, run)
    return model, run


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ShapeError instead of printing usage and exiting."""

    def error(self, message):  # pragma: no cover - exercised through the CLI tests
        raise ShapeError(message)


def add_megatron_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the Megatron flags this tool reads, with the forks' destinations.

    Every other flag of the forks is classified by :func:`check_flags` (see
    :mod:`megatron_flops.megatron.flags`).
    """
    g = parser.add_argument_group("Megatron model and run flags (the ones that change the count)")
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
    add("--step-batch-size-schedule", type=str, help="Megatron-LM: THRESHOLD:BATCH_SIZE steps "
        "in tokens, e.g. \"0:768 250B:1536\" (instead of --global-batch-size)")
    add("--tensor-model-parallel-size", type=int, default=1)
    add("--pipeline-model-parallel-size", type=int, default=1)
    add("--vocab-size", type=int, help="tokenizer vocabulary size before Megatron's padding "
        "(default: read from the tokenizer the command names, else said assumed)")
    add("--padded-vocab-size", type=int, help="the padded size outright (skips padding)")
    add("--make-vocab-size-divisible-by", type=int, default=128)
    add("--pad-vocab-size-to", type=int)
    add("--tokenizer-type", type=str, help="read for the vocabulary (with --tokenizer-model, "
        "--vocab-file): its size, then Megatron's padding")
    add("--tokenizer-model", type=str, help="a local tokenizer.json, HF tokenizer directory, "
        "SentencePiece .model or tiktoken JSON: its size is read")
    add("--vocab-file", type=str, help="GPT-2 BPE vocab.json: its size is read")
    add("--tokenizer-name-or-path", type=str, help="bigscience: a local HF tokenizer directory")
    add("--tokenizer-special-tokens", nargs="*", dest="special_tokens")
    add("--tokenizer-sentencepiece-legacy", action="store_true")
    add("--glu-activation", type=str)
    add("--swiglu", action="store_true")
    add("--num-key-value-heads", type=int)
    add("--group-query-attention", action="store_true")
    add("--num-query-groups", type=int)
    add("--checkpoint-activations", action="store_true")
    add("--checkpoint-num-layers", type=int)
    add("--recompute-activations", action="store_true")
    add("--recompute-granularity", type=str)
    add("--recompute-method", type=str)
    add("--recompute-num-layers", type=int)
    add("--recompute-modules", nargs="*")
    add("--moe-layer-recompute", action="store_true", help="Megatron-LM: selective recompute of "
        "every MoE layer (as --recompute-modules core_attn moe)")
    add("--untie-embeddings-and-output-weights", action="store_true")
    add("--num-experts", type=int, nargs="+")
    add("--topk", type=int)
    add("--expert-interval", type=int)
    add("--mlp-type", type=str, help="microsoft fork: standard, or residual (PR-MoE)")
    add("--moe-layer-freq", type=str, help="Megatron-LM: an int N (layer i is MoE when "
        "i %% N == 0) or a pattern such as ([0]*3+[1]*29)")
    add("--moe-ffn-hidden-size", type=int)
    add("--moe-shared-expert-intermediate-size", type=int)
    add("--multi-latent-attention", action="store_true")
    add("--q-lora-rank", type=int)
    add("--kv-lora-rank", type=int)
    add("--qk-head-dim", type=int)
    add("--qk-pos-emb-head-dim", type=int)
    add("--v-head-dim", type=int)
    add("--mtp-num-layers", type=int)
    # issue 20 item 2 (Megatron-LM)
    add("--moe-latent-size", type=int, help="Megatron-LM: latent MoE, routed experts in an "
        "L-wide space (h -> L and L -> h projections around them)")
    add("--attention-output-gate", action="store_true", help="Megatron-LM: a sigmoid gate on "
        "the attention output (n·d more QKV columns)")
    add("--moe-shared-expert-gate", action="store_true", help="Megatron-LM: an h -> 1 gate on "
        "the shared experts' output")
    add("--quick-geglu", action="store_true", help="Megatron-LM: a GLU MLP with quick-GELU "
        "(gpt-oss): the GEMMs of any GLU")
    add("--window-size", type=str, help="w,0: sliding-window attention over w keys")
    add("--window-attn-skip-freq", type=str, help="every N-th layer full attention, or a pattern")
    add("--position-embedding-type", type=str)
    add("--use-rotary-position-embeddings", action="store_true")
    add("--no-position-embedding", action="store_false", dest="add_position_embedding")
    add("--normalization", type=str)
    add("--disable-bias-linear", action="store_false", dest="add_bias_linear")
    add("--embed-layernorm", action="store_true")
    add("--fp16", action="store_true")
    add("--bf16", action="store_true")
    add("--deepspeed", action="store_true", dest="deepspeed_pipeline_model", default=None,
        help="the fork builds DeepSpeed's pipeline model")
    add("--no-pipeline-parallel", action="store_true")
    add("--decrease-batch-size-if-needed", action="store_true", help="Megatron-LM: round the "
        "global batch down to a multiple of micro batch × data parallel")
    add("--tensor-parallel-num-weight-shards", type=int, help="Megatron-LM: GTP weight shards "
        "(refused above the TP size: each peer then trains its own micro-batch)")
    add("--expert-tensor-parallel-num-weight-shards", type=int)
    add("--expert-tensor-parallel-size", type=int)
    add("--ds-sequence-parallel-size", type=int, help="microsoft fork: Ulysses sequence parallel")
    add("--kd", action="store_true", help="microsoft fork: knowledge distillation (a teacher "
        "forward per micro-batch, in hardware FLOPs only)")
    add("--mos", action="store_true", help="microsoft fork: mixture-of-students distillation "
        "(as --kd)")
    add("--num-layers-teacher", type=int)
    add("--hidden-size-teacher", type=int)
    add("--num-attention-heads-teacher", type=int)
    add("--num-experts-teacher", type=int, nargs="+")
    add("--context-parallel-size", type=int, help="Megatron-LM: context parallel")
    add("--decoder-first-pipeline-num-layers", type=int)
    add("--decoder-last-pipeline-num-layers", type=int)
    add("--account-for-embedding-in-pipeline-split", action="store_true")
    add("--account-for-loss-in-pipeline-split", action="store_true")
    add("--pipeline-model-parallel-layout", type=str)
    add("--num-layers-per-virtual-pipeline-stage", type=int)
    add("--num-virtual-stages-per-pipeline-rank", type=int)
    # ---- per-stage FLOPs (issue 22): how the DeepSpeed pipeline model partitions the layers
    add("--pp-partition-method", type=str, help="bigscience fork: DeepSpeed's partition_method "
        "of the pipeline model (default type:transformer); moves layers between stages only")
    old = parser.add_argument_group("old names, read as their modern meaning")
    old.add_argument("--batch-size", type=int, help="--micro-batch-size")
    old.add_argument("--model-parallel-size", type=int, help="--tensor-model-parallel-size")
    old.add_argument("--pipe-parallel-size", type=int, help="--pipeline-model-parallel-size")
    old.add_argument("--gas", type=int, help="gradient accumulation steps: global batch = "
                     "micro batch × data parallel × gas")
    old.add_argument("--activations-checkpoint-method", type=str, help="--recompute-method")
    old.add_argument("--activations-checkpoint-num-layers", type=int,
                     help="--recompute-num-layers")
    old.add_argument("--num-moe-experts", type=int, nargs="+", help="--num-experts")
    old.add_argument("--moe-router-topk", type=int, help="--topk")
    old.add_argument("--encoder-seq-length", type=int, help="--seq-length")
    fp8 = parser.add_argument_group("Megatron-LM FP8 flags (which GEMMs run in FP8: the mixed "
                                    "peak; megatron_flops.fp8)")
    fp8.add_argument("--fp8-format", dest="fp8", choices=("e4m3", "hybrid"))
    fp8.add_argument("--fp8-recipe", choices=("tensorwise", "delayed", "mxfp8", "blockwise",
                                              "custom"))
    fp8.add_argument("--first-last-layers-bf16", action="store_true")
    fp8.add_argument("--num-layers-at-start-in-bf16", type=int, default=1)
    fp8.add_argument("--num-layers-at-end-in-bf16", type=int, default=1)
    fp8.add_argument("--fp8-output-proj", action="store_true")
    fp8.add_argument("--no-fp8-wgrad", dest="fp8_wgrad", action="store_false")
    fp8.add_argument("--fp4-format", dest="fp4", type=str, help="Megatron-LM: e2m1 (NVFP4 "
                     "GEMMs in the layers, as FP8's; the mixed peak uses the FP4 one)")
    fp8.add_argument("--fp4-recipe", choices=("nvfp4", "custom"))
    multimodal.add_arguments(parser)  # vision-language runs, frozen weights (issue 20 item 3)
    ours = parser.add_argument_group("megatron-flops options for the pasted flags")
    ours.add_argument("--world-size", type=int,
                      help="number of GPUs (default: WORLD_SIZE, else TP × PP × SP × CP, said so)")
    ours.add_argument("--strict", action="store_true", dest="strict_flags",
                      help="an unknown flag, an assumed vocabulary or an assumed framework "
                      "default is an error, not a warning")
    ours.add_argument("--lenient", action="store_true", dest="lenient_flags",
                      help="a likely typo of a flag that changes FLOPs is a warning, not an "
                      "error")
    ours.add_argument("--framework", metavar="NAME", help="read the flags in this framework's "
                      "dialect: megatron-lm, microsoft, bigscience, megatron-bridge (default: "
                      "inferred from the command, said)")
    return parser


def megatron_argument_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    return add_megatron_arguments(_ArgumentParser(prog=prog, add_help=False, allow_abbrev=False))


def parse_megatron_args(argv: Sequence[str], parser: Optional[argparse.ArgumentParser] = None
                        ) -> Tuple[argparse.Namespace, List[str]]:
    """Parse a (possibly pasted) pretrain_gpt.py command line; return (namespace, leftovers).

    The leftovers (flags this tool does not read, with their values) go to
    :func:`check_flags`.
    """
    parser = parser or megatron_argument_parser()
    ns, unknown = parser.parse_known_args([a for a in argv if a != "\\"])
    return ns, unknown


def ignored_flags(unknown: Iterable[str]) -> List[str]:
    """Just the flag names among parse_known_args' leftovers."""
    return [u.split("=", 1)[0] for u in unknown if u.startswith("--")]


class FlagReport:
    """The leftover flags of a command line, classified (see :mod:`.flags`).

    ``neutral``: known and FLOP-neutral; ``noted``: accepted with a note each; ``unknown``:
    ``(flag, suggestion or None)`` pairs.
    """

    def __init__(self, neutral, noted, unknown):
        self.neutral: List[str] = neutral
        self.noted: List[Tuple[str, str]] = noted
        self.unknown: List[Tuple[str, Optional[str]]] = unknown

    def lines(self) -> List[str]:
        """What to tell the user, one line each (``megatron-flops:`` prefix included)."""
        out = []
        if self.neutral:
            out.append("megatron-flops: ignoring flags that do not change FLOPs: "
                       + " ".join(self.neutral))
        for flag, note in self.noted:
            out.append(f"megatron-flops: note: {flag}: {note}")
        for flag, suggestion in self.unknown:
            hint = f" (did you mean {suggestion}?)" if suggestion else ""
            out.append(f"megatron-flops: warning: unknown flag {flag}, not read{hint}; "
                       "--strict makes this an error")
        return out


def _read_flags() -> frozenset:
    """The option strings this tool's parser reads (each changes the count)."""
    global _READ_FLAGS
    if _READ_FLAGS is None:
        _READ_FLAGS = frozenset(megatron_argument_parser()._option_string_actions)
    return _READ_FLAGS


_READ_FLAGS = None


def check_flags(unknown: Iterable[str], strict: bool = False, lenient: bool = False
                ) -> FlagReport:
    """Classify parse_known_args' leftovers; raise ShapeError for what cannot be counted.

    A known FLOP-changing flag this tool cannot count yet is an error naming it; an unknown
    flag close to one that changes FLOPs (``--hiden-size``) is an error naming it unless
    ``lenient``; any other unknown flag is a warning with a near miss suggested (an error with
    ``strict``).
    """
    neutral, noted, unknown_flags = [], [], []
    for flag in dict.fromkeys(ignored_flags(unknown)):
        if flag in catalogue.UNSUPPORTED:
            raise ShapeError(f"not supported yet: {flag}: {catalogue.UNSUPPORTED[flag]}", flag)
        if flag in catalogue.NOTED:
            noted.append((flag, catalogue.NOTED[flag]))
        elif flag in catalogue.KNOWN_FLAGS:
            neutral.append(flag)
        else:
            suggestion = catalogue.did_you_mean(flag)
            hint = f" (did you mean {suggestion}?)" if suggestion else ""
            changes = suggestion is not None and (suggestion in _read_flags() or
                                                  suggestion in catalogue.UNSUPPORTED)
            if changes and not lenient:
                raise ShapeError(f"unknown flag {flag}{hint}: {suggestion} changes FLOPs, so a "
                                 "typo would miscount (--lenient makes this a warning)", flag)
            if strict:
                raise ShapeError(f"unknown flag {flag}{hint}", flag)
            unknown_flags.append((flag, suggestion))
    return FlagReport(neutral, noted, unknown_flags)
