"""Megatron adapters: argument reading (standard library only), the runtime hook (one
strategy per training framework), the drop-in ``throughput_calculator``, the source patcher
and the runner.

Public entry points (``__all__``, docs/api.md):

- :func:`install` — ``megatron_flops.megatron.install()`` in a training script (before or
  after ``megatron.training`` is imported) routes the framework's throughput reporting through
  megatron-flops; see :mod:`megatron_flops.megatron.hook`; :func:`uninstall` undoes it.
- :func:`throughput_calculator` — drop-in for the microsoft fork's
  ``megatron.utils.throughput_calculator``.
- :func:`shapes_from_args` — the model and run shape of a Megatron ``args`` namespace (any
  fork or Megatron-LM); :func:`padded_vocab_size` — Megatron's vocabulary padding.
- :func:`shapes_from_bridge_config` — the same for a Megatron-Bridge ``ConfigContainer``;
  :func:`exact_num_floating_point_operations` — drop-in for Bridge's
  ``num_floating_point_operations`` (docs/megatron-bridge.md).
- :func:`megatron_flops.megatron.resolve.resolve_command` — a pasted launch line (launcher
  and all) resolved in its framework's dialect: shapes, the dialect and why, and every value
  inferred or assumed (:mod:`.resolve`, :mod:`.dialects`, :mod:`.vocab`, :mod:`.launch`).
- ``python -m megatron_flops.run SCRIPT ARGS`` (:mod:`megatron_flops.megatron.run`) and
  ``megatron-flops patch CHECKOUT`` (:mod:`megatron_flops.megatron.patch`, command in
  :mod:`megatron_flops.commands.patch`).
"""


from .args import padded_vocab_size, shapes_from_args
from .bridge_config import exact_num_floating_point_operations, shapes_from_bridge_config
from .calculator import throughput_calculator
from .hook import install, uninstall

__all__ = ["install", "padded_vocab_size", "shapes_from_args", "throughput_calculator",
           "uninstall",
           # NVIDIA Megatron-Bridge (issue 21)
           "exact_num_floating_point_operations", "shapes_from_bridge_config"]
