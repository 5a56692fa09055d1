"""Activation memory proven like FLOPs: the bytes the reference GPT saves for backward,
attributed per module with ``saved_tensors_hooks`` (each storage once), equal the declared
per-term formulas exactly — per module and in total — for no/selective/full/block recompute,
dropout on and off, fp32 and bf16, GeLU and GLU, MHA, GQA and MQA, LayerNorm and RMSNorm, MoE.
"""

import pytest

torch = pytest.importorskip("torch")

from megatron_flops.activations import ActivationSettings, activation_breakdown  # noqa: E402
from megatron_flops.errors import UsageError  # noqa: E402
from megatron_flops.reference.saved import measure_reference, verify_memory  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

BASE = dict(num_layers=3, hidden_size=32, num_attention_heads=4, vocab_size=64,
            max_position_embeddings=16)
CASES = {
    "dense": ({}, Recompute(), 0.0, torch.float32),
    "dense-dropout": ({}, Recompute(), 0.1, torch.float32),
    "selective-dropout": ({}, Recompute("selective"), 0.1, torch.float32),
    "full": ({}, Recompute("full"), 0.1, torch.float32),
    "full-chunks-of-2": ({}, Recompute("full", num_layers=2), 0.0, torch.float32),
    "block-bf16": ({}, Recompute("full", "block", num_layers=2), 0.1, torch.bfloat16),
    "gqa-glu-bf16": (dict(num_query_groups=2, glu_activation="swiglu"), Recompute(), 0.1,
                     torch.bfloat16),
    "gqa-selective-bf16": (dict(num_query_groups=2), Recompute("selective"), 0.0, torch.bfloat16),
    "mqa-rmsnorm-selective": (dict(num_query_groups=1, normalization="rmsnorm"),
                              Recompute("selective"), 0.1, torch.float32),
    "moe": (dict(num_experts=4, moe_topk=2, expert_interval=2), Recompute(), 0.1, torch.float32),
    "moe-glu-selective-bf16": (dict(num_experts=4, moe_topk=2, expert_interval=1,
                                    glu_activation="geglu"), Recompute("selective"), 0.1,
                               torch.bfloat16),
    "moe-full": (dict(num_experts=3, moe_topk=1, expert_interval=1), Recompute("full"), 0.0,
                 torch.float32),
    "untied-no-positions-embedding-norm": (dict(embedding_layernorm=True, tie_embeddings=False,
                                                position_embedding="none"), Recompute(), 0.1,
                                           torch.bfloat16),
}


@pytest.mark.parametrize("case", CASES)
def test_saved_bytes_equal_the_formulas(case):
    extra, recompute, dropout, dtype = CASES[case]
    model = ModelShape(**{**BASE, **extra})
    rows = verify_memory(model, seq_length=8, micro_batch_size=2, recompute=recompute,
                         dropout=dropout, dtype=dtype)
    wrong = [row for row in rows if not row.matches]
    assert not wrong, wrong
    assert sum(row.measured for row in rows) == sum(row.formula for row in rows) > 0


def test_recompute_frees_what_the_formulas_say():
    model = ModelShape(**BASE)
    sizes = {name: measure_reference(model, 8, 2, recompute, 0.1).total
             for name, recompute in (("none", Recompute()), ("selective", Recompute("selective")),
                                     ("full", Recompute("full")))}
    assert sizes["full"] < sizes["selective"] < sizes["none"]
    settings = ActivationSettings.for_reference(4, True)
    assert sizes["full"] == sum(activation_breakdown(model, 2, 8, settings,
                                                     Recompute("full")).values())


def test_a_batch_of_two_saves_what_two_samples_do_but_the_shared_rows():
    # the position ids and the per-layer causal mask do not grow with the batch
    model = ModelShape(**BASE)
    one, two = (measure_reference(model, 8, b).total for b in (1, 2))
    shared = 8 * 8 + BASE["num_layers"] * 8 * 8   # position ids (int64), s² bool mask per layer
    assert two - shared == 2 * (one - shared) - 4   # the loss's 4-byte weight total, once


def test_unmodelled_features_are_refused():
    model = ModelShape(**{**BASE, "position_embedding": "rotary"})
    with pytest.raises(UsageError, match="rotary"):
        verify_memory(model, 8)


def test_verify_memory_command(capsys):
    from megatron_flops.commands import main
    flags = ["verify", "--memory", "--num-layers", "2", "--hidden-size", "32",
             "--num-attention-heads", "4", "--seq-length", "8", "--max-position-embeddings", "8",
             "--vocab-size", "64", "--micro-batch-size", "2", "--bf16",
             "--recompute-granularity", "selective", "--framework", "bigscience"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "exact: every term matches" in out and "core_attention_inputs" in out
    assert main(flags + ["--json"]) == 0
    import json
    result = json.loads(capsys.readouterr().out)
    assert result["exact"] and result["measured_bytes"] == result["formula_bytes"] > 0


def test_verify_memory_says_a_mismatch(capsys, monkeypatch):
    from megatron_flops import activations
    from megatron_flops.commands import main
    spec = activations.ACTIVATIONS["mlp_down_input"]
    monkeypatch.setitem(activations.ACTIVATIONS, "mlp_down_input", spec.__class__(
        **{**spec.__dict__, "formula": lambda model, b, s, e, c: spec.formula(model, b, s, e, c) + 1}))
    assert main(["verify", "--memory", "--num-layers", "1", "--hidden-size", "32",
                 "--num-attention-heads", "4", "--seq-length", "8",
                 "--max-position-embeddings", "8", "--vocab-size", "64",
                 "--framework", "bigscience"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
