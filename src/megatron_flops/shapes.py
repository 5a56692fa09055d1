"""Validated, immutable descriptions of a model and of a training run.

``ModelShape`` is what the network is (layers, widths, heads, vocabulary, MLP kind, MoE);
``RunShape`` is how it is trained (sequence length, batch sizes, parallelism, recompute,
dtype).  Both are frozen dataclasses, checked once at construction; every error names the
Megatron flag that carries the bad value, so the same messages serve the CLI, the Megatron
hook and Python callers.

Nothing here imports anything outside the standard library.
"""

from dataclasses import dataclass, field
from typing import FrozenSet, Optional, Tuple, Union

from .errors import ShapeError


GLU_ACTIVATIONS = ("geglu", "liglu", "reglu", "swiglu")
POSITION_EMBEDDINGS = ("learned", "rotary", "alibi", "none")
NORMALIZATIONS = ("layernorm", "rmsnorm")
RECOMPUTE_GRANULARITIES = ("full", "selective")
RECOMPUTE_METHODS = ("uniform", "block")
# Megatron-Core's selective recompute modules (``--recompute-modules``, TransformerConfig at
# d98e8a64) that this tool counts: each re-runs the forward of the matmuls it names (see
# flops.SELECTIVE_MODULES); ``moe_act`` and ``layernorm`` re-run no matmul at all.
SELECTIVE_RECOMPUTE_MODULES = ("core_attn", "moe", "shared_experts", "mlp", "mla_up_proj",
                               "moe_act", "layernorm")
DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8")
# issue 20 item 2: Megatron-LM's ``--quick-geglu`` (gpt-oss): a GLU MLP whose activation is
# quick-GELU, x·sigmoid(1.702·x); the same GEMMs as every GLU (h -> 2f, f -> h).  Not a value
# of the forks' ``--glu-activation``, so kept out of GLU_ACTIVATIONS (whose message lists it).
QUICK_GEGLU = "quick_geglu"
# the trainable parts of a model in the order the forward pass meets them (issue 20 item 3)
PARTS = ("vision", "projector", "language")
VISION_PROJECTORS = ("mlp", "affine")


