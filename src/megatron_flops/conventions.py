"""What each framework's MFU formula reports for the same run, side by side with the exact count.

Frameworks disagree on what they count ("it's dangerous to compare these values without
knowing how they were calculated", stas00/ml-engineering#47): attention dense or causal,
which parameters ``N`` in ``6N``, the logits in or out, recomputation in or out, GLU and GQA
approximated or not.  Each convention below is one small named formula with its source (the
repository, file and commit or the paper it was read from; no code was copied) and, in its
``parameters`` line, the parameter set it uses.  All return FLOPs of one training iteration
(``B`` samples of ``s`` tokens) for one of our :class:`~megatron_flops.shapes.ModelShape` s.

Notation as in :mod:`megatron_flops.flops`: ``T = B·s`` tokens, ``l`` layers, ``h`` hidden,
``n`` heads, ``d`` head dim, ``g`` KV heads, ``f`` FFN size, ``V`` padded vocabulary.  ``N`` is
a parameter count from :func:`megatron_flops.params.parameter_count` with the embeddings
included or left out as each convention defines it.

*counts*: ``model`` conventions count forward + backward (the MFU numerator); ``hardware``
ones (the two Megatron-DeepSpeed forks) add recomputation, so their number is an HFU
numerator even though the forks print it as their only TFLOP/s.

Megatron-LM's ``num_floating_point_operations`` (``megatron/training/training.py``) changed
meaning over time; :func:`megatron_lm_era` maps a date or commit to the formula then in use.
"""

import re
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import UsageError
from .flops import flops_breakdown, layer_kinds
from .legacy import bigscience_flops_per_iteration, legacy_error, microsoft_flops_per_iteration
from .params import ParameterCount, expert_parameters, layer_kind_parameters, parameter_count
from .report import format_flops, format_optional, format_percent, table
from .shapes import NO_RECOMPUTE, QUICK_GEGLU, ModelShape, Recompute


@dataclass(frozen=True)
class RunFacts:
    """What a convention may read about a run: the model, one iteration's size, recompute."""

    model: ModelShape
    batch_size: int
    seq_length: int
    recompute: Recompute = NO_RECOMPUTE
    pipeline_parallel_size: int = 1
    # what the flags declare where it differs from what runs (RunShape.flags_recompute): the
    # forks' own formulas read the flags
    flags_recompute: Optional[Recompute] = None

    @property
    def declared_recompute(self) -> Recompute:
        return self.flags_recompute if self.flags_recompute is not None else self.recompute

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_length

    @property
    def parameters(self) -> ParameterCount:
        return parameter_count(self.model)

    @property
    def moe_layers(self) -> int:
        return sum(n for (experts, mtp, _, _), n in layer_kinds(self.model).items()
                   if experts != 1 and not mtp)


@dataclass(frozen=True)
class Convention:
    """One framework's formula: its name, what it computes, where it was read, what N it uses."""

    name: str
    formula: str
    source: str
    parameters: str
    counts: str                                   # "model" or "hardware"
    flops: Callable[[RunFacts], float]            # FLOPs of one iteration
    hfu_flops: Optional[Callable[[RunFacts], float]] = None  # its own HFU numerator, if any


# ---- parameter sets --------------------------------------------------------------------

def _position_parameters(model: ModelShape) -> int:
    if model.position_embedding != "learned" or model.max_position_embeddings is None:
        return 0
    return model.max_position_embeddings * model.hidden_size


def params_all(facts: RunFacts) -> int:
    """Every parameter once (a tied embedding/output matrix once, an untied output layer too)."""
    return facts.parameters.total


def params_without_position(facts: RunFacts) -> int:
    """nanoGPT's ``get_num_params(non_embedding=True)``: all but the position embeddings."""
    return facts.parameters.total - _position_parameters(facts.model)


def _inactive_expert_parameters(facts: RunFacts) -> int:
    """Parameters of the experts a token does not visit: (E − k) expert MLPs per MoE layer."""
    m = facts.model
    if not m.is_moe:
        return 0
    # one expert's MLP, counted directly: the difference of an MoE and a dense layer was that
    # only when the experts matched the dense MLP (no --moe-ffn-hidden-size, no shared experts,
    # no latent projections); with --moe-ffn-hidden-size it went negative
    one_mlp = expert_parameters(m)
    inactive = 0
    for (experts, mtp, _, _), layers in layer_kinds(m).items():  # one evaluation per kind
        if experts != 1 and not mtp:  # decoder layers (conventions leave MTP layers out)
            inactive += layers * (experts - m.moe_topk) * one_mlp
    return inactive


def params_torchtitan(facts: RunFacts, tied_output_counted: bool = True) -> int:
    """torchtitan's active parameters: all but the ``nn.Embedding`` tables (position and word
    embeddings) and the experts a token skips (routed experts × top-k/E).  Since 4ed3c536
    (2026-05-08) a word embedding tied to the output head stays in (the output GEMM runs);
    before, it was subtracted with the embeddings."""
    m = facts.model
    word = m.vocab_size * m.hidden_size
    keep_word = m.tie_embeddings and tied_output_counted
    return (facts.parameters.total - _position_parameters(m) - (0 if keep_word else word)
            - _inactive_expert_parameters(facts))


# ---- the 6N + attention family ----------------------------------------------------------

def six_n_plus_attention(n_params: float, num_layers: int, num_heads: int, head_dim: int,
                         seq_length: int) -> float:
    """PaLM's per-token training FLOPs ``6N + 12·L·H·Q·T`` (dense attention, no recompute)."""
    return 6 * n_params + 12 * num_layers * num_heads * head_dim * seq_length


