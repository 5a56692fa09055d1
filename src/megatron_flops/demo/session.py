"""One demo run's objects, built once from a :class:`~.config.DemoConfig`: the data, the
model, the optimizer (or DeepSpeed engine), the peak, the meters and the writers."""

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .config import DemoConfig
from .distributed import Distributed


def lr_factor(iteration: int, warmup_iters: int, decay_iters: int, min_ratio: float) -> float:
    """Megatron's default shape: linear warm-up, then cosine decay to ``min_lr``.

    ``iteration`` counts optimizer steps already taken (0 for the first step).
    """
    if warmup_iters and iteration < warmup_iters:
        return (iteration + 1) / warmup_iters
    span = max(decay_iters - warmup_iters, 1)
    progress = min(max(iteration - warmup_iters, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Session:
    config: DemoConfig
    device: str
    dist: Distributed
    say: Callable[..., None]       # print on the last rank, nothing elsewhere
    data: bytes
    batches: Any                   # ByteBatches
    gpt: Any                       # the ReferenceGPT
    network: Any                   # the GPT with its loss (what DDP / DeepSpeed wrap)
    train_model: Any               # network, its DDP wrapper, or the DeepSpeed engine
    engine: Any                    # the DeepSpeed engine or None
    optimizer: Any
    scheduler: Any
    scaler: Any                    # fp16 GradScaler or None
    autocast_dtype: Any
    backend: str                   # how the processes train, in words
    peak_tflops: Optional[float]
    peak_source: str
    peak_measured: bool
    meter: Any                     # every iteration
    summary_meter: Any             # the iterations after the first interval
    breakdown: Any
    writer: Any = None             # TensorBoard SummaryWriter
    wandb_run: Any = None

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def synchronize(self) -> None:
        if self.cuda:
            import torch
            torch.cuda.synchronize(self.device)

    def learning_rate(self) -> float:
        if self.engine is not None:
            return self.engine.get_lr()[0]
        return self.optimizer.param_groups[0]["lr"]

    def close_writers(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def build_session(config: DemoConfig, device: str, dist: Distributed) -> Session:
    import torch
    from ..planning import iteration_breakdown
    from ..meter import ThroughputMeter
    from .corpus import load_corpus

    model, run = config.model, config.run
    cuda = device.startswith("cuda")
    if config.threads:
        torch.set_num_threads(config.threads)
    elif not cuda and dist.local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world_size))
    data = load_corpus(config.data_path)
    batches = ByteBatches(data, run.seq_length, config.seed, dist.rank, dist.world_size)
    gpt, network, optimizer, scheduler = _model_and_optimizer(config, device)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.dtype)
    engine = scaler = None
    if config.deepspeed:
        engine, backend = _deepspeed_engine(config, network, optimizer, scheduler)
        autocast_dtype = None  # DeepSpeed's bf16/fp16 sections own the precision
        train_model = engine
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
        if config.compile:  # the wrapper, as PyTorch recommends for DDP
            train_model = torch.compile(train_model)
            backend += ", torch.compile"

    peak_tflops, peak_source, peak_measured = choose_peak(config, device, dist)
    session = Session(
        config=config, device=device, dist=dist,
        say=print if dist.is_last_rank else (lambda *a, **k: None),
        data=data, batches=batches, gpt=gpt, network=network, train_model=train_model,
        engine=engine, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        autocast_dtype=autocast_dtype, backend=backend, peak_tflops=peak_tflops,
        peak_source=peak_source, peak_measured=peak_measured,
        meter=ThroughputMeter.for_run(model, run, peak_tflops),
        summary_meter=ThroughputMeter.for_run(model, run, peak_tflops),
        breakdown=iteration_breakdown(model, run))
    if dist.is_last_rank:
        _open_writers(session)
    return session


def _model_and_optimizer(config: DemoConfig, device: str):
    """(the GPT, the GPT with its loss, AdamW, the learning-rate schedule)."""
    import torch
    from ..reference.model import ReferenceGPT
    run = config.run
    torch.manual_seed(config.seed)
    gpt = ReferenceGPT(config.model, run.seq_length, run.recompute,
                       run.pipeline_model_parallel_size, dropout=config.hidden_dropout,
                       device=device)
    if config.attention == "sdpa":
        from .fused import use_sdpa_attention
        use_sdpa_attention(gpt)
    network = loss_module(gpt)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.weight_decay,
        fused=True if device.startswith("cuda") and not config.deepspeed else None)
    min_ratio = config.min_lr / config.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, config.lr_warmup_iters, config.train_iters, min_ratio))
    return gpt, network, optimizer, scheduler


def _deepspeed_engine(config: DemoConfig, network, optimizer, scheduler):
    import logging
    import deepspeed
    deepspeed.utils.logger.setLevel(logging.WARNING)
    settings = config.deepspeed_settings
    user_optimizer = "optimizer" in settings
    engine, _, _, _ = deepspeed.initialize(
        model=network, optimizer=None if user_optimizer else optimizer,
        model_parameters=network.parameters() if user_optimizer else None,
        lr_scheduler=None if user_optimizer else scheduler, config=settings,
        dist_init_required=False)
    stage = settings.get("zero_optimization", {}).get("stage", 0)
    return engine, f"DeepSpeed {deepspeed.__version__} ZeRO stage {stage}"


def _open_writers(session: Session) -> None:
    config = session.config
    if config.tensorboard_dir:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--tensorboard-dir needs TensorBoard: "
                             "pip install -e '.[tensorboard]' in a megatron-flops clone") from None
        session.writer = SummaryWriter(log_dir=config.tensorboard_dir, max_queue=1000)
    if config.wandb:
        import wandb
        session.wandb_run = wandb.init(project=config.wandb_project, config=config.as_dict())


# ---- data ----------------------------------------------------------------------------------

class ByteBatches:
    """Random windows of ``seq_length + 1`` bytes; inputs are the first s, labels the last s.

    Every rank draws the same global batch of window offsets from one seeded generator and
    keeps its own slice, so N replicas see exactly the samples one process would see.
    """

    def __init__(self, data: bytes, seq_length: int, seed: int, rank: int, world_size: int):
        import torch
        if len(data) < seq_length + 2:
            raise ValueError(f"--data-path text has {len(data)} bytes; --seq-length "
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

def choose_peak(config: DemoConfig, device: str, dist: Distributed):
    """(tflops or None, source text, measured?): --peak-tflops, --gpu, the GPU's datasheet,
    or a measurement of this device (see :func:`measure_peak`)."""
    from ..hardware import resolve_peak
    dtype = config.run.dtype
    if config.peak_tflops is not None or config.gpu is not None:
        peak = resolve_peak(config.gpu, dtype, config.peak_tflops)
        return peak.tflops, peak.source, False
    if device.startswith("cuda"):
        import torch
        peak = resolve_peak(torch.cuda.get_device_name(torch.device(device)), dtype)
        if peak.known:
            return peak.tflops, peak.source, False
    return measure_peak(dtype, device, dist) + (True,)


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
