"""The dialect a Megatron command, ``args`` namespace or arguments dump is written in.

The three frameworks share most flag names but not every default, name or rule, and where a
default differs the count differs.  A :class:`Dialect` is one framework's reading: the
defaults that differ from another framework's (:data:`DIFFERING_DEFAULTS`, each with the
source it was read from), the flags it removed (refused with one line naming the replacement),
and the evidence that points to it (:func:`infer_dialect`).

The defaults were read from each framework's own ``arguments.py`` (and Megatron-Core's
``TransformerConfig``, which Megatron-LM turns into flags) at the commit named in each entry;
``docs/dialects.md`` is the same table, for people.  Standard library only.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

__all__ = ["Dialect", "DIALECTS", "DIFFERING_DEFAULTS", "DefaultDifference", "DialectChoice",
           "infer_dialect", "dialect_named", "BIGSCIENCE", "MICROSOFT", "MEGATRON_LM",
           "MEGATRON_BRIDGE"]

BIGSCIENCE, MICROSOFT, MEGATRON_LM, MEGATRON_BRIDGE = (
    "bigscience", "microsoft", "megatron-lm", "megatron-bridge")

_MLM = "NVIDIA/Megatron-LM@d98e8a64ddf34856e74b24714e3bedb2f5a39553"
_MS = "deepspeedai/Megatron-DeepSpeed@4efb479d5317ce9b86096b9d8e3e8030b0b5263b"
_BS = "bigscience-workshop/Megatron-DeepSpeed@8387ae17c4704f6579f88a84500b535d19d7fbbf"


@dataclass(frozen=True)
class DefaultDifference:
    """One default that differs between dialects and changes the count.

    ``dest``: the namespace field; ``flag``: the flag a user gives to settle it; ``values``:
    dialect -> (default, where it was read); a dialect missing from ``values`` has no such
    feature (its parser lacks the flag).  ``applies(ns)`` says whether the value matters for
    this run (e.g. only an MoE model has a layer frequency)."""

    dest: str
    flag: str
    what: str
    values: Mapping[str, Tuple[object, str]]
    applies: object = None  # Callable[[namespace], bool]


def _moe(ns) -> bool:
    experts = getattr(ns, "num_experts", None)
    if experts is None:
        experts = getattr(ns, "num_moe_experts", None)
    if isinstance(experts, (list, tuple)):
        return any(int(e) > 1 for e in experts)
    return experts is not None and int(experts) > 1


def _moe_layers_unset(ns) -> bool:
    return _moe(ns) and getattr(ns, "moe_layer_freq", None) is None and \
        getattr(ns, "expert_interval", None) is None


def _topk_unset(ns) -> bool:
    return _moe(ns) and getattr(ns, "topk", None) is None and \
        getattr(ns, "moe_router_topk", None) is None


#: Defaults that differ between the frameworks and change FLOPs (read from each one's source).
DIFFERING_DEFAULTS: Tuple[DefaultDifference, ...] = (
    DefaultDifference(
        "moe_layers", "--moe-layer-freq / --expert-interval", "which layers are MoE layers",
        {MEGATRON_LM: ("every layer (--moe-layer-freq 1)",
                       f"{_MLM} megatron/training/arguments.py _add_moe_args: "
                       "'--moe-layer-freq', default=1 (every layer MoE before the flag existed, "
                       "47ab878ae7, 2024-12)"),
         MICROSOFT: ("every 2nd layer (--expert-interval 2)",
                     f"{_MS} megatron/arguments.py: '--expert-interval', default=2")},
        _moe_layers_unset),
    DefaultDifference(
        "topk", "--moe-router-topk / --topk", "experts each token is routed to",
        {MEGATRON_LM: (2, f"{_MLM} megatron/core/transformer/transformer_config.py: "
                          "moe_router_topk: int = 2 (the flag --moe-router-topk)"),
         MICROSOFT: (1, f"{_MS} megatron/arguments.py: '--topk', default=1")},
        _topk_unset),
    DefaultDifference(
        "null_tokenizer_vocab", "--vocab-size", "NullTokenizer's vocabulary",
        {MEGATRON_LM: ("--vocab-size (since c9dfe34798, 2026-04; --vocab-size + 1 for the eod "
                       "token before)",
                       f"{_MLM} megatron/core/tokenizers/text/libraries/null_tokenizer.py "
                       "vocab_size; before: megatron/training/tokenizer/tokenizer.py "
                       "_NullTokenizer.vocab_size = vocab_size + 1"),
         MICROSOFT: ("--vocab-size + 1 (the eod token)", f"{_MS} megatron/tokenizer/tokenizer.py "
                     "_NullTokenizer: self.vocab_size = vocab_size+1")},
        None),
    DefaultDifference(
        "checkpoint_activations", "--checkpoint-activations", "--checkpoint-activations",
        {MEGATRON_LM: ("removed: exits", f"{_MLM} megatron/training/arguments.py "
                       "validate_args: 'no longer valid, use --recompute-activations'"),
         MICROSOFT: ("full recompute", f"{_MS} megatron/arguments.py '--checkpoint-activations'"),
         BIGSCIENCE: ("full recompute", f"{_BS} megatron/arguments.py "
                      "'--checkpoint-activations'")},
        None),
)


@dataclass(frozen=True)
class Dialect:
    """One framework's reading of Megatron flags."""

    name: str
    title: str
    source: str
    #: dest -> value this dialect gives a field the command leaves unset (FLOP-changing only)
    defaults: Mapping[str, object] = field(default_factory=dict)
    #: flag -> the line that refuses it (the framework itself exits or asserts on it)
    removed: Mapping[str, str] = field(default_factory=dict)