def _palm(f: RunFacts) -> float:
    m = f.model
    return f.tokens * six_n_plus_attention(params_all(f), m.num_layers, m.num_attention_heads,
                                           m.kv_channels, f.seq_length)


def _nanogpt(f: RunFacts) -> float:
    m = f.model
    return f.tokens * six_n_plus_attention(params_without_position(f), m.num_layers,
                                           m.num_attention_heads,
                                           m.hidden_size // m.num_attention_heads, f.seq_length)


def _torchtitan(f: RunFacts, before_tying_fix: bool = False) -> float:
    # attention 6·n·(qk_head_dim + v_head_dim)·s per layer per token = 12·n·d·s; before the
    # fix the head dim was dim // n_heads
    m = f.model
    head_dim = m.hidden_size // m.num_attention_heads if before_tying_fix else m.kv_channels
    return f.tokens * six_n_plus_attention(params_torchtitan(f, not before_tying_fix),
                                           m.num_layers, m.num_attention_heads, head_dim,
                                           f.seq_length)


def _six_n(f: RunFacts) -> float:
    return 6 * params_all(f) * f.tokens


def llm_foundry_flops_per_sequence(n_params: float, num_layers: int, d_model: int,
                                   seq_length: int, passes: int = 3) -> float:
    """llm-foundry's numerator for one sequence: ``passes·(2·N·s + 4·l·d·s²)``; MFU uses 3
    passes (forward, backward, weight gradient), HFU 4 with activation checkpointing."""
    flops_per_seq = 2 * n_params * seq_length
    attention_flops_per_seq = num_layers * 2 * 2 * d_model * seq_length ** 2
    return passes * (flops_per_seq + attention_flops_per_seq)


def _llm_foundry(f: RunFacts, passes: int = 3) -> float:
    m = f.model
    return f.batch_size * llm_foundry_flops_per_sequence(params_all(f), m.num_layers,
                                                         m.hidden_size, f.seq_length, passes)


def _llm_foundry_hfu(f: RunFacts) -> float:
    return _llm_foundry(f, 4 if f.recompute.granularity == "full" else 3)


# ---- per-matmul conventions ------------------------------------------------------------

def _exact(f: RunFacts, causal: bool = False) -> float:
    return flops_breakdown(f.model, f.seq_length, f.batch_size, f.recompute,
                           f.pipeline_parallel_size, causal).model_flops


def _exact_hardware(f: RunFacts, causal: bool = False) -> float:
    return flops_breakdown(f.model, f.seq_length, f.batch_size, f.recompute,
                           f.pipeline_parallel_size, causal).hardware_flops


def _maxtext(f: RunFacts, causal: bool = True) -> float:
    """MaxText ``calculate_tflops_training_per_device``: per layer, QKV ``2·T·h·(n+2g)·d``,
    attention ``4·B·s²·n·d`` (halved when causal), output ``2·T·h·n·d``, FFN ``2·T·f·h`` per
    activation branch plus ``2·T·f·h`` down (MoE: router ``2·T·h·E`` plus top-k FFNs), and the
    output layer ``2·T·h·V`` once; all × 3."""
    m = f.model
    B, s, T, h, n, g, d = (f.batch_size, f.seq_length, f.tokens, m.hidden_size,
                           m.num_attention_heads, m.num_query_groups, m.kv_channels)
    attention = 4 * B * s ** 2 * n * d / (2 if causal else 1)
    per_layer_attention = 2 * T * h * (n + 2 * g) * d + attention + 2 * T * h * n * d
    ffn = 2 * T * m.ffn_hidden_size * h * ((2 if m.glu else 1) + 1)
    total = 0.0
    for (experts, mtp, _, _), layers in layer_kinds(m).items():  # one evaluation per kind
        if mtp:  # decoder layers only (this era counts no MTP layer)
            continue
        mlp = ffn if experts == 1 else 2 * T * h * experts + ffn * m.moe_topk
        total += layers * (per_layer_attention + mlp)
    return 3 * (total + 2 * T * h * m.vocab_size)


def _bigscience(f: RunFacts) -> float:
    m = f.model
    return bigscience_flops_per_iteration(f.batch_size, f.seq_length, m.num_layers, m.hidden_size,
                                          m.vocab_size, m.glu,
                                          f.declared_recompute.granularity == "full")


def _microsoft(f: RunFacts) -> float:
    m = f.model
    return microsoft_flops_per_iteration(f.batch_size, f.seq_length, m.num_layers, m.hidden_size,
                                         m.num_attention_heads, m.num_query_groups,
                                         m.ffn_hidden_size, m.vocab_size, m.glu,
                                         f.declared_recompute.granularity,
                                         m.moe_topk if m.is_moe else 1)


# ---- NVIDIA Megatron-LM, by era -------------------------------------------------------
# Read from NVIDIA/Megatron-LM megatron/training/training.py (megatron/training.py before
# 2024-04) ``num_floating_point_operations(args, batch_size)`` at each commit below, with
# ``git log -L`` on the function.  Megatron's ``--swiglu`` is our GLU; its MoE layers are
# counted from our shape (its --moe-layer-freq pattern gives the same count for the same
# model).  All are model FLOPs: none counts recomputation.

def _as_megatron_lm_sees(f: RunFacts) -> RunFacts:
    """A vision-language run as Megatron-LM's formula sees it (issue 20 item 3): the multimodal
    example's model provider overwrites ``args.seq_length`` with the image embeddings of one
    tile (``get_num_image_embeddings``, tile tags included) and the formula reads only the
    language flags — so it counts the language model alone, at that length instead of
    ``--decoder-seq-length``, no ViT, no projection, and 3 passes whatever is frozen."""
    vision = f.model.vision
    if vision is None:
        return f
    # model.py calls get_num_image_embeddings with class_token_len=1 whatever the ViT has (RADIO
    # keeps 8): one class token when they are kept, none for SigLIP
    kept = vision.patches + (1 if vision.class_tokens and not vision.drop_class_tokens else 0)
    embeddings = kept // 4 if vision.pixel_shuffle else kept
    return replace(f, model=replace(f.model, vision=None, frozen=frozenset()),
                   seq_length=embeddings + vision.tile_tag_tokens)


def _megatron_2023_11(f: RunFacts) -> float:
    # ffn = 4h, no GLU, d = h/n: 60·B·s·l·h²·(1 + g/(5n) + s/(5h) + V/(10·l·h))
    f = _as_megatron_lm_sees(f)
    m = f.model
    B, s, l, h, n, g, V = (f.batch_size, f.seq_length, m.num_layers, m.hidden_size,
                           m.num_attention_heads, m.num_query_groups, m.vocab_size)
    return 60 * B * s * l * h * h * (1 + g / (5 * n) + s / (5 * h) + V / (10 * l * h))


def _megatron_2024(f: RunFacts, glu_counted: bool, kv_channels_counted: bool,
                   shared_counted: bool = False, moe_ffn_counted: bool = False) -> float:
    # 12·B·s·l·h²·((1 + g/n + s/h)·(n·d/h) + (f/h)·k·(3/2 if GLU) + (S/h)·(3/2 if GLU)
    # + V/(2·l·h)); every layer's MLP times top-k when the model has experts (from 0d389f5e
    # with --moe-ffn-hidden-size as f), every layer's shared experts S (from 1fa9464e);
    # n·d/h = 1 before kv_channels was counted
    f = _as_megatron_lm_sees(f)
    m = f.model
    B, s, l, h, n, g, V = (f.batch_size, f.seq_length, m.num_layers, m.hidden_size,
                           m.num_attention_heads, m.num_query_groups, m.vocab_size)
    routed = m.moe_topk if m.is_moe else 1
    ffn = m.expert_ffn_hidden_size if (moe_ffn_counted and m.is_moe) else m.ffn_hidden_size
    shared = m.shared_expert_ffn_hidden_size if shared_counted else 0
    glu = 3 / 2 if (glu_counted and m.glu and m.glu_activation != QUICK_GEGLU) else 1  # args.swiglu
    query_ratio = m.query_projection_size / h if kv_channels_counted else 1
    return 12 * B * s * l * h * h * ((1 + g / n + s / h) * query_ratio
                                     + (ffn / h) * routed * glu + (shared / h) * glu
                                     + V / (2 * l * h))


def _megatron_attention_terms(m: ModelShape, mla_counted: bool) -> Tuple[float, float]:
    """One attention layer's ``(per token, per Σsᵢ²)`` model FLOPs (× 3 passes, × 2 per MAC):
    projections, and the causal core attention (half of QKᵀ and A·V)."""
    h, n = m.hidden_size, m.num_attention_heads
    if mla_counted and m.multi_latent_attention:
        qk, pos, v = m.qk_head_dim, m.qk_pos_emb_head_dim, m.v_head_dim
        q = h * n * (qk + pos) if m.q_lora_rank is None \
            else m.q_lora_rank * (h + n * (qk + pos) + 1)
        kv = m.kv_lora_rank * (h + n * (qk + v) + 1) + h * pos
        return 6 * (q + kv + n * v * h), 6 * (n * (qk + pos) / 2 + n * v / 2)
    query, key = m.query_projection_size, m.kv_projection_size
    gate = query if m.attention_output_gate else 0  # --attention-output-gate (20d66d5c)
    return 6 * (h * (query + 2 * key + gate) + query * h), 6 * query / 2 * 2


def _megatron_lm_flops(facts: RunFacts, mtp_and_mla_counted: bool = True,
                       seqlen_squared_sum: Optional[float] = None,
                       real_tokens: Optional[float] = None) -> float:
    facts = _as_megatron_lm_sees(facts)
    m = facts.model
    h, V = m.hidden_size, m.vocab_size
    tokens = facts.tokens if real_tokens is None else real_tokens
    squares = facts.batch_size * facts.seq_length ** 2 if seqlen_squared_sum is None \
        else seqlen_squared_sum
    moe_layers = facts.moe_layers
    dense_layers = m.num_layers - moe_layers
    mtp = m.mtp_num_layers if mtp_and_mla_counted else 0
    if m.experts_in_layer(m.num_layers - 1) != 1:  # MTP layers are built like the last one
        moe_layers += mtp
    else:
        dense_layers += mtp
    layers = m.num_layers + mtp
    # Megatron-LM reads args.swiglu: --quick-geglu (a GLU all the same) is counted as 2 GEMMs
    ffn_gemms = 3 if m.glu and m.glu_activation != QUICK_GEGLU else 2
    # --moe-latent-size L (b51db3e0, fixed a4008d0f): routed experts at L (× L/h), plus the
    # h -> L and L -> h projections; the router and the shared-expert gate stay uncounted
    routed = m.expert_ffn_hidden_size * m.moe_topk * ffn_gemms
    if m.moe_latent_size is not None:
        routed = routed * m.moe_latent_size / h + 2 * m.moe_latent_size
    mlp = 6 * h * (ffn_gemms * m.ffn_hidden_size * dense_layers
                   + (routed + ffn_gemms * m.shared_expert_ffn_hidden_size) * moe_layers)
    attention, core = _megatron_attention_terms(m, mla_counted=mtp_and_mla_counted)
    mtp_projections = 6 * mtp * (3 * h + 2 * h * h)  # eh projection 2h -> h, and 3h for norms
    logits = 6 * h * V * (1 + mtp)
    return tokens * (mlp + attention * layers + mtp_projections + logits) + squares * core * layers


def megatron_lm_current_flops(facts: RunFacts, seqlen_squared_sum: Optional[float] = None,
                              real_tokens: Optional[float] = None) -> float:
    """Megatron-LM's formula in its 2026-05 form (5e4fc931; unchanged for our shapes at
    d98e8a64), per token: ``6·h·(f·(3 if GLU else 2))`` per dense layer and
    ``6·h·(fₑ·k + S)·(3 if GLU else 2)`` per MoE layer (``fₑ`` = ``--moe-ffn-hidden-size``,
    ``S`` = ``--moe-shared-expert-intermediate-size``; no router), attention projections
    ``6·(h·(n·d + 2·g·d) + n·d·h)`` per layer (MLA: its LoRA projections), ``6·h·V`` logits;
    ``--mtp-num-layers`` M adds M layers built like the last decoder layer, ``6·M·(2h² + 3h)``
    and M more logits; core attention ``6·n·d`` per layer per unit of ``Σsᵢ²`` — half of the
    dense ``2·2·n·d·s²``·3 (causal).  ``seqlen_squared_sum`` (Σsᵢ² over packed THD
    sequences) and ``real_tokens`` default to ``B·s²`` and ``B·s`` (BSHD)."""
    return _megatron_lm_flops(facts, True, seqlen_squared_sum, real_tokens)


@dataclass(frozen=True)
class MegatronLMEra:
    """One state of Megatron-LM's ``num_floating_point_operations``."""

    name: str          # convention name, megatron-lm@YYYY-MM[-DD]
    since: str         # commit date (ISO)
    commit: str        # the commit that introduced it
    change: str
    flops: Callable[[RunFacts], float]


MEGATRON_LM_ERAS: Tuple[MegatronLMEra, ...] = (
    MegatronLMEra("megatron-lm@2023-11", "2023-11-26", "2748e7c7d4",
                  "added with --log-throughput: ffn = 4h, no GLU, d = h/n, dense attention",
                  _megatron_2023_11),
    MegatronLMEra("megatron-lm@2024-03", "2024-03-13", "fbf600bb5e",
                  "ffn_hidden_size; MoE: every layer's MLP × top-k, no router",
                  lambda f: _megatron_2024(f, glu_counted=False, kv_channels_counted=False)),
    MegatronLMEra("megatron-lm@2024-03-25", "2024-03-25", "e116d81ed7",
                  "SwiGLU counted: MLP × 3/2",
                  lambda f: _megatron_2024(f, glu_counted=True, kv_channels_counted=False)),
    MegatronLMEra("megatron-lm@2024-04", "2024-04-03", "2bfe9beaae",
                  "kv_channels: attention terms × n·d/h",
                  lambda f: _megatron_2024(f, glu_counted=True, kv_channels_counted=True)),
    MegatronLMEra("megatron-lm@2024-09", "2024-09-11", "1fa9464e7c",
                  "shared experts (--moe-shared-expert-intermediate-size) on every layer",
                  lambda f: _megatron_2024(f, glu_counted=True, kv_channels_counted=True,
                                           shared_counted=True)),
    MegatronLMEra("megatron-lm@2025-02", "2025-02-25", "0d389f5e99",
                  "MoE: --moe-ffn-hidden-size for every layer's MLP",
                  lambda f: _megatron_2024(f, glu_counted=True, kv_channels_counted=True,
                                           shared_counted=True, moe_ffn_counted=True)),
    MegatronLMEra("megatron-lm@2025-03", "2025-03-06", "8873b55d6a",
                  "causal: half of the core attention; MoE dense/MoE-layer split (routed "
                  "--moe-ffn-hidden-size × top-k + shared on MoE layers only)",
                  lambda f: _megatron_lm_flops(f, mtp_and_mla_counted=False)),
    MegatronLMEra("megatron-lm@2025-04", "2025-04-03", "d4f9a6f7b4",
                  "MTP layers (like the last layer), their projections and logits; MLA terms",
                  megatron_lm_current_flops),
    MegatronLMEra("megatron-lm@2026-05", "2026-05-21", "5e4fc931ba",
                  "THD packed sequences: core attention from Σsᵢ², linear terms from real tokens",
                  megatron_lm_current_flops),
)

# Eras whose count differs for the shapes we describe (the rest equal their predecessor).
MEGATRON_LM_DISTINCT_ERAS = ("megatron-lm@2023-11", "megatron-lm@2024-03",
                             "megatron-lm@2024-03-25", "megatron-lm@2024-04",
                             "megatron-lm@2024-09", "megatron-lm@2025-02",
                             "megatron-lm@2025-03", "megatron-lm@2025-04")


def megatron_lm_era(when: str) -> MegatronLMEra:
    """The era of Megatron-LM's formula at ``when``: a date (``2024-06-01``; a month
    ``2024-03`` means its last day) or one of the era commits (7+ hex digits)."""
    text = when.strip().lower()
    if re.fullmatch(r"[0-9a-f]{7,40}", text):
        for era in MEGATRON_LM_ERAS:
            if era.commit.startswith(text) or text.startswith(era.commit):
                return era
        raise UsageError(f"--megatron-lm-commit {when!r} is not one of the commits that changed "
                         "num_floating_point_operations; give its date instead "
                         "(git log -1 --format=%cs COMMIT)")
    month = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if month:
        text = f"{text}-31"
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise UsageError(f"Megatron-LM era {when!r} must be a date YYYY-MM[-DD] or a commit")
    chosen = None
    for era in MEGATRON_LM_ERAS:
        if era.since <= text:
            chosen = era
    if chosen is None:
        raise UsageError(f"Megatron-LM logged no throughput before {MEGATRON_LM_ERAS[0].commit} "
                         f"({MEGATRON_LM_ERAS[0].since}); {when!r} is earlier")
    return chosen


# ---- NVIDIA Megatron-Bridge, by era -----------------------------------------------------
# Read from NVIDIA-NeMo/Megatron-Bridge src/megatron/bridge/training/utils/flop_utils.py
# ``num_floating_point_operations(cfg, batch_size, seqlen_sum, seqlen_squared_sum, …)`` at each
# commit below (git log on the file).  Its transformer path is Megatron-LM's 2025-04 formula
# read from ``cfg.model`` (a Megatron-Core TransformerConfig): padded vocabulary, causal ½,
# MTP and MLA terms, no router, never recompute.  Where it differs: which GLU it counts, and
# sliding-window layers.  Model FLOPs only.

def _bridge_window_layers(m: ModelShape, layers: int) -> int:
    """How many of Bridge's ``layers`` (decoder + MTP) it counts as sliding-window: with no
    ``window_attn_skip_freq`` all, an int N all but every N-th (1-based), a list its first
    ``layers`` entries (MTP layers past the list count as full attention)."""
    skip = m.window_attn_skip_freq
    if skip is None:
        return layers
    if isinstance(skip, int):
        return sum(1 for i in range(layers) if (i + 1) % skip != 0)
    return sum(skip[:layers])


def _megatron_bridge_flops(facts: RunFacts, glu_any: bool, window: Optional[str],
                           seqlen_squared_sum: Optional[float] = None) -> float:
    # glu_any False: the 3/2 GLU factor only with activation_func == F.silu (SwiGLU): GeGLU,
    # ReGLU count as a plain MLP.  window None: every layer full causal; "min": a window
    # layer's core attention × min(W, s)/s (eaddead3f); "band": W − W(W−1)/(2s) keys per
    # query (baa0259b).  W = window + 1 (Megatron-Core's (w, 0) window: w keys behind + self).
    m = facts.model
    if m.glu and not glu_any and m.glu_activation != "swiglu":
        facts = replace(facts, model=replace(m, glu_activation=None))  # counted as 2 GEMMs
    total = _megatron_lm_flops(facts, True, seqlen_squared_sum)
    if window is None or m.window_size is None or m.multi_latent_attention:
        return total
    s = facts.seq_length
    squares = facts.batch_size * s ** 2 if seqlen_squared_sum is None else seqlen_squared_sum
    full_context = squares / facts.tokens / 2  # keys per query, causal (s/2 for BSHD)
    w = m.window_size + 1
    if window == "min":
        context = min(w, s) / 2
    else:
        context = w - w * (w - 1) / (2 * s) if w < s else full_context
    windowed = _bridge_window_layers(m, m.num_layers + m.mtp_num_layers)
    # core attention per layer: 6 (3 passes × 2 per MAC) · 2 matmuls · n·d · keys per query
    per_key = 12 * m.query_projection_size * facts.tokens
    return total + windowed * per_key * (context - full_context)


def megatron_bridge_current_flops(facts: RunFacts,
                                  seqlen_squared_sum: Optional[float] = None) -> float:
    """Megatron-Bridge's formula today (4a3f2c2e, 2026-08-21; unchanged for our shapes since
    baa0259b, 2026-05-28): Megatron-LM's 2025-04 terms (:func:`megatron_lm_current_flops`,
    every GLU × 3/2) with sliding-window layers' core attention over the causal band,
    ``W − W·(W−1)/(2s)`` keys per query (``W`` = window + 1; ``s/2`` once ``W ≥ s``).
    ``seqlen_squared_sum``: Σsᵢ² of the *unpadded* packed sub-sequences (its THD statistic,
    from ``cu_seqlens_unpadded``); the linear terms stay on the padded ``B·s`` tokens."""
    return _megatron_bridge_flops(facts, glu_any=True, window="band",
                                  seqlen_squared_sum=seqlen_squared_sum)


@dataclass(frozen=True)
class MegatronBridgeEra:
    """One state of Megatron-Bridge's ``num_floating_point_operations``."""

    name: str          # convention name, megatron-bridge@YYYY-MM
    since: str         # commit date (ISO)
    commit: str        # the commit that introduced it
    change: str
    flops: Callable[[RunFacts], float]


MEGATRON_BRIDGE_ERAS: Tuple[MegatronBridgeEra, ...] = (
    MegatronBridgeEra("megatron-bridge@2025-09", "2025-09-26", "d42316e94",
                      "added: Megatron-LM's 2025-04 terms from cfg.model; GLU × 3/2 only with "
                      "activation_func F.silu; windows ignored (releases 0.1–0.3.x)",
                      lambda f: _megatron_bridge_flops(f, glu_any=False, window=None)),
    MegatronBridgeEra("megatron-bridge@2026-03", "2026-03-31", "eaddead3f",
                      "sliding-window layers: core attention × min(W, s)/s",
                      lambda f: _megatron_bridge_flops(f, glu_any=False, window="min")),
    MegatronBridgeEra("megatron-bridge@2026-05", "2026-05-28", "baa0259bd",
                      "every GLU × 3/2; window layers over the causal band W − W(W−1)/(2s)",
                      megatron_bridge_current_flops),
    MegatronBridgeEra("megatron-bridge@2026-06", "2026-06-30", "d12548a3c",
                      "THD: core attention from Σsᵢ² of the unpadded sub-sequences (linear terms "
                      "on padded tokens); over-counted × VPP chunks until 2a3c297f (2026-07-08)",
                      megatron_bridge_current_flops),
)

# Eras whose count differs for the shapes we describe (BSHD; the rest equal their predecessor).
MEGATRON_BRIDGE_DISTINCT_ERAS = ("megatron-bridge@2025-09", "megatron-bridge@2026-03")


def megatron_bridge_era(when: str) -> MegatronBridgeEra:
    """The era of Megatron-Bridge's formula at ``when``: a date (``2026-04-01``; a month
    ``2026-03`` means its last day), an era commit (7+ hex digits) or a release (``0.3.1``,
    ``v0.4.0``)."""
    text = when.strip().lower()
    release = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:rc\d+)?", text)
    if release:
        # each release's flop_utils.py read at its tag: 0.1.0rc3 … 0.4.2 the 2025-09 formula,
        # 0.5.x the 2026-05 one (Σsᵢ² already), 0.6.0 (2026-08-19) today's
        minor = (int(release.group(1)), int(release.group(2)))
        name = ("megatron-bridge@2025-09" if minor < (0, 5) else
                "megatron-bridge@2026-05" if minor < (0, 6) else "megatron-bridge@2026-06")
        return next(era for era in MEGATRON_BRIDGE_ERAS if era.name == name)
    if re.fullmatch(r"[0-9a-f]{7,40}", text):
        for era in MEGATRON_BRIDGE_ERAS:
            if era.commit.startswith(text) or text.startswith(era.commit):
                return era
        raise UsageError(f"Megatron-Bridge commit {when!r} is not one of the commits that "
                         "changed num_floating_point_operations; give its date instead "
                         "(git log -1 --format=%cs COMMIT)")
    month = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if month:
        text = f"{text}-31"
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise UsageError(f"Megatron-Bridge era {when!r} must be a date YYYY-MM[-DD], a commit "
                         "or a release (0.3.1)")
    chosen = None
    for era in MEGATRON_BRIDGE_ERAS:
        if era.since <= text:
            chosen = era
    if chosen is None:
        raise UsageError(f"Megatron-Bridge logged no TFLOP/s before "
                         f"{MEGATRON_BRIDGE_ERAS[0].commit} ({MEGATRON_BRIDGE_ERAS[0].since}); "
                         f"{when!r} is earlier")
    return chosen


