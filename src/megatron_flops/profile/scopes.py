"""Make a reference GPT name its components in a profiler trace (needs torch).

Every leaf module that runs a matmul opens a ``record_function`` span named after the
components its matmul carries (``megatron_flops:query/512+key_value/256`` for the fused QKV,
``megatron_flops:logits``, …) for as long as its forward runs — the recomputed forward of a
checkpointed layer too, inside backward — and the norms open ``megatron_flops:norms``.
Backward ops are joined to their forward op by the trace's autograd sequence numbers.
"""

from typing import Dict, List, Tuple

from .attribute import NORMS_SCOPE, scope_name

__all__ = ["install_scopes"]


def module_components(gpt) -> Dict[object, Tuple[Tuple[str, int], ...]]:
    """Each matmul-running leaf module of ``gpt`` -> ((component, output columns), ...).

    The one place the profiler learns the model's structure: the verifier's table of leaf
    modules, plus fused attention cores (modules that declare ``components``).
    """
    from ..reference.verify import component_units
    units = dict(component_units(gpt))
    for module in gpt.modules():
        declared = getattr(module, "components", None)
        if declared:
            units[module] = tuple(declared)
    return units


def install_scopes(gpt) -> List[object]:
    """Register the hooks that open and close the spans; returns their handles."""
    from torch import nn
    from torch.autograd.profiler import record_function
    from ..reference.model import RMSNorm
    names = {module: scope_name(parts) for module, parts in module_components(gpt).items()}
    for module in gpt.modules():
        if isinstance(module, (RMSNorm, nn.LayerNorm)):
            names[module] = NORMS_SCOPE
    handles = []
    for module, name in names.items():
        spans: list = []

        def enter(_module, _inputs, name=name, spans=spans):
            span = record_function(name)
            span.__enter__()
            spans.append(span)

        def leave(_module, _inputs, _output, spans=spans):
            if spans:
                spans.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(enter))
        # always_call: a checkpoint's early stop ends a recomputed forward by raising
        handles.append(module.register_forward_hook(leave, always_call=True))
    return handles
