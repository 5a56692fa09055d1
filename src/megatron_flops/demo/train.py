"""``megatron-flops demo``: a Megatron-style training loop with live, exact throughput.

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
"""

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from typing import List, Optional

from ..commands.common import EXIT_OK, UsageError, add_peak_arguments, command_parser, positive

# Sized so that the default run takes well under a minute on two CPU cores and the loss
# visibly falls (about 4.1 -> 1.95 nats per byte on the default corpus; ln 256 = 5.5).
DEFAULTS = dict(num_layers=4, hidden_size=128, num_attention_heads=4, seq_length=128,
                micro_batch_size=8, vocab_size=256, train_iters=200, log_interval=20,
                lr=2e-3, min_lr=2e-4, lr_warmup_iters=20, seed=1234)


# ---- arguments -----------------------------------------------------------------------------

def demo_parser():
    parser = command_parser("demo", "Train the reference GPT on bytes of text with live, exact "
                            "throughput (samples/s, tokens/s, TFLOP/s per device, MFU, HFU).")
    parser.set_defaults(**{k: v for k, v in DEFAULTS.items()
                           if k in ("num_layers", "hidden_size", "num_attention_heads",
                                    "seq_length", "micro_batch_size", "vocab_size")})
    g = parser.add_argument_group("training")
    g.add_argument("--train-iters", type=positive(int, "--train-iters"), default=DEFAULTS["train_iters"])
    g.add_argument("--log-interval", type=positive(int, "--log-interval"), default=DEFAULTS["log_interval"])
    g.add_argument("--lr", type=positive(float, "--lr"), default=DEFAULTS["lr"],
                   help="peak learning rate (linear warm-up, then cosine decay to --min-lr)")
    g.add_argument("--min-lr", type=float, default=DEFAULTS["min_lr"])
    g.add_argument("--lr-warmup-iters", type=int, default=DEFAULTS["lr_warmup_iters"])
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.95)
    g.add_argument("--clip-grad", type=float, default=1.0, help="gradient norm clip (0: off)")
    g.add_argument("--hidden-dropout", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    g.add_argument("--data-path", default=None,
                   help="a text file to train on (bytes are tokens); default: the shipped corpus")
    g.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda when available, else cpu)")
    g.add_argument("--threads", type=positive(int, "--threads"), default=None,
                   help="CPU threads per process (default: torch's choice; under a launcher "
                        "with N local processes, cores / N unless OMP_NUM_THREADS is set)")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help=argparse_suppress())
    out = parser.add_argument_group("outputs")
    out.add_argument("--tensorboard-dir", default=None, help="write TensorBoard event files here")
    out.add_argument("--wandb", action="store_true", help="log to Weights & Biases (needs wandb)")
    out.add_argument("--wandb-project", default="megatron-flops-demo")
    add_peak_arguments(parser)
    ds = parser.add_argument_group("DeepSpeed")
    ds.add_argument("--deepspeed", action="store_true",
                    help="train through deepspeed.initialize (needs the deepspeed extra)")
    ds.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config",
                    default=None, help="DeepSpeed JSON config (default: built from the flags)")
    ds.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2),
                    help="ZeRO stage when no --deepspeed_config is given (default 0)")
    return parser


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


