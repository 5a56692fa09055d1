"""Parse the ``training_log`` console line of both Megatron-DeepSpeed forks, streaming.

Both forks print one line per ``--log-interval`` on the last rank, every field written as
`` <key>: <value> |`` after a leading `` iteration <i>/<train iters> |``.  The fields this
module reads (others, such as losses and learning rate, are skipped):

===================================  ==========================  ==========================
field                                bigscience-workshop         microsoft (deepspeedai)
===================================  ==========================  ==========================
``consumed samples``                 int                         int
``consumed tokens``                  int                         int
``elapsed time per iteration (s)``   seconds, 2 decimals         —
``elapsed time per iteration (ms)``  —                           milliseconds, 1 decimal
``global batch size``                batch at log time           batch at log time
``curriculum seqlen``                with curriculum learning    with legacy/data-efficiency
                                                                 curriculum
``actual seqlen``                    —                           always
``number of skipped iterations``     int                         int
``number of nan iterations``         int                         int
``samples per second``               3 decimals                  3 decimals
``tokens per gpu per second (tgs)``  —                           3 decimals
``TFLOPs``                           the fork's estimate         the fork's estimate
===================================  ==========================  ==========================

The fork is read from the line's own fields, never from its time unit (2021 bigscience logs
print milliseconds too): ``tokens per gpu per second (tgs)`` or ``actual seqlen`` is the
microsoft fork, ``elapsed time per iteration (s)`` the bigscience fork; any other line (ms
without those) is left unknown here, and the caller may settle it from the run's arguments
dump (:func:`.arguments.fork_from_arguments`).

NVIDIA Megatron-LM (``megatron/training/training.py`` ``training_log``, read at d98e8a64)
prints the same `` key: value |`` line, times in ms, no ``consumed tokens``, and with
``--log-throughput`` the field ``throughput per GPU (TFLOP/s/GPU)`` (read as the logged TFLOPs:
Megatron-LM's own *model*-FLOPs estimate, ``num_floating_point_operations``, never counting
recompute).  Since 2024 the line starts with `` [%Y-%m-%d %H:%M:%S]``, since 2026-01 with
`` [%Y-%m-%d %H:%M:%S.%f]`` (kept as ``timestamp``).  Either the timestamp or the throughput
field names the line Megatron-LM's (``megatron-lm``); without both (a 2023 log without
``--log-throughput``) its arguments dump settles it.

The fields the megatron-flops hook appends are read too, in both their forms: ``MFU (%):
45.2`` (since issue 10) and the older ``MFU: 45.2%`` / ``MFU: n/a``.

Robustness (``parse_console_log`` never raises on input text):

- Launcher prefixes (``[default3]:``, ``3: ``, ``[1,3]<stdout>:``) are ignored: the line is
  found by its `` iteration <i>/<n> |`` anchor wherever it starts.
- A line must carry the anchor and an elapsed-time field with a positive finite value; a
  field this module reads whose value does not parse (two ranks' output glued together)
  makes the line *malformed*: counted, with its line number kept (the first few), and skipped.
- Text after the last ``|`` is an unterminated field (a truncated line, or another rank's
  text appended): it is dropped and the line is counted as *truncated*; the fields before
  it are complete and used.
- Lines of any other kind are counted as *other* lines.  Among them, Megatron's arguments
  dump (the ``------------------------ arguments ------------------------`` block, every
  ``  name ........ value`` line in it) is kept whole in ``stats.arguments``, replaced by
  each new dump (a restart, maybe re-shaped: ``stats.argument_dumps`` counts them), and the
  `` > padded vocab (size: …)`` line's new size in ``stats.padded_vocab``.  Outside a
  block, dump-like lines are remembered only for a fixed set of names (a log cut before
  its dump's header).
- Undecodable bytes are replaced (the file is read as UTF-8 with ``errors="replace"``); the
  file is read line by line, so memory does not grow with its size.
"""

import datetime
import decimal
import io
import math
import re
import sys
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from ..errors import UsageError
from . import bridge as bridge_log
from .arguments import ARGUMENT_LINE, DUMP_END, padded_vocab_size

FORKS = ("bigscience", "microsoft", "megatron-lm", "megatron-bridge")
MEGATRON_LM = "megatron-lm"

