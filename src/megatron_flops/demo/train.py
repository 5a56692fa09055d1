"""The demo's training loop: a Megatron-style loop with live, exact throughput.

It trains the reference GPT (:mod:`megatron_flops.reference.model`) on bytes of text — the
corpus shipped with the package, or ``--data-path`` — and every ``--log-interval``
iterations prints one line in Megatron's ``| key: value |`` style with samples/s, tokens/s,
model and hardware TFLOP/s per device, MFU and HFU.  The numbers come from the same
:class:`~megatron_flops.meter.ThroughputMeter` and the same sinks (console fields,
TensorBoard tags, W&B keys) as the Megatron-DeepSpeed integration.

How it runs:

- one process, or data-parallel under ``torchrun --nproc_per_node=N -m megatron_flops.demo``
  (gloo on CPU, NCCL on CUDA; DistributedDataParallel); the world size enters the per-device
  numbers; only the last rank prints and writes TensorBoard / W&B, as Megatron does;
- or through ``deepspeed.initialize`` with ``--deepspeed`` (ZeRO stage ``--zero-stage`` or a
  ``--deepspeed_config`` file), the way Megatron-DeepSpeed drives its engine.

Timing: ``time.perf_counter`` at log boundaries only; on CUDA the device is synchronised
there (and nowhere else), so an interval's time covers all the work its iterations queued.
An iteration's global batch (samples over all replicas) is added to the meter as it
completes, so a batch-size ramp-up is counted exactly.

The pieces: :class:`~.config.DemoConfig` (the flags, parsed once by ``megatron-flops demo``),
:class:`~.session.Session` (the objects of one run), and here the loop, one function per step:
:func:`train`, :func:`print_start`, :func:`train_iteration`, :func:`close_interval`,
:func:`print_summary`.
"""

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import List, Optional

from .. import sinks
from ..errors import UsageError
from ..hardware import implausible_utilisation_warning
from ..legacy import legacy_error, legacy_tflops_for_shapes
from ..params import parameter_count
from ..megatron.memory_args import measured_peak_bytes
from ..report import GIB, format_count, format_percent, format_tflops, summary_lines
from ..terminal import format_duration
from .config import DemoConfig
from .distributed import Distributed
from .memory import demo_memory
from .profiling import DemoProfiler
from .session import Session, build_session, measure_peak

EXIT_OK = 0
EXIT_INTERRUPTED = 130   # 128 + SIGINT, what a shell reports for Ctrl-C


def device_for(config: DemoConfig) -> str:
    import torch
    return config.device or ("cuda" if torch.cuda.is_available() else "cpu")


def run_demo(config: DemoConfig, started: float) -> int:
    """Start the processes' group, train, close the group; the exit code."""
    device = device_for(config)
    check_optional_dependencies(config, device)
    dist = Distributed("cuda" if device.startswith("cuda") else "cpu", config.deepspeed)
    try:
        if device.startswith("cuda") and dist.active:
            device = f"cuda:{dist.local_rank}"
        return train(build_session(config, device, dist), started)
    finally:
        dist.close()


def check_optional_dependencies(config: DemoConfig, device: str) -> None:
    """DeepSpeed and wandb, when asked for, import (before any process group starts)."""
    import os
    if config.deepspeed:
        if not device.startswith("cuda"):
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise UsageError("--deepspeed needs DeepSpeed: pip install -e '.[deepspeed]' in a megatron-flops clone") from None
    if config.wandb and os.environ.get("RANK", "0") == str(config.world_size - 1):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UsageError("--wandb needs wandb: pip install -e '.[wandb]' in a megatron-flops clone") from None


@dataclass
class Progress:
    """What the loop carries from one iteration and interval to the next."""

    interval_start: float
    interval_loss: object           # a 0-d tensor on the device: summed step losses
    interval_iterations: int = 0
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    summary_seconds: float = 0.0
    summary_first_iteration: Optional[int] = None   # first iteration after the first interval
    peak_warned: bool = False
    measured_peak_bytes: Optional[int] = None   # the training loop's (CUDA), read as it ends