# ---- the registry ----------------------------------------------------------------------

_NN = "N = all parameters (tied embedding once, untied output layer in, positions in)"

CONVENTIONS: Tuple[Convention, ...] = (
    Convention("exact", "every matmul, dense attention (megatron_flops.flops)",
               "this package: megatron_flops.flops.flops_breakdown model FLOPs",
               "no N: each GEMM from the shapes (logits in, embedding lookups out)", "model",
               _exact, _exact_hardware),
    Convention("exact-causal", "every matmul, half of QKᵀ and A·V",
               "this package: flops_breakdown(causal=True)",
               "no N: each GEMM from the shapes (logits in)", "model",
               lambda f: _exact(f, True), lambda f: _exact_hardware(f, True)),
    Convention("palm", "T·(6N + 12·l·n·d·s)",
               "Chowdhery et al. 2022 (PaLM), Appendix B", _NN, "model", _palm),
    Convention("nanogpt", "T·(6N + 12·l·n·(h/n)·s)",
               "karpathy/nanoGPT model.py GPT.estimate_mfu with get_num_params() (T = block_size: "
               "here the run's sequence length)",
               "N = all parameters minus position embeddings (the tied wte = lm_head counted)",
               "model", _nanogpt),
    Convention("torchtitan", "T·(6N + 12·l·n·d·s)",
               "pytorch/torchtitan models/utils.py get_nparams_and_active_nparams and "
               "quadratic_attention_flops_per_token, since 4ed3c536 (2026-05-08)",
               "N = active parameters: all minus embedding tables (a tied output head stays "
               "in) minus skipped experts", "model", _torchtitan),
    Convention("torchtitan@2026-04", "T·(6N + 12·l·n·(h/n)·s)",
               "pytorch/torchtitan get_dense_model_nparams_and_flops before 4ed3c536 "
               "(2026-05-08; earlier utils.py get_num_flop_per_token)",
               "N = all minus nn.Embedding modules (a tied output head goes out with them)",
               "model", lambda f: _torchtitan(f, before_tying_fix=True)),
    Convention("llm-foundry", "B·3·(2·N·s + 4·l·h·s²); HFU 4× with activation checkpointing",
               "mosaicml/llm-foundry scripts/train/benchmarking/collect_results.py and README.md "
               "(061f2c7c)",
               _NN, "model", _llm_foundry, _llm_foundry_hfu),
    Convention("maxtext", "3·Σ GEMMs, causal attention (½)",
               "AI-Hypercomputer/maxtext maxtext_utils.py calculate_tflops_training_per_device "
               "since a4c01726 (2025-07-18)",
               "no N: each GEMM from the config (output layer in, router 2·T·h·E)", "model",
               _maxtext),
    Convention("maxtext@2025-06", "3·Σ GEMMs, dense attention",
               "AI-Hypercomputer/maxtext maxtext_utils.py before a4c01726 (2025-07-18)",
               "no N: each GEMM from the config (output layer in, router 2·T·h·E)", "model",
               lambda f: _maxtext(f, causal=False)),
    Convention("megatron-lm", "Megatron-LM today (= 2025-04 formula, BSHD)",
               "NVIDIA/Megatron-LM megatron/training/training.py num_floating_point_operations "
               "at d98e8a64",
               "no N: GEMMs from args (logits in, router out, recompute never)", "model",
               megatron_lm_current_flops),
) + tuple(
    Convention(era.name, era.change, f"NVIDIA/Megatron-LM {era.commit} ({era.since}) "
               "num_floating_point_operations",
               "no N: GEMMs from args (logits in, router out, recompute never)", "model",
               era.flops)
    for era in MEGATRON_LM_ERAS if era.name in MEGATRON_LM_DISTINCT_ERAS
) + (
    # NVIDIA Megatron-Bridge (issue 21)
    Convention("megatron-bridge", "Megatron-Bridge today (Megatron-LM 2025-04 terms, every "
               "GLU, window layers over the causal band)",
               "NVIDIA-NeMo/Megatron-Bridge src/megatron/bridge/training/utils/flop_utils.py "
               "num_floating_point_operations at 4a3f2c2e",
               "no N: GEMMs from cfg.model (logits in, router out, recompute never)", "model",
               megatron_bridge_current_flops),
) + tuple(
    Convention(era.name, era.change, f"NVIDIA-NeMo/Megatron-Bridge {era.commit} ({era.since}) "
               "flop_utils.py num_floating_point_operations",
               "no N: GEMMs from cfg.model (logits in, router out, recompute never)", "model",
               era.flops)
    for era in MEGATRON_BRIDGE_ERAS if era.name in MEGATRON_BRIDGE_DISTINCT_ERAS
) + (
    Convention("bigscience", "Narayanan et al. Eq. 3 × 32/24 with GLU, factor 4 with "
               "--checkpoint-activations",
               "bigscience-workshop/Megatron-DeepSpeed 8387ae17 training.py training_log "
               "(megatron_flops.legacy)", "no N: Eq. 3 in l, h, s, V", "hardware", _bigscience),
    Convention("microsoft", "MACs per GEMM group, + recompute",
               "microsoft/Megatron-DeepSpeed f4157bea utils.py throughput_calculator "
               "(megatron_flops.legacy)", "no N: GEMM groups in l, h, s, f, V", "hardware",
               _microsoft),
    Convention("6n", "6·N·T", "the C ≈ 6·N·D rule (Kaplan et al. 2020; Hoffmann et al. 2022)",
               _NN, "model", _six_n),
)