_ANCHOR = re.compile(r"iteration\s+(\d+)\s*/\s*(\d+)\s*\|")
# NVIDIA Megatron-LM's prefix of the iteration line (since 2024): " [%Y-%m-%d %H:%M:%S]",
# since 2026-01 with ".%f"; after any launcher prefix, right before the anchor
_TIMESTAMP = re.compile(r"\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(\.\d{1,6})?\]\s*$")
_DUMP_START_MARK = "- arguments -"
_DUMP_END_MARK = DUMP_END.strip("- ")

# argument names whose value relog uses (world_size) or checks against the flags given
ARGUMENT_NAMES = frozenset((
    "world_size", "num_layers", "hidden_size", "num_attention_heads", "kv_channels",
    "ffn_hidden_size", "seq_length", "num_key_value_heads", "glu_activation", "swiglu",
    "micro_batch_size", "global_batch_size", "tensor_model_parallel_size",
    "pipeline_model_parallel_size", "checkpoint_activations", "recompute_granularity",
    "num_experts", "topk", "padded_vocab_size", "make_vocab_size_divisible_by",
))

MAX_EXAMPLES = 5


class LogRecord(NamedTuple):
    """One logged interval, as the run printed it (units converted: seconds, never ms)."""

    line_number: int
    fork: Optional[str]                       # "bigscience" | "microsoft" | None (unknown)
    iteration: int
    train_iters: Optional[int]
    seconds_per_iteration: float              # the printed elapsed time per iteration
    consumed_samples: Optional[int] = None
    consumed_tokens: Optional[int] = None
    global_batch_size: Optional[int] = None   # the batch size at log time
    curriculum_seqlen: Optional[int] = None
    actual_seqlen: Optional[int] = None
    samples_per_second: Optional[float] = None
    tflops: Optional[float] = None            # the fork's own TFLOPs estimate
    tokens_per_gpu_per_second: Optional[float] = None
    skipped_iterations: Optional[int] = None
    nan_iterations: Optional[int] = None
    hook_model_tflops: Optional[float] = None     # fields the megatron-flops hook appended
    hook_hardware_tflops: Optional[float] = None
    hook_mfu: Optional[float] = None              # fractions (45.2 % -> 0.452)
    hook_hfu: Optional[float] = None
    timestamp: Optional[float] = None         # Megatron-LM's line prefix, POSIX seconds (as UTC)
    iterations: Optional[int] = None          # iterations the time covers, when the source
    job_start: bool = False                   # says (progress.txt); the span has a job start
    stamp_precise: bool = False               # Megatron-LM's stamp has .%f (2026-01 on)
    # issue 24: half a unit of the printed TFLOPs' last digit (0.0: not printed rounded, as
    # a TensorBoard scalar); the fork's unrounded figure is within ``tflops`` ± this
    tflops_resolution: float = 0.0
    time_resolution_seconds: float = 0.0      # half a unit of the printed time's last digit
    truncated: bool = False

    @property
    def seq_length(self) -> Optional[int]:
        """The sequence length the run used at log time (actual > curriculum), if printed."""
        if self.actual_seqlen is not None:
            return self.actual_seqlen
        return self.curriculum_seqlen


class ParseStats:
    """Counts of what a parse saw; ``arguments`` holds the arguments dump it recognised."""

    __slots__ = ("lines", "records", "malformed", "truncated", "other", "malformed_lines",
                 "arguments", "argument_dumps", "arguments_line", "padded_vocab",
                 "padded_vocab_line", "path", "damaged", "overlong", "overlong_lines")

    def __init__(self):
        self.lines = 0
        self.records = 0
        self.malformed = 0
        self.truncated = 0
        self.other = 0
        self.malformed_lines: List[int] = []
        self.arguments: Dict[str, str] = {}   # the latest dump: name -> printed value
        self.argument_dumps = 0                # dumps completed so far
        self.arguments_line: Optional[int] = None
        self.padded_vocab: Optional[int] = None
        self.padded_vocab_line: Optional[int] = None
        self.path: Optional[str] = None        # the file being read (several: one run's)
        self.damaged: List[dict] = []          # TensorBoard files read only in part
        self.overlong = 0                      # lines cut at MAX_LINE_CHARACTERS
        self.overlong_lines: List[int] = []    # the first few of them

    def as_dict(self) -> dict:
        return {"lines": self.lines, "records": self.records, "malformed": self.malformed,
                "truncated": self.truncated, "other": self.other,
                "malformed_line_numbers": list(self.malformed_lines),
                "damaged_files": list(self.damaged), "overlong": self.overlong,
                "overlong_line_numbers": list(self.overlong_lines)}