DIALECTS: Dict[str, Dialect] = {
    BIGSCIENCE: Dialect(BIGSCIENCE, "bigscience-workshop Megatron-DeepSpeed", _BS),
    MICROSOFT: Dialect(MICROSOFT, "microsoft (deepspeedai) Megatron-DeepSpeed", _MS,
                       defaults={"expert_interval": 2, "topk": 1}),
    MEGATRON_LM: Dialect(
        MEGATRON_LM, "NVIDIA Megatron-LM", _MLM,
        defaults={"moe_layer_freq": 1, "topk": 2},
        removed={
            "--checkpoint-activations": "--checkpoint-activations was removed from Megatron-LM "
                "(it exits on it): use --recompute-activations (selective) or "
                "--recompute-granularity full --recompute-method uniform",
            "--batch-size": "--batch-size was removed from Megatron-LM (it asserts): use "
                "--micro-batch-size",
            "--model-parallel-size": "--model-parallel-size was removed from Megatron-LM (it "
                "asserts): use --tensor-model-parallel-size",
        }),
    # Megatron-Bridge builds Megatron-Core models from its own recipes (Python configs, not
    # flags); its models' defaults are Megatron-Core's, read here as Megatron-LM's
    MEGATRON_BRIDGE: Dialect(MEGATRON_BRIDGE, "NVIDIA Megatron-Bridge (Megatron-Core defaults)",
                             "NVIDIA-NeMo/Megatron-Bridge", defaults={"moe_layer_freq": 1,
                                                                       "topk": 2}),
}


def dialect_named(name: str, flag: str = "--framework") -> Dialect:
    """The dialect called ``name`` (aliases: ``deepspeedai``, ``megatron``, ``mcore``)."""
    from ..shapes import ShapeError
    key = str(name).strip().lower()
    key = {"deepspeedai": MICROSOFT, "deepspeed": MICROSOFT, "megatron": MEGATRON_LM,
           "mcore": MEGATRON_LM, "megatron-core": MEGATRON_LM, "megatron_lm": MEGATRON_LM,
           "bridge": MEGATRON_BRIDGE}.get(key, key)
    if key not in DIALECTS:
        raise ShapeError(f"{flag} must be one of {', '.join(DIALECTS)}, got {name!r}", flag)
    return DIALECTS[key]


@dataclass(frozen=True)
class DialectChoice:
    """The dialect used and why; ``candidates``: every dialect the evidence leaves (one when
    it settles it)."""

    dialect: Dialect
    reason: str
    candidates: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.dialect.name

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1

    def differing_defaults(self, ns) -> List[DefaultDifference]:
        """The defaults this run leaves unset that the candidate dialects would fill
        differently (each changes FLOPs): what an ambiguous choice must say it assumed."""
        out = []
        for difference in DIFFERING_DEFAULTS:
            if difference.applies is None or not difference.applies(ns):
                continue
            values = {str(difference.values[c][0]) for c in self.candidates
                      if c in difference.values}
            if len(values) > 1:
                out.append(difference)
        return out


def _sources_of(flag: str) -> Tuple[str, ...]:
    from .flags import FORK_FLAGS
    return tuple(name for name, source in FORK_FLAGS.items() if flag in source.flags)


def _script_evidence(words: Iterable[str]) -> Optional[Tuple[Tuple[str, ...], str]]:
    """(dialects, why) from the script's path: a Megatron-DeepSpeed tree, a Megatron-LM one."""
    for word in words:
        lower = word.replace("\\", "/").lower()
        if not lower.endswith(".py"):
            continue
        if "megatron-deepspeed" in lower or "megatron_deepspeed" in lower:
            if "bigscience" in lower:
                return (BIGSCIENCE,), f"the script {word} is in a bigscience Megatron-DeepSpeed tree"
            return (BIGSCIENCE, MICROSOFT), f"the script {word} is in a Megatron-DeepSpeed tree"
        if "megatron-lm" in lower or "megatron_lm" in lower:
            return (MEGATRON_LM,), f"the script {word} is in a Megatron-LM tree"
        if os.path.basename(lower) in ("pretrain_mamba.py", "pretrain_hybrid.py",
                                       "pretrain_vlm.py", "pretrain_mimo.py"):
            return (MEGATRON_LM,), f"the script {os.path.basename(word)} only Megatron-LM has"
    return None


