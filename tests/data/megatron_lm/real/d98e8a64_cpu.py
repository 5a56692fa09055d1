"""How tests/data/megatron_lm/real/d98e8a64_cpu.log was made: NVIDIA Megatron-LM d98e8a64's own
parse_args/validate_args (its argument dump) and training_log, on CPU, no model.

Not run by the tests (it needs the fetched repository).  Extract the repository's megatron/
into /tmp/mlm_real (``git archive d98e8a64 megatron | tar -x -C /tmp/mlm_real``), list the
modules that import triton in /tmp/stubs.txt (``grep -rl '^import triton' megatron``, dotted),
then ``MEGATRON_FLOPS_DISABLE=1 python d98e8a64_cpu.py 2>/dev/null > d98e8a64_cpu.log``
(without MEGATRON_FLOPS_DISABLE the megatron-flops hook is live).  Eight iterations of a
10 ms sleep stand for training; the stand-ins below only let the module import and run on a
CPU (none is in the formula or the line).
"""
import os, sys, typing
from unittest import mock
sys.path.insert(0, '/tmp/mlm_real')
for name in open('/tmp/stubs.txt').read().split():
    sys.modules[name] = mock.MagicMock()      # triton kernels: import only
if not hasattr(typing, "override"):
    typing.override = lambda f: f             # Python 3.12's typing.override
import torch
torch.cuda.current_device = lambda: "cpu"     # CPU stand-ins (as the Megatron-Core tests do)
torch.cuda.synchronize = lambda *a, **k: None
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
torch.distributed.init_process_group("gloo", rank=0, world_size=1)
import megatron_flops.megatron as mf
hook = mf.install()
import megatron.training
t = sys.modules["megatron.training.training"]
from megatron.training.arguments import parse_args, validate_args
from megatron.training import global_vars
from megatron.core import parallel_state as mpu
argv = ("--num-layers 4 --hidden-size 1024 --num-attention-heads 16 --seq-length 1024 "
        "--max-position-embeddings 1024 --micro-batch-size 2 --global-batch-size 8 "
        "--train-iters 8 --log-interval 4 --log-throughput --lr 3e-4 "
        "--tokenizer-type NullTokenizer --vocab-size 128 " + " ".join(sys.argv[1:])).split()
sys.argv = ["pretrain_gpt.py"] + argv
args = parse_args()
validate_args(args, {})
args.padded_vocab_size = 128
global_vars.set_global_variables(args, build_tokenizer=False)
mpu.initialize_model_parallel(1, 1)
import time
timers = global_vars.get_timers()
timers('interval-time', log_level=0).start(barrier=True)
total = {}
seconds = []
for iteration in range(1, 9):
    time.sleep(0.01)
    args.consumed_train_samples += 8
    t.training_log({}, total, 3e-4, iteration, 1.0, True, 0, 1.5, None, None, None,
                   pg_collection=None, is_first_iteration=(iteration == 1))
