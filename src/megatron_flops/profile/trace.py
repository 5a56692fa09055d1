"""A ``torch.profiler`` Chrome trace (``export_chrome_trace``; ``.json`` or ``.json.gz``) as
events nested per thread, and the profiled iterations (``ProfilerStep#N`` spans).

Standard library only.  Times in the file are microseconds; here they are kept as read.
"""

import gzip
import json
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import UsageError

STEP = re.compile(r"^ProfilerStep#(\d+)$")


@dataclass(eq=False)
class Event:
    """One complete (``"ph": "X"``) event: an op, an annotation, a kernel."""

    name: str
    category: str
    ts: float                 # start, µs
    dur: float                # µs
    pid: object
    tid: object
    args: dict
    parent: Optional["Event"] = field(default=None, repr=False)
    children: List["Event"] = field(default_factory=list, repr=False)

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
        yield self
        for child in self.children:
            yield from child.walk()


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

    @property
    def kernels(self) -> List[Event]:
        return [e for e in self.events if e.category in GPU_CATEGORIES]

    def device_name(self) -> Optional[str]:
        for props in self.device_properties or ():
            if isinstance(props, dict) and props.get("name"):
                return str(props["name"])
        return None


GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
NESTING_SLACK_US = 0.01


def load_trace(path: str) -> Trace:
    """Read a trace file; ``ValueError`` (naming the file) when it is not one."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt") as handle:
            data = json.load(handle)
    except OSError as error:
        raise UsageError(f"TRACE {str(path)!r} cannot be read: {error.strerror or error}") from None
    except ValueError as error:
        raise UsageError(f"TRACE {str(path)!r} is not JSON: {error}") from None
    if isinstance(data, list):
        data = {"traceEvents": data}
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise UsageError(f"TRACE {str(path)!r} is not a Chrome trace (no traceEvents list)")
    trace = trace_from_events(data["traceEvents"], data.get("deviceProperties") or [])
    trace.path = str(path)
    if not trace.steps:
        raise UsageError(f"TRACE {str(path)!r} has no ProfilerStep#N spans: profile with a "
                         "torch.profiler schedule and call prof.step() once per iteration")
    return trace


def trace_from_events(raw: list, device_properties=()) -> Trace:
    events = []
    for item in raw:
        if not isinstance(item, dict) or item.get("ph") != "X":
            continue
        try:
            ts, dur = float(item["ts"]), float(item.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            continue
        events.append(Event(str(item.get("name", "")), str(item.get("cat", "")), ts, dur,
                            item.get("pid"), item.get("tid"), item.get("args") or {}))
    events.sort(key=lambda e: (e.ts, -e.dur))
    roots: Dict[tuple, List[Event]] = {}
    open_spans: Dict[tuple, List[Event]] = {}
    for event in events:
        key = (event.pid, event.tid)
        stack = open_spans.setdefault(key, [])
        # an event is inside the innermost open span that contains it (times are rounded
        # to nanoseconds in the file: a child may end a hair after its parent)
        while stack and not (event.ts < stack[-1].end and event.end <= stack[-1].end + NESTING_SLACK_US):
            stack.pop()
        if stack:
            event.parent = stack[-1]
            stack[-1].children.append(event)
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