class RankedStop:
    """Ctrl-C under several processes (issue 24).  SIGINT reaches every rank (the terminal
    signals the process group; torchrun passes it on too), each at its own point, maybe in
    the middle of a collective: a KeyboardInterrupt there would leave the ranks at different
    collectives.  So while a group is active the first SIGINT only sets a flag, and after
    each iteration the ranks agree (one small all-reduce) whether any saw one: all stop after
    the same iteration, and the interval's line, the loss mean and the summary's collectives
    still pair up.  A collective that fails after a SIGINT (a peer already gone) ends the
    run the same way on local values.  One process: Python's own KeyboardInterrupt."""

    def __init__(self, dist: Distributed):
        import signal
        self.dist, self.seen, self._previous = dist, False, None
        if dist.active:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        self.seen = True

    def agreed(self) -> bool:
        """Did any rank see a SIGINT (every rank calls this after each iteration)?"""
        return self.dist.active and self.dist.any(self.seen)

    def peer_gone(self, error: BaseException) -> bool:
        """A collective failed after a SIGINT: a peer stopped first.  Go on alone."""
        if self.seen and isinstance(error, RuntimeError):
            self.dist.detach()
            return True
        return False

    def restore(self) -> None:
        if self._previous is not None:
            import signal
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def train(session: Session, started: float) -> int:
    """The loop; Ctrl-C ends it after the iterations done so far, with their log line and the
    summary, exit code 130 (as a shell reports SIGINT)."""
    import torch
    from ..terminal import ProgressLine
    config = session.config
    print_start(session)
    profiler = None
    if config.profile:
        profiler = DemoProfiler(session)
    session.train_model.train()
    session.synchronize()
    session.dist.barrier()
    if session.cuda:  # the peak of the loop alone, not of the start-up peak measurement
        torch.cuda.reset_peak_memory_stats(session.device)
    progress = Progress(time.perf_counter(), torch.zeros((), device=session.device))
    status = ProgressLine(enabled=None if session.dist.is_last_rank else False)
    session.status = status
    loop_start, done = progress.interval_start, 0
    status.show(f"iteration 1/{config.train_iters} running ...")
    stop = RankedStop(session.dist)
    try:
        for iteration in range(1, config.train_iters + 1):
            if profiler is not None:
                profiler.before_iteration(iteration)
            batch_size = config.run.batch_size_at(session.meter.consumed_samples)
            progress.interval_loss += train_iteration(session, batch_size)
            session.meter.add_iteration(batch_size=batch_size, seq_length=config.run.seq_length)
            if progress.summary_first_iteration is not None:
                session.summary_meter.add_iteration(batch_size=batch_size,
                                                    seq_length=config.run.seq_length)
            progress.interval_iterations += 1
            done = iteration
            if profiler is not None:
                profiler.after_iteration(iteration)
            if iteration % config.log_interval == 0 or iteration == config.train_iters:
                close_interval(session, progress, iteration, batch_size)
            show_progress(status, iteration, config.train_iters, time.perf_counter() - loop_start)
            if iteration < config.train_iters and stop.agreed():
                raise KeyboardInterrupt
    except (KeyboardInterrupt, Exception) as error:
        if not (isinstance(error, KeyboardInterrupt) or stop.peer_gone(error)):
            raise
        status.clear()
        progress.measured_peak_bytes = measured_peak_bytes() if session.cuda else None
        if progress.interval_iterations:
            close_interval(session, progress, done, batch_size)
        session.say(f"\ninterrupted (Ctrl-C) after iteration {done} of {config.train_iters}")
        session.close_writers()
        print_summary(session, progress, started, done)
        return EXIT_INTERRUPTED
    finally:
        stop.restore()
    status.clear()
    progress.measured_peak_bytes = measured_peak_bytes() if session.cuda else None
    session.close_writers()
    code = print_summary(session, progress, started, config.train_iters)
    if profiler is not None:
        profiler.report()
    return code


