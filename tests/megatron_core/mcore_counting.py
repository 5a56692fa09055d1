"""Count the FLOPs Megatron-Core's own GPTModel executes, per module, on CPU.

Ground truth for the formulas: ``torch.utils.flop_counter.FlopCounterMode`` counts every
matmul the real model code runs (forward, backward and recompute); this module only says
*which Megatron-Core module* each counted FLOP belongs to, so the counts can be compared with
our breakdown component by component.

Attribution.  FlopCounterMode's own per-module table credits backward work to the wrong
module here (Megatron-Core's linears are custom autograd Functions and its recompute re-runs
forwards inside backward), so attribution is done with hooks:

- every module gets forward pre/post hooks that push/pop a ``("forward", name)`` frame;
- when a module's forward returns, the autograd nodes it created are tagged with its name —
  innermost module first — and each tagged node gets pre/post hooks that push/pop a
  ``("backward", name)`` frame while autograd runs it.  "Created by this forward" is decided
  by autograd's sequence number (a per-thread creation counter), not by the module's input
  tensors: Megatron's in-place masking rewrites the graph behind an input's ``grad_fn``;
- the FLOPs counted between two frame changes go to the frame on top of the stack: a
  ``forward`` frame while the training step's backward is running is *recompute*.

Work outside every frame is kept as ``unattributed`` (tests assert it is zero).
"""

import contextlib
import os
import socket
from collections import defaultdict
from typing import Dict, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

PHASES = ("forward", "backward", "recompute")

# ---- CPU stand-ins for the few CUDA-only calls Megatron-Core makes outside any matmul ------
# (DESIGN.md §4): scratch buffers allocate on ``torch.cuda.current_device()``, and the RNG
# tracker / checkpointing save and restore the CUDA RNG state.  Dropout is 0 in every case, so
# a constant stand-in RNG state changes no result.

_scratch_device = ["cpu"]


def _stand_in_rng_state(*args, **kwargs):
    return torch.zeros(1, dtype=torch.uint8)


@contextlib.contextmanager
def cpu_stand_ins():
    """Redirect Megatron-Core's CUDA-only calls to CPU (or meta) while the block runs."""
    from megatron.core.tensor_parallel import random as megatron_random

    replaced = [
        (torch.cuda, "current_device", lambda: _scratch_device[0]),
        (torch.cuda, "manual_seed", lambda seed: None),
        (torch.cuda, "get_rng_state", _stand_in_rng_state),
        (megatron_random, "_get_cuda_rng_state", _stand_in_rng_state),
        (megatron_random, "_set_cuda_rng_state", lambda *args, **kwargs: None),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in replaced]
    for owner, name, stand_in in replaced:
        setattr(owner, name, stand_in)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@contextlib.contextmanager
