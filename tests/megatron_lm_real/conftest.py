"""The real Megatron-LM tier: NVIDIA Megatron-LM's own training loop (``pretrain_gpt.py``,
``megatron.training``) on this CPU, from a source checkout given as ``MEGATRON_LM_PATH``
(see docs/megatron-lm.md, "A real Megatron-LM loop in the tests").  Without it every test
here is skipped with the reason."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

ENV_CHECKOUT = "MEGATRON_LM_PATH"


@pytest.fixture(scope="session")
def megatron_lm_checkout():
    path = os.environ.get(ENV_CHECKOUT, "").strip()
    if not path:
        pytest.skip(f"{ENV_CHECKOUT} is not set: no Megatron-LM source checkout to train with "
                    "(docs/megatron-lm.md: the real Megatron-LM tier)")
    checkout = Path(path)
    if not (checkout / "pretrain_gpt.py").is_file() or not (checkout / "megatron" / "training").is_dir():
        pytest.fail(f"{ENV_CHECKOUT}={path} is not a Megatron-LM checkout (no pretrain_gpt.py "
                    "and megatron/training/)")
    return checkout
