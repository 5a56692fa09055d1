"""``megatron-flops demo``: its flags, parsed once into a :class:`DemoConfig`; the run itself
is :func:`megatron_flops.demo.train.run_demo`."""

import argparse
import time
from typing import List

from ..demo.config import ATTENTION_KINDS, DEFAULTS, DemoConfig, launcher_rank, launcher_world_size
from ..demo.corpus import BYTE_VOCAB_SIZE
from ..demo.train import run_demo
from ..logs.arguments import FRAMEWORK_ARGUMENTS
from ..megatron.args import add_megatron_arguments
from ..megatron.dialects import DIALECT_ARGUMENTS
from .common import Parser, UsageError, add_peak_arguments, parse_command, positive, run_guarded

SHAPE_DEFAULTS = ("num_layers", "hidden_size", "num_attention_heads", "seq_length",
                  "micro_batch_size", "vocab_size")
OPTIONS = [name for name in DemoConfig.__dataclass_fields__
           if name not in ("model", "run", "world_size", "deepspeed_settings", "arguments")]


class DemoParser(Parser):
    """The demo's parser: what the launcher decides (the world size; TP = PP = 1) is checked
    as soon as the flags are read, before any shape is derived from them."""

    world_size = 1

    def parse_known_args(self, args=None, namespace=None):
        known, unknown = super().parse_known_args(args, namespace)
        if known.world_size is not None and known.world_size != self.world_size:
            raise UsageError(f"--world-size ({known.world_size}) must equal the number of "
                             f"processes ({self.world_size}); the demo takes it from the launcher")
        for flag, value in (("--tensor-model-parallel-size", known.tensor_model_parallel_size),
                            ("--pipeline-model-parallel-size", known.pipeline_model_parallel_size)):
            if value != 1:
                raise UsageError(f"{flag} must be 1 in the demo (it trains data-parallel only), "
                                 f"got {value}")
        known.world_size = self.world_size
        return known, unknown


def demo_parser(world_size: int = 1) -> argparse.ArgumentParser:
    parser = DemoParser(prog="megatron-flops demo", allow_abbrev=False, conflict_handler="resolve",
                        description="Train the reference GPT on bytes of text with live, exact "
                                    "throughput (samples/s, tokens/s, TFLOP/s per device, MFU, HFU).")
    parser.world_size = world_size
    add_megatron_arguments(parser)
    parser.set_defaults(**{k: DEFAULTS[k] for k in SHAPE_DEFAULTS})
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
                   help="CPU threads per process (default: chosen for this machine, the "
                        "cores its load average leaves free / local processes, at least 1; "
                        "OMP_NUM_THREADS, when set, decides instead)")
    g.add_argument("--attention", choices=ATTENTION_KINDS, default="matmul",
                   help="matmul: explicit Q·Kᵀ and attention·V products (exact ground truth, "
                        "the default); sdpa: PyTorch's fused scaled_dot_product_attention "
                        "(flash / efficient kernels), counted the same")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (Inductor): the fused kernels of a tuned "
                        "run; counted the same (the count is the breakdown's, not the "
                        "kernels')")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help=argparse.SUPPRESS)
    out = parser.add_argument_group("outputs")
    out.add_argument("--tensorboard-dir", default=None, help="write TensorBoard event files here")
    out.add_argument("--wandb", action="store_true", help="log to Weights & Biases (needs wandb)")
    out.add_argument("--wandb-project", default="megatron-flops-demo")
    out.add_argument("--profile", action="store_true",
                     help="profile a few iterations with torch.profiler, write the Chrome trace "
                          "and print where the time went per component at the end")
    out.add_argument("--profile-start", type=positive(int, "--profile-start"), default=3,
                     help="first profiled iteration (default 3; the one before is a warm-up)")
    out.add_argument("--profile-iters", type=positive(int, "--profile-iters"), default=2,
                     help="iterations profiled (default 2)")
    out.add_argument("--profile-dir", default="profile",
                     help="where the trace is written (default ./profile)")
    add_peak_arguments(parser)
    ds = parser.add_argument_group("DeepSpeed")
    ds.add_argument("--deepspeed", action="store_true",
                    help="train through deepspeed.initialize (needs the deepspeed extra)")
    ds.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config",
                    default=None, help="DeepSpeed JSON config (default: built from the flags)")
    ds.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2),
                    help="ZeRO stage when no --deepspeed_config is given (default 0)")
    return parser


# issue 24: the arguments the demo's dump always shows, whatever their value — what relog
# reads a run's shape, batch, log interval and dtype by, and the names it tells the framework
# and dialect by (so the short dump is read in the same one); the others only when they
# differ from the demo's defaults (the whole namespace was ~130 lines)
DUMPED_ALWAYS = ("num_layers", "hidden_size", "num_attention_heads", "seq_length",
                 "micro_batch_size", "global_batch_size", "vocab_size",
                 "make_vocab_size_divisible_by", "tensor_model_parallel_size",
                 "pipeline_model_parallel_size", "world_size", "train_iters", "log_interval",
                 "bf16", "fp16", *FRAMEWORK_ARGUMENTS, *DIALECT_ARGUMENTS)


def dumped_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """The arguments the demo's Megatron-style dump shows (:data:`DUMPED_ALWAYS`, then every
    one whose value is not the parser's default)."""
    return {name: value for name, value in vars(args).items() if not name.startswith("_")
            and (name in DUMPED_ALWAYS or value != parser.get_default(name))}


def parse_demo_config(argv: List[str]) -> DemoConfig:
    """The demo's flags, read once, for the processes the launcher started."""
    world_size = launcher_world_size()
    quiet = launcher_rank() != world_size - 1  # the last rank speaks, as in Megatron
    parser = demo_parser(world_size)
    args, model, run = parse_command(parser, argv, quiet=quiet)
    arguments = dumped_arguments(args, parser)
    if args.vocab_size is not None and args.vocab_size < BYTE_VOCAB_SIZE:
        raise UsageError(f"--vocab-size ({args.vocab_size}) must be at least {BYTE_VOCAB_SIZE}: "
                         "the demo's tokens are bytes")
    return DemoConfig(model=model, run=run, world_size=world_size, arguments=arguments,
                      **{name: getattr(args, name) for name in OPTIONS})


def demo_main(argv: List[str]) -> int:
    started = time.perf_counter()
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("the demo needs PyTorch: pip install -e '.[torch]' in a megatron-flops clone") from None
    # every flag (and a --deepspeed_config file) is checked before DeepSpeed is imported or
    # a process group started, so bad input exits 2 at once on every rank
    config = parse_demo_config(argv)
    return run_demo(config, started)


def main(argv=None) -> int:
    """``python -m megatron_flops.demo``."""
    import sys
    return run_guarded(demo_main, sys.argv[1:] if argv is None else argv)