def show_progress(status, iteration: int, train_iters: int, seconds: float) -> None:
    """``iteration 37/200 | 0.95 s/iteration | ETA 2m35s`` on a terminal, between log lines."""
    if iteration >= train_iters:
        status.clear()
        return
    per_iteration = seconds / iteration
    status.show(f"iteration {iteration + 1}/{train_iters} running | "
                f"{per_iteration:.2f} s/iteration | ETA "
                f"{format_duration(per_iteration * (train_iters - iteration))} | Ctrl-C ends "
                "with the summary")


def print_start(session: Session) -> None:
    import torch
    config, say = session.config, session.say
    for line in arguments_dump(session):
        say(line)
    params = parameter_count(config.model)
    for line in summary_lines(config.model, config.run, session.breakdown, params):
        say(line)
    say("attention counted dense (full s×s, as the model computes it); elementwise ops "
        "(norms, softmax, activations) not counted")
    torch_params = sum(p.numel() for p in session.network.parameters())
    if torch_params != params.total:
        say(f"warning: the torch model holds {torch_params:,} parameters, the formula "
            f"{params.total:,}")
    source = config.data_path or "the shipped demo corpus"
    say(f"data: {source}, {len(session.data):,} bytes (byte tokens, vocab "
        f"{config.model.vocab_size} after padding); device: {session.device}; "
        f"{session.dist.world_size} process(es), {session.backend}; "
        f"{torch.get_num_threads()} CPU threads per process ({session.threads_source})")
    say(f"peak for MFU/HFU: {session.peak_source}")
    say(memory_estimate_line(session))
    say(f"training for {config.train_iters} iterations, logging every {config.log_interval} ...")
    sys.stdout.flush()


def memory_estimate_line(session: Session) -> str:
    memory = demo_memory(session.config, session.cuda)
    if memory is None:
        return "memory: not estimated for this shape or dtype (see verify --memory)"
    stage = memory.stages[0]
    return (f"memory per process (estimate): peak {stage.peak / GIB:,.3f} GiB = parameters, "
            f"gradients and AdamW state {stage.state.total / GIB:,.3f} GiB + activations "
            f"{stage.activations / GIB:,.3f} GiB + recompute {stage.recompute_working / GIB:,.3f}"
            " GiB")


def memory_measured_line(session: Session, measured: Optional[int]) -> str:
    """The training loop's measured peak (torch.cuda.max_memory_allocated; n/a on a CPU)
    beside the estimate."""
    memory = demo_memory(session.config, session.cuda)
    estimate = "not estimated" if memory is None else \
        f"{memory.stages[0].peak / GIB:,.3f} GiB estimated"
    if measured is None:
        return f"memory: measured peak n/a (no CUDA device: no allocator statistics); {estimate}"
    ratio = "" if memory is None else f" ({measured / memory.stages[0].peak:.3f} × the estimate)"
    return (f"memory: measured peak {measured / GIB:,.3f} GiB (torch.cuda.max_memory_allocated) "
            f"vs {estimate}{ratio}")


def arguments_dump(session: Session) -> List[str]:
    """Megatron's start-up dump of its arguments (the same framing, dots and ``str()``
    values), then its padded-vocabulary line: ``relog`` and ``compare`` read the demo's own
    log flag-free from them, as they read a real run's.  The values are the run's resolved
    ones (the global batch, the world size, the peak MFU is measured against)."""
    from ..logs.arguments import DUMP_END, DUMP_START
    config = session.config
    values = dict(config.arguments or {})
    values.update(world_size=session.dist.world_size, global_batch_size=config.run.global_batch_size,
                  num_layers=config.model.num_layers, hidden_size=config.model.hidden_size,
                  num_attention_heads=config.model.num_attention_heads,
                  seq_length=config.run.seq_length, micro_batch_size=config.run.micro_batch_size,
                  peak_tflops=session.peak_tflops)
    lines = [DUMP_START]
    for name in sorted(values, key=str.lower):
        lines.append(f"  {name} {'.' * max(3, 48 - len(name) - 2)} {values[name]}")
    lines.append(DUMP_END)
    vocab = config.model.vocab_size
    lines.append(f" > padded vocab (size: {vocab}) with 0 dummy tokens (new size: {vocab})")
    return lines


