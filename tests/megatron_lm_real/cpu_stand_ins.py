"""CPU stand-ins for the CUDA-only calls NVIDIA Megatron-LM's training loop makes, so that its
own ``pretrain_gpt.py`` trains a tiny GPT on one CPU process (gloo).  None of them computes a
matmul or changes one: they answer device queries for one CPU "device", keep the CUDA RNG
calls on the CPU generator, make ``.cuda()`` an identity, and send tensors created on
``"cuda"`` to the CPU.  Each was found necessary by running Megatron-LM without it (issue 19).

``install()`` must run before anything imports ``megatron``: Megatron-Core binds some of these
names at import (``from torch.cuda import _lazy_call``).
"""

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import time
import types
import typing

import torch
from torch.overrides import TorchFunctionMode


class Event:
    """``torch.cuda.Event``: a wall-clock mark; ``elapsed_time`` in milliseconds."""

    def __init__(self, enable_timing=False, blocking=False, interprocess=False, **kwargs):
        self.at = None

    def record(self, stream=None):
        self.at = time.perf_counter()

    def elapsed_time(self, end):
        return 1000.0 * (end.at - self.at)

    def synchronize(self):
        pass

    def wait(self, stream=None):
        pass

    def query(self):
        return True


class Stream:
    """``torch.cuda.Stream``: everything runs in order on the CPU."""

    def __init__(self, device=None, priority=0, **kwargs):
        self.device = torch.device("cpu")

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_STREAM = Stream()


