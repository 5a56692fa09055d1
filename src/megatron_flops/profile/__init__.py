"""Where the time goes: a PyTorch profiler trace joined with the exact FLOPs breakdown.

- :mod:`.trace` reads the Chrome-trace JSON that ``torch.profiler`` exports (standard
  library only) into events nested per thread, and finds the profiled iterations;
- :mod:`.attribute` files every matmul op (and its GPU kernels) under a component, by the
  ``record_function`` scope around it or by its operand shapes, and the rest of each
  iteration under categories (other ops, communication, host / idle);
- :mod:`.scopes` (needs torch) makes a reference GPT emit those scopes;
- :mod:`.plot` (needs matplotlib) draws the MFU waterfall and the per-component bars.

The command is ``megatron-flops profile TRACE`` (:mod:`megatron_flops.commands.profile`).
"""