def train_iteration(session: Session, batch_size: int):
    """One iteration (forward and backward of every micro batch, one optimizer step);
    the iteration's mean loss as a 0-d tensor on the device."""
    import torch
    run, device = session.config.run, session.device
    micro_batches = session.batches.global_batch(batch_size, run.micro_batch_size, device)
    steps = len(micro_batches)
    step_loss = torch.zeros((), device=device)
    engine, model, scaler = session.engine, session.train_model, session.scaler
    for index, (inputs, labels) in enumerate(micro_batches):
        if engine is not None:
            loss = engine(inputs, labels)
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach().float() / steps
            continue
        last_micro = index == steps - 1
        sync = nullcontext() if (last_micro or not session.dist.active) else model.no_sync()
        autocast = (torch.autocast(device.split(":")[0], dtype=session.autocast_dtype)
                    if session.autocast_dtype is not None else nullcontext())
        with sync:
            with autocast:
                loss = model(inputs, labels) / steps
            (scaler.scale(loss) if scaler else loss).backward()
        step_loss += loss.detach().float()
    if engine is None:
        optimizer_step(session)
    return step_loss


def optimizer_step(session: Session) -> None:
    import torch
    optimizer, scaler, clip = session.optimizer, session.scaler, session.config.clip_grad
    if scaler:
        scaler.unscale_(optimizer)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(session.network.parameters(), clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    session.scheduler.step()


def close_interval(session: Session, progress: Progress, iteration: int, batch_size: int) -> None:
    """Time the interval, print its line, write its tags; the next interval starts now."""
    session.synchronize()
    now = time.perf_counter()
    elapsed = now - progress.interval_start
    report = session.meter.report(elapsed)
    loss = session.dist.mean(float(progress.interval_loss.item()) / progress.interval_iterations)
    if progress.summary_first_iteration is None:
        progress.summary_first_iteration = iteration + 1
    else:
        progress.summary_seconds += elapsed
    progress.first_loss = loss if progress.first_loss is None else progress.first_loss
    progress.last_loss = loss
    if session.dist.is_last_rank:
        if session.status is not None:
            session.status.clear()
        warn_low_peak(session, progress, report)
        write_interval(session, report, iteration, batch_size, elapsed, loss)
    progress.interval_loss.zero_()
    progress.interval_iterations = 0
    progress.interval_start = now  # logging time belongs to the next interval: no gaps


def utilisation_warning(session: Session, report) -> Optional[str]:
    """The shared MFU/HFU-above-100 % warning (``hardware.implausible_utilisation_warning``)
    with the demo's way to a better peak.  A measured peak is the run's own dtype, so the
    dtype cause (a datasheet peak of another dtype) is named only for a given peak."""
    settings = ("--peak-tflops, or measure it on a quiet machine (`megatron-flops peak`)"
                + ("; a measured peak is measured again at the end" if session.peak_measured
                   else ""))
    return implausible_utilisation_warning(
        report.mfu, report.hfu, dtype=None if session.peak_measured else session.config.run.dtype,
        peak_source=session.peak_source, peak_settings=settings)


def warn_low_peak(session: Session, progress: Progress, report) -> None:
    """Once per run, on the first interval above 100 %."""
    if progress.peak_warned:
        return
    warning = utilisation_warning(session, report)
    if warning is not None:
        progress.peak_warned = True
        print(warning, flush=True)


def write_interval(session: Session, report, iteration: int, batch_size: int,
                   elapsed: float, loss: float) -> None:
    """The interval's console line, TensorBoard scalars and W&B keys (last rank only)."""
    meter, lr, train_iters = session.meter, session.learning_rate(), session.config.train_iters
    prefix = (("consumed samples", f"{meter.consumed_samples:12d}"),
              ("elapsed time per iteration (ms)", f"{1000.0 * elapsed / report.iterations:.1f}"),
              ("learning rate", f"{lr:.3E}"),
              ("global batch size", f"{batch_size:5d}"),
              ("lm loss", f"{loss:.6E}"))
    print(f" iteration {iteration:8d}/{train_iters:8d} |" + sinks.console_line(report, prefix),
          flush=True)
    writer = session.writer
    if writer is not None:
        sinks.write_tensorboard(writer, report, iteration, meter.consumed_samples,
                                meter.consumed_tokens)
        writer.add_scalar("lm loss", loss, iteration)
        writer.add_scalar("lm loss vs samples", loss, meter.consumed_samples)
        writer.add_scalar("learning-rate/learning-rate", lr, iteration)
    if session.wandb_run is not None:
        sinks.write_wandb(session.wandb_run.log, report, iteration)
        session.wandb_run.log({"lm loss": loss}, step=iteration)


def print_summary(session: Session, progress: Progress, started: float, last_iteration: int) -> int:
    config, say, meter = session.config, session.say, session.meter
    summary_meter = session.summary_meter
    if session.peak_measured:
        # a second chance at a quiet moment: a busy machine measures a low peak at times
        session.peak_tflops, session.peak_source = measure_peak(config.run.dtype, session.device,
                                                                session.dist)
        summary_meter.peak_tflops = session.peak_tflops
    total_seconds = time.perf_counter() - started
    say("")
    say(f"done: {last_iteration} iterations, {meter.consumed_samples:,} samples, "
        f"{format_count(meter.consumed_tokens)} tokens; {total_seconds:.1f} s wall in all "
        f"(start-up and the first interval included)")
    if progress.first_loss is not None:
        say(f"lm loss: {progress.first_loss:.3f} (first interval) -> {progress.last_loss:.3f} "
            "(last interval)")
    say(memory_measured_line(session, progress.measured_peak_bytes))
    if not summary_meter.pending_iterations:
        say("(too few intervals for a steady-state summary: give more --train-iters than "
            "--log-interval)")
        return EXIT_OK
    summary = summary_meter.report(progress.summary_seconds)
    window = (f"iterations {progress.summary_first_iteration}-{last_iteration}, "
              "after the first interval")
    seconds_per_iteration = summary.elapsed_seconds / summary.iterations
    per_device = "per GPU" if session.cuda else "per device"
    say(f"mean throughput over {window}:")
    say(f"  elapsed time per iteration:   {1000.0 * seconds_per_iteration:.1f} ms")
    say(f"  samples per second:           {summary.samples_per_second:.2f}")
    say(f"  tokens per second:            {summary.tokens_per_second:.1f} "
        f"({summary.tokens_per_second_per_gpu:.1f} {per_device})")
    say(f"  {'model TFLOP/s ' + per_device + ':':<30}{format_tflops(summary.model_tflops_per_gpu)}")
    say(f"  {'hardware TFLOP/s ' + per_device + ':':<30}{format_tflops(summary.hardware_tflops_per_gpu)}")
    say(f"  MFU / HFU:                    {format_percent(summary.mfu)} / "
        f"{format_percent(summary.hfu)}   ({session.peak_source})")
    warning = utilisation_warning(session, summary)
    if warning is not None:
        say(f"  {warning}")
    legacy = legacy_tflops_for_shapes(config.model, config.run, config.run.global_batch_size,
                                      config.run.seq_length, seconds_per_iteration)
    say("what the forks' formulas would log for this run at the same iteration time:")
    for fork, value in legacy.items():
        error = legacy_error(value, summary.hardware_tflops_per_gpu)
        say(f"  {fork:<10} fork: {format_tflops(value)} TFLOP/s per device ({100 * error:+.1f}% vs the "
            f"exact hardware count)")
    return EXIT_OK
