"""One place that resolves a run: a pasted command (or a run's ``args``) -> shapes + provenance.

:func:`resolve_command` reads a pasted launch line whole: the launcher's words (the world size,
:mod:`.launch`), the script's flags in the dialect of their framework (:mod:`.dialects`), the
tokenizer's vocabulary (:mod:`.vocab`), the flag catalogue's verdict on the rest.  It returns
the shapes with every value that was not given but inferred or assumed as one list of
:class:`Assumption` values — printed on the same screen and in ``--json`` — and never writes
onto the caller's namespace.  :func:`apply_dialect` is the part a log's dump or a hook's
``args`` shares.  Standard library only.
"""

import argparse
from dataclasses import dataclass, replace
from typing import List, Mapping, Optional, Sequence, Tuple

from ..shapes import ModelShape, RunShape, ShapeError
from . import dialects as dl
from .features import as_typed, check_typed_schedule, run_notes
from .launch import Launcher, WorldSize, split_launcher, world_size
from .vocab import GPT2_BPE_VOCAB_SIZE, tokenizer_vocab

__all__ = ["Assumption", "ResolvedRun", "resolve_command", "resolve_namespace", "apply_dialect",
           "vocabulary", "INFERRED", "ASSUMED"]

INFERRED, ASSUMED = "inferred", "assumed"


@dataclass(frozen=True)
class Assumption:
    """A value the command did not give: ``inferred`` from evidence (said), or ``assumed``
    (a guess: a warning naming ``flag``, the flag that settles it; an error with --strict)."""

    what: str
    value: object
    source: str
    kind: str = INFERRED
    flag: Optional[str] = None
    #: an assumed value also warned about on stderr (False: said on the result's screen and in
    #: --json only — the world size, and a vocabulary when the command names no tokenizer)
    warn: bool = True

    def line(self) -> str:
        if self.kind == ASSUMED:
            give = f": give {self.flag}" if self.flag else ""
            return f"{self.what} {self.value} ASSUMED ({self.source}){give}"
        return f"{self.what} {self.value} ({self.source})"

    def as_dict(self) -> dict:
        value = self.value if isinstance(self.value, (int, float, str, type(None))) else \
            str(self.value)
        return {"what": self.what, "value": value, "source": self.source, "kind": self.kind,
                "flag": self.flag}


@dataclass(frozen=True)
class ResolvedRun:
    """What a command resolves to: the shapes, the dialect, and the provenance record."""

    model: ModelShape
    run: RunShape
    dialect: dl.DialectChoice
    assumptions: Tuple[Assumption, ...]
    notes: Tuple[str, ...] = ()          # flags accepted with a note ("--flag: why")
    launcher: Optional[Launcher] = None

    @property
    def world_size_assumed(self) -> bool:
        return any(a.what == "world size" and a.kind == ASSUMED for a in self.assumptions)

    @property
    def world_size_source(self) -> Optional[str]:
        """Where the world size came from; None: assumed (as ``--json`` has always said)."""
        for a in self.assumptions:
            if a.what == "world size":
                return None if a.kind == ASSUMED else a.source
        return "--world-size"

    def lines(self) -> List[str]:
        """The provenance block (``megatron-flops:`` prefix not included)."""
        return [a.line() for a in self.assumptions]

    def as_dict(self) -> dict:
        return {"dialect": {"name": self.dialect.name, "reason": self.dialect.reason,
                            "candidates": list(self.dialect.candidates)},
                "assumptions": [a.as_dict() for a in self.assumptions],
                "notes": list(self.notes)}


def _is_set(ns, name: str) -> bool:
    return getattr(ns, name, None) is not None


