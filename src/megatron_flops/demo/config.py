"""The demo's settings: parsed once (by ``megatron-flops demo``) into one frozen object.

:class:`DemoConfig` holds the model and run shapes and every training and output option;
building it checks each option against the others and raises ``ValueError`` naming the flag
(the command turns that into one line on stderr, exit 2).  Nothing here imports torch.
"""

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..errors import ShapeError, UsageError
from ..shapes import ModelShape, RunShape
from .corpus import BYTE_VOCAB_SIZE
from .peak import check_device

# Sized so that the default run takes well under a minute on two CPU cores and the loss
# visibly falls (about 4.1 -> 1.95 nats per byte on the default corpus; ln 256 = 5.5).
DEFAULTS = dict(num_layers=4, hidden_size=128, num_attention_heads=4, seq_length=128,
                micro_batch_size=8, vocab_size=256, train_iters=200, log_interval=20,
                lr=2e-3, min_lr=2e-4, lr_warmup_iters=20, seed=1234)
ATTENTION_KINDS = ("matmul", "sdpa")


@dataclass(frozen=True)
class DemoConfig:
    """Everything one demo run needs, checked once.  ``world_size`` is the launcher's."""

    model: ModelShape
    run: RunShape
    world_size: int = 1
    train_iters: int = DEFAULTS["train_iters"]
    log_interval: int = DEFAULTS["log_interval"]
    lr: float = DEFAULTS["lr"]
    min_lr: float = DEFAULTS["min_lr"]
    lr_warmup_iters: int = DEFAULTS["lr_warmup_iters"]
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    hidden_dropout: float = 0.0
    seed: int = DEFAULTS["seed"]
    data_path: Optional[str] = None
    device: Optional[str] = None   # None: cuda when available, else cpu
    threads: Optional[int] = None
    attention: str = "matmul"      # matmul (exact ground truth) or sdpa (fused kernel)
    compile: bool = False          # torch.compile the model (Inductor); counted the same
    tensorboard_dir: Optional[str] = None
    wandb: bool = False
    wandb_project: str = "megatron-flops-demo"
    gpu: Optional[str] = None
    peak_tflops: Optional[float] = None
    deepspeed: bool = False
    deepspeed_config: Optional[str] = None
    zero_stage: int = 0
    profile: bool = False
    profile_start: int = 3         # first profiled iteration (1-based); one warm-up before
    profile_iters: int = 2
    profile_dir: str = "profile"
    deepspeed_settings: Optional[dict] = field(default=None, compare=False)
    # the flags as parsed (name -> value), for the Megatron-style arguments dump at start
    arguments: Optional[dict] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_demo_config(self)
        if self.deepspeed:
            object.__setattr__(self, "deepspeed_settings", deepspeed_config(self))

    def as_dict(self) -> dict:
        """Plain values (for W&B's run config)."""
        out = asdict(self)
        out.pop("deepspeed_settings")
        out.pop("arguments")
        return out

    @property
    def profiled_iterations(self) -> range:
        return range(self.profile_start, min(self.profile_start + self.profile_iters,
                                             self.train_iters + 1))


def auto_threads(cores: int, load_average: float, local_processes: int = 1) -> int:
    """CPU threads per process when ``--threads`` is not given: the cores nothing else keeps
    busy, shared among this machine's processes, at least one.

    An OpenMP team waits at every barrier for its slowest thread, so a thread on a core that
    another busy process also wants slows the whole team (issue 24 measured torch's one thread
    per core 5.6x slower than one thread on a loaded 2-core machine):
    ``max(1, min(cores, cores - round(load_average)) // local_processes)``, where
    ``load_average`` is the 1-minute load before the demo starts (the machine's other work).
    ``benchmarks/demo_threads.py`` measures the choice against fixed counts.
    """
    free = min(cores, cores - round(load_average))
    return max(1, free // max(1, local_processes))


def machine_cores() -> int:
    """The CPUs this process may run on (its affinity mask), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def launcher_world_size() -> int:
    """The number of processes a launcher (torchrun, deepspeed) started; 1 without one."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return 1


def launcher_rank() -> int:
    return int(os.environ.get("RANK", "0")) if "WORLD_SIZE" in os.environ else 0


def check_demo_config(c: DemoConfig) -> None:
    """Every option against the others; ``ValueError`` naming the flag at fault."""
    if c.model.vocab_size < BYTE_VOCAB_SIZE:
        raise ShapeError(f"--padded-vocab-size ({c.model.vocab_size}) must be at least "
                         f"{BYTE_VOCAB_SIZE}: the demo's tokens are bytes")
    if not 0.0 <= c.hidden_dropout < 1.0:
        raise UsageError(f"--hidden-dropout must be in [0, 1), got {c.hidden_dropout}")
    if c.min_lr < 0 or c.min_lr > c.lr:
        raise UsageError(f"--min-lr ({c.min_lr}) must be between 0 and --lr ({c.lr})")
    if c.lr_warmup_iters < 0:
        raise UsageError(f"--lr-warmup-iters must not be negative, got {c.lr_warmup_iters}")
    if c.clip_grad < 0:
        raise UsageError(f"--clip-grad must not be negative, got {c.clip_grad}")
    if c.attention not in ATTENTION_KINDS:
        raise UsageError(f"--attention must be one of {', '.join(ATTENTION_KINDS)}, "
                         f"got {c.attention!r}")
    if c.profile and c.profile_start + c.profile_iters - 1 > c.train_iters:
        raise UsageError(f"--profile-start ({c.profile_start}) + --profile-iters "
                         f"({c.profile_iters}) - 1 must not exceed --train-iters "
                         f"({c.train_iters})")
    if c.profile and c.profile_start < 2:
        raise UsageError(f"--profile-start must be at least 2 (one warm-up iteration is "
                         f"not profiled), got {c.profile_start}")
    if c.device is not None:
        check_device(c.device)
    if c.deepspeed_config is not None and not c.deepspeed:
        raise UsageError("--deepspeed_config needs --deepspeed")
    if c.compile and c.deepspeed:
        raise UsageError("--compile is not supported with --deepspeed (DeepSpeed compiles "
                         "through its own config)")
    if c.deepspeed and c.run.rampup_batch_size:
        raise UsageError("--rampup-batch-size is not supported with --deepspeed "
                         "(DeepSpeed's batch size is fixed)")


def deepspeed_config(c: DemoConfig) -> dict:
    """The DeepSpeed config: the user's file, with batch sizes checked against the flags."""
    run = c.run
    accumulation = run.global_batch_size // (run.micro_batch_size * c.world_size)
    from_flags = {"train_batch_size": run.global_batch_size,
                  "train_micro_batch_size_per_gpu": run.micro_batch_size,
                  "gradient_accumulation_steps": accumulation}
    if c.deepspeed_config is None:
        config = {"zero_optimization": {"stage": c.zero_stage},
                  "gradient_clipping": c.clip_grad,
                  "bf16": {"enabled": run.dtype == "bf16"},
                  "fp16": {"enabled": run.dtype == "fp16"}}
    else:
        try:
            with open(c.deepspeed_config) as handle:
                config = json.load(handle)
        except OSError as error:
            raise UsageError(f"--deepspeed_config {c.deepspeed_config!r} cannot be read: "
                             f"{error.strerror or error}") from None
        except ValueError as error:
            raise UsageError(f"--deepspeed_config {c.deepspeed_config!r} is not JSON: {error}") from None
        if not isinstance(config, dict):
            raise UsageError(f"--deepspeed_config {c.deepspeed_config!r} must hold a JSON object")
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
