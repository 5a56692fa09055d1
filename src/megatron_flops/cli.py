"""Compatibility entry point: ``python -m megatron_flops.cli`` and ``megatron_flops.cli.main``.

The command line lives in :mod:`megatron_flops.commands`.
"""

import sys

from megatron_flops.commands import main

if __name__ == "__main__":
    sys.exit(main())