def apply_dialect(ns: argparse.Namespace, choice: dl.DialectChoice
                  ) -> Tuple[argparse.Namespace, List[Assumption]]:
    """A copy of ``ns`` with the dialect's defaults for the FLOP-changing values it leaves
    unset, and what that assumed (ambiguous dialect) or inferred (settled one)."""
    from .args import _int_list
    out = argparse.Namespace(**vars(ns))
    notes: List[Assumption] = []
    differing = {d.dest for d in choice.differing_defaults(ns)}
    moe = dl._moe(ns)
    dialect = choice.dialect
    if moe and not _is_set(ns, "moe_layer_freq") and not _is_set(ns, "expert_interval"):
        if "moe_layer_freq" in dialect.defaults:
            out.moe_layer_freq = dialect.defaults["moe_layer_freq"]
            experts = _int_list(getattr(ns, "num_experts", None) or
                                getattr(ns, "num_moe_experts", None))
            if experts is not None and len(experts) > 1:
                raise ShapeError("--num-experts takes one number in Megatron-LM (a list per MoE "
                                 "layer is the microsoft fork's: give --framework microsoft)",
                                 "--num-experts")
            value = "every layer"
        else:
            out.expert_interval = dialect.defaults.get("expert_interval", 2)
            n = out.expert_interval
            value = f"every {n} layers (layers {n}, {2 * n}, …)" if n > 1 else "every layer"
        notes.append(Assumption("MoE layers", value, f"the {dialect.name} default",
                                ASSUMED if "moe_layers" in differing else INFERRED,
                                "--moe-layer-freq (Megatron-LM) or --expert-interval (microsoft)"))
    if moe and not _is_set(ns, "topk") and not _is_set(ns, "moe_router_topk"):
        out.topk = dialect.defaults.get("topk", 1)
        notes.append(Assumption("MoE top-k", out.topk, f"the {dialect.name} default",
                                ASSUMED if "topk" in differing else INFERRED,
                                "--moe-router-topk (Megatron-LM) or --topk (microsoft)"))
    return out, notes


def vocabulary(ns, choice: dl.DialectChoice) -> Tuple[Optional[int], List[Assumption]]:
    """The tokenizer's size for :func:`.args.padded_vocab_size` (None: ``--padded-vocab-size``
    given), and what was inferred or assumed to find it."""
    from .args import padded_vocab_size
    if _is_set(ns, "padded_vocab_size"):
        return None, []
    adds_eod = choice.name != dl.MEGATRON_LM and choice.name != dl.MEGATRON_BRIDGE
    found = tokenizer_vocab(ns, null_tokenizer_adds_eod=adds_eod)
    if found.size is None:
        return GPT2_BPE_VOCAB_SIZE, [Assumption(
            "vocabulary", GPT2_BPE_VOCAB_SIZE, f"{found.source}: GPT-2's BPE size",
            ASSUMED, "--vocab-size (the tokenizer's size) or --padded-vocab-size")]
    if found.source == "--vocab-size":
        return found.size, []
    named = any(_is_set(ns, n) for n in ("tokenizer_type", "tokenizer_model", "vocab_file",
                                          "tokenizer_name_or_path"))
    kind = ASSUMED if found.assumed else INFERRED
    if found.assumed and not named:
        return found.size, [Assumption("vocabulary", found.size, found.source, ASSUMED,
                                       "--vocab-size", warn=False)]
    if getattr(ns, "tokenizer_type", None) == "NullTokenizer" and choice.name == dl.MEGATRON_LM:
        tp = getattr(ns, "tensor_model_parallel_size", None) or 1
        divisible = getattr(ns, "make_vocab_size_divisible_by", None) or 128
        now = padded_vocab_size(found.size, divisible, tp)
        before = padded_vocab_size(found.size + 1, divisible, tp)
        if now != before:  # the era changes the padded size: say which one is counted
            return found.size, [Assumption(
                "vocabulary", found.size, f"{found.source} (Megatron-LM since 2026-04; a "
                f"checkout before c9dfe34798 adds the eod token: padded {before}, not {now})",
                ASSUMED, "--padded-vocab-size")]
        return found.size, []
    flag = "--vocab-size" if kind == ASSUMED else None
    return found.size, [Assumption("vocabulary", found.size, found.source, kind, flag)]


