"""``python -m megatron_flops.demo`` (and ``torchrun … -m megatron_flops.demo``): the demo."""

import sys

from .train import main

sys.exit(main())
