"""Model state per rank: parameters, gradients and optimizer state, by sharding.

A rank holds the parameters of its pipeline stage's layers, cut by tensor parallelism
(Megatron's column- and row-parallel linears; the vocabulary-parallel embedding and output
layer), and of its share of the experts (``E / EP`` experts, each cut by the expert tensor
parallel size ``ETP``).  Replicated on every TP rank: the norms, the biases of the row-parallel
linears (attention output, MLP down: ``h`` each), the router and the learned position
embeddings.  The first stage holds the embeddings, the last the final norm and the output
layer — with tied embeddings and PP > 1 a copy of the word embeddings, as Megatron keeps one
there to compute the logits.

Bytes per parameter (mixed-precision Adam, Rajbhandari et al. 2020, "ZeRO", §3.1: ``2Ψ``
fp16 parameters + ``2Ψ`` fp16 gradients + ``K·Ψ = 12Ψ`` optimizer state: fp32 master copy,
momentum, variance; 16Ψ in all)::

    parameters   p  (2: bf16/fp16, 4: fp32)
    gradients    q  (Megatron-LM bf16: 4, its gradients accumulate in fp32; fp16: 2; fp32: 4)
    optimizer    Adam: 8 (two moments) + 4 (fp32 master) when p < 4; SGD with momentum: 4 (+ 4)

Sharding over the data-parallel ranks ``N`` (TP/PP/EP/CP fixed): the distributed optimizer
and ZeRO stage 1 divide the optimizer state by ``N``, stage 2 also the gradients, stage 3
also the parameters.  Megatron's distributed optimizer shards over data × context parallel;
the expert parameters over their own data-parallel group ``world / (ETP·EP·PP)``.  Sharded
bytes are rounded up to whole bytes (Megatron's buffer padding is left out).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from .activations import unmodelled
from .errors import UsageError
from .params import _norm
from .shapes import ModelShape

__all__ = ["ModelState", "RankParameters", "StateSettings", "model_state", "rank_parameters"]

OPTIMIZERS = ("adam", "sgd")


def _ceil_div(value: int, parts: int) -> int:
    return -(-value // parts)


@dataclass(frozen=True)
class StateSettings:
    """How the state is kept: dtypes, optimizer and its sharding."""

    parameter_bytes: int = 2
    """``p``: bytes of a model parameter (2: bf16/fp16 training, 4: fp32)."""
    gradient_bytes: int = 4
    """``q``: bytes of a gradient (Megatron-LM's bf16 default accumulates in fp32: 4)."""
    optimizer: str = "adam"
    """``adam`` (two fp32 moments) or ``sgd`` (one momentum)."""
    zero_stage: int = 0
    """0: no sharding; 1 (= Megatron's distributed optimizer): optimizer state; 2: and gradients;
    3: and parameters — each divided over the data-parallel ranks."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise UsageError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage}")

    @property
    def optimizer_bytes(self) -> int:
        """Optimizer bytes per parameter: moments, and an fp32 master copy under mixed precision."""
        moments = 8 if self.optimizer == "adam" else 4
        return moments + (4 if self.parameter_bytes < 4 else 0)


@dataclass(frozen=True)
class RankParameters:
    """Parameters one rank holds: ``dense`` (sharded over data × context parallel) and
    ``expert`` (sharded over the expert data-parallel group)."""

    dense: int
    expert: int

    @property
    def total(self) -> int:
        return self.dense + self.expert


def _divide(value: int, parts: int, flag: str, what: str) -> int:
    if value % parts:
        raise UsageError(f"{flag} ({parts}) must divide {what} ({value})")
    return value // parts


def _layer_parameters(model: ModelShape, experts: int, tp: int, ep: int, etp: int) -> Tuple[int, int]:
    """(dense, expert) parameters of one layer on one TP rank (``experts`` 1: dense)."""
    h, bias = model.hidden_size, model.add_bias_linear
    qkv = model.query_projection_size + 2 * model.kv_projection_size
    flag = "--tensor-model-parallel-size"
    dense = 2 * _norm(model)
    dense += _divide(h * qkv + (qkv if bias else 0), tp, flag, "the QKV projection")
    dense += _divide(model.query_projection_size * h, tp, flag, "the output projection")
    dense += h if bias else 0  # the row-parallel bias, replicated
    if experts == 1:
        branches = 2 if model.glu else 1
        f = _divide(model.ffn_hidden_size, tp, flag, "--ffn-hidden-size")
        return dense + _mlp_rank(model, f, branches), 0
    dense += h * experts  # the router, replicated
    local = _divide(experts, ep, "--expert-model-parallel-size", "--num-experts")
    fe = _divide(model.expert_ffn_hidden_size, etp, "--expert-tensor-parallel-size",
                 "the expert FFN size")
    return dense, local * _mlp_rank(model, fe, 2 if model.glu else 1)


def _mlp_rank(model: ModelShape, f_local: int, branches: int) -> int:
    """One MLP on one rank: a column-parallel up (``h -> branches·f_local`` with its bias) and a
    row-parallel down (``f_local -> h``, its bias ``h`` replicated)."""
    h, bias = model.hidden_size, model.add_bias_linear
    return (h * branches * f_local + (branches * f_local if bias else 0)
            + f_local * h + (h if bias else 0))


def rank_parameters(model: ModelShape, layers, first_stage: bool, last_stage: bool,
                    tensor_parallel: int = 1, expert_parallel: int = 1,
                    expert_tensor_parallel: Optional[int] = None,
                    pipeline_parallel: int = 1) -> RankParameters:
    """Parameters a rank of a stage holding decoder ``layers`` (0-based indices) keeps."""
    missing = unmodelled(model)
    if missing:
        raise UsageError("per-rank parameters are not modelled for " + ", ".join(missing))
    etp = tensor_parallel if expert_tensor_parallel is None else expert_tensor_parallel
    dense = expert = 0
    kinds = {}
    for index in layers:
        experts = model.experts_in_layer(index)
        if experts not in kinds:
            kinds[experts] = _layer_parameters(model, experts, tensor_parallel, expert_parallel, etp)
        dense += kinds[experts][0]
        expert += kinds[experts][1]
    h = model.hidden_size
    word = _divide(model.vocab_size * h, tensor_parallel, "--tensor-model-parallel-size",
                   "the padded vocabulary × --hidden-size")
    if first_stage:
        dense += word
        if model.position_embedding == "learned":
            if model.max_position_embeddings is None:
                raise UsageError("--max-position-embeddings is needed to count learned "
                                 "position embeddings")
            dense += model.max_position_embeddings * h
        if model.embedding_layernorm:
            dense += _norm(model)
    if last_stage:
        dense += _norm(model)
        if not model.tie_embeddings or (pipeline_parallel > 1 and not first_stage):
            dense += word   # the output layer, or the tied copy on the last stage
    return RankParameters(dense, expert)


@dataclass(frozen=True)
class ModelState:
    """Bytes of model state on one rank."""

    parameters: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    def to_dict(self) -> dict:
        return {"parameters": self.parameters, "gradients": self.gradients,
                "optimizer": self.optimizer, "total": self.total}


def model_state(params: RankParameters, settings: StateSettings, data_parallel: int = 1,
                expert_data_parallel: Optional[int] = None) -> ModelState:
    """Bytes of parameters, gradients and optimizer state on one rank (module docstring)."""
    expert_dp = data_parallel if expert_data_parallel is None else expert_data_parallel
    stage = settings.zero_stage

    def per_rank(count: int, bytes_each: int, sharded: bool, ranks: int) -> int:
        return _ceil_div(count * bytes_each, ranks) if sharded else count * bytes_each

    def both(bytes_each: int, sharded: bool) -> int:
        return (per_rank(params.dense, bytes_each, sharded, data_parallel)
                + per_rank(params.expert, bytes_each, sharded, expert_dp))

    return ModelState(parameters=both(settings.parameter_bytes, stage >= 3),
                      gradients=both(settings.gradient_bytes, stage >= 2),
                      optimizer=both(settings.optimizer_bytes, stage >= 1))
