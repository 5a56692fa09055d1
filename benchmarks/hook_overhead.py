"""Cost of the Megatron hook: per training iteration and per log interval.

Runs the fixture forks' ``training_log`` (tests/megatron/fixtures) in this process, plain and
hooked, and reports the difference per call:

- per iteration: ``training_log`` at an iteration that does not log (the hook adds the
  iteration's batch and sequence length to its meter);
- per log interval: ``training_log`` at a log iteration, minus the per-iteration part (the
  hook closes the interval, rewrites/extends the console line, writes its ``throughput/*``
  tags × 3 axes (iteration, samples, tokens) and, in the microsoft fork, W&B).  The writer
  is a no-op object so the figure is the hook's own work; how many ``add_scalar`` calls the
  hook makes is counted on a counting writer (with a peak: the 8 tags of ``sinks.TAGS``
  × 3 = 24), and the cost of that many calls on a real SummaryWriter is reported
  separately.

Plain and hooked runs are timed interleaved (one repeat of each in turn, best of the
repeats), so that a change in the machine's load between them does not show as the hook's
cost.

By instrumentation: a ``sys.setprofile`` hook records every Python and C function the hooked
calls enter; the run fails if any is in ``torch`` (so: no collective, no device
synchronisation, no tensor op), and ``torch.distributed``/``torch.cuda.synchronize`` are
additionally wrapped with counters.

    PYTHONPATH=src python benchmarks/hook_overhead.py [--calls 20000] [--repeat 5]
"""

import argparse
import io
import os
import sys
import time
from contextlib import redirect_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
FIXTURES = os.path.join(ROOT, "tests", "megatron", "fixtures")
ARGV = ["--num-layers", "24", "--hidden-size", "2048", "--num-attention-heads", "16",
        "--seq-length", "2048", "--micro-batch-size", "4", "--global-batch-size", "64",
        "--train-iters", "100000000", "--log-interval", "{interval}", "--vocab-size", "50257",
        "--fake-seconds-per-iteration", "0.5", "--bf16"]


class NullWriter:
    """A TensorBoard writer that does nothing (the hook's own cost is what we time)."""

    def add_scalar(self, tag, value, step=None, **kwargs):
        pass

    def flush(self):
        pass


class NullWandb:
    def log(self, data, step=None):
        pass


def load_fork(fork):
    for name in list(sys.modules):
        if name == "megatron" or name.startswith("megatron."):
            del sys.modules[name]
    path = os.path.join(FIXTURES, f"{fork}_fork")
    sys.path.insert(0, path)
    import megatron.training as training
    sys.path.remove(path)
    return training


def setup(fork, interval, hooked):
    from megatron_flops.megatron import hook
    hook.uninstall()
    training = load_fork(fork)
    from megatron.arguments import parse_args
    from megatron import global_vars
    argv = [a.format(interval=interval) for a in ARGV]
    args = parse_args(argv)
    global_vars.set_global_variables(args)
    global_vars._GLOBAL_TENSORBOARD_WRITER = NullWriter()
    if fork == "microsoft":
        global_vars._GLOBAL_WANDB_WRITER = NullWandb()
        args.actual_seq_length = args.seq_length
    global_vars.get_timers()("interval-time").start()
    if hooked:
        hook.install(training_module=training, out=io.StringIO())
    return training, args, global_vars


def time_calls(fork, interval, hooked, calls, repeat, watch=None):
    """Best-of-``repeat`` seconds per training_log call over ``calls`` calls (``watch``, a
    context manager, is entered around the calls after the warm-up — not for timing)."""
    training, args, global_vars = setup(fork, interval, hooked)
    model = [1]
    best = float("inf")
    iteration = 0
    sink = io.StringIO()
    with redirect_stdout(sink):
        # warm-up: the first call builds the shapes and prints the start summary
        iteration += 1
        global_vars.advance_clock(0.5)
        training.training_log({"lm loss": 1.0}, {}, 1e-4, iteration, None, False, 0, 1.0,
                              None, None, model)
        if watch is not None:
            watch.__enter__()
        for _ in range(repeat):
            total_loss_dict = {}
            log = training.training_log
            start = time.perf_counter()
            for _ in range(calls):
                iteration += 1
                args.iteration = iteration
                global_vars._CLOCK[0] += 0.5
                log({"lm loss": 1.0}, total_loss_dict, 1e-4, iteration, None, False, 0, 1.0,
                    None, None, model)
            best = min(best, (time.perf_counter() - start) / calls)
            sink.seek(0)
            sink.truncate()
        if watch is not None:
            watch.__exit__(None, None, None)
    return best