class Malformed(UsageError):
    """A line that has the anchor of an iteration line but cannot be trusted."""


_PAIR = re.compile(r"\s*([^\s/(]+)\s*(?:/|\(avg )\s*[-+]?(?:\d+\.?\d*|\.\d+)\)?\s*\Z")


def current_value(text: str) -> str:
    """The current value of a "current/average" pair as AMD Primus prints it
    (``13372.8/13364.7``, ``567.6 (avg 568.0)``: the average a number); any other text as
    it is (a glued line's value stays unreadable)."""
    if "/" not in text and "(avg" not in text:
        return text
    pair = _PAIR.match(text)
    return pair.group(1) if pair else text


def _current_float(text: str) -> float:
    return float(current_value(text))


def _percent(text: str) -> Optional[float]:
    """A hook field's percentage as a fraction: ``45.2`` or ``45.2%`` -> 0.452, ``n/a`` ->
    None (the hook's form before issue 10)."""
    text = text.strip()
    if text == "n/a":
        return None
    return float(text[:-1] if text.endswith("%") else text) / 100.0


# key -> (LogRecord field, converter).  Plain int/float: a value that is not a number
# raises ValueError and makes the line malformed; "nan"/"inf" pass here and are dealt with
# where the value is used (the elapsed time must be positive and finite).
_FIELDS: Dict[str, Tuple[str, type]] = {
    "consumed samples": ("consumed_samples", int),
    "consumed tokens": ("consumed_tokens", int),
    "global batch size": ("global_batch_size", int),
    "curriculum seqlen": ("curriculum_seqlen", int),
    "actual seqlen": ("actual_seqlen", int),
    "number of skipped iterations": ("skipped_iterations", int),
    "number of nan iterations": ("nan_iterations", int),
    "samples per second": ("samples_per_second", float),
    "TFLOPs": ("tflops", float),
    "tokens per gpu per second (tgs)": ("tokens_per_gpu_per_second", float),
    # NVIDIA Megatron-LM (--log-throughput): its num_floating_point_operations, model FLOPs
    "throughput per GPU (TFLOP/s/GPU)": ("tflops", _current_float),
    # AMD Primus (AMD-AGI/Primus fd1eeabb, primus/backends/megatron/patches/training_log/
    # print_rank_last_patches.py): "compute per GPU (TFLOP/s/GPU): 567.6 (avg 568.0)", and
    # before it the line above as "567.6/568.0"; the current value is read, the average not
    "compute per GPU (TFLOP/s/GPU)": ("tflops", _current_float),
    # the megatron-flops hook's fields, new form and old form
    "model TFLOP/s per gpu": ("hook_model_tflops", float),
    "hardware TFLOP/s per gpu": ("hook_hardware_tflops", float),
    "MFU (%)": ("hook_mfu", _percent),
    "HFU (%)": ("hook_hfu", _percent),
    "MFU": ("hook_mfu", _percent),
    "HFU": ("hook_hfu", _percent),
}
_TGS_INDEX = LogRecord._fields.index("tokens_per_gpu_per_second")
_PRECISE_INDEX = LogRecord._fields.index("stamp_precise")
_TIMESTAMP_INDEX = LogRecord._fields.index("timestamp")
_TFLOPS_INDEX = LogRecord._fields.index("tflops")
_TFLOPS_RESOLUTION_INDEX = LogRecord._fields.index("tflops_resolution")
_MEGATRON_LM_THROUGHPUT = "| throughput per GPU (TFLOP/s/GPU): "
_PRIMUS_COMPUTE = "| compute per GPU (TFLOP/s/GPU): "