CONVENTIONS_BY_NAME: Dict[str, Convention] = {c.name: c for c in CONVENTIONS}


def convention(name: str) -> Convention:
    """The convention called ``name``; ``megatron-lm@DATE`` or ``megatron-lm@COMMIT`` picks
    the era then in force."""
    if name in CONVENTIONS_BY_NAME:
        return CONVENTIONS_BY_NAME[name]
    if name.startswith("megatron-lm@"):
        era = megatron_lm_era(name.split("@", 1)[1])
        return Convention(era.name, era.change, f"NVIDIA/Megatron-LM {era.commit} ({era.since})",
                          "no N: GEMMs from args", "model", era.flops)
    if name.startswith("megatron-bridge@"):
        bridge = megatron_bridge_era(name.split("@", 1)[1])
        return Convention(bridge.name, bridge.change,
                          f"NVIDIA-NeMo/Megatron-Bridge {bridge.commit} ({bridge.since})",
                          "no N: GEMMs from cfg.model", "model", bridge.flops)
    raise UsageError(f"--convention must be one of {', '.join(CONVENTIONS_BY_NAME)} "
                     f"(or megatron-lm@YYYY-MM[-DD] / megatron-lm@COMMIT, "
                     f"megatron-bridge@YYYY-MM[-DD] / @COMMIT / @RELEASE), got {name!r}")


