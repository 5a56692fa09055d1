"""The memory formulas against published figures and independent counts.

- Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models" (arXiv:2205.05198), §4.1–4.2 and Table 2: a layer keeps ``s·b·h·(34 + 5·a·s/h)``
  bytes (16-bit activations, 1-byte dropout masks, no norm statistics); with tensor parallelism
  ``s·b·h·(10 + 24/t + 5·a·s/(h·t))``, with sequence parallelism ``s·b·h/t·(34 + 5·a·s/h)``,
  selective recompute with sequence parallelism ``34·s·b·h/t``, full recompute ``2·s·b·h``.
- Model state: Rajbhandari et al. 2020, "ZeRO" (arXiv:1910.02054), Figure 1: Ψ = 7.5B
  parameters, N_d = 64, mixed-precision Adam (2Ψ + 2Ψ + 12Ψ): 120 GB baseline, 31.4 GB with
  P_os, 16.6 GB with P_os+g, 1.9 GB with P_os+g+p.  Megatron-LM's
  ``megatron/training/theoretical_memory_usage.py``: 18 bytes per parameter, or
  ``6 + 12/DP`` with the distributed optimizer.
- Parameters per rank summed over ranks == :func:`parameter_count` (the whole model).
"""

import pytest

from megatron_flops.activations import (ACTIVATIONS, ActivationSettings, Parallel,
                                        activation_breakdown, layer_activation_bytes)
from megatron_flops.errors import UsageError
from megatron_flops.model_state import RankParameters, StateSettings, model_state, rank_parameters
from megatron_flops.params import parameter_count
from megatron_flops.rank_memory import in_flight_chunks, rank_memory
from megatron_flops.shapes import ModelShape, Recompute, RunShape

# Korthikanti's conventions: fp16, bool masks, 16-bit softmax, one mask per model, no statistics
PAPER = ActivationSettings(dtype_bytes=2, hidden_dropout=True, attention_dropout=True,
                           dropout_mask_bytes=1, softmax_in_fp32=False,
                           causal_mask_per_layer=False, norm_statistics=False,
                           checkpoint_mask_type_bytes=0)
GPT3 = ModelShape(num_layers=96, hidden_size=12288, num_attention_heads=96, vocab_size=51200,
                  max_position_embeddings=2048)   # GPT-3 175B, the paper's Table 3 model


@pytest.mark.parametrize("s,b,t", [(2048, 1, 1), (2048, 1, 8), (1024, 4, 4), (512, 2, 2)])
def test_a_layer_is_korthikanti_34_plus_5as_over_h(s, b, t):
    h, a = GPT3.hidden_size, GPT3.num_attention_heads
    one = layer_activation_bytes(GPT3, b, s, 1, PAPER)
    assert sum(one.values()) == s * b * h * 34 + 5 * a * s * s * b
    tp = sum(layer_activation_bytes(GPT3, b, s, 1, PAPER, parallel=Parallel(tensor=t)).values())
    assert tp * t == s * b * h * (10 * t + 24) + 5 * a * s * s * b
    sp = sum(layer_activation_bytes(GPT3, b, s, 1, PAPER,
                                    parallel=Parallel(tensor=t, sequence_parallel=True)).values())
    assert sp * t == s * b * h * 34 + 5 * a * s * s * b
    selective = sum(layer_activation_bytes(
        GPT3, b, s, 1, PAPER, "selective", parallel=Parallel(tensor=t, sequence_parallel=True)
    ).values())
    assert selective * t == 34 * s * b * h


def test_full_recompute_keeps_2sbh_per_layer():
    s, b, h = 2048, 1, GPT3.hidden_size
    terms = activation_breakdown(GPT3, b, s, PAPER, Recompute("full"), first_stage=False,
                                 last_stage=False)
    # and Megatron's one causal mask, an input every stage shares
    assert terms == {"checkpoint_input": 2 * s * b * h * GPT3.num_layers,
                     "shared_attention_mask": s * s}


def test_flash_attention_keeps_no_s_squared_term():
    small = layer_activation_bytes(GPT3, 1, 1024, 1, ActivationSettings(flash_attention=True))
    large = layer_activation_bytes(GPT3, 1, 2048, 1, ActivationSettings(flash_attention=True))
    assert all(large[name] == 2 * small[name] for name in small)  # linear in s


def test_each_term_is_declared_once_with_its_text():
    assert len(ACTIVATIONS) == len(set(ACTIVATIONS))
    assert all(spec.bytes_text and spec.title for spec in ACTIVATIONS.values())


# ---- model state --------------------------------------------------------------------------

def test_zero_paper_figure_1():
    psi, n = 7_500_000_000, 64
    fp16_adam = dict(parameter_bytes=2, gradient_bytes=2, optimizer="adam")
    published = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, gigabytes in published.items():
        state = model_state(RankParameters(psi, 0), StateSettings(**fp16_adam, zero_stage=stage), n)
        assert round(state.total / 1e9, 1) == gigabytes
    assert model_state(RankParameters(psi, 0), StateSettings(**fp16_adam)).total == 16 * psi


