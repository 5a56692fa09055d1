"""Read the forks' TensorBoard tags back as log records; write corrected runs.

Needs the ``tensorboard`` extra (imported here, lazily by ``relog``).

Tags read (step = iteration in both forks):

- ``iteration-time/iteration-time``: seconds per iteration over the log interval (both
  forks, only with ``--log-timers-to-tensorboard``).
- ``iteration-time/TFLOPs per gpu (estimated)``, ``iteration-time/samples per second``:
  bigscience only (same flag).  The microsoft fork sends throughput to W&B, not TensorBoard,
  so its runs have no logged TFLOPs to compare and only the corrected figures come out.
- ``steps-vs-samples/y=samples,x=steps`` and ``steps-vs-tokens/y=tokens,x=steps``: consumed
  samples and tokens (both forks, every ``--tensorboard-log-interval``).
- ``batch-size/batch-size`` (with ``--log-batch-size-to-tensorboard``); without it, the
  step's increase of the consumed samples (they are written every iteration by default).
- ``curriculum_seqlen`` (bigscience, bare), ``seqlen/actual_seq_length`` and
  ``seqlen/curriculum_seqlen`` (microsoft).

bigscience writes through ``add_scalar(..., new_style=True)`` with torch ≥ 1.9, so its
scalars are stored as tensors; both kinds are read.  The event files are read here
(:func:`read_scalars`), record by record with their checksums, so a damaged file is read up
to the damage and said with counts.
"""

import os
import time
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import UsageError
from .console import LogRecord, ParseStats

ITERATION_TIME = "iteration-time/iteration-time"
TFLOPS = "iteration-time/TFLOPs per gpu (estimated)"
SAMPLES_PER_SECOND = "iteration-time/samples per second"
BATCH_SIZE = "batch-size/batch-size"
CONSUMED_SAMPLES = "steps-vs-samples/y=samples,x=steps"
CONSUMED_TOKENS = "steps-vs-tokens/y=tokens,x=steps"
BIGSCIENCE_CURRICULUM = "curriculum_seqlen"
MICROSOFT_ACTUAL_SEQLEN = "seqlen/actual_seq_length"
MICROSOFT_CURRICULUM = "seqlen/curriculum_seqlen"

TAGS_READ = (ITERATION_TIME, TFLOPS, SAMPLES_PER_SECOND, BATCH_SIZE, CONSUMED_SAMPLES,
             CONSUMED_TOKENS, BIGSCIENCE_CURRICULUM, MICROSOFT_ACTUAL_SEQLEN,
             MICROSOFT_CURRICULUM)


def _require_tensorboard():
    try:
        from tensorboard.backend.event_processing import event_accumulator  # noqa: F401
    except ImportError:
        raise ImportError("reading or writing TensorBoard runs needs the tensorboard package: "
                          "pip install -e '.[tensorboard]' in a megatron-flops clone") from None


def is_event_file(path: str) -> bool:
    return "tfevents" in os.path.basename(path)


def _has_event_files(directory: str) -> bool:
    try:
        return any(is_event_file(name) for name in os.listdir(directory))
    except OSError:
        return False


def find_runs(directory: str) -> List[str]:
    """Directories under ``directory`` (itself included) that hold event files."""
    runs = []
    for root, _, files in os.walk(directory):
        if any(is_event_file(name) for name in files):
            runs.append(root)
    return sorted(runs)


# a TensorBoard record: uint64 length, uint32 masked CRC-32C of the length, the data,
# uint32 masked CRC-32C of the data (little-endian; tensorboard's RecordWriter)
_HEADER_BYTES, _FOOTER_BYTES = 12, 4


def _event_records(path: str, damaged: List[dict]) -> Iterator[bytes]:
    """The serialized events of one event file, in order.  At the first record that is cut
    short or fails its checksum the reading stops (what follows cannot be framed) and
    ``damaged`` gets ``{"file", "records_read", "stopped_at_byte", "file_bytes",
    "reason"}``."""
    import struct

    from tensorboard.summary.writer.record_writer import masked_crc32c

    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        records = offset = 0
        while True:
            header = stream.read(_HEADER_BYTES)
            if not header:
                return
            reason = None
            if len(header) < _HEADER_BYTES:
                reason = "the file ends inside a record's header (truncated)"
            elif masked_crc32c(header[:8]) != struct.unpack("<I", header[8:])[0]:
                reason = "a record's length fails its checksum (CRC)"
            else:
                length = struct.unpack("<Q", header[:8])[0]
                if length > size - offset - _HEADER_BYTES - _FOOTER_BYTES:
                    reason = "the file ends inside a record (truncated)"
                else:
                    data = stream.read(length)
                    footer = stream.read(_FOOTER_BYTES)
                    if (len(data) < length or len(footer) < _FOOTER_BYTES
                            or masked_crc32c(data) != struct.unpack("<I", footer)[0]):
                        reason = "a record's data fails its checksum (CRC)"
            if reason is not None:
                damaged.append({"file": path, "records_read": records,
                                "stopped_at_byte": offset, "file_bytes": size,
                                "reason": reason})
                return
            yield data
            records += 1
            offset += _HEADER_BYTES + length + _FOOTER_BYTES