def megatron_lm_timestamp(seconds_text: str, fraction: Optional[str] = None) -> Optional[float]:
    """POSIX seconds of Megatron-LM's ``%Y-%m-%d %H:%M:%S`` (``fraction``: ``.%f``), read as
    UTC (the log does not say its zone: only differences are used); None if not a date."""
    try:
        stamp = datetime.datetime.strptime(seconds_text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    seconds = stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
    return seconds + float(fraction) if fraction else seconds
_ACTUAL_SEQLEN_INDEX = LogRecord._fields.index("actual_seqlen")
_ELAPSED_SECONDS = "elapsed time per iteration (s)"
_ELAPSED_MS = "elapsed time per iteration (ms)"


def _decimals(text: str) -> int:
    text = text.strip()
    dot = text.find(".")
    return 0 if dot < 0 else len(text) - dot - 1


def printed_resolution(text: str) -> float:
    """Half a unit of the last digit of a printed number (its current value, for Primus's
    pairs): ``"0.00"`` -> 0.005, ``"266.3"`` -> 0.05, ``"1.2E-03"`` -> 5e-05; 0.0 for a
    value without digits (``nan``, ``inf``)."""
    text = current_value(text).strip()
    if "e" in text or "E" in text or "n" in text or "N" in text:
        try:
            exponent = decimal.Decimal(text).as_tuple().exponent
        except decimal.InvalidOperation:
            return 0.0
        return 0.5 * 10.0 ** exponent if isinstance(exponent, int) else 0.0
    return 0.5 * 10.0 ** -_decimals(text)


_INDEX = {key: (LogRecord._fields.index(name), convert)
          for key, (name, convert) in _FIELDS.items()}
_EMPTY = tuple(LogRecord._field_defaults.get(name) for name in LogRecord._fields)
_SECONDS_INDEX = LogRecord._fields.index("seconds_per_iteration")
_new_record = tuple.__new__
assert LogRecord._fields[:4] == ("line_number", "fork", "iteration", "train_iters")
assert LogRecord._fields[-2:] == ("time_resolution_seconds", "truncated")

_KEYS = ("consumed samples", "consumed tokens", _ELAPSED_SECONDS, _ELAPSED_MS,
         *(k for k in _FIELDS if k not in ("consumed samples", "consumed tokens")))
# one pass in C over the line: "| key: value" for the keys read, each value ending at the
# next "|" (a field without its closing "|" is a truncated tail and is not matched)
_FIELD = re.compile(r"\| (" + "|".join(re.escape(k) for k in _KEYS) + r"): *([^|]*)(?=\|)")


def _general_fields(line: str, start: int, fields: list, line_number: int) -> bool:
    """Fill ``fields`` from the `` key: value |`` fields after ``start`` (one regular-expression
    pass in C); True when the elapsed time was printed in seconds.  Raises :class:`Malformed`."""
    in_seconds = False
    index = _INDEX
    for key, value in _FIELD.findall(line, start):
        entry = index.get(key)
        try:
            if entry is not None:
                fields[entry[0]] = entry[1](value)
                if entry[0] == _TFLOPS_INDEX:   # its printed digits (issue 24)
                    fields[_TFLOPS_RESOLUTION_INDEX] = printed_resolution(value)
            else:  # the elapsed time, in (s) or (ms); Primus: "current/average" (ms)
                value = current_value(value)
                seconds = float(value)
                decimals = _decimals(value)
                if key == _ELAPSED_MS:
                    seconds /= 1000.0
                    fields[-2] = 0.5e-3 * 10.0 ** -decimals
                else:
                    fields[-2] = 0.5 * 10.0 ** -decimals
                    in_seconds = True
                fields[_SECONDS_INDEX] = seconds
        except ValueError:
            raise Malformed(f"line {line_number}: {key!r} has value {value.strip()!r}") from None
    return in_seconds


# A log repeats one line format (the same fields in the same order) millions of times.  The
# first line of a format is read by the general pass above, and its format is learned as one
# regular expression that matches exactly the lines whose fields are the same keys in the
# same order (each field read by the general pass is matched by its key, every other field by
# its text up to its first ":", a field without ":" by the absence of one): one C call then
# gives every value, in the order the general pass would assign them, so the record is the
# same.  A line that matches no learned format, or whose values do not convert, takes the
# general pass (the same record, the same Malformed message).
_MAX_FORMATS = 8          # tried in turn, the latest learned first
_MAX_LEARNED = 256        # then no more are learned (a log of ever-new formats: general pass)
# half a unit of the printed time's last digit, by decimals: seconds, milliseconds
_RESOLUTION_S = tuple(0.5 * 10.0 ** -decimals for decimals in range(20))
_RESOLUTION_MS = tuple(0.5e-3 * 10.0 ** -decimals for decimals in range(20))


class _LineFormat(NamedTuple):
    pattern: "re.Pattern"  # the anchor and the fields: searched, from the line's first
    read: object           # "iteration"; read(groups, line_number) -> the record's fields
    in_seconds: bool       # the time printed in seconds (else ms)
    fork: Optional[str]    # the fork the format's fields name (tgs, actual seqlen, seconds)


# The reader of one learned format is made once, as the code of one function: the record's
# fields as one list display, each read field converted from its group (no loop, no lookup
# per field).  Only numbers and the names below go into that code, never text of the log.
_READER = """
def read(g, line_number):
    t = g[{time}]
    if "/" in t or "(avg" in t:
        t = current_value(t)
    seconds = float(t)
    t = t.strip()
    dot = t.find(".")
    decimals = 0 if dot < 0 else len(t) - dot - 1
    return [{values}]
"""


def _make_reader(groups: dict, time_group: int, in_seconds: bool):
    """The reader of a format whose field ``index`` is ``convert(group)`` for
    ``groups[index] = (group, convert)`` (groups 0 and 1: the anchor's iteration and train
    iters; ``time_group``: the elapsed time's)."""
    names = {"current_value": current_value, "int": int, "float": float,
             "printed_resolution": printed_resolution}
    values = []
    for index, name in enumerate(LogRecord._fields):
        if index == 0:
            values.append("line_number")
        elif index in (2, 3):
            values.append(f"int(g[{index - 2}])")
        elif index == _SECONDS_INDEX:
            values.append("seconds" if in_seconds else "seconds / 1000.0")
        elif index == len(LogRecord._fields) - 2:
            values.append("(_RESOLUTION_S[decimals] if decimals < 20 else "
                          "0.5 * 10.0 ** -decimals)" if in_seconds else
                          "(_RESOLUTION_MS[decimals] if decimals < 20 else "
                          "0.5e-3 * 10.0 ** -decimals)")
        elif index == _TFLOPS_RESOLUTION_INDEX and _TFLOPS_INDEX in groups:
            # the logged TFLOPs' printed digits (issue 24)
            values.append(f"printed_resolution(g[{groups[_TFLOPS_INDEX][0]}])")
        elif index in groups:
            group, names[f"convert{index}"] = groups[index]
            values.append(f"convert{index}(g[{group}])")
        else:
            values.append(repr(_EMPTY[index]))
    names.update(_RESOLUTION_S=_RESOLUTION_S, _RESOLUTION_MS=_RESOLUTION_MS)
    exec(_READER.format(time=time_group, values=", ".join(values)), names)  # noqa: S102
    return names["read"]


def _learn_format(line: str, start: int) -> Optional[_LineFormat]:
    """The format of ``line`` from ``start`` (the anchor's ``|``); None without exactly one
    time field or with a field read twice (the general pass reads those lines)."""
    parts, groups = [], {}
    time_group, in_seconds = None, False
    segments = line[start + 1:].split("|")
    if segments[-1].strip():
        return None
    for segment in segments[:-1]:
        colon = segment.find(":")
        key = segment[1:colon] if colon > 0 and segment[0] == " " else None
        if key == _ELAPSED_MS or key == _ELAPSED_SECONDS:
            if time_group is not None:
                return None
            parts.append(" " + re.escape(key) + r": *([^|]*)")
            time_group = 2 + len(groups)
            in_seconds = key == _ELAPSED_SECONDS
        elif key in _INDEX:
            index, convert = _INDEX[key]
            if index in groups:
                return None
            parts.append(" " + re.escape(key) + r": *([^|]*)")
            groups[index] = (2 + len(groups) + (time_group is not None), convert)
        elif colon >= 0:   # a field not read: known by its text up to its first ":"
            parts.append(re.escape(segment[:colon + 1]) + "[^|]*")
        else:
            parts.append("[^|:]*")
    if time_group is None:
        return None
    # the anchor as _ANCHOR, then only lines that end at their last "|": a tail (a last
    # field without its "|", a cut line) is read by the general pass
    pattern = re.compile(_ANCHOR.pattern[:-2] + r"\|" + r"\|".join(parts) + r"\|\s*\Z")
    fork = ("microsoft" if _TGS_INDEX in groups or _ACTUAL_SEQLEN_INDEX in groups
            else "bigscience" if in_seconds else None)
    return _LineFormat(pattern, _make_reader(groups, time_group, in_seconds), in_seconds, fork)


_formats: List[_LineFormat] = []
_learned = [0]


def _learn(line: str, start: int) -> None:
    if _learned[0] < _MAX_LEARNED:
        learned = _learn_format(line, start)
        if learned is not None:
            _learned[0] += 1
            if len(_formats) >= _MAX_FORMATS:
                _formats.pop()
            _formats.insert(0, learned)


# Megatron-LM's throughput field as the last text of a line without its closing "|" (some
# forks end the line there: "... | throughput per GPU (TFLOP/s/GPU): 266.3"): complete when
# its value is whole as Megatron-LM prints it ({:.1f}; Primus: a current/average pair), up to
# the end of the line; any other text after the last "|" is a cut tail, not read
_ONE_DECIMAL = r"\d+\.\d"
_TAIL_FIELD = re.compile(r" ((?:throughput|compute) per GPU \(TFLOP/s/GPU\)): *("
                         + _ONE_DECIMAL + r"(?:/" + _ONE_DECIMAL + r"| \(avg " + _ONE_DECIMAL
                         + r"\))?)\s*\Z")


def _complete_tail(line: str, fields: list) -> bool:
    """Is the text after the last "|" Megatron-LM's whole throughput field (``_TAIL_FIELD``)?
    Then it is read and the line is not truncated."""
    tail = _TAIL_FIELD.match(line, line.rfind("|") + 1)
    if tail is None:
        return False
    index, convert = _INDEX[tail.group(1)]
    fields[index] = convert(tail.group(2))
    fields[_TFLOPS_RESOLUTION_INDEX] = printed_resolution(tail.group(2))
    return True


def parse_line(line: str, line_number: int = 0, fork: Optional[str] = None
               ) -> Optional[LogRecord]:
    """The record on ``line``; None when the line is not an iteration line.

    Raises :class:`Malformed` for a line that has the iteration anchor but not a usable
    elapsed time, or a field whose value does not parse.  ``fork`` forces the fork label;
    otherwise the line's fields decide it (tgs or actual seqlen: microsoft; seconds:
    bigscience; else None).  Fields are found wherever they are on the line
    (one regular-expression pass in C), so their order and any extra fields do not matter.
    """
    for line_format in _formats:   # the per-line path: a learned format, the latest first
        learned = line_format.pattern.search(line)
        if learned is None:
            continue
        anchor = learned.start()
        if line.find("iteration") == anchor:   # no anchor before: _ANCHOR's match
            try:
                fields = line_format.read(learned.groups(), line_number)
            except ValueError:    # a value that does not convert: the general pass says which
                break
            # a learned format ends at the line's last "|": never truncated
            return _record(line, fields, anchor, fork or line_format.fork,
                           line_format.in_seconds, line_number)
    match = _ANCHOR.search(line)
    if match is None:
        return None
    fields = list(_EMPTY)
    fields[0] = line_number
    fields[2] = int(match.group(1))
    fields[3] = int(match.group(2))
    start = match.end() - 1
    in_seconds = _general_fields(line, start, fields, line_number)
    if fields[_SECONDS_INDEX] is not None:
        _learn(line, start)
    fields[-1] = not line.rstrip().endswith("|") and not _complete_tail(line, fields)
    return _record(line, fields, match.start(), fork, in_seconds, line_number)


def _record(line: str, fields: list, anchor: int, fork: Optional[str], in_seconds: bool,
            line_number: int) -> LogRecord:
    """The record of ``fields`` read from ``line`` (its anchor at ``anchor``): the elapsed
    time checked, Megatron-LM's date stamp read, the fork settled."""
    seconds = fields[_SECONDS_INDEX]
    if seconds is None:
        raise Malformed(f"line {line_number}: no elapsed time per iteration")
    if not 0 < seconds < math.inf:
        raise Malformed(f"line {line_number}: elapsed time per iteration is {seconds}")
    stamped = False
    prefix = line[:anchor]
    if "[" in prefix and prefix.rstrip().endswith("]"):   # _TIMESTAMP can match
        stamp = _TIMESTAMP.search(line, 0, anchor)
        if stamp is not None:
            fields[_TIMESTAMP_INDEX] = megatron_lm_timestamp(stamp.group(1), stamp.group(2))
            stamped = fields[_TIMESTAMP_INDEX] is not None
            fields[_PRECISE_INDEX] = stamped and stamp.group(2) is not None
    if fork is None:
        if fields[_TGS_INDEX] is not None or fields[_ACTUAL_SEQLEN_INDEX] is not None:
            fork = "microsoft"
        elif in_seconds:
            fork = "bigscience"
        elif stamped or _MEGATRON_LM_THROUGHPUT in line or _PRIMUS_COMPUTE in line:
            fork = MEGATRON_LM
    fields[1] = fork
    return _new_record(LogRecord, fields)


def parse_console_log(lines: Iterable[str], stats: Optional[ParseStats] = None,
                      fork: Optional[str] = None) -> Iterator[LogRecord]:
    """Yield the iteration records of a console log, one pass, constant memory.

    ``stats`` (a :class:`ParseStats`) is updated as lines go by, so a caller can read the
    arguments dump as soon as the first record arrives (and a new one, a restart's, when
    ``stats.argument_dumps`` changes) and the counts after the last.
    """
    if stats is None:
        stats = ParseStats()
    if fork is not None and fork not in FORKS:
        raise UsageError(f"--fork must be one of {', '.join(FORKS)}, got {fork!r}")
    anchor_word = "iteration"
    number = 0
    dump = None  # the arguments block being read
    # Megatron-Bridge (issue 21): its configuration summary stands for the arguments dump, its
    # Step Time line gives the interval's TFLOP/s when the iteration line has none
    summary = bridge_log.SummaryReader()
    bridge_run = fork == bridge_log.MEGATRON_BRIDGE
    step_tflops = None
    for number, line in enumerate(lines, 1):
        if type(line) is CutLine:
            count_cut_line(stats, number)
            continue
        if anchor_word in line:
            try:
                record = parse_line(line, number,
                                    None if fork == bridge_log.MEGATRON_BRIDGE else fork)
            except Malformed:
                stats.malformed += 1
                if len(stats.malformed_lines) < MAX_EXAMPLES:
                    stats.malformed_lines.append(number)
                continue
            if record is not None:
                stats.records += 1
                if record.truncated:
                    stats.truncated += 1
                if bridge_run and record.fork in (None, MEGATRON_LM):
                    record = record._replace(fork=bridge_log.MEGATRON_BRIDGE)
                    if record.tflops is None and step_tflops is not None:
                        record = record._replace(tflops=step_tflops)
                step_tflops = None
                yield record
                continue
        if summary.inside or "Configuration Summary" in line:
            opened = not summary.inside
            if summary.feed(line):
                if opened:
                    stats.arguments_line = number
                elif not summary.inside:   # closed: the summary is this segment's dump
                    stats.arguments = bridge_log.arguments_from_config(summary.sections)
                    stats.argument_dumps += 1
                    bridge_run = True
                stats.other += 1
                continue
        if "Step Time" in line:
            step = bridge_log.step_time(line)
            if step is not None:
                step_tflops, bridge_run = step[1], True
        if " ..." in line:
            match = ARGUMENT_LINE.search(line)
            if match is not None:
                if dump is not None:
                    dump[match.group(1)] = match.group(2)
                elif match.group(1) in ARGUMENT_NAMES and not stats.argument_dumps:
                    stats.arguments.setdefault(match.group(1), match.group(2))
        elif "arguments" in line:
            if _DUMP_START_MARK in line and _DUMP_END_MARK not in line:
                dump = {}
                stats.arguments_line = number
            elif _DUMP_END_MARK in line and dump is not None:
                stats.arguments, dump = dump, None
                stats.argument_dumps += 1
                stats.padded_vocab = stats.padded_vocab_line = None
        elif "padded vocab" in line:
            padded = padded_vocab_size(line)
            if padded is not None:
                stats.padded_vocab, stats.padded_vocab_line = padded, number
        stats.other += 1
    stats.lines += number


# no log line is this long (an arguments dump's longest lines are a few kB): a longer one
# (a newline-free file) is cut here rather than read whole into memory
MAX_LINE_CHARACTERS = 1 << 20


class CutLine(str):
    """The first :data:`MAX_LINE_CHARACTERS` characters of a longer line."""


# a file's lines are read this many characters at a time (less than MAX_LINE_CHARACTERS,
# so that only a line spanning chunks can be too long) and split in C
CHUNK_CHARACTERS = 1 << 16
_LINE = re.compile(r"[^\n]*\n")


class BoundedLines:
    """A text stream's lines (``readline()``, iteration, a context manager), none longer than
    :data:`MAX_LINE_CHARACTERS`: a longer line comes as a :class:`CutLine` and its rest is
    skipped, read in pieces of that size.  ``chunked``: iteration reads the stream in chunks
    of :data:`CHUNK_CHARACTERS` (a file; the same lines, several times faster), else line by
    line (a pipe: each line as soon as it is written)."""

    def __init__(self, stream, chunked: bool = False):
        self._stream = stream
        self._chunked = chunked

    def readline(self) -> str:
        line = self._stream.readline(MAX_LINE_CHARACTERS)
        if len(line) < MAX_LINE_CHARACTERS or line.endswith("\n"):
            return line
        return self._cut(line)

    def _cut(self, line: str) -> "CutLine":
        """The start of an over-long line; its rest read in bounded pieces and dropped."""
        while True:
            rest = self._stream.readline(MAX_LINE_CHARACTERS)
            if len(rest) < MAX_LINE_CHARACTERS or rest.endswith("\n"):
                return CutLine(line)

    def __iter__(self) -> Iterator[str]:
        if self._chunked:
            yield from self._chunks()
            return
        readline, limit = self._stream.readline, MAX_LINE_CHARACTERS   # the per-line path
        while True:
            line = readline(limit)
            if len(line) == limit and not line.endswith("\n"):
                line = self._cut(line)
            elif not line:
                return
            yield line

    def _chunks(self) -> Iterator[str]:
        """The lines ``readline`` gives (a line of ``limit`` characters or more, its newline
        not counted, cut to its first ``limit``), from chunks of the stream."""
        read, limit, findall = self._stream.read, MAX_LINE_CHARACTERS, _LINE.findall
        size = min(CHUNK_CHARACTERS, limit - 1)   # whole lines in a chunk are short enough
        pending = ""     # the start of a line not ended yet (shorter than limit)
        cut = False      # the line being read was cut already: its rest is dropped
        while True:
            chunk = read(size)
            if not chunk:
                if pending:
                    yield pending
                return
            first_end = chunk.find("\n") + 1
            if not first_end:                    # the line goes on
                if not cut:
                    pending += chunk
                    if len(pending) >= limit:
                        yield CutLine(pending[:limit])
                        pending, cut = "", True
                continue
            if cut:
                cut = False
            else:
                line = pending + chunk[:first_end]
                yield line if len(line) <= limit else CutLine(line[:limit])
            end = chunk.rfind("\n") + 1
            yield from findall(chunk, first_end, end)
            pending = chunk[end:]

    def close(self) -> None:
        self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_cut_line(stats: "ParseStats", number: int) -> None:
    """A :class:`CutLine` is skipped, and counted."""
    stats.overlong += 1
    stats.other += 1
    if len(stats.overlong_lines) < MAX_EXAMPLES:
        stats.overlong_lines.append(number)


def open_log(path: str) -> BoundedLines:
    """The lines of a log file (``-`` is stdin), undecodable bytes replaced, each at most
    :data:`MAX_LINE_CHARACTERS` long (:class:`BoundedLines`)."""
    if path == "-":
        return BoundedLines(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8",
                                             errors="replace"))
    return BoundedLines(open(path, "r", encoding="utf-8", errors="replace",
                             buffering=1 << 20), chunked=True)
