"""The pipeline layouts are the frameworks' own: held to Megatron-Core's and DeepSpeed's code.

- Megatron's split: ``megatron.core.transformer.transformer_block.get_num_layers_to_build`` and
  ``transformer_layer.get_transformer_layer_offset`` (megatron-core 0.16.1, installed) called
  for every (pipeline rank, virtual stage) of many configurations: our stages must hold the
  same number of layers starting at the same offset.
- DeepSpeed's ``PipelineModule._partition_layers`` (deepspeed 0.19.8, installed) run on the
  fork's ``GPTModelPipe`` spec list (dummy layer classes and functions of the same names): our
  stages must have its boundaries; and its ``partition_balanced`` / ``partition_uniform`` on
  random weights equal ours.
"""

import random
from types import SimpleNamespace

import pytest

from megatron_flops.errors import ShapeError
from megatron_flops.pipeline import (deepspeed_layout, deepspeed_pipe_specs, megatron_layout,
                                     partition_balanced, partition_uniform)


def megatron_core_stages(num_layers, pp, first=None, last=None, embedding=False, loss=False,
                         vp=None):
    """[(rank, layers to build, offset)] in stage order, from Megatron-Core's functions."""
    block = pytest.importorskip("megatron.core.transformer.transformer_block")
    layer = pytest.importorskip("megatron.core.transformer.transformer_layer")
    config = SimpleNamespace(
        pipeline_model_parallel_layout=None, num_layers=num_layers,
        pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vp,
        num_layers_in_first_pipeline_stage=first, num_layers_in_last_pipeline_stage=last,
        account_for_embedding_in_pipeline_split=embedding,
        account_for_loss_in_pipeline_split=loss)
    out = []
    for v in range(vp or 1):
        for rank in range(pp):
            stage = v if vp else None
            out.append((rank, block.get_num_layers_to_build(config, vp_stage=stage, pp_rank=rank),
                        layer.get_transformer_layer_offset(config, vp_stage=stage, pp_rank=rank)))
    return out


CONFIGS = [
    dict(num_layers=8, pp=4), dict(num_layers=8, pp=2, vp=2), dict(num_layers=8, pp=2, vp=4),
    dict(num_layers=12, pp=4, first=1, last=5), dict(num_layers=10, pp=3, first=2),
    dict(num_layers=10, pp=3, last=2), dict(num_layers=9, pp=2, first=4, last=5),
    dict(num_layers=14, pp=3, first=4, last=2, vp=2), dict(num_layers=10, pp=4, embedding=True,
                                                             loss=True),
    dict(num_layers=11, pp=4, embedding=True), dict(num_layers=11, pp=3, loss=True),
    dict(num_layers=14, pp=4, embedding=True, loss=True, vp=2),
    dict(num_layers=7, pp=2, embedding=True, vp=2), dict(num_layers=6, pp=1),
]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_megatron_split_is_megatron_cores(config):
    expected = megatron_core_stages(**config)
    layout = megatron_layout(config["num_layers"], config["pp"],
                             first_stage_layers=config.get("first"),
                             last_stage_layers=config.get("last"),
                             embedding_in_split=config.get("embedding", False),
                             loss_in_split=config.get("loss", False),
                             virtual_stages=config.get("vp"))
    ours = [(s.rank, len(s.layers), s.layers.start) for s in layout.stages]
    if config["pp"] == 1:   # Megatron-Core offsets nothing without a pipeline
        expected = [(0, config["num_layers"], 0)]
    assert ours == expected


def test_a_rank_whose_layers_do_not_split_into_virtual_stages_is_refused():
    with pytest.raises(ShapeError, match="virtual stages") as error:
        megatron_layout(12, 4, first_stage_layers=1, last_stage_layers=5, virtual_stages=2)
    assert error.value.flag == "--num-layers-per-virtual-pipeline-stage"


def deepspeed_partition(specs, stages, method):
    """DeepSpeed's own _partition_layers on ``specs`` (names): its parts."""
    pytest.importorskip("deepspeed")
    import torch.nn as nn
    from deepspeed.runtime.pipe.module import LayerSpec, PipelineModule

    classes = {}

    def spec(name):
        if name[0].isupper():   # a layer class, built through a LayerSpec
            cls = classes.setdefault(name, type(name, (nn.Module,), {}))
            return LayerSpec(cls)
        def function(x):
            return x
        function.__name__ = name
        return function

    recorded = {}
    module = SimpleNamespace(num_stages=stages, global_rank=1, _layer_specs=[spec(n) for n in specs],
                             _topo=SimpleNamespace(get_coord=lambda rank: SimpleNamespace(pipe=0)),
                             _set_bounds=lambda start, stop: recorded.update(start=start, stop=stop))
    module._find_layer_type = lambda name: PipelineModule._find_layer_type(module, name)
    module._count_layer_params = lambda: PipelineModule._count_layer_params(module)
    PipelineModule._partition_layers(module, method)
    return list(module.parts)


@pytest.mark.parametrize("fork,kwargs", [
    ("bigscience", dict(half_precision=True)), ("bigscience", dict(half_precision=False)),
    ("microsoft", dict(half_precision=True)), ("microsoft", dict(half_precision=True, moe=True)),
    ("microsoft", dict(half_precision=False, untied=True, normalization="rmsnorm")),
])
@pytest.mark.parametrize("method", ["type:transformer", "type:transformer|embedding", "uniform"])
def test_deepspeed_partition_is_deepspeeds(fork, kwargs, method):
    rng = random.Random(f"{fork}{kwargs}{method}")
    cases = [(70, 12), (1, 4), (3, 5), (4, 2), (5, 4), (1, 5), (7, 3)] + [(rng.randint(1, 40), rng.randint(1, 12))
                                                  for _ in range(6)]
    for layers, stages in cases:
        specs = deepspeed_pipe_specs(fork, layers, **kwargs)
        parts = deepspeed_partition(specs, stages, method)
        layout = deepspeed_layout(specs, stages, method)
        transformer = [i for i, name in enumerate(specs) if name == "ParallelTransformerLayerPipe"]
        for stage in layout.stages:
            start, stop = parts[stage.index], parts[stage.index + 1]
            held = [transformer.index(i) for i in transformer if start <= i < stop]
            assert list(stage.layers) == held, (layers, stages, stage)
            assert stage.embedding == (start <= specs.index("EmbeddingPipe") < stop)
            output = max(i for i, n in enumerate(specs) if n in ("EmbeddingPipe", "LMHeadPipe"))
            assert stage.output_layer == (start <= output < stop)


def test_partition_functions_equal_deepspeeds_on_random_weights():
    utils = pytest.importorskip("deepspeed.runtime.utils")
    rng = random.Random(22)
    for _ in range(400):
        n, parts = rng.randint(1, 40), rng.randint(1, 12)
        weights = [rng.choice([0, 0, 1, 1, 2, 7, 1000]) for _ in range(n)]
        assert partition_balanced(weights, parts) == list(utils.partition_balanced(weights, parts))
        assert partition_uniform(n, parts) == list(utils.partition_uniform(n, parts))
