"""verify refuses, with the flag, the Megatron-Core features its reference GPT does not build
(their counts are proven against Megatron-Core's own model in tests/megatron_core)."""

import pytest

pytest.importorskip("torch")

from megatron_flops.shapes import ModelShape  # noqa: E402

BASE = dict(num_layers=3, hidden_size=64, num_attention_heads=4, vocab_size=128)


@pytest.mark.parametrize("fields, flag", [
    (dict(mtp_num_layers=1), "--mtp-num-layers"),
    (dict(multi_latent_attention=True), "--multi-latent-attention"),
    (dict(num_experts=4, moe_shared_expert_intermediate_size=8), "--moe-shared-expert-intermediate-size"),
    (dict(num_experts=4, moe_ffn_hidden_size=8), "--moe-ffn-hidden-size"),
    (dict(attention_output_gate=True), "--attention-output-gate"),
    (dict(num_experts=4, moe_latent_size=16), "--moe-latent-size"),
])
def test_verify_refuses_what_the_reference_gpt_does_not_build(fields, flag):
    from megatron_flops.reference.verify import check_buildable
    from megatron_flops.shapes import ShapeError

    with pytest.raises(ShapeError) as error:
        check_buildable(ModelShape(**{**BASE, **fields}))
    assert error.value.flag == flag
    check_buildable(ModelShape(**BASE, num_experts=4, moe_ffn_hidden_size=256))  # = f: built


def test_verify_builds_quick_geglu_and_counts_it_exactly():
    """--quick-geglu is a GLU with another elementwise gate: the reference GPT builds it, and
    FlopCounterMode on it equals the registry (the GEMMs of any GLU)."""
    from megatron_flops.reference.verify import check_buildable, verify

    model = ModelShape(**BASE, glu_activation="quick_geglu", ffn_hidden_size=96,
                       position_embedding="rotary")
    check_buildable(model)
    result = verify(model, seq_length=16, batch_size=2)
    assert result.exact, [(r.name, r.counted, r.analytic) for r in result.mismatches]
    assert result.counted_total == result.analytic_total > 0
    assert {r.name for r in result.rows} >= {"mlp_up", "mlp_gate", "mlp_down"}