def _require_positive(value, flag: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapeError(f"{flag} must be a positive integer, got {value!r}", flag)
    if value <= 0:
        raise ShapeError(f"{flag} must be a positive integer, got {value}", flag)


# Megatron-LM's defaults for the MLA sizes (megatron/training/arguments.py, _add_mla_args);
# --q-lora-rank defaults to None: queries then come from one h -> n·(qk + pos) projection.
MLA_DEFAULTS = {"kv_lora_rank": 32, "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128}


def _layer_pattern(value, num_layers: int, flag: str):
    """An int frequency (kept), or a per-layer 0/1 pattern (a tuple of ``num_layers`` values)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        _require_positive(value, flag)
        return value
    if isinstance(value, str):
        value = parse_layer_pattern(value, flag)
        if isinstance(value, int):
            return _layer_pattern(value, num_layers, flag)
    pattern = tuple(value)
    if any(isinstance(v, bool) or v not in (0, 1) for v in pattern):
        raise ShapeError(f"{flag} pattern entries must be 0 or 1, got {list(pattern)}", flag)
    if len(pattern) != num_layers:
        raise ShapeError(f"{flag} pattern has {len(pattern)} entries but --num-layers is "
                         f"{num_layers}", flag)
    return pattern


def parse_layer_pattern(text: str, flag: str = "--moe-layer-freq") -> Union[int, Tuple[int, ...]]:
    """Megatron-LM's layer-pattern argument: ``"2"`` or a Python list expression.

    Megatron-LM evaluates the string (``([0]*3+[1]*29)``, ``[1,1,1,0]*3``); here only integer
    literals, list/tuple displays, ``+`` and ``*`` are accepted, so nothing else can run.
    """
    import ast

    text = text.strip()
    shown = text if len(text) <= 60 else text[:57] + "..."
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ShapeError(f"{flag} must be an integer or a list expression such as "
                         f"([0]*3+[1]*29), got {shown!r}", flag) from None
    except (RecursionError, MemoryError):   # Python's own parser: too deep to read
        raise ShapeError(f"{flag} is nested or chained too deeply to read ({len(text):,} "
                         f"characters); write the pattern as ([0]*3+[1]*29)", flag) from None
    try:
        result = _layer_pattern_value(tree.body)
    except ValueError:
        raise ShapeError(f"{flag} accepts only integers, lists, + and * (e.g. ([0]*3+[1]*29)), "
                         f"got {shown!r}", flag) from None
    return tuple(result) if isinstance(result, list) else result


def _layer_pattern_value(root):
    """The value of a layer-pattern expression tree: an int or a list of ints.  Evaluated
    with an explicit stack, not recursion, so a long ``+`` chain (a left-deep tree) cannot
    exhaust Python's stack; ValueError for anything but integer literals, flat list/tuple
    displays, ``+`` and ``*``."""
    import ast

    def combine(node, left, right):
        if isinstance(node.op, ast.Add):
            if isinstance(left, list) != isinstance(right, list):
                raise ValueError
            return left + right
        if isinstance(left, int) and isinstance(right, list):
            left, right = right, left
        if isinstance(left, list) and isinstance(right, int):
            if len(left) * right > 100_000:  # no model has that many layers
                raise ValueError
            return left * right
        return left * right   # int * int

    values = []                   # results, in post-order
    stack = [(root, False)]       # (node, its children already evaluated)
    while stack:
        node, children_done = stack.pop()
        if isinstance(node, ast.Constant) and type(node.value) is int:
            values.append(node.value)
        elif isinstance(node, (ast.List, ast.Tuple)):
            if not children_done:
                stack.append((node, True))
                stack.extend((item, False) for item in reversed(node.elts))
                continue
            items = values[len(values) - len(node.elts):] if node.elts else []
            del values[len(values) - len(node.elts):]
            if any(isinstance(item, list) for item in items):
                raise ValueError
            values.append(items)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            if not children_done:
                stack += [(node, True), (node.right, False), (node.left, False)]
                continue
            right = values.pop()
            left = values.pop()
            values.append(combine(node, left, right))
        else:
            raise ValueError
    return values[0]


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Megatron GPT model: one documented field per Megatron flag it carries.

    Validated once at construction (every error names the flag); ``None`` defaults are
    filled in then (``kv_channels``, ``num_query_groups``, ``ffn_hidden_size``, the MLA sizes).
    """

    num_layers: int
    """Decoder layers (``--num-layers``), multi-token-prediction layers not included."""
    hidden_size: int
    """Hidden size ``h`` (``--hidden-size``)."""
    num_attention_heads: int
    """Attention heads ``n`` (``--num-attention-heads``)."""
    vocab_size: int
    """The *padded* vocabulary ``V`` the embedding and logits layers are built with (see
    :func:`megatron_flops.megatron.args.padded_vocab_size` for Megatron's padding rule)."""
    kv_channels: Optional[int] = None
    """Head dimension ``d`` (``--kv-channels``); default ``hidden_size // num_attention_heads``."""
    num_query_groups: Optional[int] = None
    """KV heads ``g`` (``--num-query-groups`` / ``--num-key-value-heads``); default
    ``num_attention_heads`` (MHA); 1 is MQA."""
    ffn_hidden_size: Optional[int] = None
    """FFN size ``f`` (``--ffn-hidden-size``), default ``4 * hidden_size``; with a GLU the size
    of *one* branch (the first dense layer is then ``h -> 2f``)."""
    glu_activation: Optional[str] = None
    """A gated MLP (``--glu-activation`` / ``--swiglu``): one of ``GLU_ACTIVATIONS``; None: plain."""
    tie_embeddings: bool = True
    """The logits reuse the word embeddings (False: ``--untie-embeddings-and-output-weights``);
    changes the parameter count, not the FLOPs."""
    position_embedding: str = "learned"
    """``--position-embedding-type``: one of ``POSITION_EMBEDDINGS``."""
    max_position_embeddings: Optional[int] = None
    """Rows of the learned position-embedding table (``--max-position-embeddings``); parameters only."""
    num_experts: Union[int, Tuple[int, ...]] = 1
    """Experts per MoE layer (``--num-experts``): one entry per MoE layer, or a single int for
    all of them; 1 means a dense model (stored as ``()`` then)."""
    moe_topk: int = 1
    """Experts each token is routed to (``--topk`` / ``--moe-router-topk``)."""
    expert_interval: int = 2
    """The microsoft fork's ``--expert-interval``: layer number ``i + 1`` is an MoE layer when
    it is a multiple of it (read only without ``moe_layer_freq``)."""
    add_bias_linear: bool = True
    """Linear layers carry biases (False: ``--disable-bias-linear``); parameters only."""
    normalization: str = "layernorm"
    """``--normalization``: one of ``NORMALIZATIONS``; parameters only."""
    embedding_layernorm: bool = False
    """A layer norm after the embeddings (bigscience ``--embed-layernorm``); parameters only."""
    moe_residual: bool = False
    """The microsoft fork's ``--mlp-type residual`` (PR-MoE, DeepSpeed's
    ``MoE(use_residual=True)``): every MoE layer also runs a dense MLP of the same shape on
    every token, and a ``h -> 2`` coefficient linear (with bias) mixes the two outputs."""
    # ---- Megatron-Core (NVIDIA Megatron-LM) features; see _check_megatron_core_fields -----
    moe_layer_freq: Union[int, Tuple[int, ...], None] = None
    """Megatron-LM's ``--moe-layer-freq``, instead of ``expert_interval``: an int N makes layer
    ``i`` (0-based) an MoE layer when ``i % N == 0``, a 0/1 tuple (or its list expression,
    ``([0]*3+[1]*29)``) gives the pattern per layer."""
    moe_ffn_hidden_size: Optional[int] = None
    """One routed expert's FFN size (``--moe-ffn-hidden-size``); default ``ffn_hidden_size``."""
    moe_shared_expert_intermediate_size: Optional[int] = None
    """The shared experts' total FFN size (``--moe-shared-expert-intermediate-size``); None: none."""
    multi_latent_attention: bool = False
    """DeepSeek's multi-latent attention (``--multi-latent-attention``): the MLA sizes below
    replace the Q/K/V projections."""
    q_lora_rank: Optional[int] = None
    """MLA's query down-projection rank (``--q-lora-rank``); None: one ``h -> n·(qk + pos)``
    query projection."""
    kv_lora_rank: Optional[int] = None
    """MLA's key/value down-projection rank (``--kv-lora-rank``); MLA default 32."""
    qk_head_dim: Optional[int] = None
    """MLA's query/key head dimension without the rotary part (``--qk-head-dim``); default 128."""
    qk_pos_emb_head_dim: Optional[int] = None
    """MLA's rotary query/key head dimension (``--qk-pos-emb-head-dim``); default 64."""
    v_head_dim: Optional[int] = None
    """MLA's value head dimension (``--v-head-dim``); default 128."""
    mtp_num_layers: int = 0
    """Multi-token-prediction layers (``--mtp-num-layers``), each a whole layer plus its own
    projection and logits."""
    window_size: Optional[int] = None
    """Sliding-window attention: the keys behind each query (``w`` of ``--window-size (w, 0)``);
    None: full attention."""
    window_attn_skip_freq: Union[int, Tuple[int, ...], None] = None
    """``--window-attn-skip-freq``: an int N makes every N-th layer number (1-based) full
    attention, a 0/1 tuple gives 1 (window) / 0 (full) per layer; None: every layer windowed."""
    teacher: Optional["ModelShape"] = None
    """The microsoft fork's ``--kd``/``--mos`` distillation teacher, run forward-only on the
    student's tokens every micro-batch (counted in hardware FLOPs only)."""
    # ---- issue 20 item 2: latent MoE, attention output gate, shared-expert gate -----------
    moe_latent_size: Optional[int] = None
    """Latent MoE (``--moe-latent-size`` L): each MoE layer projects its tokens ``h -> L``
    before dispatch (``fc1_latent_proj``), the routed experts run ``L -> fe -> L``, and the
    combined output goes ``L -> h`` (``fc2_latent_proj``); the router and the shared experts
    stay at ``h``.  None: no latent space."""
    attention_output_gate: bool = False
    """``--attention-output-gate``: the fused QKV projection also computes a gate of ``n·d``
    columns, and the core attention's output is multiplied by its sigmoid (elementwise)."""
    moe_shared_expert_gate: bool = False
    """``--moe-shared-expert-gate``: an ``h -> 1`` linear (no bias) whose sigmoid scales the
    shared experts' output; inert without shared experts."""
    # ---- vision-language runs and frozen weights (issue 20 item 3) ----
    vision: Optional["VisionEncoder"] = None
    """The vision encoder and projection of a vision-language (LLaVA) run; None: text only.
    This shape is then the language model, run at the decoder length (image tokens in it)."""
    frozen: FrozenSet[str] = frozenset()
    """Parts whose weights do not train (``requires_grad`` False), a subset of :data:`PARTS`:
    ``vision`` (``--freeze-ViT``), ``projector`` (``--freeze-vision-projection``), ``language``
    (``--freeze-LM``, or ``--freeze-all-layers`` in a text model)."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        _require_positive(self.num_layers, "--num-layers")
        _require_positive(self.hidden_size, "--hidden-size")
        _require_positive(self.num_attention_heads, "--num-attention-heads")
        _require_positive(self.vocab_size, "--vocab-size")
        _require_positive(self.kv_channels, "--kv-channels", allow_none=True)
        _require_positive(self.num_query_groups, "--num-key-value-heads", allow_none=True)
        _require_positive(self.ffn_hidden_size, "--ffn-hidden-size", allow_none=True)
        _require_positive(self.max_position_embeddings, "--max-position-embeddings", allow_none=True)
        _require_positive(self.moe_topk, "--topk")
        _require_positive(self.expert_interval, "--expert-interval")
        self._check_megatron_core_fields()

        if self.kv_channels is None:
            if self.hidden_size % self.num_attention_heads:
                raise ShapeError(
                    f"--num-attention-heads ({self.num_attention_heads}) must divide "
                    f"--hidden-size ({self.hidden_size}) unless --kv-channels is given",
                    "--num-attention-heads",
                )
            set_(self, "kv_channels", self.hidden_size // self.num_attention_heads)
        if self.num_query_groups is None:
            set_(self, "num_query_groups", self.num_attention_heads)
        if self.num_attention_heads % self.num_query_groups:
            raise ShapeError(
                f"--num-key-value-heads ({self.num_query_groups}) must divide "
                f"--num-attention-heads ({self.num_attention_heads})",
                "--num-key-value-heads",
            )
        if self.ffn_hidden_size is None:
            set_(self, "ffn_hidden_size", 4 * self.hidden_size)
        if self.glu_activation is not None and self.glu_activation not in GLU_ACTIVATIONS + (
                QUICK_GEGLU,):
            raise ShapeError(
                f"--glu-activation must be one of {', '.join(GLU_ACTIVATIONS)}, "
                f"got {self.glu_activation!r}",
                "--glu-activation",
            )
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ShapeError(
                f"--position-embedding-type must be one of {', '.join(POSITION_EMBEDDINGS)}, "
                f"got {self.position_embedding!r}",
                "--position-embedding-type",
            )
        if self.normalization not in NORMALIZATIONS:
            raise ShapeError(
                f"--normalization must be one of {', '.join(NORMALIZATIONS)}, "
                f"got {self.normalization!r}",
                "--normalization",
            )

        num_moe_layers = self.num_moe_layers
        interval_flag = "--expert-interval" if self.moe_layer_freq is None else "--moe-layer-freq"
        experts = self.num_experts
        if isinstance(experts, int) and not isinstance(experts, bool):
            experts = (experts,) * num_moe_layers if experts != 1 else ()
        else:
            experts = tuple(experts)
            if all(e == 1 for e in experts):  # dense: never build a tuple per layer
                experts = ()
            elif len(experts) == 1:
                experts = experts * num_moe_layers
        for e in dict.fromkeys(experts):  # each distinct value once, in order
            _require_positive(e, "--num-experts")
        if experts and len(experts) != num_moe_layers:
            raise ShapeError(
                f"--num-experts gives {len(experts)} values but --num-layers ({self.num_layers}) "
                f"with {interval_flag} has {num_moe_layers} MoE layers",
                "--num-experts",
            )
        if experts and self.moe_topk > min(experts):
            raise ShapeError(
                f"--topk ({self.moe_topk}) must not exceed --num-experts ({min(experts)})",
                "--topk",
            )
        set_(self, "num_experts", experts)
        self._check_issue_20_fields()
        # vision-language runs and frozen weights (issue 20 item 3)
        set_(self, "frozen", frozenset(self.frozen))
        unknown = self.frozen - set(PARTS)
        if unknown:
            raise ShapeError(f"frozen parts must be among {', '.join(PARTS)}, got "
                             f"{', '.join(sorted(unknown))}", "--freeze-ViT")
        if self.vision is None and self.frozen - {"language"}:
            flag = "--freeze-ViT" if "vision" in self.frozen else "--freeze-vision-projection"
            raise ShapeError(f"{flag} freezes a vision encoder this run does not have "
                             "(no --vision-model-type / --img-h)", flag)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def glu(self) -> bool:
        """True when the MLP is a gated linear unit (first dense ``h -> 2f``)."""
        return self.glu_activation is not None

    @property
    def query_projection_size(self) -> int:
        """``n * d``: width of Q and of the attention output projection's input."""
        return self.num_attention_heads * self.kv_channels

    @property
    def kv_projection_size(self) -> int:
        """``g * d``: width of K (and of V)."""
        return self.num_query_groups * self.kv_channels

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    def experts_in_layer(self, layer_index: int) -> int:
        """Experts in layer ``layer_index`` (0-based); 1 for a dense layer.

        Which layers are MoE layers is :attr:`moe_layer_pattern`.  Indices from
        ``num_layers`` on are the multi-token-prediction layers, built like the last decoder
        layer (as Megatron-Core's ``get_gpt_mtp_block_spec`` does).
        """
        if not self.num_experts:
            return 1
        layer_index = min(layer_index, self.num_layers - 1)
        freq = self.moe_layer_freq
        if freq is None:  # the microsoft fork's rule, without building the pattern
            number = layer_index + 1
            if number % self.expert_interval:
                return 1
            return self.num_experts[number // self.expert_interval - 1]
        if isinstance(freq, int):
            return 1 if layer_index % freq else self.num_experts[layer_index // freq]
        if not freq[layer_index]:
            return 1
        return self.num_experts[sum(freq[:layer_index])]

    # ---- Megatron-Core features ----------------------------------------------------------
    @property
    def num_moe_layers(self) -> int:
        """How many decoder layers :attr:`moe_layer_pattern` makes MoE layers, counted without
        building the pattern (``--num-layers 10**30`` stays cheap)."""
        freq = self.moe_layer_freq
        if freq is None:
            return self.num_layers // self.expert_interval
        if isinstance(freq, int):
            return -(-self.num_layers // freq)  # layers 0, N, 2N, …
        return sum(freq)

    @property
    def moe_layer_pattern(self) -> Tuple[int, ...]:
        """1 for each MoE layer, 0 for each dense layer (decoder layers only).

        Without ``moe_layer_freq``, the microsoft fork's rule: layer number ``i + 1`` is an MoE
        layer when it is a multiple of ``expert_interval``.  With it, Megatron-Core's
        ``--moe-layer-freq``: an int N makes layer ``i`` (0-based) an MoE layer when
        ``i % N == 0`` (layer 0 included), a tuple gives the pattern outright (``first k
        dense`` is ``(0,)*k + (1,)*(l-k)``).
        """
        freq = self.moe_layer_freq
        if freq is None:
            return tuple(int((i + 1) % self.expert_interval == 0) for i in range(self.num_layers))
        if isinstance(freq, int):
            return tuple(int(i % freq == 0) for i in range(self.num_layers))
        return freq

    @property
    def expert_ffn_hidden_size(self) -> int:
        """One routed expert's FFN size (``--moe-ffn-hidden-size``, default ``f``)."""
        return self.moe_ffn_hidden_size or self.ffn_hidden_size

    @property
    def shared_expert_ffn_hidden_size(self) -> int:
        """The shared experts' total FFN size (``--moe-shared-expert-intermediate-size``), 0 if none."""
        return self.moe_shared_expert_intermediate_size or 0

    @property
    def attention_key_head_dim(self) -> int:
        """Head dimension of Q·Kᵀ: ``d``, or ``qk_head_dim + qk_pos_emb_head_dim`` with MLA."""
        if self.multi_latent_attention:
            return self.qk_head_dim + self.qk_pos_emb_head_dim
        return self.kv_channels

    @property
    def attention_value_head_dim(self) -> int:
        """Head dimension of attention·V and of the output projection's input: ``d`` or ``v_head_dim``."""
        return self.v_head_dim if self.multi_latent_attention else self.kv_channels

    def windowed_layer(self, layer_index: int) -> bool:
        """Whether layer ``layer_index`` (0-based) uses sliding-window attention.

        Megatron-Core's rule (``is_layer_window_attention``): with ``--window-size`` every layer
        is windowed, unless ``--window-attn-skip-freq`` N makes every N-th layer number (1-based)
        full attention, or a pattern gives 1 (window) / 0 (full) per layer.
        """
        if self.window_size is None:
            return False
        skip = self.window_attn_skip_freq
        if skip is None:
            return True
        if isinstance(skip, int):  # MTP layers continue the numbering (l + 1, l + 2, …)
            return (layer_index + 1) % skip != 0
        return bool(skip[min(layer_index, self.num_layers - 1)])

    def _check_megatron_core_fields(self) -> None:
        set_ = object.__setattr__
        for name, flag in (("moe_ffn_hidden_size", "--moe-ffn-hidden-size"),
                           ("moe_shared_expert_intermediate_size",
                            "--moe-shared-expert-intermediate-size"),
                           ("q_lora_rank", "--q-lora-rank"), ("kv_lora_rank", "--kv-lora-rank"),
                           ("qk_head_dim", "--qk-head-dim"),
                           ("qk_pos_emb_head_dim", "--qk-pos-emb-head-dim"),
                           ("v_head_dim", "--v-head-dim"), ("window_size", "--window-size")):
            _require_positive(getattr(self, name), flag, allow_none=True)
        if isinstance(self.mtp_num_layers, bool) or not isinstance(self.mtp_num_layers, int) \
                or self.mtp_num_layers < 0:
            raise ShapeError(f"--mtp-num-layers must be a non-negative integer, got "
                             f"{self.mtp_num_layers!r}", "--mtp-num-layers")
        set_(self, "moe_layer_freq", _layer_pattern(self.moe_layer_freq, self.num_layers,
                                                    "--moe-layer-freq"))
        set_(self, "window_attn_skip_freq", _layer_pattern(
            self.window_attn_skip_freq, self.num_layers, "--window-attn-skip-freq"))
        if self.multi_latent_attention:
            # Megatron-LM's defaults (megatron/training/arguments.py, _add_mla_args)
            for name, default in MLA_DEFAULTS.items():
                if getattr(self, name) is None:
                    set_(self, name, default)
        elif self.q_lora_rank is not None:
            raise ShapeError("--q-lora-rank needs --multi-latent-attention", "--q-lora-rank")

    @property
    def expert_hidden_size(self) -> int:
        """Width of the routed experts' input and output: ``--moe-latent-size`` L with latent
        MoE, else ``h``."""
        return self.hidden_size if self.moe_latent_size is None else self.moe_latent_size

    def _check_issue_20_fields(self) -> None:
        """Latent MoE, the attention output gate and the shared-expert gate, checked as
        Megatron-LM does (arguments.py: ``moe_latent_size > 0``; MLATransformerConfig refuses
        the output gate).  Latent MoE without MoE layers and the shared-expert gate without shared
        experts are inert, as in Megatron-Core (only MoE layers build them)."""
        _require_positive(self.moe_latent_size, "--moe-latent-size", allow_none=True)
        if self.attention_output_gate and self.multi_latent_attention:
            raise ShapeError("--attention-output-gate is not supported with "
                             "--multi-latent-attention (Megatron-Core refuses it)",
                             "--attention-output-gate")


@dataclass(frozen=True)
class VisionEncoder:
    """The vision side of a vision-language run, as Megatron-Core's ``LLaVAModel`` builds it
    (issue 20 item 3): a ViT (``CLIPViTModel`` / ``RADIOViTModel``) run on every image tile,
    then a projection (``MultimodalProjector``) into the language model's hidden size.

    Per tile: a patch embedding (a ``p×p`` stride-``p`` convolution, or RADIO's linear, both
    the matmul ``[P × 3·p²]·[3·p² × hv]`` over ``P = (img_h/p)·(img_w/p)`` patches), the ViT
    layers at ``P + class_tokens`` tokens, then the projection of the image embeddings the
    language model receives.
    """

    transformer: ModelShape
    """The ViT's layers at the vision shape (layers, hidden ``hv``, heads, kv_channels, ffn,
    GLU); its vocabulary is unused (no logits)."""
    img_h: int
    """Tile height in pixels (``--img-h``)."""
    img_w: int
    """Tile width in pixels (``--img-w``)."""
    patch_dim: int
    """Patch side ``p`` in pixels (``--patch-dim``)."""
    class_tokens: int = 0
    """Class (register) tokens the ViT adds to its sequence (CLIP 1, RADIO 8, SigLIP 0)."""
    tiles: int = 1
    """Image tiles per sample: 1, or ``--max-num-tiles`` (+1 with ``--use-thumbnail``) with
    ``--use-tiling`` (the most a sample holds: dynamic tiling may use fewer)."""
    drop_class_tokens: bool = False
    """``--disable-vision-class-token``: the class tokens are dropped before the projection."""
    pixel_shuffle: bool = False
    """``--pixel-shuffle``: 2×2 neighbouring embeddings merged, a quarter as many, 4·hv wide."""
    projector: str = "mlp"
    """``--vision-projection-type``: ``mlp`` (hv' -> fp -> h) or ``affine`` (hv' -> h)."""
    projector_ffn_hidden_size: Optional[int] = None
    """The mlp projection's hidden size ``fp`` (set per ``--language-model-type``)."""
    recompute: bool = False
    """``--recompute-vision``: the ViT layers follow the run's recompute granularity."""
    linear_patch_embedding: bool = False
    """The patch embedding is Megatron's linear (RADIO) rather than a convolution: it then
    computes its input gradient whenever it trains (hardware FLOPs, see flops.py)."""
    tile_tag_tokens: int = 0
    """Tokens ``--use-tile-tags`` adds per tile to the decoder's sequence (embeddings only:
    no vision matmul); Megatron-LM's own formula counts them in its ``seq_length``."""

    def __post_init__(self) -> None:
        _require_positive(self.img_h, "--img-h")
        _require_positive(self.img_w, "--img-w")
        _require_positive(self.patch_dim, "--patch-dim")
        _require_positive(self.tiles, "--max-num-tiles")
        for size, flag in ((self.img_h, "--img-h"), (self.img_w, "--img-w")):
            if size % self.patch_dim:
                raise ShapeError(f"--patch-dim ({self.patch_dim}) must divide {flag} ({size})",
                                 "--patch-dim")
        if self.class_tokens < 0:
            raise ShapeError(f"class tokens must be >= 0, got {self.class_tokens}",
                             "--class-token-len")
        if self.projector not in VISION_PROJECTORS:
            raise ShapeError(f"--vision-projection-type must be one of "
                             f"{', '.join(VISION_PROJECTORS)}, got {self.projector!r}",
                             "--vision-projection-type")
        if self.projector == "mlp":
            _require_positive(self.projector_ffn_hidden_size, "--language-model-type")
        if self.pixel_shuffle:  # llava_model.pixel_shuffle: a square grid of even side
            kept = self.patches + (0 if self.drop_class_tokens else self.class_tokens)
            side = int(round(kept ** 0.5))
            if side * side != kept or side % 2:
                raise ShapeError(f"--pixel-shuffle needs a square grid of even side; the "
                                 f"ViT gives {kept} embeddings per tile", "--pixel-shuffle")

    @property
    def patches(self) -> int:
        """``P = (img_h/p)·(img_w/p)`` patches per tile."""
        return (self.img_h // self.patch_dim) * (self.img_w // self.patch_dim)

    @property
    def seq_length(self) -> int:
        """``Sv``: the ViT's sequence per tile, patches plus class tokens."""
        return self.patches + self.class_tokens

    @property
    def patch_size(self) -> int:
        """``3·p²``: the pixels (RGB) of one patch, the patch embedding's input width."""
        return 3 * self.patch_dim * self.patch_dim

    @property
    def image_embeddings(self) -> int:
        """``N``: image embeddings one tile gives the language model (Megatron-Core's
        ``get_num_image_embeddings`` without tile tags)."""
        kept = self.seq_length - (self.class_tokens if self.drop_class_tokens else 0)
        return kept // 4 if self.pixel_shuffle else kept

    @property
    def projector_input_size(self) -> int:
        """The projection's input width: ``hv``, or ``4·hv`` after the pixel shuffle."""
        return self.transformer.hidden_size * (4 if self.pixel_shuffle else 1)


@dataclass(frozen=True)
class Recompute:
    """Activation recomputation as Megatron configures it.

    ``granularity``: ``None`` (off), ``"full"`` (re-run the forward of whole transformer
    layers) or ``"selective"`` (re-run only the attention core: scores and attention·V).
    ``method`` and ``num_layers`` apply to ``"full"``: ``uniform`` recomputes every layer
    (in chunks of ``num_layers``), ``block`` only the first ``num_layers`` layers of each
    pipeline stage.  ``stage_layers`` is the number of transformer layers of each pipeline
    stage when the stages are uneven (Megatron-LM's ``--decoder-first/last-pipeline-num-layers``);
    ``None`` means ``num_layers / pipeline_parallel_size`` each.
    """

    granularity: Optional[str] = None
    method: str = "uniform"
    num_layers: Optional[int] = None
    stage_layers: Optional[Tuple[int, ...]] = None
    modules: Tuple[str, ...] = ("core_attn",)
    """What ``"selective"`` re-runs: Megatron-Core's ``--recompute-modules`` (default
    ``core_attn``; ``--moe-layer-recompute`` adds ``moe``)."""

    def __post_init__(self) -> None:
        if self.granularity is not None and self.granularity not in RECOMPUTE_GRANULARITIES:
            raise ShapeError(
                "--recompute-granularity must be one of full, selective, "
                f"got {self.granularity!r}",
                "--recompute-granularity",
            )
        modules = tuple(dict.fromkeys(self.modules))
        unknown = [m for m in modules if m not in SELECTIVE_RECOMPUTE_MODULES]
        if unknown:
            raise ShapeError(f"--recompute-modules must be among "
                             f"{', '.join(SELECTIVE_RECOMPUTE_MODULES)}, got {' '.join(unknown)}",
                             "--recompute-modules")
        object.__setattr__(self, "modules", modules)
        if self.method not in RECOMPUTE_METHODS:
            raise ShapeError(
                f"--recompute-method must be one of uniform, block, got {self.method!r}",
                "--recompute-method",
            )
        _require_positive(self.num_layers, "--recompute-num-layers", allow_none=True)
        if self.stage_layers is not None:
            stages = tuple(self.stage_layers)
            if not stages or any(isinstance(n, bool) or not isinstance(n, int) or n < 0
                                 for n in stages):
                raise ShapeError("pipeline stage layer counts must be integers ≥ 0, got "
                                 f"{self.stage_layers!r}", "--pipeline-model-parallel-size")
            object.__setattr__(self, "stage_layers", stages)

    @property
    def label(self) -> str:
        if self.granularity is None:
            return "none"
        if self.granularity == "selective":
            if self.modules == ("core_attn",):
                return "selective"
            return f"selective ({', '.join(self.modules) or 'nothing'})"
        if self.method == "block":
            return f"full (block, {self.num_layers} layers per stage)"
        return "full"

    @property
    def recomputes_every_layer(self) -> bool:
        """Full recompute of every layer (``uniform``, or ``block`` without a layer count)."""
        return self.granularity == "full" and (self.method == "uniform" or self.num_layers is None)

    def recomputed_layers(self, num_layers: int, pipeline_parallel_size: int = 1,
                          mtp_num_layers: int = 0) -> FrozenSet[int]:
        """0-based indices of the layers whose whole forward is re-run (full recompute only).

        Multi-token-prediction layers (indices ``num_layers`` on) are re-run by the uniform
        method only: Megatron-Core (0.16) skips their recompute under ``block``, with a warning.
        """
        if self.granularity != "full":
            return frozenset()
        if self.recomputes_every_layer:
            return frozenset(range(num_layers + mtp_num_layers))
        stages = self.stage_layers
        if stages is None:
            per_stage = num_layers // pipeline_parallel_size
            stages = (per_stage,) * pipeline_parallel_size
        if sum(stages) != num_layers:
            raise ShapeError(f"the pipeline stages hold {sum(stages)} layers, not --num-layers "
                             f"({num_layers})", "--pipeline-model-parallel-size")
        recomputed, first = set(), 0
        for size in stages:
            recomputed.update(range(first, first + min(self.num_layers, size)))
            first += size
        return frozenset(recomputed)


NO_RECOMPUTE = Recompute()


@dataclass(frozen=True)
class RunShape:
    """How a model is trained: per-iteration sizes, parallelism, recompute and dtype.

    Validated once at construction (every error names the flag); the data-parallel size is
    ``world_size / (TP × PP × sequence_parallel_size × context_parallel_size)``.
    """

    seq_length: int
    """Tokens per sample ``s`` (``--seq-length``)."""
    micro_batch_size: int = 1
    """Samples per micro-batch on one replica (``--micro-batch-size``)."""
    global_batch_size: Optional[int] = None
    """Samples per iteration over all replicas (``--global-batch-size``); default
    ``micro_batch_size * data_parallel_size`` as in Megatron."""
    tensor_model_parallel_size: int = 1
    """TP (``--tensor-model-parallel-size``)."""
    pipeline_model_parallel_size: int = 1
    """PP (``--pipeline-model-parallel-size``)."""
    world_size: Optional[int] = None
    """GPUs of the run; default ``model_parallel_size`` (one data-parallel replica)."""
    recompute: Recompute = field(default_factory=Recompute)
    """Activation recomputation (``--recompute-granularity`` and friends): a :class:`Recompute`."""
    rampup_batch_size: Optional[Tuple[int, int, int]] = None
    """Megatron's ``--rampup-batch-size`` ``(start, increment, ramp_samples)``; None: no ramp-up
    (see :meth:`batch_size_at`)."""
    dtype: str = "fp32"
    """The training precision (``--fp16``, ``--bf16``, …): one of ``DTYPES``; picks the peak."""
    sequence_parallel_size: int = 1
    """Ranks one sequence is split over outside tensor parallelism: the microsoft fork's
    Ulysses ``--ds-sequence-parallel-size``.  They hold no model copy of their own (the
    fork's ``data_parallel_size``); the FLOPs of an iteration do not change."""
    batch_schedule: Optional[Tuple[Tuple[int, int], ...]] = None
    """Megatron-LM's ``--step-batch-size-schedule`` as ``((from_samples, batch), …)``, sorted,
    the first from 0: the global batch is ``batch`` once ``from_samples`` samples are consumed
    (the last one is ``global_batch_size``)."""
    flags_recompute: Optional[Recompute] = None
    """Recompute as the flags declare it, where that differs from ``recompute`` (what runs):
    the DeepSpeed pipeline model runs no recompute for ``--recompute-method block``, but the
    forks' own TFLOPs formulas read the flags (``declared_recompute``).  None: the same."""
    # ---- Megatron-Core (NVIDIA Megatron-LM) -----------------------------------------------
    context_parallel_size: int = 1
    """Megatron-LM's ``--context-parallel-size``: like ``sequence_parallel_size``, ranks that
    split each sequence; ``seq_length`` must be a multiple of twice it."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        _require_positive(self.context_parallel_size, "--context-parallel-size")
        if self.context_parallel_size > 1 and self.seq_length % (2 * self.context_parallel_size):
            raise ShapeError(
                f"--seq-length ({self.seq_length}) must be a multiple of 2 × "
                f"--context-parallel-size ({self.context_parallel_size})", "--seq-length")
        _require_positive(self.seq_length, "--seq-length")
        _require_positive(self.micro_batch_size, "--micro-batch-size")
        _require_positive(self.tensor_model_parallel_size, "--tensor-model-parallel-size")
        _require_positive(self.pipeline_model_parallel_size, "--pipeline-model-parallel-size")
        _require_positive(self.world_size, "--world-size", allow_none=True)
        _require_positive(self.global_batch_size, "--global-batch-size", allow_none=True)
        _require_positive(self.sequence_parallel_size, "--ds-sequence-parallel-size")
        model_parallel = self.model_parallel_size
        if self.world_size is None:
            set_(self, "world_size", model_parallel)
        if self.world_size % model_parallel:
            sequence = (f" × sequence-parallel size ({self.sequence_parallel_size})"
                        if self.sequence_parallel_size > 1 else "")
            context = (f" × --context-parallel-size ({self.context_parallel_size})"
                       if self.context_parallel_size > 1 else "")
            raise ShapeError(
                f"--world-size ({self.world_size}) must be a multiple of "
                f"--tensor-model-parallel-size ({self.tensor_model_parallel_size}) × "
                f"--pipeline-model-parallel-size ({self.pipeline_model_parallel_size})"
                f"{sequence}{context}",
                "--world-size",
            )
        per_step = self.micro_batch_size * self.data_parallel_size
        if self.batch_schedule is not None:
            self._check_batch_schedule()
            set_(self, "global_batch_size", self.batch_schedule[-1][1])
        if self.global_batch_size is None:
            set_(self, "global_batch_size", per_step)
        if self.global_batch_size % per_step:
            raise ShapeError(
                f"--global-batch-size ({self.global_batch_size}) must be a multiple of "
                f"--micro-batch-size ({self.micro_batch_size}) × data-parallel size "
                f"({self.data_parallel_size})",
                "--global-batch-size",
            )
        if self.rampup_batch_size is not None:
            ramp = tuple(self.rampup_batch_size)
            if len(ramp) != 3:
                raise ShapeError(
                    "--rampup-batch-size takes three values: start batch size, "
                    "batch size increment, ramp-up samples",
                    "--rampup-batch-size",
                )
            for value in ramp:
                _require_positive(value, "--rampup-batch-size")
            start, increment, _ = ramp
            if (self.global_batch_size - start) % increment:
                raise ShapeError(
                    f"--rampup-batch-size increment ({increment}) must divide "
                    f"--global-batch-size ({self.global_batch_size}) minus the start "
                    f"batch size ({start})",
                    "--rampup-batch-size",
                )
            set_(self, "rampup_batch_size", ramp)
        if self.dtype not in DTYPES:
            raise ShapeError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}", "--bf16")
        if not isinstance(self.recompute, Recompute):
            raise ShapeError("recompute must be a Recompute value", "--recompute-granularity")

    def _check_batch_schedule(self) -> None:
        flag = "--step-batch-size-schedule"
        schedule = tuple((start, batch) for start, batch in self.batch_schedule)
        if not schedule:
            raise ShapeError(f"{flag} needs at least one THRESHOLD:BATCH_SIZE entry", flag)
        if self.rampup_batch_size is not None:
            raise ShapeError(f"{flag} and --rampup-batch-size cannot both be given", flag)
        if schedule[0][0] != 0:
            raise ShapeError(f"{flag}: the first entry must start at 0, got {schedule[0][0]}",
                             flag)
        for (before, _), (after, _) in zip(schedule, schedule[1:]):
            if after <= before:
                raise ShapeError(f"{flag}: thresholds must increase, got {before} then {after} "
                                 "samples", flag)
        for _, batch in schedule:
            _require_positive(batch, flag)
        object.__setattr__(self, "batch_schedule", schedule)

    @property
    def declared_recompute(self) -> Recompute:
        """What the flags say is recomputed (the forks' formulas count this), see
        ``flags_recompute``."""
        return self.flags_recompute if self.flags_recompute is not None else self.recompute

    @property
    def model_parallel_size(self) -> int:
        """GPUs one data-parallel replica spans: TP × PP × SP (Ulysses) × CP."""
        return (self.tensor_model_parallel_size * self.pipeline_model_parallel_size
                * self.sequence_parallel_size * self.context_parallel_size)

    @property
    def data_parallel_size(self) -> int:
        """Replicas: world size / (TP × PP × SP × CP) (SP and CP split each sequence)."""
        return self.world_size // self.model_parallel_size

    @property
    def tokens_per_gpu_per_sample(self) -> int:
        """Tokens of one sample each GPU of its replica holds: s / (SP × CP)."""
        return self.seq_length // (self.sequence_parallel_size * self.context_parallel_size)

    def batch_size_at(self, consumed_samples: int) -> int:
        """Global batch size of the iteration that starts after ``consumed_samples``.

        Follows Megatron's ramp-up calculator: the batch grows by ``increment`` every
        ``ramp_samples / number_of_increments`` samples, then stays at ``global_batch_size``.
        """
        if self.batch_schedule is not None:  # Megatron-LM's step schedule: no rounding
            return [batch for start, batch in self.batch_schedule if consumed_samples >= start][-1]
        if self.rampup_batch_size is None:
            return self.global_batch_size
        start, increment, ramp_samples = self.rampup_batch_size
        if consumed_samples > ramp_samples:
            return self.global_batch_size
        steps = (self.global_batch_size - start) // increment
        if steps == 0:
            return self.global_batch_size
        samples_per_step = ramp_samples / steps
        size = start + int(consumed_samples / samples_per_step) * increment
        size = min(size, self.global_batch_size)
        # Megatron rounds down to a multiple of micro batch × data parallel
        per_step = self.micro_batch_size * self.data_parallel_size
        size = max(size - size % per_step, per_step)
        return size