def damage_warning(damage: dict) -> str:
    """One line for a damaged event file (:func:`read_scalars`' ``damaged`` entries)."""
    return (f"warning: TensorBoard file {damage['file']} is damaged: {damage['reason']} at "
            f"byte {damage['stopped_at_byte']:,} of {damage['file_bytes']:,}; read "
            f"{damage['records_read']:,} records before it, the rest of that file is not "
            "read (its intervals are missing)")


def read_scalars(path: str, tags=TAGS_READ, damaged: Optional[List[dict]] = None
                 ) -> Tuple[Dict[str, Dict[int, float]], List[str]]:
    """(tag -> {step: value} for those of ``tags`` present, every scalar or tensor tag name
    in the run) of an event file, or of the event files directly in a run folder (in name
    order, as TensorBoard reads them).  A later event of the same tag and step replaces an
    earlier one; a ``SessionLog.START`` at step N drops every event at step N or later
    before it (a restart, as TensorBoard purges).  A file that is truncated or fails a
    checksum is read up to there and described in ``damaged`` (:func:`_event_records`)."""
    _require_tensorboard()
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    from tensorboard.util import tensor_util

    if damaged is None:
        damaged = []
    files = ([os.path.join(path, name) for name in event_files(path)]
             if os.path.isdir(path) else [path])
    wanted = set(tags)
    scalars: Dict[str, Dict[int, float]] = {}
    names = set()
    for name in files:
        for record in _event_records(name, damaged):
            try:
                event = Event.FromString(record)
            except DecodeError:   # framed and checksummed, yet not an event: written so
                raise UsageError(f"PATH {name!r} is not a TensorBoard event file (a record "
                                 "that is not an event)") from None
            if (event.HasField("session_log")
                    and event.session_log.status == SessionLog.START):
                for values in scalars.values():
                    for step in [step for step in values if step >= event.step]:
                        del values[step]
                continue
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    number = float(value.simple_value)
                elif kind == "tensor":
                    number = None
                else:
                    continue
                names.add(value.tag)
                if value.tag not in wanted:
                    continue
                if number is None:
                    number = float(tensor_util.make_ndarray(value.tensor).item())
                scalars.setdefault(value.tag, {})[event.step] = number
    return scalars, sorted(names)


def detect_fork(tag_names) -> Optional[str]:
    names = set(tag_names)
    if TFLOPS in names or BIGSCIENCE_CURRICULUM in names or any(
            t.startswith("time/") or t.endswith("vs gigaflos (without embeddings)") for t in names):
        return "bigscience"
    if MICROSOFT_ACTUAL_SEQLEN in names or any(t.startswith("seqlen/") for t in names):
        return "microsoft"
    return None


