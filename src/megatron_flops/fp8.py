"""FP8 training: which GEMMs run in FP8, and the peak an FP8 run should be measured against.

With ``--fp8-format {e4m3,hybrid}`` Megatron-Core runs the Transformer Engine linear layers
of every transformer layer in FP8: the Q/K/V and output projections and the MLP (or expert)
GEMMs, in forward, data gradient and — unless ``fp8_wgrad`` is off — weight gradient.  These
stay in BF16 (read in NVIDIA/Megatron-LM ``megatron/core/transformer/transformer_config.py``
and ``megatron/core/fp8_utils.py`` at d98e8a64):

- the core attention (QKᵀ and A·V), unless ``--fp8-dot-product-attention``;
- the logits (output layer), unless ``fp8_output_proj`` with the ``mxfp8`` recipe;
- the MoE router (a plain linear layer);
- every GEMM of the first ``--num-layers-at-start-in-bf16`` and last
  ``--num-layers-at-end-in-bf16`` layers (default 1 each) when ``--first-last-layers-bf16``.

``--fp8-recipe`` (``delayed`` default, ``tensorwise``, ``mxfp8``, ``blockwise``, ``custom``)
chooses the scaling, not which GEMMs run in FP8; ``hybrid`` vs ``e4m3`` chooses the gradient
format, not the rate.

FP4 (``--fp4-format e2m1``, Megatron-LM's only choice, with ``--fp4-recipe nvfp4``, its
default): the same Transformer Engine linear layers run in NVFP4 (``get_fp4_context`` in
``megatron/core/fp4_utils.py``, the same first/last BF16 layers), in forward, data and weight
gradient; the core attention, the logits and the router stay BF16 (there is no FP4 dot-product
attention or output projection).  Megatron-LM refuses FP4 and FP8 together.  The low-precision
peak is then the device's dense FP4 one.

A run's *mixed peak* is the rate it would reach if every GEMM ran at the dense peak of its own
precision: total FLOPs / Σ (FLOPs of component in precision p / peak of p), the FLOP-weighted
harmonic mean of the peaks.  MFU against it says how well the run used what it asked for;
MFU against the BF16 peak says how it compares with a BF16 run of the same model.
"""

from dataclasses import dataclass
from typing import Dict, Optional

from .components import ONCE, REGISTRY
from .errors import UsageError
from .flops import Breakdown
from .hardware import peak_tflops
from .shapes import ModelShape


