"""Activation memory proven on Megatron-Core's GPTModel (local spec, CPU, real tensors): the
bytes one micro-batch saves for backward, attributed per module with ``saved_tensors_hooks``
(each storage once, parameters excluded), equal the activation formulas with Megatron's
conventions (one shared causal mask, the vocabulary-parallel loss's target mask) and a CPU's
(masks and statistics in the activation dtype) — per module group and in total.

Megatron-Core's recompute checkpoints (``tensor_parallel.checkpoint``, reentrant) save their
inputs with ``save_for_backward``, so the hooks see them, filed under the module that called
the checkpoint (``self_attention`` for selective, ``decoder`` for full).
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import mcore_counting  # noqa: E402

from megatron_flops.activations import ActivationSettings, activation_breakdown  # noqa: E402
from megatron_flops.reference.saved import compare_saved, saved_bytes  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

# Megatron-Core module (``decoder.layers.<i>.`` taken off) -> the terms it keeps
MCORE_TERMS = {
    "embedding.word_embeddings": ("embedding",), "embedding.position_embeddings": ("embedding",),
    "embedding.embedding_dropout": ("embedding",), "embedding": ("embedding",),
    "input_layernorm": ("norm_inputs",), "pre_mlp_layernorm": ("norm_inputs",),
    "self_attention.linear_qkv": ("qkv_input",),
    # unfused core attention: baddbmm's Q and K, bmm's V and probabilities
    "self_attention.core_attention": ("query_key", "value", "attention_probs"),
    "self_attention.core_attention.scale_mask_softmax": ("attention_softmax",
                                                         "shared_attention_mask"),
    "self_attention.core_attention.attention_dropout": ("attention_dropout_mask",),
    # selective recompute: the checkpoint of the core keeps Q, K, V and the mask
    "self_attention": ("core_attention_inputs", "shared_attention_mask"),
    "self_attention.linear_proj": ("attention_output_input",),
    "layer": ("hidden_dropout_masks",),
    "mlp.linear_fc1": ("mlp_input",), "mlp": ("mlp_activation",),
    "mlp.linear_fc2": ("mlp_down_input",),
    # full recompute: the block's checkpoint keeps each chunk's input and the mask
    "decoder": ("checkpoint_input", "shared_attention_mask"),
    "decoder.final_layernorm": ("final_norm",), "output_layer": ("logits_input",),
    "model": ("loss",),
}


def mcore_kind(name: str) -> str:
    if name == "":
        return "model"    # GPTModel.forward itself: the loss
    parts = name.split(".")
    if parts[:2] == ["decoder", "layers"]:
        rest = ".".join(parts[3:])
        return rest or "layer"
    return name


BASE = dict(num_layers=3, hidden_size=32, num_attention_heads=4, vocab_size=64,
            max_position_embeddings=8)
CASES = {
    "dense": ({}, Recompute(), 0.0, torch.float32),
    "dense-dropout": ({}, Recompute(), 0.1, torch.float32),
    "gqa-dropout": (dict(num_query_groups=2), Recompute(), 0.1, torch.float32),
    "mqa": (dict(num_query_groups=1), Recompute(), 0.0, torch.float32),
    "swiglu-no-bias": (dict(glu_activation="swiglu", ffn_hidden_size=48, add_bias_linear=False),
                       Recompute(), 0.1, torch.float32),
    "selective": ({}, Recompute("selective"), 0.1, torch.float32),
    "selective-gqa": (dict(num_query_groups=2), Recompute("selective"), 0.0, torch.float32),
    "full": ({}, Recompute("full", "uniform", 1), 0.1, torch.float32),
    "full-chunks-of-3": ({}, Recompute("full", "uniform", 3), 0.0, torch.float32),
    "block-1": ({}, Recompute("full", "block", 1), 0.1, torch.float32),
    "untied": (dict(tie_embeddings=False), Recompute(), 0.0, torch.float32),
    "rmsnorm": (dict(normalization="rmsnorm"), Recompute(), 0.0, torch.float32),
}


def measure(model, recompute, dropout, dtype, seq=8, batch=2):
    gpt = mcore_counting.build_gpt(model, recompute, max_sequence_length=seq,
                                   hidden_dropout=dropout, attention_dropout=dropout,
                                   params_dtype=dtype)
    gpt.train()
    inputs = mcore_counting.training_inputs(batch, seq, model.vocab_size)
    with saved_bytes(gpt) as saved:
        loss = gpt(*inputs[:3], labels=inputs[3])
    saved.freeze()   # while the loss keeps the graph alive
    del loss
    return saved


@pytest.mark.parametrize("case", CASES)
def test_megatron_core_saves_what_the_formulas_say(case, megatron_core):
    extra, recompute, dropout, dtype = CASES[case]
    model = ModelShape(**{**BASE, **extra})
    saved = measure(model, recompute, dropout, dtype)
    beta = torch.empty((), dtype=dtype).element_size()
    # Megatron's shared mask, target mask and selective mask-type tensor; its unfused GLU
    # (bias_activation_fusion off) keeps act(gate) and up + glu_linear_offset: two f-wide
    settings = ActivationSettings.for_cpu(beta, dropout > 0, glu_kept_widths=2)
    formula = activation_breakdown(model, 2, 8, settings, recompute)
    rows = compare_saved(saved.by_module, formula, MCORE_TERMS, mcore_kind)
    wrong = [row for row in rows if not row.matches]
    assert not wrong, wrong
    assert saved.total == sum(formula.values())


# ---- model state: what Megatron-Core's DistributedDataParallel allocates ----------------------

STATE_CASES = {
    "dense": {},
    "untied-gqa-swiglu": dict(tie_embeddings=False, num_query_groups=2, glu_activation="swiglu",
                              ffn_hidden_size=48, add_bias_linear=False),
    # Megatron-Core 0.16.1's router carries a bias of E with --add-bias-linear (on by default),
    # which params.py (a bias-free router, as the forks' DeepSpeed gate) does not count: the
    # MoE case is built without linear biases
    "moe": dict(num_experts=4, moe_topk=2, expert_interval=1, add_bias_linear=False),
}


@pytest.mark.parametrize("case", STATE_CASES)
def test_parameters_and_gradient_buffers_are_megatron_cores(case, megatron_core):
    """bf16 parameters, gradients reduced in fp32 (Megatron-LM's bf16 default): Megatron-Core's
    DDP grad buffers hold exactly our gradient bytes (no distributed optimizer: no padding), its
    parameters our parameter bytes, per dense and expert parameter.  (Megatron-Core 0.16.1's
    DistributedOptimizer is not built here: its __init__ creates ``torch.tensor([1.0],
    device='cuda')``, optimizer.py line 485.)"""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from megatron_flops.model_state import StateSettings, model_state, rank_parameters

    model = ModelShape(**{**BASE, **STATE_CASES[case]})
    gpt = mcore_counting.build_gpt(model, Recompute(), max_sequence_length=8,
                                   params_dtype=torch.bfloat16, bf16=True)
    gpt.to(torch.bfloat16)   # as Megatron's Float16Module does (norms, positions included)
    ddp = DistributedDataParallel(gpt.config, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=False), gpt)
    ours = rank_parameters(model, range(model.num_layers), True, True)
    state = model_state(ours, StateSettings(parameter_bytes=2, gradient_bytes=4))
    buffers = list(ddp.buffers) + list(ddp.expert_parallel_buffers)
    assert all(b.grad_data.dtype == torch.float32 for b in buffers)
    assert sum(b.grad_data.numel() * 4 for b in buffers) == state.gradients
    assert sum(p.numel() * p.element_size() for p in gpt.parameters()) == state.parameters
