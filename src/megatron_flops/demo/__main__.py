"""``python -m megatron_flops.demo`` (and ``torchrun … -m megatron_flops.demo``): the demo.

An entry point, like ``megatron_flops.cli``: it runs the ``demo`` command (the one module of
this package that imports the command line).
"""

import sys

from megatron_flops.commands.demo import main

sys.exit(main())