def scratch_device(device: str):
    """Where Megatron-Core's global memory buffer allocates (``meta`` for meta-tensor runs)."""
    from megatron.core import parallel_state

    before = _scratch_device[0]
    _scratch_device[0] = device
    parallel_state.destroy_global_memory_buffer()
    parallel_state._set_global_memory_buffer()
    try:
        yield
    finally:
        _scratch_device[0] = before
        parallel_state.destroy_global_memory_buffer()
        parallel_state._set_global_memory_buffer()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def single_process_model_parallel():
    """gloo, world size 1, TP = PP = 1; torn down afterwards (unless someone else set it up)."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as megatron_random

    owns_group = not dist.is_initialized()
    if owns_group:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group("gloo", rank=0, world_size=1)
    with cpu_stand_ins():
        parallel_state.initialize_model_parallel(1, 1)
        megatron_random.model_parallel_cuda_manual_seed(1234)
        try:
            yield
        finally:
            parallel_state.destroy_model_parallel()
            if owns_group:
                dist.destroy_process_group()


# ---- attribution ----------------------------------------------------------------------------


class ModuleFlopCounter:
    """FLOPs per (Megatron-Core module name, phase) of one training step."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.counter = FlopCounterMode(display=False)
        self.flops: Dict[Tuple[str, str], int] = defaultdict(int)
        self.stack = []
        self.in_backward = False
        self._seen = 0
        self._node_owner = {}
        self._handles = []
        self._watermarks = {}
        for name, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post(name), with_kwargs=True))

    # the counter's running total, credited to the frame on top of the stack
    def _settle(self) -> None:
        total = self.counter.get_total_flops()
        delta, self._seen = total - self._seen, total
        if not delta:
            return
        if not self.stack:
            self.flops[("unattributed", "backward" if self.in_backward else "forward")] += delta
            return
        kind, name = self.stack[-1]
        if kind == "forward":
            phase = "recompute" if self.in_backward else "forward"
        else:
            phase = "backward"
        self.flops[(name, phase)] += delta

    def _push(self, frame) -> None:
        self._settle()
        self.stack.append(frame)

    def _pop(self, frame) -> None:
        self._settle()
        assert self.stack and self.stack[-1] == frame, (self.stack[-1:], frame)
        self.stack.pop()

    def _pre(self, name):
        def hook(module, args, kwargs):
            self._push(("forward", name))
            self._watermarks.setdefault(name, []).append(_next_sequence_number())
        return hook

    def _post(self, name):
        def hook(module, args, kwargs, output):
            first = self._watermarks[name].pop()
            self._tag(name, output, first)
            self._pop(("forward", name))
        return hook

    def _tag(self, name, output, first: int) -> None:
        """Tag the autograd nodes created since sequence number ``first`` (not yet tagged)."""
        pending = list(_grad_fns((output,), {}))
        visited = set()
        while pending:
            node = pending.pop()
            if node is None or node in visited or type(node).__name__ == "AccumulateGrad":
                continue
            visited.add(node)
            if node._sequence_nr() < first:
                continue
            if node not in self._node_owner:
                self._node_owner[node] = name
                frame = ("backward", name)
                node.register_prehook(lambda grad_outputs, frame=frame: self._push(frame))
                node.register_hook(lambda grad_inputs, grad_outputs, frame=frame: self._pop(frame))
            pending.extend(next_node for next_node, _ in node.next_functions)

    def __enter__(self):
        self.counter.__enter__()
        return self

    def __exit__(self, *exc):
        self._settle()
        self.counter.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        return False

    @property
    def total_flops(self) -> int:
        return self.counter.get_total_flops()


def _next_sequence_number() -> int:
    """The sequence number the next autograd node created on this thread will get."""
    with torch.enable_grad():
        probe = torch.zeros((), requires_grad=True, device="cpu").mul(1)
    return probe.grad_fn._sequence_nr() + 1


def _grad_fns(args, kwargs):
    found = set()
    pending = list(args) + list(kwargs.values())
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            if item.grad_fn is not None:
                found.add(item.grad_fn)
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return found


def count_training_step(model, input_ids, position_ids, attention_mask, labels=None) -> ModuleFlopCounter:
    """Forward + backward of one step (recompute included), attributed per module."""
    with torch.utils.checkpoint.set_checkpoint_early_stop(False):
        with ModuleFlopCounter(model) as counted:
            output = model(input_ids, position_ids, attention_mask, labels=labels)
            loss = output.float().sum()
            counted._settle()
            counted.in_backward = True
            loss.backward()
    return counted


# ---- building Megatron-Core's GPTModel from our shapes -------------------------------------


def transformer_config_kwargs(model, recompute) -> dict:
    """The TransformerConfig a Megatron-LM run with ``model``'s flags builds (fp32, no fusions)."""
    import torch.nn.functional as F

    config = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        kv_channels=model.kv_channels,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        add_bias_linear=model.add_bias_linear,
        normalization={"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}[model.normalization],
        use_cpu_initialization=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )
    if model.glu_activation is not None:
        activation = {"swiglu": F.silu, "geglu": F.gelu, "reglu": F.relu}[model.glu_activation]
        config.update(gated_linear_unit=True, activation_func=activation)
    if recompute.granularity is not None:
        config.update(recompute_granularity=recompute.granularity)
    if recompute.granularity == "full":
        config.update(recompute_method=recompute.method,
                      recompute_num_layers=recompute.num_layers or 1)
    return config


