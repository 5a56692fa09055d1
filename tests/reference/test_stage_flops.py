"""Each pipeline stage's count equals FlopCounterMode on that stage's modules (issue 22).

The reference GPT is cut into stages by the same assignment (:class:`PipelineLayout`) and run
the way a pipeline runs it: each stage's forward on the previous stage's output, detached
(the activation sent to the next rank), then each stage's backward, last stage first, from the
gradient the next stage sent back — every stage under its own FlopCounterMode (recompute
re-runs counted in full: ``set_checkpoint_early_stop(False)``).  Each stage's counted FLOPs
(forward, backward and recompute together) must equal :func:`stage_breakdowns`' hardware
FLOPs for that stage, exactly; the embedding's backward (an index-add, no matmul) counts 0 and
the tied output layer's weight gradient is counted on the last stage, where it is computed.
"""

import pytest

torch = pytest.importorskip("torch")

from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from megatron_flops.pipeline import (deepspeed_layout, deepspeed_pipe_specs,  # noqa: E402
                                     megatron_layout, stage_breakdowns)
from megatron_flops.reference.model import ReferenceGPT  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

SEQ, BATCH = 16, 2


def run_stage(gpt, stage, x, input_ids):
    """One stage's forward: the embedding if it holds it, its layers (checkpointed as the whole
    model's recompute says), the final norm, logits and loss if it holds the output layer."""
    if stage.embedding:
        x = gpt.word_embeddings(input_ids)
        if gpt.position_embeddings is not None:
            x = x + gpt.position_embeddings(torch.arange(input_ids.shape[1]))
        if gpt.embedding_norm is not None:
            x = gpt.embedding_norm(x)
        x = gpt.embedding_dropout(x)
    rotary, bias = gpt._positions(input_ids.shape[1], x.device, x.dtype)
    for i in stage.layers:
        if i in gpt.recomputed_layers:
            x = checkpoint(gpt._run_layers, x, [i], rotary, bias, use_reentrant=False)
        else:
            x = gpt.layers[i](x, rotary, bias)
    if stage.output_layer:
        logits = gpt.output_layer(gpt.final_norm(x))
        x = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                              input_ids.reshape(-1))
    return x


def counted_per_stage(gpt, layout, input_ids):
    """FLOPs FlopCounterMode counts on each stage (forward + recompute + backward)."""
    counted = [0] * len(layout.stages)
    inputs, outputs = [], []
    x = None
    with set_checkpoint_early_stop(False):
        for stage in layout.stages:                  # forward, stage by stage
            received = None if x is None else x.detach().requires_grad_()
            with FlopCounterMode(display=False) as counter:
                x = run_stage(gpt, stage, received, input_ids)
            counted[stage.index] += counter.get_total_flops()
            inputs.append(received)
            outputs.append(x)
        grad = None
        for stage in reversed(layout.stages):        # backward, last stage first
            with FlopCounterMode(display=False) as counter:
                torch.autograd.backward(outputs[stage.index], grad)
            counted[stage.index] += counter.get_total_flops()
            received = inputs[stage.index]
            grad = None if received is None else received.grad
    return counted


SHAPES = {
    "dense": dict(),
    "swiglu-gqa-untied": dict(glu_activation="swiglu", num_query_groups=2, tie_embeddings=False),
    "moe": dict(num_experts=(4, 4, 4), expert_interval=2, moe_topk=2),
}


def small(num_layers, **fields):
    return ModelShape(num_layers=num_layers, hidden_size=32, num_attention_heads=4,
                      vocab_size=128, max_position_embeddings=SEQ, **fields)


def assert_each_stage_counted(model, layout, recompute=Recompute()):
    torch.manual_seed(0)
    gpt = ReferenceGPT(model, SEQ, recompute, layout.pipeline_parallel_size)
    input_ids = torch.randint(0, model.vocab_size, (BATCH, SEQ))
    counted = counted_per_stage(gpt, layout, input_ids)
    expected = [b.hardware_flops for b in stage_breakdowns(model, layout, SEQ, BATCH, recompute)]
    assert counted == expected
    return counted


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("recompute", [Recompute(), Recompute("full"), Recompute("selective")],
                         ids=lambda r: r.label)
def test_an_uneven_megatron_split_counts_each_stage(shape, recompute):
    """6 layers on PP 3 with --decoder-first-pipeline-num-layers 1
    --decoder-last-pipeline-num-layers 1: stages of 1, 4 and 1 layers."""
    model = small(6, **SHAPES[shape])
    layout = megatron_layout(6, 3, first_stage_layers=1, last_stage_layers=1)
    counted = assert_each_stage_counted(model, layout, recompute)
    assert counted[1] > counted[0] and counted[1] > counted[2]


def test_uneven_block_recompute_counts_each_stage():
    layout = megatron_layout(6, 3, first_stage_layers=1, last_stage_layers=2)
    stages = tuple(len(s.layers) for s in layout.stages)
    assert stages == (1, 3, 2)
    assert_each_stage_counted(small(6), layout, Recompute("full", "block", 2, stages))


def test_virtual_stages_with_the_embedding_and_loss_in_the_split_count_each_stage():
    layout = megatron_layout(6, 2, embedding_in_split=True, loss_in_split=True, virtual_stages=2)
    assert [len(s.layers) for s in layout.stages] == [1, 2, 2, 1]
    assert_each_stage_counted(small(6), layout, Recompute("full"))


@pytest.mark.parametrize("layers,stages,method,labels", [
    (5, 4, "type:transformer|embedding", ["E 0", "1-2", "3-4", "L"]),
    (3, 5, "type:transformer|embedding", ["E", "0", "1", "2", "L"]),
    (1, 5, "type:transformer", ["E 0", "(empty)", "(empty)", "L", "(empty)"]),
    (7, 3, "uniform", ["E 0-1", "2-6", "L"]),
])
def test_a_deepspeed_partition_counts_each_stage(layers, stages, method, labels):
    """bigscience's partitions (BLOOM's 'type:transformer|embedding' among them) on small
    pipelines: stages with no layer, and the output layer off the last stage (DeepSpeed puts
    it where the balance falls), included; the layouts are DeepSpeed's own
    (tests/megatron/test_pipeline_rules.py runs its _partition_layers on these cases)."""
    specs = deepspeed_pipe_specs("bigscience", layers, half_precision=True)
    layout = deepspeed_layout(specs, stages, method)
    assert [s.label() for s in layout.stages] == labels
    assert_each_stage_counted(small(layers, position_embedding="alibi",
                                    embedding_layernorm=True), layout, Recompute("full"))
