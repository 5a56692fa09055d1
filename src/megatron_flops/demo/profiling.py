"""``--profile``: a few iterations of the demo under ``torch.profiler``, their Chrome trace,
and at the end the table of where the time went (:mod:`megatron_flops.profile`).

The model opens a ``record_function`` span per component (:mod:`megatron_flops.profile.scopes`)
so every matmul is attributed by name.  One warm-up iteration before the profiled ones is
recorded and dropped (the profiler's own start-up).  On CUDA the device is synchronised at
the end of each profiled iteration, so each ``ProfilerStep`` span covers its own kernels.
Each rank writes ``trace_rank<R>.json`` (and the last rank the table and a PNG).
"""

import os
import time
from typing import Dict, Optional

from ..errors import UsageError
from ..profile.attribute import attribute
from ..profile.plot import write_png
from ..profile.report import table_lines
from ..profile.trace import load_trace
from .session import Session


class DemoProfiler:
    def __init__(self, session: Session):
        from torch.profiler import ProfilerActivity, profile, schedule
        from ..profile.scopes import install_scopes
        self.session = session
        config = session.config
        self.iterations = config.profiled_iterations
        os.makedirs(config.profile_dir, exist_ok=True)
        self.path = os.path.join(config.profile_dir, f"trace_rank{session.dist.rank}.json")
        self.handles = install_scopes(session.gpt)
        activities = [ProfilerActivity.CPU]
        if session.cuda:
            activities.append(ProfilerActivity.CUDA)
        # iteration i runs in profiler step i - 1: wait, one warm-up step, then the active ones
        self.profiler = profile(
            activities=activities, record_shapes=True, on_trace_ready=self._save,
            schedule=schedule(wait=self.iterations.start - 2, warmup=1,
                              active=len(self.iterations), repeat=1))
        self.profiler.start()
        self.saved = False
        self.started: Optional[float] = None
        self.wall_seconds: Dict[int, float] = {}  # perf_counter time of each profiled iteration

    def _save(self, profiler) -> None:
        profiler.export_chrome_trace(self.path)
        self.saved = True

    def before_iteration(self, iteration: int) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def after_iteration(self, iteration: int) -> None:
        """End the profiler's step: a ``ProfilerStep`` span runs from one ``step()`` to the
        next, so it holds the loop's logging between iterations too, as the wall clock
        kept here does."""
        if self.profiler is None:
            return
        if iteration in self.iterations:
            self.session.synchronize()
            self.wall_seconds[iteration] = time.perf_counter() - self.started
        self.profiler.step()  # exports the trace after the last profiled iteration
        self.started = time.perf_counter()
        if iteration >= self.iterations.stop - 1:
            self.close()

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def analyse(self):
        """The trace joined with the run's breakdown (a :class:`~megatron_flops.profile.attribute.Profile`)."""
        config = self.session.config
        return attribute(load_trace(self.path), config.model, config.run,
                         peak_tflops=self.session.peak_tflops,
                         peak_source=self.session.peak_source)

    def report(self) -> None:
        """Print the table (last rank) and write the PNG beside the trace."""
        self.close()
        say = self.session.say
        if not self.saved:
            say(f"--profile: no trace was written (iterations {self.iterations.start}-"
                f"{self.iterations.stop - 1} did not run)")
            return
        if not self.session.dist.is_last_rank:
            return
        profile = self.analyse()
        say("")
        say(f"profile of iterations {self.iterations.start}-{self.iterations.stop - 1} "
            f"(trace: {self.path}; perf_counter: "
            f"{1000 * sum(self.wall_seconds.values()) / len(self.wall_seconds):.2f} ms each)")
        for line in table_lines(profile):
            say(line)
        png = os.path.splitext(self.path)[0] + ".png"
        try:
            write_png(profile, png)
            say(f"picture: {png}")
        except UsageError as error:
            say(f"(no picture: {error})")