def _typed_flags(argv: Sequence[str]) -> List[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def choose_dialect(ns, argv: Sequence[str]) -> dl.DialectChoice:
    """The dialect of a pasted command (``--framework`` overrides the evidence)."""
    from .args import _int_list
    words = [a for a in argv if not a.startswith("-")]
    deepspeed = bool(getattr(ns, "deepspeed_pipeline_model", None))
    facts = []
    experts = _int_list(getattr(ns, "num_experts", None))
    if experts is not None and len(experts) > 1:
        facts.append(((dl.MICROSOFT,), "--num-experts with one number per MoE layer "
                                       "(microsoft only)"))
    return dl.infer_dialect(_typed_flags(argv), words, getattr(ns, "framework", None),
                            deepspeed=deepspeed, facts=facts)


def resolve_namespace(ns: argparse.Namespace, argv: Sequence[str] = (),
                      launcher: Optional[Launcher] = None, strict: bool = False,
                      environ: Optional[Mapping[str, str]] = None,
                      notes: Sequence[str] = ()) -> ResolvedRun:
    """Resolve a namespace parsed from a pasted command (``argv``: its words, for evidence)."""
    from .args import shapes_from_args
    choice = choose_dialect(ns, argv)
    for flag in _typed_flags(argv):
        if flag in choice.dialect.removed and not choice.ambiguous:
            raise ShapeError(choice.dialect.removed[flag], flag)
    resolved, assumptions = apply_dialect(ns, choice)
    # the pasted --deepspeed has its own destination: the demo's --deepspeed (its engine, no
    # pipeline model) is never read as the fork's pipeline model
    resolved.deepspeed = bool(getattr(ns, "deepspeed_pipeline_model", None))
    resolved.deepspeed_pipeline_model = resolved.deepspeed
    vocab, vocab_notes = vocabulary(ns, choice)
    if vocab is not None:
        resolved.vocab_size = vocab
    assumptions += vocab_notes
    world: WorldSize = world_size(getattr(ns, "world_size", None), launcher, environ)
    resolved.world_size = world.value
    model, run = shapes_from_args(resolved)
    if world.assumed:
        parts = ("TP × PP" + (" × SP" if run.sequence_parallel_size > 1 else "")
                 + (" × CP" if run.context_parallel_size > 1 else ""))
        assumptions.append(Assumption("world size", run.world_size,
                                      f"{parts}, one data-parallel replica", ASSUMED,
                                      "--world-size (or set WORLD_SIZE, or paste the launch "
                                      "line) for per-GPU figures", warn=False))
    elif world.source != "--world-size":
        assumptions.append(Assumption("world size", run.world_size, world.source))
    ambiguous = choice.differing_defaults(ns)
    dialect_kind = ASSUMED if ambiguous else INFERRED
    source = choice.reason
    if ambiguous:
        source += ("; its defaults differ from " + " and ".join(
            c for c in choice.candidates if c != choice.name) + " here: "
            + ", ".join(d.what for d in ambiguous))
    assumptions.insert(0, Assumption("dialect", choice.name, source, dialect_kind,
                                     "--framework NAME" if ambiguous else None))
    if strict:
        for a in assumptions:
            if a.kind == ASSUMED and a.what != "world size":
                raise ShapeError(f"--strict: {a.what} {a.value} would be assumed "
                                 f"({a.source}); give {a.flag}", a.flag and a.flag.split()[0])
    return ResolvedRun(model, run, choice, tuple(assumptions), tuple(notes), launcher)


def resolve_command(argv: Sequence[str], parser: Optional[argparse.ArgumentParser] = None,
                    environ: Optional[Mapping[str, str]] = None):
    """(namespace, resolved, flag report, leftovers) of a pasted command line, launcher and
    all.  Raises ShapeError (one line naming the flag) for what cannot be counted."""
    from .args import check_flags, parse_megatron_args
    launcher, rest = split_launcher(argv)
    ns, unknown = parse_megatron_args(rest, parser)
    report = check_flags(unknown, getattr(ns, "strict_flags", False),
                         lenient=getattr(ns, "lenient_flags", False))
    check_typed_schedule(rest)
    try:
        resolved = resolve_namespace(ns, rest, launcher, getattr(ns, "strict_flags", False),
                                     environ, [f"{flag}: {note}" for flag, note in report.noted])
    except ShapeError as error:   # named as the user typed it (an old spelling)
        raise as_typed(error, rest) from None
    accepted = run_notes(resolved.run)   # features read with a note (recompute modules, …)
    if accepted:
        report.noted.extend(accepted)
        resolved = replace(resolved, notes=resolved.notes + tuple(
            f"{flag}: {note}" for flag, note in accepted))
    return ns, resolved, report, unknown