def _is_cuda(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class CudaToCpu(TorchFunctionMode):
    """Every torch function called with ``device="cuda"`` (or ``cuda:N``, or an int, Megatron's
    ``torch.cuda.current_device()``) runs with ``device="cpu"``; ``tensor.to("cuda")`` too."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        device = kwargs.get("device")
        if _is_cuda(device) or (isinstance(device, int) and not isinstance(device, bool)):
            kwargs["device"] = "cpu"
        if args and any(_is_cuda(a) for a in args):
            args = tuple("cpu" if _is_cuda(a) else a for a in args)
        return func(*args, **kwargs)


_original_type = torch.Tensor.type


def _tensor_type(self, dtype=None, non_blocking=False, **kwargs):
    """``tensor.type()`` answers ``torch.cuda.FloatTensor`` for a CPU float tensor (Megatron's
    gradient clipping asserts its gradients are CUDA tensors)."""
    if dtype is None and not kwargs:
        name = _original_type(self)
        if name.startswith("torch.") and not name.startswith("torch.cuda."):
            return name.replace("torch.", "torch.cuda.", 1)
        return name  # (inside the function mode this is called twice)
    if isinstance(dtype, str):
        dtype = dtype.replace("torch.cuda.", "torch.")
    return _original_type(self, dtype, non_blocking, **kwargs)


class TritonKernelOnCpu(RuntimeError):
    pass


class _Kernel:
    """A ``@triton.jit`` / ``@triton.autotune`` kernel of the stand-in: defined, never run."""

    def __init__(self, function):
        self.function = function
        self.__name__ = getattr(function, "__name__", "kernel")

    def __getitem__(self, grid):
        return self

    def __call__(self, *args, **kwargs):
        raise TritonKernelOnCpu(f"triton kernel {self.__name__} launched: there is no triton "
                                "on this CPU run (the stand-in only lets modules import)")


def _decorator(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return _Kernel(args[0])
    return _Kernel


class _Anything:
    """``tl.constexpr``, ``tl.float32``, …: names used in annotations and defaults."""

    def __init__(self, name):
        self.name = name

    def __getattr__(self, name):
        return _Anything(f"{self.name}.{name}")

    def __call__(self, *args, **kwargs):
        return _Anything(self.name)

    def __getitem__(self, key):
        return _Anything(self.name)


class _TritonModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(f"{self.__name__}.{name}")


class _TritonFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import triton`` (and ``triton.*``) without triton installed: Megatron-LM HEAD imports
    it at module level for kernels a tiny CPU run never launches; any launch raises."""

    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _TritonModule(spec.name)
        module.__path__ = []
        module.__version__ = "3.0.0"
        for name in ("jit", "autotune", "heuristics"):
            setattr(module, name, _decorator)
        module.Config = lambda *args, **kwargs: None
        module.cdiv = lambda a, b: -(-a // b)
        module.next_power_of_2 = lambda n: 1 << max(int(n) - 1, 0).bit_length()
        return module

    def exec_module(self, module):
        pass


def _zero(*args, **kwargs):
    return 0


def install() -> None:
    os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # Megatron-Core's jit fuser
    if not hasattr(typing, "override"):  # Python 3.12's typing.override (Megatron-LM HEAD)
        import typing_extensions
        typing.override = typing_extensions.override
    try:
        import triton  # noqa: F401  (a real one: nothing to stand in for)
    except ImportError:
        # torch decides once that there is no triton (its checks are cached), then the
        # stand-in answers Megatron's imports
        import functorch.compile  # noqa: F401
        import torch._dynamo.backends.debugging  # noqa: F401
        import torch._inductor.runtime.triton_compat  # noqa: F401
        import torch.utils.flop_counter  # noqa: F401
        from torch.utils._triton import has_triton
        has_triton()
        sys.meta_path.insert(0, _TritonFinder())
    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda.current_device = lambda: 0
    cuda.set_device = lambda *args, **kwargs: None
    cuda.synchronize = lambda *args, **kwargs: None
    cuda.empty_cache = lambda: None
    cuda.get_device_name = lambda *args, **kwargs: "cpu"
    cuda.get_device_capability = lambda *args, **kwargs: (0, 0)
    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved",
                 "max_memory_reserved", "reset_peak_memory_stats", "reset_max_memory_allocated"):
        setattr(cuda, name, _zero)
    cuda.mem_get_info = lambda *args, **kwargs: (0, 0)
    cuda.memory_stats = lambda *args, **kwargs: {}
    # the CUDA RNG is the CPU generator
    cuda.default_generators = (torch.default_generator,)
    cuda.get_rng_state = cuda.random.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = cuda.random.set_rng_state = \
        lambda state, device="cuda": torch.set_rng_state(state)
    cuda.manual_seed = cuda.manual_seed_all = lambda seed: torch.default_generator.manual_seed(seed)
    cuda._lazy_call = lambda call, **kwargs: call()
    # .cuda() is an identity; streams and events are no-ops with wall-clock timing
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.type = _tensor_type
    cuda.Event = Event
    cuda.Stream = Stream
    cuda.current_stream = cuda.default_stream = lambda device=None: _STREAM
    cuda.stream = lambda stream=None: contextlib.nullcontext(stream)
    CudaToCpu().__enter__()  # for the rest of the process


def install_megatron() -> None:
    """Once the checkout is importable (not changing a matmul either): Megatron-LM ≤
    core_v0.15 compiles its legacy CUDA softmax kernels at start-up
    (``megatron.legacy.fused_kernels.load``, needs nvcc) even with
    ``--no-masked-softmax-fusion``; nothing here uses them, so loading them is skipped."""
    try:
        import megatron.legacy.fused_kernels as fused_kernels
        fused_kernels.load = lambda args: None
    except ImportError:
        pass  # later releases have none
    # core_v0.13.0's MoE router tests te_general_gemm without defining it when Transformer
    # Engine is absent (a NameError); None is what its import guard means: the torch path
    from megatron.core.transformer.moe import moe_utils
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    # HEAD's MTP layer asks isinstance(module, (Inference…Linear)) of classes derived from
    # Transformer Engine's, which without Transformer Engine are not classes (a TypeError):
    # without it there is no inference linear, so the answer is False
    try:
        from megatron.core.tensor_parallel import inference_layers
        from megatron.core.transformer import multi_token_prediction
    except ImportError:
        return
    classes = (getattr(inference_layers, "InferenceColumnParallelLinear", None),
               getattr(inference_layers, "InferenceLayerNormColumnParallelLinear", None))
    if not all(isinstance(c, type) for c in classes):
        for module in (inference_layers, multi_token_prediction):
            if hasattr(module, "is_inference_column_parallel_linear"):
                module.is_inference_column_parallel_linear = lambda module: False


if __name__ == "__main__":  # python cpu_stand_ins.py pretrain_gpt.py ARGS…
    install()
    import runpy
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    install_megatron()
    runpy.run_path(script, run_name="__main__")
