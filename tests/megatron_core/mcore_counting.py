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
def _redirect_cuda_device():
    """``torch.ones(..., device="cuda")`` inside the block allocates on the scratch device."""
    original = torch.ones

    def ones(*args, device=None, **kwargs):
        if device == "cuda":
            device = _scratch_device[0]
        return original(*args, device=device, **kwargs)

    torch.ones = ones
    try:
        yield
    finally:
        torch.ones = original


@contextlib.contextmanager
def cpu_stand_ins():
    """Redirect Megatron-Core's CUDA-only calls to CPU (or meta) while the block runs."""
    from megatron.core.tensor_parallel import random as megatron_random
    from megatron.core.transformer.moe import moe_utils

    replaced = [
        (torch.cuda, "current_device", lambda: _scratch_device[0]),
        (torch.cuda, "manual_seed", lambda seed: None),
        (torch.cuda, "get_rng_state", _stand_in_rng_state),
        (megatron_random, "_get_cuda_rng_state", _stand_in_rng_state),
        (megatron_random, "_set_cuda_rng_state", lambda *args, **kwargs: None),
    ]
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils as transformer_utils

    def sliding_window_mask(sq, skv, window_size):
        # Megatron-Core's own mask, built where the scores are instead of on "cuda"
        with _redirect_cuda_device():
            return transformer_utils.get_sliding_window_causal_mask(sq, skv, window_size)

    replaced.append((fused_softmax, "get_sliding_window_causal_mask", sliding_window_mask))
    if not hasattr(moe_utils, "te_general_gemm"):
        # 0.16.1 tests this name without defining it when Transformer Engine is absent
        replaced.append((moe_utils, "te_general_gemm", None))
    from megatron.core.extensions import transformer_engine
    from megatron.core.transformer import multi_latent_attention
    if not transformer_engine.HAVE_TE:
        # without Transformer Engine 0.16.1's MLA still believes it has it (its TELinear is
        # then a mock, and isinstance(..., mock) raises)
        replaced.append((multi_latent_attention, "HAVE_TE", False))
    missing = object()
    saved = [(owner, name, getattr(owner, name, missing)) for owner, name, _ in replaced]
    for owner, name, stand_in in replaced:
        setattr(owner, name, stand_in)
    try:
        yield
    finally:
        for owner, name, original in saved:
            if original is missing:
                delattr(owner, name)
            else:
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


def count_training_step(model, input_ids, position_ids, attention_mask, labels) -> ModuleFlopCounter:
    """Forward + backward of one step (recompute included), attributed per module.

    With ``labels`` GPTModel returns the per-token loss (multi-token prediction needs them).
    """
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    MTPLossLoggingHelper.tracker.clear()  # sized by the first model's MTP depth, process-wide
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
        from megatron.core.fusions.fused_bias_geglu import quick_gelu

        activation = {"swiglu": F.silu, "geglu": F.gelu, "reglu": F.relu,
                      "quick_geglu": quick_gelu}[model.glu_activation]  # --quick-geglu
        config.update(gated_linear_unit=True, activation_func=activation)
    # issue 20 item 2: the flags Megatron-LM copies into TransformerConfig by name
    if model.attention_output_gate:
        config.update(attention_output_gate=True)
    if model.moe_shared_expert_gate:
        config.update(moe_shared_expert_gate=True)
    if model.moe_latent_size is not None:
        config.update(moe_latent_size=model.moe_latent_size)
    if recompute.granularity is not None:
        config.update(recompute_granularity=recompute.granularity)
    if recompute.granularity == "selective" and recompute.modules != ("core_attn",):
        config.update(recompute_modules=list(recompute.modules))
    if recompute.granularity == "full":
        config.update(recompute_method=recompute.method,
                      recompute_num_layers=recompute.num_layers or 1)
    if model.is_moe:
        # the CPU-capable MoE path (DESIGN.md §4): all-gather dispatcher, dropless, and top-1
        # routing normalised before the top-k (else its single probability is constant 1)
        if len(set(model.num_experts)) != 1:
            raise ValueError("Megatron-Core builds one expert count for every MoE layer")
        config.update(num_moe_experts=model.num_experts[0], moe_router_topk=model.moe_topk,
                      # an int goes to Megatron-Core as an int: its own rule places the layers
                      moe_layer_freq=model.moe_layer_freq if isinstance(model.moe_layer_freq, int)
                      else list(model.moe_layer_pattern),
                      moe_ffn_hidden_size=model.expert_ffn_hidden_size,
                      moe_shared_expert_intermediate_size=model.moe_shared_expert_intermediate_size,
                      moe_token_dispatcher_type="allgather", moe_expert_capacity_factor=None,
                      moe_router_pre_softmax=model.moe_topk == 1, moe_aux_loss_coeff=0.0)
    if model.multi_latent_attention:
        config.update(q_lora_rank=model.q_lora_rank, kv_lora_rank=model.kv_lora_rank,
                      qk_head_dim=model.qk_head_dim, qk_pos_emb_head_dim=model.qk_pos_emb_head_dim,
                      v_head_dim=model.v_head_dim, rope_type="rope")
    if model.mtp_num_layers:
        config.update(mtp_num_layers=model.mtp_num_layers)
    if model.window_size is not None:
        skip = model.window_attn_skip_freq
        config.update(window_size=(model.window_size, 0),
                      window_attn_skip_freq=list(skip) if isinstance(skip, tuple) else skip)
    return config


