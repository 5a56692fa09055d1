"""A ``torch.profiler`` Chrome trace (``export_chrome_trace``; ``.json`` or ``.json.gz``) as
events nested per thread, and the profiled iterations (``ProfilerStep#N`` spans).

Standard library only.  Times in the file are microseconds; here they are kept as read.

The file is streamed (:mod:`.jsonstream`): one event is decoded at a time and only the
complete (``"ph": "X"``) events are kept, each with the arguments the attribution reads
(``Input Dims``, ``Sequence number``, ``correlation``) and its repeated strings and shapes
shared, so memory follows the events kept, not the file.  No step recurses on the input's
depth.  A file that ends early (a ``.json.gz`` without its end marker, a cut ``.json``) is
read up to the cut, said in :attr:`Trace.notes` with counts; a cut before any event is an
error.  Out of memory while reading is an error that says so, with what was read.
"""

import gc
import gzip
import math
import re
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, List, Optional, Sequence

from ..errors import UsageError
from .jsonstream import JSONStream, Truncated

STEP = re.compile(r"^ProfilerStep#(\d+)$")


class Event:
    """One complete (``"ph": "X"``) event: an op, an annotation, a kernel.  (A class with
    slots, no dict per event: a large trace keeps millions.  ``children`` is an empty tuple
    until the first child is nested in.)"""

    __slots__ = ("name", "category", "ts", "dur", "pid", "tid", "args", "parent", "children")

    def __init__(self, name: str, category: str, ts: float, dur: float, pid: object,
                 tid: object, args: dict, parent: Optional["Event"] = None,
                 children: Sequence["Event"] = ()):
        self.name, self.category, self.ts, self.dur = name, category, ts, dur
        self.pid, self.tid, self.args = pid, tid, args
        self.parent, self.children = parent, children

    def __repr__(self) -> str:
        return (f"Event(name={self.name!r}, category={self.category!r}, ts={self.ts!r}, "
                f"dur={self.dur!r}, pid={self.pid!r}, tid={self.tid!r}, args={self.args!r})")

    @property
    def end(self) -> float:
        return self.ts + self.dur

    @property
    def self_time(self) -> float:
        return max(self.dur - sum(c.dur for c in self.children), 0.0)

    def ancestors(self):
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def walk(self):
        """This event and every one nested in it, depth first (no recursion: any depth)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


@dataclass(frozen=True)
class Step:
    number: int
    ts: float
    dur: float
    event: Event = field(repr=False)

    @property
    def end(self) -> float:
        return self.ts + self.dur


@dataclass
class Trace:
    events: List[Event]                 # every complete event, by start time
    roots: Dict[tuple, List[Event]]     # (pid, tid) -> top-level events of that thread
    steps: List[Step]
    device_properties: list
    path: str = ""
    notes: List[str] = field(default_factory=list)   # a partial read, said with counts

    @property
    def kernels(self) -> List[Event]:
        return [e for e in self.events if e.category in GPU_CATEGORIES]

    def device_name(self) -> Optional[str]:
        for props in self.device_properties or ():
            if isinstance(props, dict) and props.get("name") and isinstance(props["name"], str):
                return props["name"]
        return None


GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
NESTING_SLACK_US = 0.01


def load_trace(path: str) -> Trace:
    """Read a trace file; ``UsageError`` (naming the file) when it is not one."""
    name = str(path)
    opener = gzip.open if name.endswith(".gz") else open
    reader = _Reader()
    collecting = gc.isenabled()
    gc.disable()  # millions of new objects, none garbage: no collection passes over them
    try:
        reader.load(opener, path)
    except Truncated as error:
        if error.position == 0 and not error.cut:
            raise UsageError(f"TRACE {name!r} is empty") from None
        if not reader.started:
            raise UsageError(f"TRACE {name!r} is {error} before any of its traceEvents: "
                             "nothing to read") from None
        reader.notes.append(
            f"TRACE {name!r} is {error}; read the {reader.kept:,} complete events "
            f"({reader.seen:,} records) before the cut: an iteration with events after "
            "the cut is incomplete in this profile")
    except MemoryError:
        kept, seen = reader.kept, reader.seen
        reader.events = []
        raise UsageError(f"TRACE {name!r}: out of memory after reading {seen:,} records "
                         f"({kept:,} complete events kept); profile fewer iterations, or run on a "
                         "machine with more memory") from None
    except OSError as error:
        raise UsageError(f"TRACE {name!r} cannot be read: {error.strerror or error}") from None
    except (zlib.error, EOFError) as error:
        raise UsageError(f"TRACE {name!r} cannot be read: damaged compressed data ({error})") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"TRACE {name!r} is not JSON: not UTF-8 text ({error.reason})") from None
    except ValueError as error:
        raise UsageError(f"TRACE {name!r} is not JSON: {error}") from None
    finally:
        if collecting:
            gc.enable()
    if not reader.found:
        raise UsageError(f"TRACE {name!r} is not a Chrome trace (no traceEvents list)")
    try:
        trace = _build(reader.events, reader.device_properties)
    except MemoryError:
        kept = reader.kept
        reader.events = []
        raise UsageError(f"TRACE {name!r}: out of memory nesting its {kept:,} complete events; "
                         "profile fewer iterations, or run on a machine with more memory") from None
    trace.path, trace.notes = name, reader.notes
    if not trace.steps:
        raise UsageError(f"TRACE {name!r} has no ProfilerStep#N spans: profile with a "
                         "torch.profiler schedule and call prof.step() once per iteration")
    return trace


_NO_ARGS = MappingProxyType({})
_LARGEST_DIM = 1 << 62


class _Reader:
    """The document's outer object walked, its events kept one by one."""

    def __init__(self):
        self.events: List[Event] = []
        self.device_properties: list = []
        self.notes: List[str] = []
        self.found = False      # a traceEvents list (or a top-level list of events)
        self.started = False    # its first record was reached
        self.seen = 0           # records read
        self._strings: Dict[str, str] = {}
        self._ids: Dict[object, object] = {}
        self._dims: Dict[tuple, list] = {}

    @property
    def kept(self) -> int:
        return len(self.events)

    def load(self, opener, path) -> None:
        with opener(path, "rb") as handle:
            stream = JSONStream(handle)
            self.read(stream)
        if stream.cut:  # the JSON is whole, the compressed stream's end (its checksum) is not
            self.notes.append(
                f"TRACE {str(path)!r}: {stream.cut} after a whole JSON document: read all "
                f"{self.kept:,} complete events ({self.seen:,} records), but the file is cut "
                "and its checksum could not be verified")

    def read(self, stream: JSONStream) -> None:
        first = stream.peek()
        if first == "[":
            stream.take("[", "'['")
            self._events(stream)
        elif first == "{":
            stream.take("{", "'{'")
            for key in stream.keys():
                if key == "traceEvents" and stream.peek() == "[":
                    stream.take("[", "'['")
                    self.events, self.seen = [], 0  # a repeated key: the last one counts
                    self._events(stream)
                    continue
                value = stream.value()
                if key == "traceEvents":
                    self.found, self.events = False, []
                elif key == "deviceProperties":
                    self.device_properties = value if isinstance(value, list) else []
        else:
            stream.value()  # a scalar document, or an error
        stream.end()

    def _events(self, stream: JSONStream) -> None:
        self.found = self.started = True
        keep = self.keep
        for item in stream.items():
            self.seen += 1
            keep(item)

    def keep(self, item) -> None:
        """Keep ``item`` when it is a complete event (``"ph": "X"`` with finite times)."""
        if type(item) is not dict or item.get("ph") != "X":
            return
        try:
            ts, dur = float(item["ts"]), float(item.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            return
        if not (math.isfinite(ts) and math.isfinite(dur)):
            return  # no place on a timeline
        strings, ids = self._strings, self._ids
        name, category = item.get("name", ""), item.get("cat", "")
        name = strings.setdefault(name, name) if type(name) is str else _text(name)
        category = strings.setdefault(category, category) if type(category) is str else _text(category)
        pid, tid = _scalar(item.get("pid")), _scalar(item.get("tid"))
        pid, tid = ids.setdefault(pid, pid), ids.setdefault(tid, tid)
        raw = item.get("args")
        args = _NO_ARGS
        if type(raw) is dict and raw:
            args = {}
            dims = raw.get("Input Dims")
            if dims is not None:
                dims = self._shared_dims(dims)
                if dims is not None:
                    args["Input Dims"] = dims
            for key in ("Sequence number", "correlation"):
                if key in raw:
                    args[key] = _scalar(raw[key])
            if not args:
                args = _NO_ARGS
        self.events.append(Event(name, category, ts, dur, pid, tid, args))

    def _shared_dims(self, dims) -> Optional[list]:
        """The operand shapes (a list of lists of sizes), one list object per distinct shape;
        None when they are not that (a deeper or non-integer structure is not a shape)."""
        if type(dims) is not list:
            return None
        key = []
        for item in dims:
            if type(item) is not list:
                return None
            for size in item:
                if type(size) is not int or not 0 <= size < _LARGEST_DIM:
                    return None
            key.append(tuple(item))
        key = tuple(key)
        return self._dims.setdefault(key, dims)


def _scalar(value):
    """A JSON scalar as is (a key or id); a container as a short text, never recursing."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    return f"<{type(value).__name__}>"


def _text(value) -> str:
    return str(_scalar(value))


def trace_from_events(raw: list, device_properties=()) -> Trace:
    """A trace from decoded records (what ``traceEvents`` holds)."""
    reader = _Reader()
    for item in raw:
        reader.keep(item)
    return _build(reader.events, list(device_properties))


def _build(events: List[Event], device_properties: list) -> Trace:
    events.sort(key=lambda e: (e.ts, -e.dur))
    roots: Dict[tuple, List[Event]] = {}
    open_spans: Dict[tuple, List[Event]] = {}
    for event in events:
        key = (event.pid, event.tid)
        stack = open_spans.get(key)
        if stack is None:
            stack = open_spans[key] = []
        # an event is inside the innermost open span that contains it (times are rounded
        # to nanoseconds in the file: a child may end a hair after its parent)
        while stack and not (event.ts < stack[-1].end and event.end <= stack[-1].end + NESTING_SLACK_US):
            stack.pop()
        if stack:
            parent = event.parent = stack[-1]
            if parent.children:
                parent.children.append(event)
            else:
                parent.children = [event]
        else:
            roots.setdefault(key, []).append(event)
        stack.append(event)
    steps = []
    for event in events:
        match = STEP.match(event.name)
        if match and not event.category.startswith("gpu_"):
            steps.append(Step(int(match.group(1)), event.ts, event.dur, event))
    # a GPU trace may repeat the step span on the device timeline: keep the host's
    steps = list({s.number: s for s in reversed(steps)}.values())
    steps.sort(key=lambda s: s.number)
    return Trace(events, roots, steps, list(device_properties))
