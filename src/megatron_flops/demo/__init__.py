"""The demo: train the reference GPT with live throughput (see docs/demo.md).

``config`` (the settings, parsed once by :mod:`megatron_flops.commands.demo`), ``session``
(one run's objects), ``train`` (the loop), ``distributed``, ``corpus``, ``peak`` (measured
peaks), ``fused`` (``--attention sdpa``), ``profiling`` (``--profile``).  Imports nothing
heavy on its own.
"""
