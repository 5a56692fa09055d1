"""``megatron-flops patch CHECKOUT [--dry-run] [--check | --revert]``: argv and printing; the
work (detection, plans, byte-exact writes) is :mod:`megatron_flops.megatron.patch`."""

from typing import List

from ..megatron import patch
from .common import EXIT_MISMATCH, EXIT_OK, Parser, UsageError


def patch_main(argv: List[str]) -> int:
    parser = Parser(prog="megatron-flops patch", allow_abbrev=False, description=(
        "Route a Megatron-DeepSpeed or Megatron-LM checkout's throughput reporting through megatron-flops "
        "with one marked block appended to megatron/training.py (Megatron-LM: "
        "megatron/training/training.py; reversible byte for byte)."))
    parser.add_argument("checkout", metavar="CHECKOUT", help="the fork's checkout (holds megatron/)")
    parser.add_argument("--dry-run", action="store_true", help="print the unified diff, write nothing")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="say whether the checkout is patched (exit 0 patched, 1 not, or patched "
                           "by an earlier version: `patch` upgrades it)")
    mode.add_argument("--revert", action="store_true", help="remove the block, restoring the file")
    args = parser.parse_args(argv)
    if args.check and args.dry_run:
        raise UsageError("--check and --dry-run go separately")
    if args.check:
        fork = patch.detect_fork(args.checkout)  # unknown layout: exit 2
        state = patch.status(args.checkout)
        if state == "outdated":
            state = ("outdated: patched by an earlier megatron-flops (its block catches only "
                     f"ImportError); `megatron-flops patch {args.checkout}` upgrades it")
        print(f"{patch.training_path(args.checkout)}: {state} ({fork} fork)")
        return EXIT_OK if state == "patched" else EXIT_MISMATCH
    plan = patch.plan_revert(args.checkout) if args.revert else patch.plan_apply(args.checkout)
    if plan is None:
        state = "not patched: nothing to revert" if args.revert else "already patched"
        print(f"{patch.training_path(args.checkout)}: {state}")
        return EXIT_OK
    if args.dry_run:
        print(patch.unified_diff(plan, args.checkout), end="")
        return EXIT_OK
    patch.write(plan)
    if args.revert:
        print(f"{plan.path}: restored (megatron-flops block removed)")
    elif plan.upgrade:
        print(f"{plan.path}: upgraded (an earlier megatron-flops block replaced by this version's; "
              f"{plan.fork} fork); `megatron-flops patch --revert {args.checkout}` restores it")
    else:
        print(f"{plan.path}: patched ({plan.fork} fork); `megatron-flops patch --revert "
              f"{args.checkout}` restores it")
    return EXIT_OK
