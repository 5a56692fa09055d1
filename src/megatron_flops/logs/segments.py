"""Settling a run's shape: the model and run shape of a run segment (the whole log, or the
part after a restart's new arguments dump) from the flags typed and the log's arguments dump
(flags override; ``sources`` says where each value came from) and the world size (flag,
dump, launcher environment, else assumed): :func:`settle_segment`, :func:`segment_from_log`."""

import argparse
import os
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from ..megatron.args import shapes_from_args
from ..shapes import ModelShape, RunShape
from . import arguments as dump_arguments
from .console import LogRecord, ParseStats
from .reading import read_run

WORLD_SIZE_ENVIRONMENT = "WORLD_SIZE"   # set by torchrun, deepspeed and the like
FROM_ENVIRONMENT = f"launcher environment ({WORLD_SIZE_ENVIRONMENT})"
ASSUMED = "assumed (tensor × pipeline parallel size, one replica)"


class Segment(NamedTuple):
    """One run shape: the whole log, or the part after a restart's new arguments dump.

    ``sources`` maps each value that shapes the count to where it came from (the command
    line, the log's arguments, its padded vocab line, a default; the world size also the
    launcher environment or assumed); ``notes`` are one line each (``warning: …`` where
    something contradicts or is assumed)."""

    model: ModelShape
    run: RunShape
    notes: List[str]
    sources: Dict[str, str]
    namespace: argparse.Namespace
    log_interval: Optional[int]
    fork: Optional[str]             # from the dump (lines that do not name theirs)
    first_iteration: Optional[int]  # None: a shape read without iteration lines
    path: Optional[str] = None

    @property
    def world_size_source(self) -> str:
        return self.sources["world_size"]

    @property
    def world_size_assumed(self) -> bool:
        return self.world_size_source == ASSUMED

    def world_size_line(self) -> str:
        """``world size 64 (log arguments); TP 4, PP 8, DP 2``."""
        run = self.run
        return (f"world size {run.world_size} ({self.world_size_source}); TP "
                f"{run.tensor_model_parallel_size}, PP {run.pipeline_model_parallel_size}, "
                f"DP {run.data_parallel_size}")

    def provenance_lines(self) -> List[str]:
        """The short block that says which values came from where."""
        return dump_arguments.sources_lines(self.namespace, self.sources)

    def as_dict(self) -> dict:
        run = self.run
        return {"first_iteration": self.first_iteration, "path": self.path,
                "world_size": run.world_size, "world_size_source": self.world_size_source,
                "tensor_model_parallel_size": run.tensor_model_parallel_size,
                "pipeline_model_parallel_size": run.pipeline_model_parallel_size,
                "global_batch_size": run.global_batch_size, "dtype": run.dtype,
                "log_interval": self.log_interval,
                "fork": self.fork, "sources": dict(self.sources)}


def argument_warnings(args: argparse.Namespace, arguments: dict,
                      given: Optional[Iterable[str]] = None) -> List[str]:
    """Flags given (all of ``args``' set values, or just the names in ``given``) that
    contradict the arguments dump the log holds."""
    given = None if given is None else set(given)
    out = []
    for name, logged in sorted(arguments.items()):
        if given is not None and name not in given:
            continue
        given_value = getattr(args, name, None)
        if (name == "world_size" or given_value is None or given_value is False
                or logged == "None"):
            continue
        if isinstance(given_value, list):
            given_value = "[" + ", ".join(map(str, given_value)) + "]"
        if str(given_value) != logged:
            out.append(f"the log's arguments say {name} = {logged} but "
                       f"--{name.replace('_', '-')} is {given_value}")
    return out