class TorchCallWatch:
    """Records calls into torch (sys.setprofile) and counts collectives and device syncs."""

    COLLECTIVES = ("all_reduce", "all_gather", "broadcast", "barrier", "reduce",
                   "reduce_scatter", "all_to_all", "gather", "scatter")

    def __init__(self):
        self.torch_calls = set()
        self.counts = {}
        self._restore = []

    def _profile(self, frame, event, arg):
        if event == "call":
            module = frame.f_globals.get("__name__", "")
        elif event == "c_call":
            module = getattr(arg, "__module__", None) or ""
        else:
            return
        if module == "torch" or module.startswith("torch."):
            self.torch_calls.add(module)

    def _count(self, owner, name):
        original = getattr(owner, name, None)
        if original is None:
            return

        def counted(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            return original(*args, **kwargs)

        setattr(owner, name, counted)
        self._restore.append((owner, name, original))

    def __enter__(self):
        try:
            import torch
            for name in self.COLLECTIVES:
                self._count(torch.distributed, name)
            self._count(torch.cuda, "synchronize")
        except ImportError:
            pass
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        for owner, name, original in self._restore:
            setattr(owner, name, original)


def best_of(function, calls, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


class CountingWriter(NullWriter):
    """A no-op writer that counts the scalars written (untimed)."""

    def __init__(self):
        self.tags = []

    def add_scalar(self, tag, value, step=None, **kwargs):
        self.tags.append(tag)


def hook_parts(fork, calls, repeat):
    """Direct timings of the hook's work at a log interval, on a warmed-up hooked fixture.

    accounting (every rank): close the interval — the report from the observed iterations
    (what the timer wrapper or the replaced calculator does);
    output (last rank only): edit the console line and write the tags × 3 axes (+ W&B for
    microsoft) to a no-op writer, plus (bigscience) the 5 substituted fork tags.
    Returns (accounting s, output s, s for as many bare add_scalar calls as the hook's own
    tags, that number of tags).
    """
    from megatron_flops.megatron import hook as hook_module
    time_calls(fork, 1, True, 10, 1)  # install, build shapes, print the start summary
    hook = hook_module.installed()
    strategy = hook.strategy
    accounting = hook.accounts.for_args(hook.training_module.get_args())
    interval = hook_module.Interval(100, accounting)
    writer = hook.training_module.get_tensorboard_writer()
    line = (" iteration      100/  100000 | consumed samples:         6400 | elapsed time per "
            "iteration (s): 0.50 | learning rate: 1.000E-04 | global batch size:    64 | lm "
            "loss: 1.000000E+00 | number of skipped iterations:   0 | number of nan "
            "iterations:   0 | samples per second: 128.000 | TFLOPs: 123.45 |")
    fork_tags = tuple(hook_module.bigscience.FORK_TAGS) if fork == "bigscience" else ()

    def accounting_step():
        accounting.meter.add_iteration(64, 2048)
        interval.close(0.5, 1, strategy.num_microbatches)

    def output_step():
        hook.interval = interval  # as inside training_log: the fork tags get exact values
        strategy.edit_line(interval, line)
        strategy.write_outputs(interval)
        for tag in fork_tags:
            writer.add_scalar(tag, 1.0, 100)
        hook.interval = None

    def observe_step():
        accounting.meter.add_iteration(64, 2048)

    observe = best_of(observe_step, calls, repeat)
    interval_accounting = best_of(accounting_step, calls, repeat) - observe
    if accounting.meter.pending_iterations == 1:
        interval.close(0.5, 1, strategy.num_microbatches)
    output = best_of(output_step, calls, repeat)
    counting = CountingWriter()   # one untimed pass: the scalars the hook really writes
    hook.interval = interval
    real_writer = writer
    from megatron import global_vars
    global_vars._GLOBAL_TENSORBOARD_WRITER = counting
    strategy.write_outputs(interval)
    global_vars._GLOBAL_TENSORBOARD_WRITER = real_writer
    hook.interval = None
    tags = len([tag for tag in counting.tags if tag.startswith("throughput/")])
    bare = NullWriter().add_scalar
    null_calls = best_of(lambda: [bare("t", 1.0, 1) for _ in range(tags)], calls, repeat)
    hook_module.uninstall()
    return interval_accounting, output, null_calls, tags


def real_writer_cost(calls):
    """Seconds for one interval's add_scalar calls (every tag × 3 axes, with a peak) on a
    real SummaryWriter."""
    import tempfile
    from torch.utils.tensorboard import SummaryWriter
    from megatron_flops import sinks
    from megatron_flops.meter import ThroughputMeter
    from megatron_flops.shapes import ModelShape
    meter = ThroughputMeter(ModelShape(24, 2048, 16, 50304), world_size=8, peak_tflops=312)
    with tempfile.TemporaryDirectory() as folder:
        writer = SummaryWriter(folder)
        start = time.perf_counter()
        for i in range(calls):
            meter.add_iteration(64, 2048)
            sinks.write_tensorboard(writer, meter.report(0.5), i, i * 64, i * 64 * 2048)
        seconds = (time.perf_counter() - start) / calls
        writer.close()
    return seconds


def main():
    from megatron_flops.sinks import TAGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--no-writer-cost", action="store_true")
    options = parser.parse_args()
    # a known peak, as on a GPU, so that MFU, HFU and the peak are written too; far above the
    # fixture's made-up throughput (an A100's 312 would put MFU above 100 %, whose one-time
    # warning asks torch.distributed for the rank: not the steady cost measured here)
    os.environ.setdefault("MEGATRON_FLOPS_PEAK_TFLOPS", "100000")
    print(f"python {sys.version.split()[0]}, {options.calls} calls × best of {options.repeat} "
          f"(best of many short runs: this machine is shared)")
    value = [123.456]
    reference = best_of(lambda: "%.2f" % value[0], options.calls * 10, options.repeat)
    print(f"machine reference: a call that formats one float ('%.2f') takes "
          f"{reference * 1e6:.3f} µs here")
    worst = 0.0
    for fork in ("bigscience", "microsoft"):
        plain_iter = hooked_iter = float("inf")
        for _ in range(options.repeat):   # interleaved: one plain, one hooked, in turn
            plain_iter = min(plain_iter, time_calls(fork, 10 ** 9, False, options.calls, 1))
            hooked_iter = min(hooked_iter, time_calls(fork, 10 ** 9, True, options.calls, 1))
        accounting, output, null_calls, tags = hook_parts(fork, options.calls, options.repeat)
        watch = TorchCallWatch()  # a separate, untimed pass over log and other iterations
        time_calls(fork, 3, True, 300, 1, watch=watch)
        worst = max(worst, accounting)
        print(f"{fork} fork:")
        print(f"  per iteration, every rank:       {(hooked_iter - plain_iter) * 1e6:6.2f} µs "
              f"(fixture training_log {plain_iter * 1e6:.2f} -> {hooked_iter * 1e6:.2f} µs)")
        print(f"  per log interval, every rank:    {accounting * 1e6:6.2f} µs (close the interval: report)")
        print(f"  per log interval, last rank:   + {output * 1e6:6.2f} µs (console line + {tags} "
              f"tags{' + W&B' if fork == 'microsoft' else ' + 5 fork tags'} to a no-op writer, "
              f"of which {null_calls * 1e6:.2f} µs are {tags} bare add_scalar calls)")
        print(f"  calls into torch while hooked: {sorted(watch.torch_calls) or 'none'}; "
              f"collectives and synchronize calls: {sum(watch.counts.values())}")
        if watch.torch_calls or watch.counts:
            raise SystemExit("the hook called into torch")
    if not options.no_writer_cost:
        seconds = real_writer_cost(2000)
        print(f"for scale: a real torch SummaryWriter takes {seconds * 1e6:.1f} µs per log interval "
              f"for the same {3 * len(TAGS)} scalars (+ report), on the last rank only")
    print(f"worst per-interval hook cost on every rank: {worst * 1e6:.2f} µs (target <= 10 µs)")


if __name__ == "__main__":
    main()