_ORDER = (MEGATRON_LM, MICROSOFT, BIGSCIENCE)  # the pick among candidates (most used first)


def infer_dialect(flags: Iterable[str] = (), words: Iterable[str] = (),
                  framework: Optional[str] = None, detected: Optional[str] = None,
                  deepspeed: bool = False,
                  facts: Iterable[Tuple[Tuple[str, ...], str]] = ()) -> DialectChoice:
    """The dialect from the evidence, strongest first.

    ``framework``: ``--framework NAME`` (overrides everything); ``detected``: the framework a
    hook detected or a dump's keys name; ``words``: the pasted command's non-flag words (the
    script path); ``flags``: the flag names typed (a dialect whose parser lacks one is ruled
    out; Megatron-LM also by a flag it removed and by ``--deepspeed``).  What is left are the
    candidates: one settles it; several (or none left: mixed evidence) is ambiguous, and the
    pick is the most used framework among them (Megatron-LM, then the microsoft fork).
    """
    if framework:
        dialect = dialect_named(framework)
        return DialectChoice(dialect, f"--framework {framework}", (dialect.name,))
    if detected:
        dialect = dialect_named(detected, "framework")
        return DialectChoice(dialect, f"detected {detected}", (dialect.name,))
    candidates = set(_ORDER)
    why: List[str] = []
    votes: Dict[str, int] = {name: 0 for name in _ORDER}
    flags = list(dict.fromkeys(flags))
    removed = [f for f in flags if f in DIALECTS[MEGATRON_LM].removed]
    for flag in flags:
        sources = set(_sources_of(flag))
        if flag in removed:
            continue  # read last: evidence for a fork unless the rest says Megatron-LM
        if not sources:
            continue
        for name in sources:  # a flag only one framework has weighs most (mixed evidence)
            votes[name] += 10 if len(sources) == 1 else 1
        if candidates & sources != candidates:
            left = candidates & sources
            if left:
                why.append(f"{flag} (" + " and ".join(n for n in _ORDER if n in sources)
                           + " only)" if len(sources) < 3 else flag)
            candidates = left
    for names, fact in facts:  # other evidence: (the dialects it allows, why)
        if candidates & set(names) and candidates - set(names):
            candidates &= set(names)
            why.append(fact)
    if deepspeed and MEGATRON_LM in candidates:
        candidates.discard(MEGATRON_LM)
        why.append("--deepspeed (a Megatron-DeepSpeed fork)")
    if removed and candidates != {MEGATRON_LM} and candidates - {MEGATRON_LM}:
        candidates.discard(MEGATRON_LM)
        why.append(f"{removed[0]} (Megatron-LM exits on it)")
    script = _script_evidence(words)
    if script is not None and candidates & set(script[0]):
        candidates &= set(script[0])
        why.insert(0, script[1])
    ordered = tuple(name for name in _ORDER if name in candidates)
    if not ordered:  # mixed evidence: every dialect lacks some typed flag
        best = max(votes.values())
        ordered = tuple(name for name in _ORDER if votes[name] == best)
        return DialectChoice(DIALECTS[ordered[0]], "mixed evidence (no framework has every "
                             "flag typed)", ordered)
    if len(ordered) == 1:
        return DialectChoice(DIALECTS[ordered[0]], "from " + "; ".join(why[:3]) if why else
                             "the flags typed", ordered)
    reason = ("no flag or script only one framework has" if not why else
              "from " + "; ".join(why[:3]) + ": still " + " or ".join(ordered))
    return DialectChoice(DIALECTS[ordered[0]], reason, ordered)


# issue 24: the names dialect_from_arguments reads (a dump that keeps these keeps its dialect)
DIALECT_ARGUMENTS = ("moe_layer_freq", "moe_router_topk", "expert_interval", "glu_activation",
                     "pp_partition_method")


def dialect_from_arguments(arguments: Mapping[str, str]) -> Optional[str]:
    """The framework whose ``args`` these are (a log's dump or a live namespace's names)."""
    if "moe_layer_freq" in arguments or "moe_router_topk" in arguments:
        return MEGATRON_LM
    if "expert_interval" in arguments:
        return MICROSOFT
    if "glu_activation" in arguments or "pp_partition_method" in arguments:
        return BIGSCIENCE
    return None