def _mla_core_attention():
    """Megatron-Core's DotProductAttention, accepting MLA's separate key and value widths.

    0.16.1's MLA passes ``k_channels``/``v_channels`` to its core attention, which only
    Transformer Engine's accepts; the local one's forward already handles a value head
    narrower than the key head except for the width it reshapes its output to.  This
    subclass only sets that width: every FLOP is still Megatron-Core's own forward.
    """
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class MLADotProductAttention(DotProductAttention):
        def __init__(self, *args, k_channels=None, v_channels=None, **kwargs):
            super().__init__(*args, **kwargs)
            if v_channels is not None:
                self.hidden_size_per_partition = self.num_attention_heads_per_partition * v_channels

    return MLADotProductAttention


def build_gpt(model, recompute, max_sequence_length, device="cpu", unset=(), **config_overrides):
    """Megatron-Core's GPTModel built as pretrain_gpt.py builds it without Transformer Engine
    (``get_gpt_decoder_block_spec`` / ``get_gpt_mtp_block_spec`` with ``use_transformer_engine
    = False``: the local layer spec per layer, MoE layers where the pattern says).

    ``unset``: TransformerConfig fields left to Megatron-Core's own default (a command line
    that does not give the flag); ``config_overrides``: fields set as a flag would set them."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_decoder_block_spec,
                                                          get_gpt_mtp_block_spec)
    from megatron.core.transformer.transformer_config import (MLATransformerConfig,
                                                              TransformerConfig)

    config_kwargs = transformer_config_kwargs(model, recompute)
    config_kwargs.update(config_overrides)
    for name in unset:
        config_kwargs.pop(name, None)
    if device == "meta":
        config_kwargs.update(perform_initialization=False)
    config_class = MLATransformerConfig if model.multi_latent_attention else TransformerConfig
    config = config_class(**config_kwargs)
    block_spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False,
                                            normalization=config_kwargs["normalization"])
    if model.multi_latent_attention:
        for layer_spec in block_spec.layer_specs:
            layer_spec.submodules.self_attention.submodules.core_attention = _mla_core_attention()
    mtp_spec = None
    if model.mtp_num_layers:
        mtp_spec = get_gpt_mtp_block_spec(config, block_spec, use_transformer_engine=False)
    position = {"learned": "learned_absolute", "rotary": "rope", "none": "none"}[model.position_embedding]
    with torch.device(device):
        return GPTModel(
            config=config,
            transformer_layer_spec=block_spec,
            vocab_size=model.vocab_size,
            max_sequence_length=max_sequence_length,
            share_embeddings_and_output_weights=model.tie_embeddings,
            position_embedding_type=position,
            mtp_block_spec=mtp_spec,
        )


def training_inputs(batch_size, seq_length, vocab_size, device="cpu"):
    """Token ids, positions, Megatron's causal mask (True = masked out) and labels."""
    def tokens():
        if device == "meta":
            return torch.empty((batch_size, seq_length), dtype=torch.long)
        return torch.randint(0, vocab_size, (batch_size, seq_length))

    with torch.device(device):
        position_ids = torch.arange(seq_length).unsqueeze(0).expand(batch_size, seq_length)
        attention_mask = torch.triu(torch.ones(1, 1, seq_length, seq_length, dtype=torch.bool), diagonal=1)
        return tokens(), position_ids, attention_mask, tokens()


