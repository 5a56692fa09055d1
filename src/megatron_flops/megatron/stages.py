"""The pipeline layout a Megatron ``args`` namespace (a run's, or a pasted command line's) builds.

Which framework rule places the layers:

- the forks' DeepSpeed pipeline model (``--deepspeed``, :func:`.args.deepspeed_pipeline`):
  DeepSpeed's ``PipelineModule`` partitions the fork's ``GPTModelPipe`` specs with
  ``type:transformer`` (both forks; bigscience's ``--pp-partition-method`` overrides it);
- ``--pipeline-model-parallel-layout`` (Megatron-LM): the layout itself;
- otherwise Megatron's own split: even, uneven first/last stages, embedding/loss in the split,
  virtual stages (``--num-layers-per-virtual-pipeline-stage``,
  ``--num-virtual-stages-per-pipeline-rank``).
"""

from typing import Optional

from ..errors import ShapeError
from ..pipeline import (PipelineLayout, deepspeed_layout, deepspeed_pipe_specs, megatron_layout,
                        pattern_layout)
from ..shapes import ModelShape
from . import features
from .args import deepspeed_pipeline
from .dialects import BIGSCIENCE, MICROSOFT

__all__ = ["pipeline_layout"]

# DeepSpeed's partition search is O(specs² × stages); its spec list is built whole
MAX_DEEPSPEED_LAYERS = 4096


def _virtual_stages(ns, num_layers: int, pp: int) -> Optional[int]:
    """Model chunks per pipeline rank, as Megatron-LM's ``validate_args`` derives them: the
    rank's layers (embedding/loss counted when in the split) over
    ``--num-layers-per-virtual-pipeline-stage``, or ``--num-virtual-stages-per-pipeline-rank``."""
    per_stage = getattr(ns, "num_layers_per_virtual_pipeline_stage", None)
    if per_stage is not None:
        total = num_layers + int(bool(getattr(ns, "account_for_embedding_in_pipeline_split",
                                              False))) \
            + int(bool(getattr(ns, "account_for_loss_in_pipeline_split", False)))
        return total // pp // per_stage or None
    return getattr(ns, "num_virtual_stages_per_pipeline_rank", None)


def pipeline_layout(ns, model: ModelShape, pipeline_parallel_size: int,
                    fork: Optional[str] = None) -> PipelineLayout:
    """The stages ``ns`` builds (see the module docstring); ``fork`` (a dialect name) picks
    the ``GPTModelPipe`` specs of the DeepSpeed pipeline model (bigscience when
    ``--pp-partition-method`` is given, else microsoft unless ``fork`` says bigscience).
    ShapeError (naming the flag) for what the framework refuses or is not counted yet."""
    pp = pipeline_parallel_size
    if deepspeed_pipeline(ns) and pp > 1:
        if model.num_layers > MAX_DEEPSPEED_LAYERS:
            raise ShapeError(f"DeepSpeed's partition of {model.num_layers} "
                             f"layers is not repeated here (at most {MAX_DEEPSPEED_LAYERS})",
                             "--num-layers")
        method = getattr(ns, "pp_partition_method", None)
        if method is not None or fork == BIGSCIENCE:
            fork = BIGSCIENCE
        else:
            fork = MICROSOFT
        half = bool(getattr(ns, "fp16", False) or getattr(ns, "bf16", False))
        specs = deepspeed_pipe_specs(fork, model.num_layers, half_precision=half,
                                     untied=not model.tie_embeddings, moe=model.is_moe,
                                     normalization=model.normalization)
        return deepspeed_layout(specs, pp, method or "type:transformer")
    layout = getattr(ns, "pipeline_model_parallel_layout", None)
    if layout:
        stages = features.pipeline_layout_stages(layout, model.num_layers, pp,
                                                 model.mtp_num_layers)
        return pattern_layout(stages, pp, model.num_layers, model.mtp_num_layers)
    per_stage = getattr(ns, "num_layers_per_virtual_pipeline_stage", None)
    return megatron_layout(
        model.num_layers, pp,
        first_stage_layers=getattr(ns, "decoder_first_pipeline_num_layers", None),
        last_stage_layers=getattr(ns, "decoder_last_pipeline_num_layers", None),
        embedding_in_split=bool(getattr(ns, "account_for_embedding_in_pipeline_split", False)),
        loss_in_split=bool(getattr(ns, "account_for_loss_in_pipeline_split", False)),
        virtual_stages=_virtual_stages(ns, model.num_layers, pp),
        mtp_num_layers=model.mtp_num_layers,
        virtual_flag=("--num-layers-per-virtual-pipeline-stage" if per_stage is not None
                      else "--num-virtual-stages-per-pipeline-rank"))