@dataclass(frozen=True)
class Fp8Recipe:
    """Which GEMMs run in FP8 — or FP4 with ``precision="fp4"`` (see the module docstring)."""

    fp8_format: Optional[str] = None       # None: no FP8; "e4m3" or "hybrid"
    recipe: str = "delayed"
    bf16_layers_at_start: int = 0          # --first-last-layers-bf16 --num-layers-at-start-in-bf16
    bf16_layers_at_end: int = 0
    dot_product_attention: bool = False    # --fp8-dot-product-attention
    output_layer: bool = False             # fp8_output_proj (mxfp8 only)
    wgrad: bool = True                     # fp8_wgrad
    precision: str = "fp8"                 # "fp8", or "fp4" with --fp4-format e2m1

    def __post_init__(self) -> None:
        for flag, value in (("--num-layers-at-start-in-bf16", self.bf16_layers_at_start),
                            ("--num-layers-at-end-in-bf16", self.bf16_layers_at_end)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{flag} must be a non-negative integer, got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.fp8_format is not None

    @classmethod
    def from_args(cls, args) -> "Fp8Recipe":
        """From a Megatron-LM argparse namespace (``fp8`` holds ``--fp8-format``)."""
        fp8_format = getattr(args, "fp8", None) or getattr(args, "fp8_format", None)
        if fp8_format is not None and fp8_format not in ("e4m3", "hybrid"):
            raise UsageError(f"--fp8-format must be e4m3 or hybrid, got {fp8_format!r}")
        keep = bool(getattr(args, "first_last_layers_bf16", False))
        fp4_format = getattr(args, "fp4", None)
        if fp4_format is not None:
            if fp4_format != "e2m1":
                raise UsageError(f"--fp4-format must be e2m1 (Megatron-LM's only choice; NVFP4 "
                                 f"is --fp4-recipe nvfp4, its default), got {fp4_format!r}")
            if fp8_format is not None:
                raise UsageError("--fp4-format and --fp8-format cannot both be given "
                                 "(Megatron-LM refuses it)")
            return cls(
                fp8_format=fp4_format, precision="fp4",
                recipe=getattr(args, "fp4_recipe", None) or "nvfp4",
                bf16_layers_at_start=int(getattr(args, "num_layers_at_start_in_bf16", 1)) if keep else 0,
                bf16_layers_at_end=int(getattr(args, "num_layers_at_end_in_bf16", 1)) if keep else 0)
        recipe = getattr(args, "fp8_recipe", None) or "delayed"
        return cls(
            fp8_format=fp8_format,
            recipe=recipe,
            bf16_layers_at_start=int(getattr(args, "num_layers_at_start_in_bf16", 1)) if keep else 0,
            bf16_layers_at_end=int(getattr(args, "num_layers_at_end_in_bf16", 1)) if keep else 0,
            dot_product_attention=bool(getattr(args, "fp8_dot_product_attention", False)),
            output_layer=bool(getattr(args, "fp8_output_proj", False)) and recipe == "mxfp8",
            wgrad=bool(getattr(args, "fp8_wgrad", True)),
        )


# Components that are never Transformer Engine GEMMs, whatever the recipe: the router is a
# plain linear layer kept in higher precision.
ALWAYS_BF16 = ("moe_router",)
# issue 20 item 2: --moe-shared-expert-gate is SharedExpertMLP's own torch F.linear (no TE
# module); the attention gate's columns are in linear_qkv and latent MoE's projections are
# TELinear modules, FP8 like the layer's other linears
ALWAYS_BF16 += ("shared_expert_output_gate",)


def fp8_fraction(model: ModelShape, component: str, recipe: Fp8Recipe) -> float:
    """Share of ``component``'s forward FLOPs that run in FP8.

    Read from the component registry: where the component occurs (every layer, dense-MLP or
    MoE layers, once per model) and whether it is the core attention; each of its layers does
    the same work, so the share is the fraction of those layers outside the BF16 ones.  A
    component the registry does not know is counted BF16.
    """
    spec = REGISTRY.get(component)
    if not recipe.enabled or spec is None or component in ALWAYS_BF16:
        return 0.0
    if spec.occurs == ONCE:
        return 1.0 if (component == "logits" and recipe.output_layer) else 0.0
    if spec.attention_core and not recipe.dot_product_attention:
        return 0.0
    layers = _layers_carrying(model, spec, 0, model.num_layers)
    if not layers:
        return 0.0
    last_bf16 = model.num_layers - recipe.bf16_layers_at_end
    return _layers_carrying(model, spec, recipe.bf16_layers_at_start, last_bf16) / layers


def _layers_carrying(model: ModelShape, spec, start: int, stop: int) -> int:
    """How many of the layers ``start <= i < stop`` carry the component: counted, not
    enumerated, so that ``--num-layers 100000000`` costs what 10 layers do."""
    start, stop = max(start, 0), min(stop, model.num_layers)
    if stop <= start:
        return 0
    if model.moe_layer_freq is None:
        # layer i is an MoE slot when (i + 1) % expert_interval == 0: slots start//I .. stop//I - 1
        slots = model.num_experts[start // model.expert_interval:stop // model.expert_interval]
        moe = len(slots) - slots.count(1)  # a slot of 1 expert is a dense layer
    else:  # Megatron-LM's --moe-layer-freq: an explicit pattern, as long as the model is
        moe = sum(model.experts_in_layer(i) > 1 for i in range(start, stop))
    return (((stop - start - moe) if spec.in_layer(model, 1) else 0)
            + (moe if spec.in_layer(model, 2) else 0))


def fp8_flops(breakdown: Breakdown, model: ModelShape, recipe: Fp8Recipe,
              hardware: bool = False) -> Dict[str, float]:
    """``{"fp8": FLOPs, "bf16": FLOPs}`` of the iteration (model, or hardware with recompute).

    Forward and recompute of a GEMM run in its layer's precision; of the backward (2 × forward:
    data gradient + weight gradient), the weight-gradient half stays BF16 without ``wgrad``.
    """
    kept = recipe.bf16_layers_at_start + recipe.bf16_layers_at_end
    if recipe.enabled and kept > model.num_layers:
        raise UsageError(f"--num-layers-at-start-in-bf16 + --num-layers-at-end-in-bf16 ({kept}) "
                         f"must not exceed --num-layers ({model.num_layers})")
    totals = {"fp8": 0.0, "bf16": 0.0}
    for c in breakdown:
        share = fp8_fraction(model, c.name, recipe)
        passes = c.forward + (c.recompute + c.extra_backward if hardware else 0)
        weight_gradient = c.backward / 2 if c.weight_gradient is None else c.weight_gradient
        backward_fp8 = c.backward if recipe.wgrad else c.backward - weight_gradient
        fp8 = share * (passes + backward_fp8)
        total = passes + c.backward
        totals["fp8"] += fp8
        totals["bf16"] += total - fp8
    return totals


def mixed_peak_tflops(breakdown: Breakdown, model: ModelShape, recipe: Fp8Recipe,
                      bf16_tflops: float, fp8_tflops: float, hardware: bool = False) -> float:
    """The FLOP-weighted harmonic mean of the peaks: total / Σ(FLOPs_p / peak_p)."""
    if not (bf16_tflops > 0 and fp8_tflops > 0):
        raise ValueError("the BF16 and FP8 peaks must be positive to weigh them")
    split = fp8_flops(breakdown, model, recipe, hardware)
    total = split["fp8"] + split["bf16"]
    return total / (split["fp8"] / fp8_tflops + split["bf16"] / bf16_tflops)


def fp8_report(breakdown: Breakdown, model: ModelShape, recipe: Fp8Recipe,
               device: Optional[str], model_tflops_per_gpu: Optional[float] = None,
               hardware_tflops_per_gpu: Optional[float] = None) -> dict:
    """What an FP8 run's utilisation means, as the JSON object ``estimate`` prints.

    ``precision``: ``fp8``, or ``fp4`` with ``--fp4-format`` (then ``fp8_share`` and the
    ``fp4`` peak are FP4's).  ``fp8_share``: fraction of the model FLOPs in FP8 GEMMs.
    ``peak_tflops``: the dense BF16 and FP8 (FP4) peaks of ``device`` and the mixed peak (harmonic mean weighted by model FLOPs,
    hardware FLOPs for HFU).  ``mfu`` / ``hfu``: against the BF16 peak and against the mixed
    one (None without a time or a known peak).
    """
    split = fp8_flops(breakdown, model, recipe)
    bf16 = peak_tflops(device, "bf16") if device else None
    fp8 = peak_tflops(device, recipe.precision) if device else None  # the low precision's
    mixed = mixed_hw = None
    if bf16 and fp8:
        mixed = mixed_peak_tflops(breakdown, model, recipe, bf16, fp8)
        mixed_hw = mixed_peak_tflops(breakdown, model, recipe, bf16, fp8, hardware=True)

    def ratio(value, peak):
        return value / peak if value is not None and peak else None
    return {
        "precision": recipe.precision, "format": recipe.fp8_format, "recipe": recipe.recipe,
        "bf16_layers": {"start": recipe.bf16_layers_at_start, "end": recipe.bf16_layers_at_end},
        "fp8_share": split["fp8"] / (split["fp8"] + split["bf16"]),
        "peak_tflops": {"bf16": bf16, recipe.precision: fp8, "mixed": mixed,
                        "mixed_hardware": mixed_hw},
        "mfu": {"vs_bf16": ratio(model_tflops_per_gpu, bf16),
                "vs_mixed": ratio(model_tflops_per_gpu, mixed)},
        "hfu": {"vs_bf16": ratio(hardware_tflops_per_gpu, bf16),
                "vs_mixed": ratio(hardware_tflops_per_gpu, mixed_hw)},
    }