@dataclass(frozen=True)
class ConventionResult:
    """What one convention reports for a run: FLOPs per iteration, and with a time TFLOP/s per
    GPU and utilisation against ``peak_tflops`` (None without a time or a peak)."""

    name: str
    counts: str
    flops_per_iteration: float
    tflops_per_gpu: Optional[float]
    mfu: Optional[float]
    hfu: Optional[float]
    vs_exact: float              # flops_per_iteration / exact model FLOPs − 1

    def to_dict(self) -> dict:
        return {"flops_per_iteration": self.flops_per_iteration,
                "tflops_per_gpu": self.tflops_per_gpu, "mfu": self.mfu, "hfu": self.hfu,
                "counts": self.counts, "vs_exact": self.vs_exact}


def compare_conventions(model: ModelShape, batch_size: int, seq_length: int,
                        recompute: Recompute = NO_RECOMPUTE, pipeline_parallel_size: int = 1,
                        seconds_per_iteration: Optional[float] = None, world_size: int = 1,
                        peak_tflops: Optional[float] = None,
                        names: Optional[Iterable[str]] = None,
                        flags_recompute: Optional[Recompute] = None) -> Dict[str, ConventionResult]:
    """Every convention (or ``names``) for one iteration of ``batch_size`` × ``seq_length``.

    TFLOP/s per GPU = FLOPs / (seconds × world_size × 1e12); ``mfu`` = that / ``peak_tflops``
    (for a ``hardware`` convention it is what the framework's number claims against the peak);
    ``hfu`` only where the convention defines its own HFU numerator.  The one function relog,
    the hook's start summary and ``estimate`` call.
    """
    facts = RunFacts(model, batch_size, seq_length, recompute, pipeline_parallel_size,
                     flags_recompute)
    exact = _exact(facts)
    chosen = [convention(n) for n in names] if names is not None else list(CONVENTIONS)
    results: Dict[str, ConventionResult] = {}
    for conv in chosen:
        flops = float(conv.flops(facts))
        hfu_flops = float(conv.hfu_flops(facts)) if conv.hfu_flops is not None else None
        tflops = hfu_tflops = mfu = hfu = None
        if seconds_per_iteration is not None:
            per_gpu = seconds_per_iteration * world_size * 1e12
            tflops = flops / per_gpu
            hfu_tflops = hfu_flops / per_gpu if hfu_flops is not None else None
            if peak_tflops:
                mfu = tflops / peak_tflops
                hfu = hfu_tflops / peak_tflops if hfu_tflops is not None else None
        results[conv.name] = ConventionResult(conv.name, conv.counts, flops, tflops, mfu, hfu,
                                              legacy_error(flops, exact))
    return results