# ---- Megatron-Core module names -> our components ------------------------------------------
# A fused module (linear_qkv computes Q, K and V in one matmul) maps to the sum of the
# components it fuses; the comparison is exact per group and per phase.

MODULE_COMPONENTS = (
    # with --attention-output-gate the fused QKV also holds the gate's n·d columns
    (r"self_attention\.linear_qkv", ("query", "key_value", "attention_gate")),
    (r"self_attention\.linear_q_proj", ("mla_q",)),
    (r"self_attention\.linear_q_down_proj", ("mla_q_down",)),
    (r"self_attention\.linear_q_up_proj", ("mla_q_up",)),
    (r"self_attention\.linear_kv_down_proj", ("mla_kv_down",)),
    (r"self_attention\.linear_kv_up_proj", ("mla_kv_up",)),
    (r"self_attention\.core_attention", ("attention_scores", "attention_over_values")),
    (r"self_attention\.linear_proj", ("attention_output",)),
    (r"mlp\.linear_fc1", ("mlp_up", "mlp_gate")),
    (r"mlp\.linear_fc2", ("mlp_down",)),
    (r"mlp\.router", ("moe_router",)),
    (r"mlp\.experts\.local_experts\.\d+\.linear_fc1", ("expert_up", "expert_gate")),
    (r"mlp\.experts\.local_experts\.\d+\.linear_fc2", ("expert_down",)),
    (r"mlp\.shared_experts\.linear_fc1", ("shared_expert_up", "shared_expert_gate")),
    (r"mlp\.shared_experts\.linear_fc2", ("shared_expert_down",)),
    # --moe-shared-expert-gate: SharedExpertMLP's own F.linear(x, gate_weight)
    (r"mlp\.shared_experts", ("shared_expert_output_gate",)),
    # --moe-latent-size: MoELayer's h -> L and L -> h projections around the routed experts
    (r"mlp\.fc1_latent_proj", ("moe_latent_down",)),
    (r"mlp\.fc2_latent_proj", ("moe_latent_up",)),
    (r"mtp\.layers\.\d+\.eh_proj", ("mtp_projection",)),
    # the same output layer computes the logits and, once per MTP layer, the MTP logits
    (r"output_layer", ("logits", "mtp_logits")),
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


# ---- latent MoE without Transformer Engine ---------------------------------------------------

@contextlib.contextmanager
def latent_projection_stand_in():
    """Megatron-Core 0.16.1's MoELayer builds its two latent projections (``--moe-latent-size``)
    only as Transformer Engine's ``TELinear`` (``assert HAVE_TE``), which does not install here.

    Stand-in: a plain linear built from the very arguments MoELayer passes (input size, output
    size, bias), run as ``F.linear`` and returning ``(output, None)`` as TELinear does with
    ``skip_bias_add=False``.  The shapes of the two matmuls are MoELayer's own; everything else
    (router, dispatch, experts in latent space, shared experts) is Megatron-Core's code.
    """
    from megatron.core.transformer.moe import moe_layer

    class LatentLinear(torch.nn.Module):
        def __init__(self, input_size, output_size, *, config, init_method, bias, **kwargs):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(output_size, input_size))
            self.bias = torch.nn.Parameter(torch.zeros(output_size)) if bias else None
            if config.perform_initialization:
                init_method(self.weight)

        def forward(self, x):
            return torch.nn.functional.linear(x, self.weight, self.bias), None

    saved = (moe_layer.HAVE_TE, getattr(moe_layer, "TELinear", None))
    moe_layer.HAVE_TE, moe_layer.TELinear = True, LatentLinear
    try:
        yield
    finally:
        moe_layer.HAVE_TE, moe_layer.TELinear = saved

