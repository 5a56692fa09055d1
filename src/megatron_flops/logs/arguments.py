"""The run's own arguments, read back from its console log (standard library only).

At start-up rank 0 of every Megatron (both Megatron-DeepSpeed forks, NVIDIA Megatron-LM)
prints its whole ``args`` namespace::

    ------------------------ arguments ------------------------
      accumulate_allreduce_grads_in_fp32 .............. False
      hidden_size ..................................... 14336
      rampup_batch_size ............................... ['192', '16', '9_765_625']
      ...
    -------------------- end of arguments ---------------------

one ``name ..... value`` line per argument, the value as Python's ``str()`` writes it
(``None``, ``True``, ``[1, 2]``, ``PositionEmbeddingType.alibi``).  The padded vocabulary is
not an argument but is printed a little later, while the tokenizer is built::

     > padded vocab (size: 250680) with 200 dummy tokens (new size: 250880)

:func:`namespace_from_arguments` turns the dump into an ``argparse.Namespace`` with proper
value types, which :func:`megatron_flops.megatron.args.shapes_from_args` reads like the
run's own ``args``; :func:`merge_flags` lays the flags typed on the command line over it and
says, for every value that shapes the count, where it came from.
"""

import argparse
import ast
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

DUMP_START = "------------------------ arguments ------------------------"
DUMP_END = "-------------------- end of arguments ---------------------"
# one argument line, wherever it starts (launcher prefixes: "[default0]:", "stdout:", "0: ")
ARGUMENT_LINE = re.compile(r"(?:^|[\s:>\]])([A-Za-z_][A-Za-z0-9_]*) \.{3,} (.*?)\s*$")
PADDED_VOCAB = re.compile(
    r"> padded vocab \(size: (\d+)\) with (\d+) dummy tokens \(new size: (\d+)\)")
_ENUM = re.compile(r"^[A-Z][A-Za-z0-9_]*\.([A-Za-z_][A-Za-z0-9_]*)$")

# where a value came from (the provenance block and --json's "sources")
FROM_COMMAND_LINE = "command line"
FROM_DUMP = "log arguments"
FROM_PADDED_VOCAB = "log padded vocab line"
FROM_DEFAULT = "default"

# the values that shape the count, in the order the provenance block lists them
SHAPE_VALUES = (
    "num_layers", "hidden_size", "num_attention_heads", "kv_channels", "num_key_value_heads",
    "ffn_hidden_size", "glu_activation", "swiglu", "seq_length", "padded_vocab_size",
    "num_experts", "topk", "micro_batch_size", "global_batch_size", "rampup_batch_size",
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "world_size",
    "checkpoint_activations", "recompute_granularity", "fp16", "bf16", "log_interval",
)


def typed_value(text: str):
    """The Python value of a dump's ``str()`` text: None, True/False, int, float, a list
    (of those), an enum member's name (``PositionEmbeddingType.alibi`` -> ``"alibi"``),
    else the text itself."""
    text = text.strip()
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text[:1] in "[(" and text[-1:] in "])":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        return list(value) if isinstance(value, (list, tuple)) else value
    enum = _ENUM.match(text)
    if enum and not text.startswith("torch."):
        return enum.group(1)
    return text


def namespace_from_arguments(arguments: Dict[str, str]) -> argparse.Namespace:
    """An ``args``-like namespace from a dump (name -> printed text), values typed."""
    return argparse.Namespace(**{name: typed_value(text) for name, text in arguments.items()})


def padded_vocab_size(line: str) -> Optional[int]:
    """The new (padded) size on a `` > padded vocab (size: …)`` line, else None."""
    match = PADDED_VOCAB.search(line)
    return int(match.group(3)) if match else None