def build_gpt(model, recompute, max_sequence_length, device="cpu", config_class=None,
              layer_spec=None, gpt_kwargs=None, **config_overrides):
    """Megatron-Core's GPTModel with the local (no Transformer Engine) layer spec."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    config_kwargs = transformer_config_kwargs(model, recompute)
    config_kwargs.update(config_overrides)
    if device == "meta":
        config_kwargs.update(perform_initialization=False)
    config = (config_class or TransformerConfig)(**config_kwargs)
    if layer_spec is None:
        layer_spec = get_gpt_layer_local_spec(
            normalization=config_kwargs["normalization"])
    position = {"learned": "learned_absolute", "rotary": "rope", "none": "none"}[model.position_embedding]
    with torch.device(device):
        return GPTModel(
            config=config,
            transformer_layer_spec=layer_spec,
            vocab_size=model.vocab_size,
            max_sequence_length=max_sequence_length,
            share_embeddings_and_output_weights=model.tie_embeddings,
            position_embedding_type=position,
            **(gpt_kwargs or {}),
        )


def training_inputs(batch_size, seq_length, vocab_size, device="cpu"):
    """Token ids, positions and Megatron's causal mask (True = masked out)."""
    with torch.device(device):
        input_ids = torch.randint(0, vocab_size, (batch_size, seq_length)) if device != "meta" \
            else torch.empty((batch_size, seq_length), dtype=torch.long)
        position_ids = torch.arange(seq_length).unsqueeze(0).expand(batch_size, seq_length)
        attention_mask = torch.triu(torch.ones(1, 1, seq_length, seq_length, dtype=torch.bool), diagonal=1)
    return input_ids, position_ids, attention_mask


# ---- Megatron-Core module names -> our components ------------------------------------------
# A fused module (linear_qkv computes Q, K and V in one matmul) maps to the sum of the
# components it fuses; the comparison is exact per group and per phase.

MODULE_COMPONENTS = (
    (r"self_attention\.linear_qkv", ("query", "key_value")),
    (r"self_attention\.core_attention", ("attention_scores", "attention_over_values")),
    (r"self_attention\.linear_proj", ("attention_output",)),
    (r"mlp\.linear_fc1", ("mlp_up", "mlp_gate")),
    (r"mlp\.linear_fc2", ("mlp_down",)),
    (r"mlp\.router", ("moe_router",)),
    (r"mlp\.experts\.local_experts\.\d+\.linear_fc1", ("expert_up", "expert_gate")),
    (r"mlp\.experts\.local_experts\.\d+\.linear_fc2", ("expert_down",)),
    (r"output_layer", ("logits",)),
)


def _group_of(module_name: str):
    import re

    for pattern, components in MODULE_COMPONENTS:
        if re.search(r"(^|\.)" + pattern + r"$", module_name):
            return "+".join(components)
    return f"module {module_name}"


def counted_by_component(counted: ModuleFlopCounter) -> Dict[str, Dict[str, int]]:
    """``{group: {phase: flops}}`` of what Megatron-Core executed (zero entries dropped)."""
    table: Dict[str, Dict[str, int]] = defaultdict(lambda: dict.fromkeys(PHASES, 0))
    for (module_name, phase), flops in counted.flops.items():
        if flops:
            table[_group_of(module_name)][phase] += flops
    return dict(table)


def expected_by_component(breakdown) -> Dict[str, Dict[str, int]]:
    """The same table from our breakdown."""
    present = {c.name: c for c in breakdown}
    table = {}
    for _, components in MODULE_COMPONENTS:
        parts = [present[name] for name in components if name in present]
        if parts:
            table["+".join(components)] = {
                "forward": sum(c.forward for c in parts),
                "backward": sum(c.backward for c in parts),
                "recompute": sum(c.recompute for c in parts),
            }
    return table