def parse_demo_args(argv: List[str], world_size: int, quiet: bool = False):
    """(args, model, run) for this world size; every bad input raises with its flag named."""
    from ..commands.common import parse_command
    from .corpus import BYTE_VOCAB_SIZE
    parser = demo_parser()
    known, _ = parser.parse_known_args([a for a in argv if a != "\\"])
    if known.world_size is not None and known.world_size != world_size:
        raise UsageError(f"--world-size ({known.world_size}) must equal the number of processes "
                         f"({world_size}); the demo takes it from the launcher")
    for flag, value in (("--tensor-model-parallel-size", known.tensor_model_parallel_size),
                        ("--pipeline-model-parallel-size", known.pipeline_model_parallel_size)):
        if value != 1:
            raise UsageError(f"{flag} must be 1 in the demo (it trains data-parallel only), "
                             f"got {value}")
    argv = list(argv) + ["--world-size", str(world_size)]
    args, model, run = parse_command(parser, argv, quiet=quiet)
    if args.vocab_size is not None and args.vocab_size < BYTE_VOCAB_SIZE:
        raise UsageError(f"--vocab-size ({args.vocab_size}) must be at least {BYTE_VOCAB_SIZE}: "
                         "the demo's tokens are bytes")
    if model.vocab_size < BYTE_VOCAB_SIZE:
        raise UsageError(f"--padded-vocab-size ({model.vocab_size}) must be at least "
                         f"{BYTE_VOCAB_SIZE}: the demo's tokens are bytes")
    if not 0.0 <= args.hidden_dropout < 1.0:
        raise UsageError(f"--hidden-dropout must be in [0, 1), got {args.hidden_dropout}")
    if args.min_lr < 0 or args.min_lr > args.lr:
        raise UsageError(f"--min-lr ({args.min_lr}) must be between 0 and --lr ({args.lr})")
    if args.lr_warmup_iters < 0:
        raise UsageError(f"--lr-warmup-iters must not be negative, got {args.lr_warmup_iters}")
    if args.clip_grad < 0:
        raise UsageError(f"--clip-grad must not be negative, got {args.clip_grad}")
    if args.device is not None:
        from .peak import check_device
        check_device(args.device)
    if args.deepspeed_config is not None and not args.deepspeed:
        raise UsageError("--deepspeed_config needs --deepspeed")
    if args.deepspeed and run.rampup_batch_size:
        raise UsageError("--rampup-batch-size is not supported with --deepspeed "
                         "(DeepSpeed's batch size is fixed)")
    args.deepspeed_settings = deepspeed_config(args, run, world_size) if args.deepspeed else None
    return args, model, run


# ---- learning rate -------------------------------------------------------------------------

