"""NVIDIA Megatron-Bridge's console log: its configuration summary and its ``Step Time`` line.

Bridge prints, at start-up (``ConfigContainer.log_non_default_values``, ``training/config.py``
at v0.3.1)::

    ======================================================================
    Configuration Summary (Non-Default Values vs Megatron Core)
    ======================================================================

    [model] Non-default values (vs Mcore TransformerConfig):
      hidden_size: 4096  (Mcore default: 0)
      …
    ----------------------------------------------------------------------
    Other Configuration Values:
    ----------------------------------------------------------------------

    [train]:
      global_batch_size: 128
      …
    ======================================================================

The model section lists only the Megatron-Core ``TransformerConfig`` fields that differ from
Megatron-Core's defaults, and never a callable (``activation_func``) nor a field of Bridge's
own provider (``seq_length``, ``vocab_size``): those come from the flags typed
(``--seq-length``, ``--vocab-size``), a `` > padded vocab`` line, or the saved YAML.  Each
log interval it prints (``train_utils.training_log``, rank 0) ``Step Time : 1.23s GPU
utilization: 456.7MODEL_TFLOP/s/GPU`` (``… TFLOP/s/GPU`` before ``MODEL_`` was added), then
Megatron-LM's iteration line (``throughput per GPU`` only with ``logger.log_throughput``).
"""

import ast
import re
from typing import Any, Dict, Optional, Tuple

from ..errors import UsageError
from ..megatron.bridge_config import bridge_namespace

__all__ = ["SUMMARY_TITLE", "MEGATRON_BRIDGE", "SummaryReader", "step_time",
           "arguments_from_config"]

MEGATRON_BRIDGE = "megatron-bridge"
SUMMARY_TITLE = "Configuration Summary (Non-Default Values vs Megatron Core)"
# a launcher may prefix every line ("[default0]:", "stdout:", "0: "): matched after it
_PREFIX = re.compile(r"^(?:\[default\d+\]:|stdout:|stderr:|\d+: ?)?")
_SECTION = re.compile(r"\[(\w+)\](?: Non-default values \(vs Mcore \w+\))?:\s*$")
_ENTRY = re.compile(r"\s{2}(\w+): (.*?)(?:\s{2}\(Mcore default: .*\))?\s*$")
_RULE = re.compile(r"={20,}\s*$")
_STEP_TIME = re.compile(r"Step Time : ([0-9.]+)s GPU utilization: +([0-9.]+|nan|inf) ?"
                        r"(?:MODEL_)?TFLOP/s/GPU")
# the arguments entry that marks a dump made from Bridge's configuration
BRIDGE_MARK = "megatron_bridge_config"


def step_time(line: str) -> Optional[Tuple[float, float]]:
    """(seconds per iteration, Bridge's model TFLOP/s per GPU) of a ``Step Time`` line."""
    match = _STEP_TIME.search(line)
    if match is None:
        return None
    return float(match.group(1)), float(match.group(2))


def _value(text: str) -> Any:
    """A summary value as Bridge printed it (``repr``): literals read, anything else (an enum,
    ``torch.bfloat16``) kept as its text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


class SummaryReader:
    """Reads the summary block line by line: :meth:`feed` returns True while inside it; once
    closed, :attr:`sections` holds ``{section: {field: value}}``."""

    def __init__(self):
        self.sections: Dict[str, Dict[str, Any]] = {}
        self.inside = False
        self._section: Optional[Dict[str, Any]] = None
        self._rules = 0

    def feed(self, line: str) -> bool:
        if not self.inside:
            if SUMMARY_TITLE in line:
                self.inside, self.sections, self._section, self._rules = True, {}, None, 0
                return True
            return False
        text = line[_PREFIX.match(line).end():].rstrip("\n")
        if _RULE.match(text):
            self._rules += 1
            if self._rules > 1:   # the title's own rule, then the closing one
                self.inside = False
            return True
        section = _SECTION.match(text)
        if section:
            self._section = self.sections.setdefault(section.group(1), {})
            return True
        entry = _ENTRY.match(text)
        if entry and self._section is not None:
            self._section[entry.group(1)] = _value(entry.group(2))
        return True


def arguments_from_config(sections: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    """A Megatron-LM arguments dump (name -> printed value) of a Bridge configuration summary:
    Megatron-Core's defaults for the model fields it leaves out, nothing for Bridge's provider
    fields it never prints (sequence length, vocabulary: from the flags typed).  A gated MLP's
    activation is never printed (a callable): SwiGLU is assumed, which the exact count does
    not depend on (every GLU is three GEMMs)."""
    model = dict(sections.get("model", {}))
    if model.get("gated_linear_unit"):
        model.setdefault("activation_func", "silu")
    config = {"model": model, "train": sections.get("train", {})}
    try:
        ns = bridge_namespace(config, provider_defaults=False)
    except UsageError as error:
        raise UsageError(f"the log's configuration summary: {error}") from None
    arguments = {name: str(value) for name, value in vars(ns).items() if value is not None}
    arguments.pop("glu_activation", None)
    if ns.glu_activation == "swiglu":
        arguments["swiglu"] = "True"
    elif ns.glu_activation is not None:
        arguments["glu_activation"] = ns.glu_activation
    tokenizer = sections.get("tokenizer", {})
    if "vocab_size" not in arguments and isinstance(tokenizer.get("vocab_size"), int):
        arguments["vocab_size"] = str(tokenizer["vocab_size"])
    arguments[BRIDGE_MARK] = "True"
    return arguments