def settle_segment(args: argparse.Namespace, given: Iterable[str], stats: ParseStats,
                   first: Optional[LogRecord], environ: Optional[Mapping[str, str]] = None,
                   path: Optional[str] = None) -> Segment:
    """The run shape for the records from ``first`` on (None: the shape alone, as ``profile
    --arguments-from`` reads it): the log's arguments dump (and its
    padded vocab line) with the flags typed (``given``: their ``dest`` names) laid over it;
    the world size from ``--world-size``, else the dump, else the launcher's environment
    (``WORLD_SIZE``), else assumed (TP × PP, one replica) with a warning."""
    from ..shapes import ShapeError
    given = set(given)
    environ = os.environ if environ is None else environ
    arguments = stats.arguments
    namespace, sources = dump_arguments.merge_flags(args, given, arguments, stats.padded_vocab)
    notes = []
    logged_world = arguments.get("world_size")
    if "world_size" in given and args.world_size is not None:
        if logged_world is not None and logged_world != str(args.world_size):
            notes.append(f"warning: the log's arguments say world_size = {logged_world} but "
                         f"--world-size {args.world_size} was given")
    elif isinstance(namespace.world_size, int) and namespace.world_size > 0:
        sources["world_size"] = dump_arguments.FROM_DUMP
    else:
        text = str(environ.get(WORLD_SIZE_ENVIRONMENT, "")).strip()
        if text.isdigit() and int(text) > 0:
            namespace.world_size = int(text)
            sources["world_size"] = FROM_ENVIRONMENT
        else:
            namespace.world_size = None
            sources["world_size"] = ASSUMED
    from ..megatron.flags import UNSUPPORTED
    for flag, value, why in dump_arguments.unsupported_features(arguments, UNSUPPORTED):
        raise ShapeError(f"not supported yet: {flag} (the log's arguments: {value}): {why}", flag)
    try:
        model, run = shapes_from_args(namespace)
    except ShapeError as error:
        if arguments:
            raise
        raise ShapeError(f"{error} (the log has no arguments dump to read it from)",
                         getattr(error, "flag", None)) from None
    source = sources["world_size"]
    if source == ASSUMED:
        notes.append(f"warning: --world-size not given, not in the log's arguments and not in "
                     f"the launcher's environment ({WORLD_SIZE_ENVIRONMENT}); assuming "
                     f"{run.world_size} (tensor × pipeline parallel size, one replica)")
    elif source == dump_arguments.FROM_DUMP:
        notes.append(f"world size {run.world_size} from the log's arguments")
    elif source == FROM_ENVIRONMENT:
        notes.append(f"world size {run.world_size} from the {FROM_ENVIRONMENT}")
    notes += [f"warning: {warning}" for warning in argument_warnings(args, arguments, given)]
    if (arguments and sources["padded_vocab_size"] == dump_arguments.FROM_DEFAULT
            and getattr(namespace, "vocab_size", None) is None):
        notes.append(f"warning: no padded vocab line in the log and no --padded-vocab-size or "
                     f"--vocab-size: assuming GPT-2's vocabulary, padded to {model.vocab_size}")
    tgs = first.tokens_per_gpu_per_second if first is not None else None
    if tgs and first.samples_per_second and first.seq_length:
        implied = first.samples_per_second * first.seq_length / tgs
        if abs(implied - run.world_size) > 0.01 * run.world_size:
            notes.append(f"warning: line {first.line_number} implies a world size of "
                         f"{implied:.1f} (samples per second × seqlen / tgs) but "
                         f"{run.world_size} is used")
    log_interval = getattr(namespace, "log_interval", None)
    if not (isinstance(log_interval, int) and not isinstance(log_interval, bool)
            and log_interval > 0):
        log_interval = None
    return Segment(model, run, notes, sources, namespace, log_interval,
                   dump_arguments.fork_from_arguments(arguments),
                   first.iteration if first is not None else None, path)


def segment_from_log(args: argparse.Namespace, given: Iterable[str], path: str) -> Segment:
    """The run shape of one run's logs (a console log or a folder of them) as their arguments
    dump gives it, the flags typed (``given``) laid over it: :func:`settle_segment`, for a
    command that needs the shape but not the iteration lines.  With several dumps (restarts)
    the last one is used and a note says so.  Raises ValueError where there is none."""
    if path != "-" and not os.path.exists(path):
        raise ValueError(f"{path!r} does not exist")
    stats = ParseStats()
    for _ in read_run([path], stats):
        pass
    if not stats.argument_dumps:
        raise ValueError(f"{path!r} has no arguments dump (the '{dump_arguments.DUMP_START}' "
                         "block Megatron prints at start-up): give the model flags instead")
    segment = settle_segment(args, given, stats, None, path=path)
    if stats.argument_dumps > 1:
        segment.notes.append(f"{stats.argument_dumps} arguments dumps in {path!r} (restarts): "
                             "the last one is used")
    return segment


def settle_run(args: argparse.Namespace, model: ModelShape, run: RunShape, stats: ParseStats,
               first: LogRecord) -> Tuple[ModelShape, RunShape, List[str]]:
    """(model, run, notes) once the first record is read, every flag set in ``args`` counted
    as typed (the log's dump fills only what they leave unset): :func:`settle_segment`."""
    given = {name for name, value in vars(args).items()
             if value is not None and not name.startswith("_")}
    segment = settle_segment(args, given, stats, first)
    return segment.model, segment.run, segment.notes
