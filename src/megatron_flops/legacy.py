"""The two formulas Megatron-DeepSpeed forks log, reproduced as they compute.

They are kept only to say how far a logged number is off, and to reproduce old dashboards.
Neither is used for anything else in this package.

bigscience-workshop/Megatron-DeepSpeed (``megatron/training.py::training_log``): Narayanan et
al. 2021 Eq. 3 with the whole expression scaled by 32/24 when ``--glu-activation`` is set
(exact only when ffn = 4h, which GLU models rarely use), and factor 4 instead of 3 with
``--checkpoint-activations`` (full recompute of every layer).  Its vocabulary term is
24·f·B·s·l·h²·V/(16·l·h) = 1.5·f·B·s·h·V: with f = 4 exactly three passes of the logits
(forward and backward, not recomputed); with f = 3 it under-counts them by 25 %.

microsoft (deepspeedai)/Megatron-DeepSpeed (``megatron/utils.py::throughput_calculator``):
counts multiply-accumulates per GEMM group; the Q, K, V and output projections are
``(1 + 2 // gqa + 1)·h²`` per token, so K and V vanish from the count for a GQA ratio of 3
or more (integer division), and the FFN uses ``ffn_hidden_size`` with 3 GEMMs for
``--swiglu``; the FFN of *every* layer is multiplied by ``--topk`` (``--expert-interval`` and
the router are ignored); ``head_dim = h // n`` ignores ``--kv-channels``.  Full recompute (or
``--checkpoint-activations``) adds a whole forward, logits included, whatever
``--recompute-num-layers``/``--recompute-method`` say; selective adds the attention GEMMs once
more.  Read at microsoft/Megatron-DeepSpeed f4157bea (``utils.py`` throughput_calculator) and
bigscience-workshop/Megatron-DeepSpeed 8387ae17 (``training.py`` training_log).

Before microsoft commit b7b2d5ef (2024-08-19) the microsoft fork logged Eq. 3 with coefficient
24 whatever the MLP and factor 4 for any recompute, selective included (``utils.py`` at its
parent cdf51944): :func:`microsoft_eq3_tflops` reproduces those older dashboards.
"""

import math
from typing import Optional


def legacy_error(logged: Optional[float], exact: float) -> Optional[float]:
    """How far a legacy figure is off: ``logged / exact − 1`` (+0.3 is 30 % too high).

    ``None`` when there is nothing to compare: no logged figure, a non-finite one (``inf``
    printed by a run), or no exact count to divide by.  Works for FLOPs and TFLOP/s alike."""
    if logged is None or not math.isfinite(logged) or not exact > 0:
        return None
    return logged / exact - 1.0


def bigscience_flops_per_iteration(batch_size: int, seq_length: int, num_layers: int,
                                   hidden_size: int, padded_vocab_size: int,
                                   glu: bool, checkpoint_activations: bool) -> float:
    coefficient = 32 if glu else 24
    recompute_factor = 4 if checkpoint_activations else 3
    h, s, l, V = hidden_size, seq_length, num_layers, padded_vocab_size
    return (coefficient * recompute_factor * batch_size * s * l * h ** 2) * (
        1.0 + s / (6.0 * h) + V / (16.0 * l * h))


def bigscience_tflops(batch_size: int, seq_length: int, num_layers: int, hidden_size: int,
                      padded_vocab_size: int, glu: bool, checkpoint_activations: bool,
                      seconds_per_iteration: float, world_size: int) -> float:
    """TFLOPs as the bigscience fork prints them (per GPU)."""
    flops = bigscience_flops_per_iteration(batch_size, seq_length, num_layers, hidden_size,
                                           padded_vocab_size, glu, checkpoint_activations)
    return flops / (seconds_per_iteration * world_size * 1e12)


def microsoft_flops_per_iteration(batch_size: int, seq_length: int, num_layers: int,
                                  hidden_size: int, num_attention_heads: int,
                                  num_key_value_heads: Optional[int], ffn_hidden_size: int,
                                  padded_vocab_size: int, swiglu: bool,
                                  recompute_granularity: Optional[str], topk: int = 1,
                                  checkpoint_activations: bool = False) -> int:
    B, s, l, h, V = batch_size, seq_length, num_layers, hidden_size, padded_vocab_size
    n = num_attention_heads
    head_dim = h // n
    gqa = n // (num_key_value_heads or n)
    ffn_gemms = 3 if swiglu else 2
    attention_projection_macs = B * l * (1 + (2 // gqa) + 1) * h ** 2 * s
    attention_core_macs = B * l * 2 * head_dim * n * s ** 2
    ffn_macs = B * l * ffn_gemms * ffn_hidden_size * h * s * topk
    logits_macs = B * V * h * s
    forward_macs = attention_projection_macs + attention_core_macs + ffn_macs + logits_macs
    total_macs = 3 * forward_macs
    if checkpoint_activations or recompute_granularity == "full":
        total_macs += forward_macs
    if recompute_granularity == "selective":
        total_macs += attention_core_macs
    return 2 * total_macs


def microsoft_tflops(batch_size: int, seq_length: int, num_layers: int, hidden_size: int,
                     num_attention_heads: int, num_key_value_heads: Optional[int],
                     ffn_hidden_size: int, padded_vocab_size: int, swiglu: bool,
                     recompute_granularity: Optional[str], seconds_per_iteration: float,
                     world_size: int, topk: int = 1, checkpoint_activations: bool = False
                     ) -> float:
    """TFLOPs as the microsoft fork's throughput_calculator returns them (per GPU)."""
    flops = microsoft_flops_per_iteration(batch_size, seq_length, num_layers, hidden_size,
                                          num_attention_heads, num_key_value_heads,
                                          ffn_hidden_size, padded_vocab_size, swiglu,
                                          recompute_granularity, topk, checkpoint_activations)
    return flops / (seconds_per_iteration * world_size * 1e12)


def microsoft_eq3_tflops(batch_size: int, seq_length: int, num_layers: int, hidden_size: int,
                         padded_vocab_size: int, recompute: bool,
                         seconds_per_iteration: float, world_size: int) -> float:
    """The microsoft fork before b7b2d5ef: Eq. 3, coefficient 24, factor 4 for any recompute."""
    return bigscience_tflops(batch_size, seq_length, num_layers, hidden_size, padded_vocab_size,
                             False, recompute, seconds_per_iteration, world_size)


def legacy_tflops_for_shapes(model, run, batch_size: int, seq_length: int,
                             seconds_per_iteration: float) -> dict:
    """Both legacy figures for our shapes, as each fork would log this run.

    The bigscience figure treats any GLU as its ``--glu-activation``; the microsoft figure
    treats any GLU as ``--swiglu`` and full/selective recompute as its granularity.  Both
    read the recompute the flags declare (``run.declared_recompute``), as the forks do: the
    microsoft fork adds a forward for ``--recompute-granularity full`` even where its DeepSpeed
    pipeline model runs none (``--recompute-method block``).
    """
    recompute = run.declared_recompute.granularity
    return {
        "bigscience": bigscience_tflops(batch_size, seq_length, model.num_layers,
                                        model.hidden_size, model.vocab_size, model.glu,
                                        recompute == "full", seconds_per_iteration,
                                        run.world_size),
        "microsoft": microsoft_tflops(batch_size, seq_length, model.num_layers,
                                      model.hidden_size, model.num_attention_heads,
                                      model.num_query_groups, model.ffn_hidden_size,
                                      model.vocab_size, model.glu, recompute,
                                      seconds_per_iteration, run.world_size,
                                      topk=model.moe_topk if model.is_moe else 1),
    }