def given_destinations(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set:
    """The ``dest`` of every option actually typed in ``argv`` (``--flag`` or ``--flag=v``)."""
    actions = parser._option_string_actions  # argparse's own option-string -> action map
    out = set()
    for token in argv:
        if token.startswith("-"):
            action = actions.get(token.split("=", 1)[0])
            if action is not None:
                out.add(action.dest)
    return out


def merge_flags(flags: argparse.Namespace, given: Iterable[str],
                arguments: Dict[str, str], padded_vocab: Optional[int] = None
                ) -> Tuple[argparse.Namespace, Dict[str, str]]:
    """(namespace, sources): the run's dump, the padded vocab line over it, the flags typed on
    the command line over both; the parser's defaults for anything neither holds.

    ``sources`` maps each of :data:`SHAPE_VALUES` (and any other value typed) to
    :data:`FROM_COMMAND_LINE`, :data:`FROM_DUMP`, :data:`FROM_PADDED_VOCAB` or
    :data:`FROM_DEFAULT`.  Without a dump the namespace is the flags unchanged.
    """
    given = set(given)
    merged = argparse.Namespace(**vars(flags))
    sources: Dict[str, str] = {}
    dump = namespace_from_arguments(arguments)
    dragged = derived_from_typed(dump, given)
    for name, value in vars(dump).items():
        if name not in given and name not in dragged:
            setattr(merged, name, value)
    if padded_vocab is not None and "padded_vocab_size" not in given:
        merged.padded_vocab_size = padded_vocab
    for name in SHAPE_VALUES + tuple(sorted(given - set(SHAPE_VALUES))):
        if name in given:
            sources[name] = FROM_COMMAND_LINE
        elif name == "padded_vocab_size" and padded_vocab is not None:
            sources[name] = FROM_PADDED_VOCAB
        elif name in dragged:
            sources[name] = FROM_DEFAULT  # derived again from what was typed
        elif name in arguments:
            sources[name] = FROM_DUMP
        else:
            sources[name] = FROM_DEFAULT
    return merged, sources


# a flag's other names in a dump (Megatron copies the value across: every real dump prints
# encoder_seq_length beside seq_length); typing one name drops the dump's value of the others
ALIASES = (("seq_length", "encoder_seq_length"), ("micro_batch_size", "batch_size"),
           ("tensor_model_parallel_size", "model_parallel_size"),
           ("pipeline_model_parallel_size", "pipe_parallel_size"),
           ("recompute_method", "activations_checkpoint_method"),
           ("recompute_num_layers", "activations_checkpoint_num_layers"),
           ("num_experts", "num_moe_experts"), ("topk", "moe_router_topk"))


def _derived(dump) -> Dict[str, Tuple[Tuple[str, ...], object]]:
    """dest -> (the dests it is derived from, the value the framework derives from the dump's
    own values): a dump value equal to it was (very likely) derived, not given."""
    get = lambda name: getattr(dump, name, None)  # noqa: E731
    h, n = get("hidden_size"), get("num_attention_heads")
    out: Dict[str, Tuple[Tuple[str, ...], object]] = {}
    if isinstance(h, int):
        swiglu = bool(get("swiglu"))
        out["ffn_hidden_size"] = (("hidden_size", "swiglu"),
                                  int((4 * h * 2 / 3) / 64) * 64 if swiglu else 4 * h)
        if isinstance(n, int) and n:
            out["kv_channels"] = (("hidden_size", "num_attention_heads"), h // n)
    micro, dp = get("micro_batch_size"), get("data_parallel_size")
    if isinstance(micro, int) and isinstance(dp, int):
        out["global_batch_size"] = (("micro_batch_size", "world_size",
                                     "tensor_model_parallel_size",
                                     "pipeline_model_parallel_size"), micro * dp)
    return out


def derived_from_typed(dump: argparse.Namespace, given: Iterable[str]) -> set:
    """The dump's values that typed flags make stale: the other names of a typed flag, and
    values the framework derived from a typed one (``ffn_hidden_size`` = 4h when the dump's
    equals its own 4h and ``--hidden-size`` is typed) — dropped, so that the reader derives
    them again from what was typed, as the framework would have."""
    given = set(given)
    out = set()
    for names in ALIASES:
        if given & set(names):
            out |= set(names) - given
    for name, (sources, value) in _derived(dump).items():
        if name not in given and given & set(sources) and getattr(dump, name, None) == value:
            out.add(name)
    return out


def sources_lines(namespace: argparse.Namespace, sources: Dict[str, str]) -> List[str]:
    """The provenance block: one line per source, ``name value`` pairs (None values left
    out of the defaults, which are many)."""
    lines = []
    for source in (FROM_COMMAND_LINE, FROM_DUMP, FROM_PADDED_VOCAB, FROM_DEFAULT):
        pairs = []
        for name, where in sources.items():
            if where != source:
                continue
            value = getattr(namespace, name, None)
            if source == FROM_DEFAULT and value in (None, False):
                continue
            if isinstance(value, list):
                value = " ".join(map(str, value))
            pairs.append(f"{name} {value}")
        if pairs:
            lines.append(f"from the {source}: " + ", ".join(pairs)
                         if source != FROM_DEFAULT else "defaults: " + ", ".join(pairs))
    return lines


# which fork printed a dump: arguments only one of them has
_FORK_ARGUMENTS = (
    ("microsoft", ("swiglu", "num_key_value_heads", "ds_sequence_parallel_size", "mlp_type",
                   "random_ltd")),
    ("bigscience", ("glu_activation", "embed_layernorm", "pp_partition_method",
                    "pad_vocab_size_to")),
)


# NVIDIA Megatron-LM's parser (megatron/training/arguments.py): names neither fork has
_MEGATRON_LM_ARGUMENTS = ("log_throughput", "num_query_groups", "moe_router_topk",
                          "context_parallel_size")
# issue 24: every name fork_from_arguments reads (a dump that keeps these names keeps its
# framework: the demo's short dump)
FRAMEWORK_ARGUMENTS = ("deepspeed", *(n for _, names in _FORK_ARGUMENTS for n in names),
                       *_MEGATRON_LM_ARGUMENTS)


def fork_from_arguments(arguments: Dict[str, str]) -> Optional[str]:
    """The framework whose parser has these arguments: a Megatron-DeepSpeed fork (by the
    names only one of them has; None: neither or both) or, without a ``deepspeed``
    argument, NVIDIA Megatron-LM (``megatron-lm``: a name only its parser has; else None)."""
    if "megatron_bridge_config" in arguments:  # logs/bridge.py's dump of Bridge's summary
        return "megatron-bridge"
    if "deepspeed" not in arguments:
        return "megatron-lm" if any(n in arguments for n in _MEGATRON_LM_ARGUMENTS) else None
    found = [fork for fork, names in _FORK_ARGUMENTS if any(n in arguments for n in names)]
    return found[0] if len(found) == 1 else None
