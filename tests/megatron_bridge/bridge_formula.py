"""Megatron-Bridge's own ``num_floating_point_operations``, loaded from its source file.

Importing ``megatron.bridge`` pulls Transformer Engine (``peft/lora_layers.py``) and
Hugging Face ``transformers`` at package import, so the formula's file is loaded by path
instead, with stand-ins for the names it imports that the transformer path never calls
(each listed below; none takes part in a FLOP count):

- ``megatron.bridge.peft.lora.LoRA``: an empty class (``isinstance(cfg.peft, LoRA)`` is False);
- ``megatron.bridge.training.config.ConfigContainer``: a type annotation only;
- ``calculate_avg_seqlen`` (packing utils): the LoRA-on-SQuAD branch only, never reached;
- ``megatron.bridge.utils.common_utils.print_rank_0``: a no-op (vocab_utils logs with it);
- the real ``megatron.bridge.utils.vocab_utils`` from the same tree when it is there
  (``calculate_padded_vocab_size``), else the rule it implements, ceil(V / (d·TP))·d·TP;
- names from newer Megatron-Core modules (0.16.1 lacks them) that only the hybrid / GDN /
  VLM paths call.

``MEGATRON_BRIDGE_SRC`` names a source tree (``…/src`` of a checkout) to read instead of the
installed ``megatron-bridge`` wheel.
"""

import importlib.util
import math
import os
import re
import sys
import types
from pathlib import Path
from typing import Optional

FLOP_UTILS = "megatron/bridge/training/utils/flop_utils.py"
VOCAB_UTILS = "megatron/bridge/utils/vocab_utils.py"


def bridge_source_root() -> Optional[Path]:
    """The directory holding ``megatron/bridge/…``: MEGATRON_BRIDGE_SRC, else the installed
    wheel's (found without importing ``megatron.bridge``)."""
    given = os.environ.get("MEGATRON_BRIDGE_SRC")
    if given:
        return Path(given) if (Path(given) / FLOP_UTILS).is_file() else None
    for entry in sys.path:
        if entry and (Path(entry) / FLOP_UTILS).is_file():
            return Path(entry)
    return None


def _padded(vocab_size, divisible_by, tensor_parallel, logging_enabled=True):
    multiple = divisible_by * tensor_parallel
    return int(math.ceil(vocab_size / multiple) * multiple)


class _Names(types.ModuleType):
    """A module answering any name with a placeholder (names the counted path never calls)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {})
        setattr(self, name, value)
        return value


def _load_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_flop_utils(root: Path):
    """Bridge's flop_utils module from ``root``, its imports stood in as the docstring says."""
    source = (root / FLOP_UTILS).read_text()
    saved = dict(sys.modules)
    try:
        imported = set(re.findall(r"^from (megatron\.[\w.]+) import", source, re.M))
        for module_name in imported:
            if module_name.startswith("megatron.core"):
                try:
                    importlib.import_module(module_name)
                    continue
                except ImportError:
                    pass
            sys.modules[module_name] = _Names(module_name)
        common = _Names("megatron.bridge.utils.common_utils")
        common.print_rank_0 = lambda *args, **kwargs: None
        sys.modules["megatron.bridge.utils.common_utils"] = common
        vocab_module = sys.modules.get("megatron.bridge.utils.vocab_utils")
        vocab_path = root / VOCAB_UTILS
        vocab_text = vocab_path.read_text() if vocab_path.is_file() else ""
        if vocab_text and "from megatron.training" not in vocab_text:
            vocab_module = _load_path("megatron.bridge.utils.vocab_utils", vocab_path)
            sys.modules["megatron.bridge.utils.vocab_utils"] = vocab_module
        elif vocab_module is not None:
            vocab_module.calculate_padded_vocab_size = _padded
        for module_name in imported:
            module = sys.modules[module_name]
            if module_name.endswith("peft.lora"):
                module.LoRA = type("LoRA", (), {})
            if module_name.endswith("experimental_attention_variant_module_specs"):
                module.is_gated_delta_net_variant = lambda variant: variant in (
                    "gated_delta_net", "gdn", "gdn2")
        return _load_path("bridge_flop_utils_under_test", root / FLOP_UTILS)
    finally:
        for key in set(sys.modules) - set(saved):
            if key != "bridge_flop_utils_under_test":
                del sys.modules[key]
        sys.modules.update(saved)
