"""Megatron-Core's GPTModel built stage by stage: each stage's counted FLOPs = its count (issue 22).

Each pipeline stage is built as Megatron-LM builds it on its rank: a ``GPTModel`` with the
stage's transformer layers and ``pre_process`` (the embedding) / ``post_process`` (final norm,
output layer, loss) where the stage holds them, real tensors on CPU.  The stages run as a
pipeline runs them: forward in order, the activation handed over detached
(``set_input_tensor``), backward last stage first with the gradient the next stage sent back,
each under its own FlopCounterMode (recompute counted in full).  Its total must equal
:func:`stage_breakdowns`' hardware FLOPs for the stage, exactly.  Block recompute is per real
stage in Megatron-Core (each rank's block recomputes its own first layers), as our count says.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import mcore_counting  # noqa: E402

from megatron_flops.pipeline import megatron_layout, stage_breakdowns  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

SEQ, BATCH = 16, 2


def build_stage(model, recompute, layers, pre_process, post_process):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    kwargs = mcore_counting.transformer_config_kwargs(model, recompute)
    kwargs["num_layers"] = layers
    if recompute.granularity == "full":
        kwargs["recompute_num_layers"] = min(kwargs["recompute_num_layers"], layers)
    config = TransformerConfig(**kwargs)
    spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False,
                                      normalization=kwargs["normalization"])
    position = {"learned": "learned_absolute", "rotary": "rope"}[model.position_embedding]
    return GPTModel(config=config, transformer_layer_spec=spec, vocab_size=model.vocab_size,
                    max_sequence_length=SEQ, pre_process=pre_process, post_process=post_process,
                    share_embeddings_and_output_weights=model.tie_embeddings,
                    position_embedding_type=position)


def counted_per_stage(model, layout, recompute):
    torch.manual_seed(0)
    stages = [build_stage(model, recompute, len(s.layers), s.embedding, s.output_layer)
              for s in layout.stages]
    input_ids, position_ids, attention_mask, labels = mcore_counting.training_inputs(
        BATCH, SEQ, model.vocab_size)
    counted, received, outputs = [], [], []
    hidden = None
    with torch.utils.checkpoint.set_checkpoint_early_stop(False):
        for stage, gpt in zip(layout.stages, stages):
            x = None if hidden is None else hidden.detach().requires_grad_()
            if x is not None:
                gpt.set_input_tensor(x)
            with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
                hidden = gpt(input_ids, position_ids, attention_mask,
                             labels=labels if stage.output_layer else None)
                if stage.output_layer:
                    hidden = hidden.float().sum()
            counted.append(counter.get_total_flops())
            received.append(x)
            outputs.append(hidden)
        grad = None
        for index in reversed(range(len(stages))):
            with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
                torch.autograd.backward(outputs[index], grad)
            counted[index] += counter.get_total_flops()
            grad = None if received[index] is None else received[index].grad
    return counted


@pytest.mark.parametrize("shape", [
    dict(),
    dict(glu_activation="swiglu", ffn_hidden_size=96, add_bias_linear=False,
         normalization="rmsnorm", num_query_groups=2, position_embedding="rotary",
         tie_embeddings=False),
], ids=["gpt", "llama-like"])
@pytest.mark.parametrize("recompute", [Recompute(), Recompute("selective"), Recompute("full")],
                         ids=lambda r: r.label)
def test_uneven_stages_of_megatron_cores_gpt(megatron_core, shape, recompute):
    """5 layers on PP 3 with --decoder-first-pipeline-num-layers 1
    --decoder-last-pipeline-num-layers 2: stages of 1, 2 and 2 layers."""
    model = ModelShape(num_layers=5, hidden_size=64, num_attention_heads=4, vocab_size=128,
                       **shape)
    layout = megatron_layout(5, 3, first_stage_layers=1, last_stage_layers=2)
    expected = [b.hardware_flops for b in stage_breakdowns(model, layout, SEQ, BATCH, recompute)]
    assert counted_per_stage(model, layout, recompute) == expected


def test_block_recompute_is_per_real_stage(megatron_core):
    model = ModelShape(num_layers=6, hidden_size=64, num_attention_heads=4, vocab_size=128)
    layout = megatron_layout(6, 3, first_stage_layers=1, last_stage_layers=2)
    stages = tuple(len(s.layers) for s in layout.stages)
    recompute = Recompute("full", "block", 2, stages)
    expected = stage_breakdowns(model, layout, SEQ, BATCH, recompute)
    assert [b.recompute_flops > 0 for b in expected] == [True, True, True]
    assert counted_per_stage(model, layout, recompute) == [b.hardware_flops for b in expected]
