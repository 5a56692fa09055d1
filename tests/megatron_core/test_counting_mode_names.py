"""The counting mode's Megatron-Core name table (``module_names.MEGATRON_CORE``, the
Megatron-LM strategy's) on Megatron-Core's real GPTModel: ``--count-flops --strict`` passes
per component and phase on correct models and names the component on a wrong one.

The same models as ``test_dense_gpt.py`` / ``test_megatron_core_features.py`` (whose own
per-module attribution is the ground truth there); here the counting mode's machinery —
global module hooks, names matched by suffix, fused units split by output columns — must
reach the same verdict with nothing unattributed.
"""

import contextlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import mcore_counting  # noqa: E402
import torch  # noqa: E402

from megatron_flops.megatron.counting import count_step  # noqa: E402
from megatron_flops.megatron.module_names import MEGATRON_CORE  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

SEQ, BATCH = 16, 2
BASE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128,
            add_bias_linear=False)
SWIGLU = dict(glu_activation="swiglu", ffn_hidden_size=96, normalization="rmsnorm")
MOE = dict(num_experts=4, moe_ffn_hidden_size=40)
MLA = dict(multi_latent_attention=True, q_lora_rank=32, kv_lora_rank=24, qk_head_dim=16,
           qk_pos_emb_head_dim=8, v_head_dim=12, position_embedding="rotary")

CASES = {
    "base (gelu, bias)": (dict(add_bias_linear=True), None),
    "swiglu": (SWIGLU, None),
    "gqa 2 groups, untied": (dict(num_query_groups=2, tie_embeddings=False), None),
    "selective recompute": (dict(), Recompute("selective")),
    "full uniform recompute": (dict(), Recompute("full", "uniform", 1)),
    "moe top-1": (dict(**MOE, moe_topk=1), None),
    "moe top-2, swiglu, shared experts": (
        dict(**MOE, **SWIGLU, moe_topk=2, moe_shared_expert_intermediate_size=56), None),
    "mla with q-lora": (dict(**SWIGLU, **MLA), None),
    "mla without q-lora": (dict(MLA, q_lora_rank=None), None),
    "mtp 2 layers (output layer split 1:2)": (dict(mtp_num_layers=2, vocab_size=125), None),
    "mtp after an moe last layer": (dict(**MOE, moe_topk=2, mtp_num_layers=1), None),
    # issue 20 item 2: the gate's columns in linear_qkv, latent MoE's projections, the
    # shared-expert gate (SharedExpertMLP's own F.linear), quick-GeGLU
    "attention output gate, gqa": (dict(attention_output_gate=True, num_query_groups=2), None),
    "latent moe, shared experts with gate, quick-geglu": (
        dict(**MOE, moe_topk=2, moe_latent_size=24, moe_shared_expert_intermediate_size=48,
             moe_shared_expert_gate=True, glu_activation="quick_geglu"), None),
}


def counted(model: ModelShape, recompute: Recompute, break_module=None):
    with (mcore_counting.latent_projection_stand_in() if model.moe_latent_size is not None
          else contextlib.nullcontext()):
        gpt = mcore_counting.build_gpt(model, recompute, max_sequence_length=SEQ)
    if break_module is not None:
        break_module(gpt)
    inputs = mcore_counting.training_inputs(BATCH, SEQ, model.vocab_size)
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper
    MTPLossLoggingHelper.tracker.clear()

    def step():
        gpt(*inputs[:3], labels=inputs[3]).float().sum().backward()

    result, _ = count_step(step, model, MEGATRON_CORE, SEQ, BATCH, recompute)
    return result


@pytest.mark.parametrize("case", sorted(CASES))
def test_strict_passes_on_megatron_core_models(megatron_core, case):
    fields, recompute = CASES[case]
    model = ModelShape(**{**BASE, **fields})
    result = counted(model, recompute or Recompute())
    assert result.unattributed == 0, "\n".join(result.lines())
    assert result.passes(0.0), "\n".join(result.lines())
    assert result.counted_total == result.flop_counter_total == result.formula_total


def test_an_extra_matmul_in_a_layer_is_named(megatron_core):
    """A wrong model: one more [T × h]·[h × h] matmul inside layer 0's linear_proj.  --strict
    fails and names attention_output, in the forward and the backward phase, by exactly that
    matmul's 2·T·h² (forward) and 4·T·h² (backward: two gradients)."""
    model = ModelShape(**BASE)
    h, tokens = model.hidden_size, SEQ * BATCH

    def add_matmul(gpt):
        proj = gpt.decoder.layers[0].self_attention.linear_proj
        extra = torch.nn.Parameter(torch.eye(h))
        forward = proj.forward

        def wrong(*args, **kwargs):
            out, bias = forward(*args, **kwargs)
            return out @ extra, bias

        proj.forward = wrong

    result = counted(model, Recompute(), add_matmul)
    assert not result.passes(0.0)
    assert [row.name for row in result.mismatches()] == ["attention_output"]
    row = result["attention_output"]
    assert row.counted["forward"] - row.analytic["forward"] == 2 * tokens * h * h
    assert row.counted["backward"] - row.analytic["backward"] == 4 * tokens * h * h
    assert any(line.startswith("MISMATCH attention_output") for line in result.lines())