@pytest.mark.parametrize("dp", [1, 8, 64])
def test_megatron_lm_theoretical_bytes_per_parameter(dp):
    psi = 1_000_000 * 64
    plain = model_state(RankParameters(psi, 0), StateSettings(2, 4), dp)
    assert plain.total == 18 * psi
    distributed = model_state(RankParameters(psi, 0), StateSettings(2, 4, zero_stage=1), dp)
    assert distributed.total == 6 * psi + 12 * psi // dp


SHAPES = [
    ModelShape(num_layers=4, hidden_size=64, num_attention_heads=4, vocab_size=256,
               max_position_embeddings=32),
    ModelShape(num_layers=4, hidden_size=64, num_attention_heads=8, num_query_groups=2,
               vocab_size=256, glu_activation="swiglu", ffn_hidden_size=96,
               position_embedding="rotary", normalization="rmsnorm", tie_embeddings=False,
               add_bias_linear=False),
    ModelShape(num_layers=4, hidden_size=64, num_attention_heads=4, vocab_size=256,
               max_position_embeddings=32, num_experts=4, moe_topk=2, expert_interval=2),
]


@pytest.mark.parametrize("model", SHAPES)
def test_one_rank_holds_the_whole_model(model):
    assert rank_parameters(model, range(model.num_layers), True, True).total == \
        parameter_count(model).total


def test_tensor_parallel_ranks_split_all_but_the_replicated_parameters():
    model, t = SHAPES[0], 4
    h, L = model.hidden_size, model.num_layers
    # replicated on every TP rank: per layer two LayerNorms (2h each) and the two row-parallel
    # biases (h each); the learned positions (32·h); the final LayerNorm (2h)
    replicated = L * (2 * 2 * h + 2 * h) + 32 * h + 2 * h
    rank = rank_parameters(model, range(L), True, True, tensor_parallel=t).total
    assert t * rank - (t - 1) * replicated == parameter_count(model).total


def test_pipeline_stages_sum_to_the_model_plus_the_tied_copy():
    model, p = SHAPES[0], 2
    stages = [rank_parameters(model, range(2 * i, 2 * i + 2), i == 0, i == p - 1,
                              pipeline_parallel=p).total for i in range(p)]
    tied_copy = model.vocab_size * model.hidden_size
    assert sum(stages) == parameter_count(model).total + tied_copy


def test_expert_parallel_divides_the_experts():
    model = SHAPES[2]
    whole = rank_parameters(model, range(4), True, True)
    halved = rank_parameters(model, range(4), True, True, expert_parallel=2)
    assert halved.dense == whole.dense and 2 * halved.expert == whole.expert
    with pytest.raises(UsageError, match="--expert-model-parallel-size"):
        rank_parameters(model, range(4), True, True, expert_parallel=3)


# ---- the schedule ----------------------------------------------------------------------------

def test_one_f_one_b_stage_i_holds_p_minus_i():
    assert [in_flight_chunks(i, 4, 8) for i in range(4)] == [4, 3, 2, 1]
    assert [in_flight_chunks(i, 4, 2) for i in range(4)] == [2, 2, 2, 1]


@pytest.mark.parametrize("p,v", [(4, 2), (8, 3), (2, 4)])
def test_interleaving_penalty_on_the_first_stage(p, v):
    # Korthikanti et al. §4.2.3 (Megatron-LM's interleaved_schedule_memory_penalty):
    # the first stage holds 1 + (p − 1)/(p·v) times the activations of p micro-batches
    chunks = in_flight_chunks(0, p, 64, v)
    # in units of a micro-batch's activations of the whole stage (v chunks):
    # chunks / v == p·(1 + (p − 1)/(p·v))  <=>  chunks == p·v + p − 1
    assert chunks == p * v + p - 1


def test_peak_is_on_the_first_stage_and_recompute_frees_memory():
    model = SHAPES[0]
    run = RunShape(seq_length=32, micro_batch_size=2, pipeline_model_parallel_size=2,
                   world_size=2, global_batch_size=16, dtype="bf16")
    memory = rank_memory(model, run, ActivationSettings(), StateSettings())
    assert memory.peak_stage.stage == 0 and [s.in_flight for s in memory.stages] == [2, 1]
    full = rank_memory(model, RunShape(**{**run.__dict__, "recompute": Recompute("full")}),
                       ActivationSettings(), StateSettings())
    assert full.stages[0].activations < memory.stages[0].activations
    assert full.stages[0].recompute_working > 0


def test_docs_table_is_the_registry():
    from pathlib import Path

    from megatron_flops.activations import markdown_table
    text = (Path(__file__).resolve().parents[2] / "docs" / "memory.md").read_text(encoding="utf-8")
    assert markdown_table() in text