def _int_or_none(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(round(value))


def read_tensorboard_run(path: str, stats: Optional[ParseStats] = None,
                         fork: Optional[str] = None) -> Iterator[LogRecord]:
    """Log records, one per logged interval (a step with an iteration-time tag).

    Raises UsageError when ``path`` holds no run or a run without the iteration-time tags
    (the run was not started with ``--log-timers-to-tensorboard``).
    """
    if stats is None:
        stats = ParseStats()
    if os.path.isdir(path) and not _has_event_files(path):
        runs = find_runs(path)
        if not runs:
            raise UsageError(f"PATH {path!r} holds no TensorBoard event files")
        if len(runs) > 1:
            shown = ", ".join(os.path.relpath(r, path) for r in runs[:5])
            raise UsageError(f"PATH {path!r} holds {len(runs)} TensorBoard runs ({shown}"
                             f"{', …' if len(runs) > 5 else ''}); give one of them")
        path = runs[0]
    damaged: List[dict] = []
    scalars, tag_names = read_scalars(path, damaged=damaged)
    stats.damaged += damaged
    time_tags = [scalars.get(t, {}) for t in (ITERATION_TIME, TFLOPS, SAMPLES_PER_SECOND)]
    steps = sorted(set().union(*[t.keys() for t in time_tags]))
    if not steps and damaged:
        raise UsageError(f"PATH {path!r}: no intervals read; "
                         + damage_warning(damaged[0])[len("warning: "):])
    if not steps:
        raise UsageError(
            f"PATH {path!r} has no {ITERATION_TIME!r} or {TFLOPS!r} tags: the run was not "
            "logged with --log-timers-to-tensorboard; relog its console log instead")
    fork = fork or detect_fork(tag_names)
    seconds_tag, tflops_tag, sps_tag = time_tags
    batch_tag = scalars.get(BATCH_SIZE, {})
    samples_tag = scalars.get(CONSUMED_SAMPLES, {})
    tokens_tag = scalars.get(CONSUMED_TOKENS, {})
    curriculum_tag = scalars.get(BIGSCIENCE_CURRICULUM) or scalars.get(MICROSOFT_CURRICULUM, {})
    actual_tag = scalars.get(MICROSOFT_ACTUAL_SEQLEN, {})
    stats.lines = len(steps)
    for step in steps:
        batch = _int_or_none(batch_tag.get(step))
        if batch is None and step in samples_tag and step - 1 in samples_tag:
            # no batch-size tag: the step's own increase of the consumed samples
            batch = _int_or_none(samples_tag[step] - samples_tag[step - 1]) or None
        sps = sps_tag.get(step)
        seconds = seconds_tag.get(step)
        if seconds is None and batch and sps:
            seconds = batch / sps
        if seconds is None or not seconds > 0:
            stats.malformed += 1
            if len(stats.malformed_lines) < 5:
                stats.malformed_lines.append(step)
            continue
        stats.records += 1
        yield LogRecord(
            line_number=0, fork=fork, iteration=int(step), train_iters=None,
            seconds_per_iteration=float(seconds),
            consumed_samples=_int_or_none(samples_tag.get(step)),
            consumed_tokens=_int_or_none(tokens_tag.get(step)),
            global_batch_size=batch,
            curriculum_seqlen=_int_or_none(curriculum_tag.get(step)),
            actual_seqlen=_int_or_none(actual_tag.get(step)),
            samples_per_second=sps,
            tflops=tflops_tag.get(step),
        )


class EventWriter:
    """A minimal TensorBoard writer: ``add_scalar(tag, value, step)``, ``close()`` and
    ``discard()``.

    Writes one event file in ``logdir`` synchronously (no writer thread: a full disk is an
    ``OSError`` in the caller, not a thread's traceback) under a temporary name that
    TensorBoard does not read (:class:`.pending.PendingFile`); ``close()`` renames it to
    ``events.out.tfevents.…``, ``discard()`` removes it.  Uses tensorboard's own record
    framing, so no torch is needed to write a run.
    """

    def __init__(self, logdir: str, flag: str = "--write-tensorboard"):
        _require_tensorboard()
        import socket

        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        from .pending import PendingFile, make_folder

        self._event, self._summary = Event, Summary
        self._created = make_folder(flag, logdir)
        self.name = os.path.join(logdir, "events.out.tfevents.%010d.%s.%s.relog" % (
            time.time(), socket.gethostname(), os.getpid()))
        try:
            # the temporary name has no "tfevents": TensorBoard skips it while it is written
            self._file = PendingFile(flag, self.name, binary=True, prefix=".relog-events.",
                                     shown=logdir)
        except BaseException:
            self._remove_folders()
            raise
        self._records = RecordWriter(self._file)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        """The event file, renamed into place (a second writer in the same second gets its
        own name)."""
        name, number = self.name, 1
        while os.path.lexists(name):
            number += 1
            name = f"{self.name}.{number}"
        self._file.commit(name)
        self.name = name

    def discard(self) -> None:
        """Nothing written: the temporary file removed, and the folders this writer made."""
        self._file.discard()
        self._remove_folders()

    def _remove_folders(self) -> None:
        from .pending import remove_folders
        remove_folders(self._created)


def event_files(directory: str) -> List[str]:
    """The event files directly in ``directory`` (those TensorBoard reads as its run)."""
    try:
        return sorted(name for name in os.listdir(directory) if is_event_file(name))
    except OSError:
        return []