def conventions_for_run(model: ModelShape, run, seconds_per_iteration: Optional[float] = None,
                        peak_tflops: Optional[float] = None, batch_size: Optional[int] = None,
                        seq_length: Optional[int] = None,
                        names: Optional[Iterable[str]] = None) -> Dict[str, dict]:
    """The JSON ``conventions`` object for a :class:`~megatron_flops.shapes.RunShape`: name ->
    {flops_per_iteration, tflops_per_gpu, mfu, hfu, counts, vs_exact}.  For relog and the hook
    pass the interval's batch size, sequence length and mean seconds per iteration; render it
    with :func:`conventions_table`."""
    results = compare_conventions(model, batch_size or run.global_batch_size,
                                  seq_length or run.seq_length, run.recompute,
                                  run.pipeline_model_parallel_size, seconds_per_iteration,
                                  run.world_size, peak_tflops, names,
                                  getattr(run, "flags_recompute", None))
    return {name: r.to_dict() for name, r in results.items()}


def conventions_with_headline(model: ModelShape, run, seconds_per_iteration: Optional[float] = None,
                              peak_tflops: Optional[float] = None,
                              headline: Optional[str] = None, batch_size: Optional[float] = None,
                              seq_length: Optional[int] = None
                              ) -> Tuple[Dict[str, dict], Optional[dict]]:
    """(the ``conventions`` object of every named convention — plus ``headline`` when it is an
    era outside the named ones —, the headline's entry ``{"convention": name, **entry}`` or
    None): what ``estimate``, ``relog`` and the hook report.  Raises ValueError for an unknown
    ``headline``."""
    head = convention(headline).name if headline is not None else None
    names = list(CONVENTIONS_BY_NAME) + ([head] if head and head not in CONVENTIONS_BY_NAME
                                         else [])
    results = conventions_for_run(model, run, seconds_per_iteration, peak_tflops, batch_size,
                                  seq_length, names)
    return results, (head and {"convention": head, **results[head]})


