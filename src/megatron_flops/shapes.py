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

GLU_ACTIVATIONS = ("geglu", "liglu", "reglu", "swiglu")
POSITION_EMBEDDINGS = ("learned", "rotary", "alibi", "none")
NORMALIZATIONS = ("layernorm", "rmsnorm")
RECOMPUTE_GRANULARITIES = ("full", "selective")
RECOMPUTE_METHODS = ("uniform", "block")
DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8")


class ShapeError(ValueError):
    """A model or run description that Megatron would refuse, or that contradicts itself.

    ``flag`` is the command-line flag at fault (``--num-attention-heads``), when there is one.
    """

    def __init__(self, message: str, flag: Optional[str] = None):
        super().__init__(message)
        self.flag = flag


def _require_positive(value, flag: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapeError(f"{flag} must be a positive integer, got {value!r}", flag)
    if value <= 0:
        raise ShapeError(f"{flag} must be a positive integer, got {value}", flag)


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Megatron GPT model.

    ``vocab_size`` is the *padded* vocabulary the embedding and logits layers are built with
    (see :func:`megatron_flops.megatron.args.padded_vocab_size` for Megatron's padding rule).
    ``kv_channels`` (head dimension ``d``) defaults to ``hidden_size // num_attention_heads``;
    ``num_query_groups`` (KV heads ``g``) defaults to ``num_attention_heads`` (MHA); 1 is MQA.
    ``ffn_hidden_size`` (``f``) defaults to ``4 * hidden_size`` and is the size of *one* branch
    when ``glu_activation`` is set (the first dense layer is then ``h -> 2f``).
    ``num_experts`` is one entry per MoE layer (every ``expert_interval``-th layer, counting
    from 1), or a single int applied to all of them; 1 means a dense model.
    ``expert_layers_from_first`` is Megatron-LM's ``--moe-layer-freq`` pattern instead: layer
    ``i`` (0-based) is an MoE layer when ``i % expert_interval == 0`` (with 1: every layer).
    ``moe_residual`` is the microsoft fork's ``--mlp-type residual`` (PR-MoE, DeepSpeed's
    ``MoE(use_residual=True)``): every MoE layer also runs a dense MLP of the same shape on every
    token, and a ``h -> 2`` coefficient linear (with bias) mixes the two outputs.
    """

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int
    kv_channels: Optional[int] = None
    num_query_groups: Optional[int] = None
    ffn_hidden_size: Optional[int] = None
    glu_activation: Optional[str] = None
    tie_embeddings: bool = True
    position_embedding: str = "learned"
    max_position_embeddings: Optional[int] = None
    num_experts: Union[int, Tuple[int, ...]] = 1
    moe_topk: int = 1
    expert_interval: int = 2
    add_bias_linear: bool = True
    normalization: str = "layernorm"
    embedding_layernorm: bool = False
    moe_residual: bool = False
    expert_layers_from_first: bool = False

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
        if self.glu_activation is not None and self.glu_activation not in GLU_ACTIVATIONS:
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

        num_moe_layers = self.num_moe_layer_slots
        experts = self.num_experts
        if isinstance(experts, int) and not isinstance(experts, bool):
            experts = (experts,) * num_moe_layers if experts != 1 else ()
        else:
            experts = tuple(experts)
            if len(experts) == 1:
                experts = experts * num_moe_layers
            if all(e == 1 for e in experts):
                experts = ()
        for e in experts:
            _require_positive(e, "--num-experts")
        if experts and len(experts) != num_moe_layers:
            raise ShapeError(
                f"--num-experts gives {len(experts)} values but --num-layers ({self.num_layers}) "
                f"with --expert-interval ({self.expert_interval}) has {num_moe_layers} MoE layers",
                "--num-experts",
            )
        if experts and self.moe_topk > min(experts):
            raise ShapeError(
                f"--topk ({self.moe_topk}) must not exceed --num-experts ({min(experts)})",
                "--topk",
            )
        set_(self, "num_experts", experts)

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

    @property
    def num_moe_layer_slots(self) -> int:
        """How many layers the MoE pattern makes MoE layers."""
        if self.expert_layers_from_first:
            return -(-self.num_layers // self.expert_interval)
        return self.num_layers // self.expert_interval

    def experts_in_layer(self, layer_index: int) -> int:
        """Experts in layer ``layer_index`` (0-based); 1 for a dense layer.

        As in the microsoft fork, layer number ``i + 1`` is an MoE layer when it is a multiple
        of ``expert_interval``.
        """
        if not self.num_experts:
            return 1
        if self.expert_layers_from_first:
            if layer_index % self.expert_interval:
                return 1
            return self.num_experts[layer_index // self.expert_interval]
        number = layer_index + 1
        if number % self.expert_interval:
            return 1
        return self.num_experts[number // self.expert_interval - 1]


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

    def __post_init__(self) -> None:
        if self.granularity is not None and self.granularity not in RECOMPUTE_GRANULARITIES:
            raise ShapeError(
                "--recompute-granularity must be one of full, selective, "
                f"got {self.granularity!r}",
                "--recompute-granularity",
            )
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
            return "selective"
        if self.method == "block":
            return f"full (block, {self.num_layers} layers per stage)"
        return "full"

    def recomputed_layers(self, num_layers: int, pipeline_parallel_size: int = 1) -> FrozenSet[int]:
        """0-based indices of the layers whose whole forward is re-run (full recompute only)."""
        if self.granularity != "full":
            return frozenset()
        if self.method == "uniform" or self.num_layers is None:
            return frozenset(range(num_layers))
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

    ``global_batch_size`` defaults to ``micro_batch_size * data_parallel_size`` as in
    Megatron.  ``world_size`` defaults to ``TP * PP`` (one data-parallel replica).
    ``rampup_batch_size`` is Megatron's ``(start, increment, ramp_samples)``.
    ``sequence_parallel_size`` counts the ranks one sequence is split over outside tensor
    parallelism: the microsoft fork's Ulysses ``--ds-sequence-parallel-size`` or Megatron-LM's
    ``--context-parallel-size``.  They hold no model copy of their own, so the data-parallel size
    is ``world_size / (TP × PP × sequence_parallel_size)`` (the fork's ``data_parallel_size``);
    the FLOPs of an iteration do not change.
    """

    seq_length: int
    micro_batch_size: int = 1
    global_batch_size: Optional[int] = None
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    world_size: Optional[int] = None
    recompute: Recompute = field(default_factory=Recompute)
    rampup_batch_size: Optional[Tuple[int, int, int]] = None
    dtype: str = "fp32"
    sequence_parallel_size: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
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
            raise ShapeError(
                f"--world-size ({self.world_size}) must be a multiple of "
                f"--tensor-model-parallel-size ({self.tensor_model_parallel_size}) × "
                f"--pipeline-model-parallel-size ({self.pipeline_model_parallel_size}){sequence}",
                "--world-size",
            )
        per_step = self.micro_batch_size * self.data_parallel_size
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

    @property
    def model_parallel_size(self) -> int:
        """Ranks that share one model replica: TP × PP × sequence-parallel size."""
        return (self.tensor_model_parallel_size * self.pipeline_model_parallel_size
                * self.sequence_parallel_size)

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // self.model_parallel_size

    def batch_size_at(self, consumed_samples: int) -> int:
        """Global batch size of the iteration that starts after ``consumed_samples``.

        Follows Megatron's ramp-up calculator: the batch grows by ``increment`` every
        ``ramp_samples / number_of_increments`` samples, then stays at ``global_batch_size``.
        """
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
