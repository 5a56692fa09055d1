"""The hook's per-pipeline-rank figures (issue 22): which stages this rank runs, and its share.

With a pipeline the ranks do not run equal FLOPs (the first holds the embedding, the last the
logits and loss, uneven and virtual splits move layers), so the even figure (the iteration's
FLOPs over all GPUs) is not the logging rank's own.  :class:`PipelineShare` is the rank's
FLOPs per GPU over the even figure, per iteration, from the run's real layout
(:func:`megatron_flops.megatron.stages.pipeline_layout`) at the run's ``--seq-length``: both
scale with the batch, so the ratio holds at every batch size of a ramp-up; under curriculum
learning (a shorter sequence) it is the full length's.  The logging rank's line gains
``pipeline rank``, ``rank model/hardware TFLOP/s per gpu`` and ``rank MFU/HFU (%)``; the
start summary lists every rank and the spread.
"""

import sys
from typing import List, Optional, Tuple

from ...pipeline import pipeline_report, stage_breakdowns
from ...report import format_percent, format_tflops
from ..stages import pipeline_layout

__all__ = ["PipelineShare", "pipeline_share", "this_pipeline_rank"]


def this_pipeline_rank(pipeline_parallel_size: int) -> int:
    """This process's pipeline rank from Megatron's parallel state (Megatron-Core's
    ``parallel_state``, or the forks' ``megatron.mpu``), once it is initialised; otherwise the
    last (where ``print_rank_last``, the logging rank, sits in both frameworks' rank order)."""
    for name in ("megatron.core.parallel_state", "megatron.mpu"):
        module = sys.modules.get(name)
        get_rank = getattr(module, "get_pipeline_model_parallel_rank", None)
        if get_rank is None:
            continue
        try:
            rank = get_rank()
        except Exception:  # noqa: BLE001 - not initialised: fall back
            continue
        if isinstance(rank, int) and 0 <= rank < pipeline_parallel_size:
            return rank
    return pipeline_parallel_size - 1


class PipelineShare:
    """This pipeline rank's FLOPs per GPU over the even share, and the whole pipeline's table."""

    __slots__ = ("rank", "model_ratio", "hardware_ratio", "report")

    def __init__(self, rank: int, model_ratio: float, hardware_ratio: float, report: dict):
        self.rank = rank
        self.model_ratio = model_ratio
        self.hardware_ratio = hardware_ratio
        self.report = report

    def fields(self, report) -> List[Tuple[str, str]]:
        """The logging line's fields for this rank, from the interval's even figures."""
        fields = [("pipeline rank", str(self.rank)),
                  ("rank model TFLOP/s per gpu",
                   format_tflops(report.model_tflops_per_gpu * self.model_ratio)),
                  ("rank hardware TFLOP/s per gpu",
                   format_tflops(report.hardware_tflops_per_gpu * self.hardware_ratio))]
        for key, fraction, ratio in (("rank MFU (%)", report.mfu, self.model_ratio),
                                     ("rank HFU (%)", report.hfu, self.hardware_ratio)):
            if fraction is not None:
                fields.append((key, format_percent(fraction * ratio, unit="")))
        return fields

    def summary_lines(self) -> List[str]:
        """The start summary's per-rank lines (no time yet: shares of the even figure)."""
        p = self.report
        lines = [f"per pipeline rank ({p['source']}; {p['gpus_per_rank']} GPUs per rank): "
                 "FLOPs per GPU as a share of the even split"]
        stages = p["stages"]
        for r in p["ranks"]:
            labels = [stages[index]["label"] for index in r["stages"]]
            lines.append(f"  rank {r['rank']}: {', '.join(labels)}: "
                         f"{r['share']['model']:.3f} model, {r['share']['hardware']:.3f} hardware")
        spread = p["spread"]
        lines.append(f"  busiest rank {p['busiest_rank']}"
                     + ("" if spread is None else
                        f": {100 * (spread - 1):.1f}% more hardware FLOPs per GPU than the least busy"))
        return lines


def pipeline_share(args, accounting, fork: Optional[str]) -> Optional[PipelineShare]:
    """This rank's share (None without a pipeline); raises what the layout cannot count."""
    model, run = accounting.model, accounting.run
    pp = run.pipeline_model_parallel_size
    if pp < 2:
        return None
    layout = pipeline_layout(args, model, pp, fork)
    breakdowns = stage_breakdowns(model, layout, run.seq_length, run.global_batch_size,
                                  run.recompute, accounting.causal)
    report = pipeline_report(layout, breakdowns, run.world_size)
    even_model = sum(b.model_flops for b in breakdowns) / run.world_size
    even_hardware = sum(b.hardware_flops for b in breakdowns) / run.world_size
    for r in report["ranks"]:
        r["share"] = {"model": r["flops_per_gpu"]["model"] / even_model,
                      "hardware": r["flops_per_gpu"]["hardware"] / even_hardware}
    rank = this_pipeline_rank(pp)
    mine = report["ranks"][rank]["share"]
    return PipelineShare(rank, mine["model"], mine["hardware"], report)