def headline_line(head: Mapping[str, object], peak_source: str) -> str:
    """``NAME would report: X TFLOP/s per GPU, MFU Y (±Z% vs exact; peak: …)``."""
    return (f"{head['convention']} would report: "
            f"{format_optional(head['tflops_per_gpu'], '.2f')} TFLOP/s per GPU, MFU "
            f"{format_percent(head['mfu'])} ({100 * head['vs_exact']:+.1f}% vs exact; "
            f"peak: {peak_source})")


def conventions_table(results: Mapping[str, dict], peak_source: str = "",
                      with_rates: bool = True) -> str:
    """The side-by-side table people read, from the JSON form (name -> ``to_dict()``):
    FLOPs per iteration, TFLOP/s per GPU, MFU (and the convention's own HFU).  Without
    ``with_rates`` (no time yet: the hook's start summary) only the FLOPs and vs exact."""
    rows: List[List[str]] = []
    for name, r in results.items():
        util = format_percent(r["mfu"])
        if r["hfu"] is not None and r["hfu"] != r["mfu"]:
            util += f" (HFU {format_percent(r['hfu'])})"
        rates = [format_optional(r["tflops_per_gpu"], ".2f"), util] if with_rates else []
        rows.append([name, r["counts"], format_flops(r["flops_per_iteration"]), *rates,
                     format_percent(r["vs_exact"], "+.1f")])
    header = ["convention", "counts", "FLOPs/iteration"]
    header += ["TFLOP/s/GPU", "MFU"] if with_rates else []
    text = table(rows, header + ["vs exact"], [False, False] + [True] * (len(header) - 1))
    return text + (f"\npeak: {peak_source}" if peak_source else "")