def lr_factor(iteration: int, warmup_iters: int, decay_iters: int, min_ratio: float) -> float:
    """Megatron's default shape: linear warm-up, then cosine decay to ``min_lr``.

    ``iteration`` counts optimizer steps already taken (0 for the first step).
    """
    if warmup_iters and iteration < warmup_iters:
        return (iteration + 1) / warmup_iters
    span = max(decay_iters - warmup_iters, 1)
    progress = min(max(iteration - warmup_iters, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---- the distributed setting ---------------------------------------------------------------

class Distributed:
    """World size, rank and the collectives the loop needs; a single process is world 1."""

    def __init__(self, device_kind: str, deepspeed: bool):
        import torch
        import torch.distributed as dist
        self.dist = dist
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        self.launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", env_world))
        if deepspeed and not self.launched:
            # deepspeed.initialize wants a process group even for one process
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
            self.launched = True
        self.backend = "nccl" if device_kind == "cuda" else "gloo"
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = False
        if self.launched and (env_world > 1 or deepspeed):
            if device_kind == "cuda":
                torch.cuda.set_device(self.local_rank)
            if deepspeed:
                import deepspeed as ds
                ds.init_distributed(dist_backend=self.backend, verbose=False)
            elif not dist.is_initialized():
                dist.init_process_group(self.backend)
            self.active = True
        self.world_size = dist.get_world_size() if self.active else 1
        self.rank = dist.get_rank() if self.active else 0
        self.is_last_rank = self.rank == self.world_size - 1

    def mean(self, value: float) -> float:
        """Mean of a float over the ranks (one small all-reduce)."""
        if not self.active:
            return value
        import torch
        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        self.dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def close(self) -> None:
        if self.active and self.dist.is_initialized():
            self.dist.destroy_process_group()


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- data ----------------------------------------------------------------------------------

class ByteBatches:
    """Random windows of ``seq_length + 1`` bytes; inputs are the first s, labels the last s.

    Every rank draws the same global batch of window offsets from one seeded generator and
    keeps its own slice, so N replicas see exactly the samples one process would see.
    """

    def __init__(self, data: bytes, seq_length: int, seed: int, rank: int, world_size: int):
        import torch
        if len(data) < seq_length + 2:
            raise UsageError(f"--data-path text has {len(data)} bytes; --seq-length "
                             f"{seq_length} needs at least {seq_length + 2}")
        self.tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.seq_length = seq_length
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.window = torch.arange(seq_length + 1)

    def global_batch(self, global_batch_size: int, micro_batch_size: int, device):
        """This rank's micro batches [(inputs, labels), …] of one iteration."""
        import torch
        offsets = torch.randint(0, len(self.tokens) - self.seq_length - 1, (global_batch_size,),
                                generator=self.generator)
        per_rank = global_batch_size // self.world_size
        mine = offsets[self.rank * per_rank:(self.rank + 1) * per_rank]
        windows = self.tokens[mine[:, None] + self.window].to(torch.long)
        windows = windows.to(device, non_blocking=True)
        return [(w[:, :-1], w[:, 1:]) for w in windows.split(micro_batch_size)]


# ---- the model wrapper ---------------------------------------------------------------------

def loss_module(gpt):
    """``forward(input_ids, labels) -> loss`` around the GPT, so DDP and DeepSpeed see the
    whole step as one forward call."""
    from torch import nn

    class GPTWithLoss(nn.Module):
        def __init__(self, gpt):
            super().__init__()
            self.gpt = gpt

        def forward(self, input_ids, labels):
            return self.gpt.loss(input_ids, labels)

    return GPTWithLoss(gpt)


# ---- peak ----------------------------------------------------------------------------------

def choose_peak(args, run, device: str, dist: Distributed):
    """(tflops or None, source text, measured?): --peak-tflops, --gpu, the GPU's datasheet,
    or a measurement of this device (see :func:`measure_peak`)."""
    from ..hardware import resolve_peak
    if args.peak_tflops is not None or args.gpu is not None:
        peak = resolve_peak(args.gpu, run.dtype, args.peak_tflops)
        return peak.tflops, peak.source, False
    if device.startswith("cuda"):
        import torch
        name = torch.cuda.get_device_name(torch.device(device))
        peak = resolve_peak(name, run.dtype)
        if peak.known:
            return peak.tflops, peak.source, False
    return measure_peak(run.dtype, device, dist) + (True,)


def measure_peak(dtype: str, device: str, dist: Distributed):
    """(tflops, source): about a second of matmuls now, on every rank at once, against the
    best rate this machine has shown before (a cache); the mean over ranks."""
    from .peak import cache_file, quick_peak, remember
    dist.barrier()  # every rank measures at once: each gets its share of a shared CPU
    measured = quick_peak("cuda" if device.startswith("cuda") else "cpu", dtype)
    tflops = dist.mean(remember(measured))
    where = (f"{measured.threads} threads" if measured.device == "cpu" else measured.device)
    ranks = f", mean of {dist.world_size} processes measuring at once" if dist.world_size > 1 else ""
    return tflops, (f"measured peak: dense {dtype} matmul on {measured.device_name} "
                    f"({where}{ranks}), {tflops:.3g} TFLOP/s, best of now ({measured.tflops:.3g}) "
                    f"and earlier measurements in {cache_file()}; see `megatron-flops peak`")


# ---- DeepSpeed -----------------------------------------------------------------------------

def deepspeed_config(args, run, world_size: int) -> dict:
    """The DeepSpeed config: the user's file, with batch sizes checked against the flags."""
    accumulation = run.global_batch_size // (run.micro_batch_size * world_size)
    from_flags = {"train_batch_size": run.global_batch_size,
                  "train_micro_batch_size_per_gpu": run.micro_batch_size,
                  "gradient_accumulation_steps": accumulation}
    if args.deepspeed_config is None:
        config = {"zero_optimization": {"stage": args.zero_stage},
                  "gradient_clipping": args.clip_grad,
                  "bf16": {"enabled": run.dtype == "bf16"},
                  "fp16": {"enabled": run.dtype == "fp16"}}
    else:
        try:
            with open(args.deepspeed_config) as handle:
                config = json.load(handle)
        except OSError as error:
            raise UsageError(f"--deepspeed_config {args.deepspeed_config!r} cannot be read: "
                             f"{error.strerror or error}") from None
        except ValueError as error:
            raise UsageError(f"--deepspeed_config {args.deepspeed_config!r} is not JSON: {error}") from None
        if not isinstance(config, dict):
            raise UsageError(f"--deepspeed_config {args.deepspeed_config!r} must hold a JSON object")
        flags = {"train_batch_size": "--global-batch-size",
                 "train_micro_batch_size_per_gpu": "--micro-batch-size",
                 "gradient_accumulation_steps": "--global-batch-size / (--micro-batch-size × processes)"}
        for key, value in from_flags.items():
            if key in config and config[key] != "auto" and config[key] != value:
                raise UsageError(f"--deepspeed_config {key} ({config[key]}) contradicts "
                                 f"{flags[key]} ({value})")
    config.update(from_flags)
    config.setdefault("steps_per_print", 10 ** 9)  # our log line is the log
    config.setdefault("wall_clock_breakdown", False)
    return config


# ---- the loop ------------------------------------------------------------------------------

def demo_main(argv: List[str]) -> int:
    started = time.perf_counter()
    try:
        import torch
    except ImportError:
        raise UsageError("the demo needs PyTorch: pip install 'megatron-flops[torch]'") from None
    pre, _ = demo_parser().parse_known_args([a for a in argv if a != "\\"])
    device = pre.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device_kind = "cuda" if device.startswith("cuda") else "cpu"
    # validate every flag (and a --deepspeed_config file) before importing DeepSpeed or
    # starting process groups, so bad input exits 2 at once on every rank
    parse_demo_args(argv, int(os.environ.get("WORLD_SIZE", "1")), quiet=True)
    if pre.deepspeed:
        if device_kind == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise UsageError("--deepspeed needs DeepSpeed: pip install 'megatron-flops[deepspeed]'") from None
    if pre.wandb and os.environ.get("RANK", "0") == str(int(os.environ.get("WORLD_SIZE", "1")) - 1):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UsageError("--wandb needs wandb: pip install 'megatron-flops[wandb]'") from None
    dist = Distributed(device_kind, pre.deepspeed)
    try:
        args, model, run = parse_demo_args(argv, dist.world_size, quiet=not dist.is_last_rank)
        if device_kind == "cuda" and dist.active:
            device = f"cuda:{dist.local_rank}"
        return _train(args, model, run, device, dist, started)
    finally:
        dist.close()


def _train(args, model, run, device: str, dist: Distributed, started: float) -> int:
    import torch
    from .. import sinks
    from ..flops import flops_breakdown
    from ..legacy import legacy_tflops_for_shapes
    from ..meter import ThroughputMeter
    from ..params import parameter_count
    from ..report import format_count, summary_lines
    from ..reference.model import ReferenceGPT
    from .corpus import load_corpus

    say = print if dist.is_last_rank else (lambda *a, **k: None)
    cuda = device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    elif not cuda and dist.local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world_size))

    data = load_corpus(args.data_path)
    batches = ByteBatches(data, run.seq_length, args.seed, dist.rank, dist.world_size)
    torch.manual_seed(args.seed)
    gpt = ReferenceGPT(model, run.seq_length, run.recompute, run.pipeline_model_parallel_size,
                       dropout=args.hidden_dropout, device=device)
    network = loss_module(gpt)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.dtype)

    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr,
                                  betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.weight_decay,
                                  fused=True if cuda and not args.deepspeed else None)
    min_ratio = args.min_lr / args.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, args.lr_warmup_iters, args.train_iters, min_ratio))

    engine = None
    scaler = None
    if args.deepspeed:
        import logging
        import deepspeed
        deepspeed.utils.logger.setLevel(logging.WARNING)
        config = args.deepspeed_settings
        user_optimizer = "optimizer" in config
        engine, _, _, _ = deepspeed.initialize(
            model=network, optimizer=None if user_optimizer else optimizer,
            model_parameters=network.parameters() if user_optimizer else None,
            lr_scheduler=None if user_optimizer else scheduler, config=config,
            dist_init_required=False)
        autocast_dtype = None  # DeepSpeed's bf16/fp16 sections own the precision
        train_model = engine
        backend = f"DeepSpeed {deepspeed.__version__} ZeRO stage " \
                  f"{config.get('zero_optimization', {}).get('stage', 0)}"
    else:
        train_model = network
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel
            # an MoE expert may see no token in an iteration: its weights get no gradient
            train_model = DistributedDataParallel(
                network, device_ids=[dist.local_rank] if cuda else None,
                find_unused_parameters=model.is_moe)
        if run.dtype == "fp16":
            scaler = torch.amp.GradScaler(device.split(":")[0])
        backend = f"DistributedDataParallel ({dist.backend})" if dist.active else "one process"

    peak_tflops, peak_source, peak_measured = choose_peak(args, run, device, dist)
    peak_warned = False
    meter = ThroughputMeter.for_run(model, run, peak_tflops)
    summary_meter = ThroughputMeter.for_run(model, run, peak_tflops)  # after the first interval

    writer = None
    if args.tensorboard_dir and dist.is_last_rank:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--tensorboard-dir needs TensorBoard: "
                             "pip install 'megatron-flops[tensorboard]'") from None
        writer = SummaryWriter(log_dir=args.tensorboard_dir, max_queue=1000)
    wandb_run = None
    if args.wandb and dist.is_last_rank:
        import wandb
        wandb_run = wandb.init(project=args.wandb_project,
                               config={k: v for k, v in vars(args).items() if not k.startswith("_")})

    breakdown = flops_breakdown(model, run.seq_length, run.global_batch_size, run.recompute,
                                run.pipeline_model_parallel_size)
    params = parameter_count(model)
    torch_params = sum(p.numel() for p in network.parameters())
    for line in summary_lines(model, run, breakdown, params):
        say(line)
    say("attention counted dense (full s×s, as the model computes it); elementwise ops "
        "(norms, softmax, activations) not counted")
    if torch_params != params.total:
        say(f"warning: the torch model holds {torch_params:,} parameters, the formula "
            f"{params.total:,}")
    source = args.data_path or "the shipped demo corpus"
    say(f"data: {source}, {len(data):,} bytes (byte tokens, vocab {model.vocab_size} after "
        f"padding); device: {device}; {dist.world_size} process(es), {backend}; "
        f"{torch.get_num_threads()} CPU threads per process")
    say(f"peak for MFU/HFU: {peak_source}")
    say(f"training for {args.train_iters} iterations, logging every {args.log_interval} ...")
    sys.stdout.flush()

    def synchronize():
        if cuda:
            torch.cuda.synchronize(device)

    first_loss = last_loss = None
    interval_loss = torch.zeros((), device=device)
    interval_iterations = 0
    summary_seconds = 0.0
    summary_first_iteration = None
    train_model.train()
    synchronize()
    dist.barrier()
    interval_start = time.perf_counter()
    for iteration in range(1, args.train_iters + 1):
        batch_size = run.batch_size_at(meter.consumed_samples)
        micro_batches = batches.global_batch(batch_size, run.micro_batch_size, device)
        steps = len(micro_batches)
        step_loss = torch.zeros((), device=device)
        for index, (inputs, labels) in enumerate(micro_batches):
            last_micro = index == steps - 1
            if engine is not None:
                loss = engine(inputs, labels)
                engine.backward(loss)
                engine.step()
                step_loss += loss.detach().float() / steps
                continue
            sync = nullcontext() if (last_micro or not dist.active) else train_model.no_sync()
            autocast = (torch.autocast(device.split(":")[0], dtype=autocast_dtype)
                        if autocast_dtype is not None else nullcontext())
            with sync:
                with autocast:
                    loss = train_model(inputs, labels) / steps
                (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.detach().float()
        if engine is None:
            if scaler:
                scaler.unscale_(optimizer)
            if args.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(network.parameters(), args.clip_grad)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        meter.add_iteration(batch_size, run.seq_length)
        if summary_first_iteration is not None:
            summary_meter.add_iteration(batch_size, run.seq_length)
        interval_loss += step_loss
        interval_iterations += 1

        if iteration % args.log_interval == 0 or iteration == args.train_iters:
            synchronize()
            now = time.perf_counter()
            elapsed = now - interval_start
            report = meter.report(elapsed)
            loss_value = dist.mean(float(interval_loss.item()) / interval_iterations)
            if summary_first_iteration is None:
                summary_first_iteration = iteration + 1
            else:
                summary_seconds += elapsed
            first_loss = loss_value if first_loss is None else first_loss
            last_loss = loss_value
            if dist.is_last_rank and not peak_warned and report.hfu is not None and report.hfu > 1:
                peak_warned = True
                print(f"note: this interval ran at {report.hardware_tflops_per_gpu:.3g} TFLOP/s per "
                      f"device, above the peak ({peak_tflops:.3g}): the peak is too low"
                      + (" (measured while the machine was busy?); it is measured again at the "
                         "end, or give --peak-tflops" if peak_measured else ""), flush=True)
            if dist.is_last_rank:
                lr = (engine.get_lr()[0] if engine is not None else optimizer.param_groups[0]["lr"])
                prefix = (("consumed samples", f"{meter.consumed_samples:12d}"),
                          ("elapsed time per iteration (ms)",
                           f"{1000.0 * elapsed / report.iterations:.1f}"),
                          ("learning rate", f"{lr:.3E}"),
                          ("global batch size", f"{batch_size:5d}"),
                          ("lm loss", f"{loss_value:.6E}"))
                print(f" iteration {iteration:8d}/{args.train_iters:8d} |"
                      + sinks.console_line(report, prefix), flush=True)
                if writer is not None:
                    sinks.write_tensorboard(writer, report, iteration, meter.consumed_samples,
                                            meter.consumed_tokens)
                    writer.add_scalar("lm loss", loss_value, iteration)
                    writer.add_scalar("lm loss vs samples", loss_value, meter.consumed_samples)
                    writer.add_scalar("learning-rate/learning-rate", lr, iteration)
                if wandb_run is not None:
                    sinks.write_wandb(wandb_run.log, report, iteration)
                    wandb_run.log({"lm loss": loss_value}, step=iteration)
            interval_loss.zero_()
            interval_iterations = 0
            interval_start = now  # logging time belongs to the next interval: no gaps

    if writer is not None:
        writer.close()
    if wandb_run is not None:
        wandb_run.finish()

    # ---- the summary ---------------------------------------------------------------------
    if peak_measured:
        # a second chance at a quiet moment: a busy machine measures a low peak at times
        peak_tflops, peak_source = measure_peak(run.dtype, device, dist)
        summary_meter.peak_tflops = peak_tflops
    total_seconds = time.perf_counter() - started
    say("")
    say(f"done: {args.train_iters} iterations, {meter.consumed_samples:,} samples, "
        f"{format_count(meter.consumed_tokens)} tokens; {total_seconds:.1f} s wall in all "
        f"(start-up and the first interval included)")
    say(f"lm loss: {first_loss:.3f} (first interval) -> {last_loss:.3f} (last interval)")
    if summary_meter.pending_iterations:
        summary = summary_meter.report(summary_seconds)
        window = f"iterations {summary_first_iteration}-{args.train_iters}, after the first interval"
    else:
        summary = None
    if summary is None:
        say("(too few intervals for a steady-state summary: give more --train-iters than "
            "--log-interval)")
        return EXIT_OK
    seconds_per_iteration = summary.elapsed_seconds / summary.iterations
    per_device = "per device" if not cuda else "per GPU"
    say(f"mean throughput over {window}:")
    say(f"  elapsed time per iteration:   {1000.0 * seconds_per_iteration:.1f} ms")
    say(f"  samples per second:           {summary.samples_per_second:.2f}")
    say(f"  tokens per second:            {summary.tokens_per_second:.1f} "
        f"({summary.tokens_per_second_per_gpu:.1f} {per_device})")
    say(f"  {'model TFLOP/s ' + per_device + ':':<30}{summary.model_tflops_per_gpu:.4g}")
    say(f"  {'hardware TFLOP/s ' + per_device + ':':<30}{summary.hardware_tflops_per_gpu:.4g}")
    mfu = "n/a" if summary.mfu is None else f"{100 * summary.mfu:.1f}%"
    hfu = "n/a" if summary.hfu is None else f"{100 * summary.hfu:.1f}%"
    say(f"  MFU / HFU:                    {mfu} / {hfu}   ({peak_source})")
    if summary.hfu is not None and summary.hfu > 1:
        say("  HFU above 100 %: the peak is below what this run achieved; measure it on a quiet "
            "machine (`megatron-flops peak`) or give --peak-tflops")
    legacy = legacy_tflops_for_shapes(model, run, run.global_batch_size, run.seq_length,
                                      seconds_per_iteration)
    say("what the forks' formulas would log for this run at the same iteration time:")
    for fork, value in legacy.items():
        error = value / summary.hardware_tflops_per_gpu - 1.0
        say(f"  {fork:<10} fork: {value:.4g} TFLOP/s per device ({100 * error:+.1f}% vs the "
            f"exact hardware count)")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    from ..commands.common import run_guarded
    return run_guarded(demo_main, sys.argv[1:] if argv is None else argv)

