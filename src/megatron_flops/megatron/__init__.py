"""Megatron adapters: argument reading (standard library only), the runtime hook (one
strategy per training framework), the drop-in ``throughput_calculator``, the source patcher
and the runner.

Public entry points:

- :func:`install` — ``megatron_flops.megatron.install()`` in a training script (before or
  after ``megatron.training`` is imported) routes the framework's throughput reporting through
  megatron-flops; see :mod:`megatron_flops.megatron.hook`.
- :func:`megatron_flops.megatron.calculator.throughput_calculator` — drop-in for the
  microsoft fork's ``megatron.utils.throughput_calculator``.
- :func:`megatron_flops.megatron.resolve.resolve_command` — a pasted launch line (launcher
  and all) resolved in its framework's dialect: shapes, the dialect and why, and every value
  inferred or assumed (:mod:`.resolve`, :mod:`.dialects`, :mod:`.vocab`, :mod:`.launch`).
- ``python -m megatron_flops.run SCRIPT ARGS`` (:mod:`megatron_flops.megatron.run`) and
  ``megatron-flops patch CHECKOUT`` (:mod:`megatron_flops.megatron.patch`, command in
  :mod:`megatron_flops.commands.patch`).
"""


def install(peak_tflops=None, gpu=None, causal=None, training_module=None, out=None,
            count_flops=None, strict=None, tolerance=None, conventions=None):
    """Install the runtime hook; see :func:`megatron_flops.megatron.hook.install`."""
    from .hook import install as _install
    return _install(peak_tflops=peak_tflops, gpu=gpu, causal=causal,
                    training_module=training_module, out=out, count_flops=count_flops,
                    strict=strict, tolerance=tolerance, conventions=conventions)


def uninstall() -> None:
    """Remove the runtime hook; see :func:`megatron_flops.megatron.hook.uninstall`."""
    from .hook import uninstall as _uninstall
    _uninstall()
