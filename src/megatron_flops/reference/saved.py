"""Bytes saved for backward, attributed per module: the measurement ``verify --memory`` proves
the activation formulas (:mod:`megatron_flops.activations`) with.

One forward (and the loss) of a model runs inside ``torch.autograd.graph.saved_tensors_hooks``;
every tensor autograd saves is filed under the innermost module whose forward is running (a
module stack kept by forward pre-/post-hooks; outside every module: ``loss``).  Memory is held
by storages, so each storage is counted once, at its first save, with its whole size
(``untyped_storage().nbytes()``); the parameters' storages are model state, never counted.
A region run under ``torch.utils.checkpoint`` (non-reentrant) saves nothing through these
hooks (its own hooks take over): what it holds are the inputs it re-runs from, which
:func:`held_by_checkpoints` files under the module that called ``checkpoint``.
"""

import weakref
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, List, NamedTuple, Tuple

import torch
from torch import nn
from torch.utils import checkpoint as torch_checkpoint

from ..activations import ACTIVATIONS, ActivationSettings, activation_breakdown, check_modelled
from ..shapes import NO_RECOMPUTE, ModelShape, Recompute
from .model import ReferenceGPT

__all__ = ["MemoryRow", "SavedBytes", "compare_saved", "measure_reference", "saved_bytes",
           "verify_memory"]

LOSS = "loss"
CHECKPOINT = "checkpoint"   # a checkpoint called outside every module's forward


class SavedBytes:
    """``module name -> bytes`` of the storages saved for backward and still held (each once).

    A saved tensor is held through a weak reference: a storage counts when some tensor saved
    on it is still alive when ``by_module`` is read (after the forward), so what a discarded
    graph saved — Megatron-Core runs its dropout-add under ``enable_grad`` inside the no-grad
    forward of a reentrant checkpoint — is not counted.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = {module: name for name, module in model.named_modules()}
        self.stack: List[str] = []
        self.storages: Dict[int, list] = {}   # data_ptr -> [owner, nbytes, weak refs]
        self.parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.frozen = None

    def freeze(self) -> "SavedBytes":
        """Read what is held now (call it while the loss, and so the graph, is alive)."""
        self.frozen = self.by_module
        return self

    def record(self, tensor: torch.Tensor, where: str = None) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.parameter_storages or storage.nbytes() == 0:
            return
        entry = self.storages.get(key)
        if entry is None or not any(ref() is not None for ref in entry[2]):
            # first seen, or its address reused by a new storage after the old one was freed
            owner = where if where is not None else (self.stack[-1] if self.stack else LOSS)
            entry = self.storages[key] = [owner, storage.nbytes(), []]
        entry[2].append(weakref.ref(tensor))

    @property
    def by_module(self) -> Dict[str, int]:
        if self.frozen is not None:
            return self.frozen
        held: Dict[str, int] = defaultdict(int)
        for owner, nbytes, refs in self.storages.values():
            if any(ref() is not None for ref in refs):
                held[owner] += nbytes
        return dict(held)

    @property
    def total(self) -> int:
        return sum(self.by_module.values())


@contextmanager
def saved_bytes(model: nn.Module, checkpoint_owners=()) -> Iterator[SavedBytes]:
    """Inside: every tensor saved for backward is attributed (module docstring).

    ``checkpoint_owners``: modules (objects) whose ``checkpoint`` name is patched for the
    duration so that the tensors a checkpoint holds (its inputs) are recorded under the module
    running when it is called.
    """
    saved = SavedBytes(model)
    handles = []

    def push(module, args):
        saved.stack.append(saved.names[module])

    def pop(module, args, output):
        saved.stack.pop()

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop))

    def pack(tensor):
        saved.record(tensor)
        return tensor

    originals = []

    def recording_checkpoint(function, *args, **kwargs):
        where = saved.stack[-1] if saved.stack and saved.stack[-1] else CHECKPOINT
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.requires_grad:
                saved.record(arg, where)
        return torch_checkpoint.checkpoint(function, *args, **kwargs)

    for owner in checkpoint_owners:
        originals.append((owner, owner.checkpoint))
        owner.checkpoint = recording_checkpoint
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield saved
    finally:
        for handle in handles:
            handle.remove()
        for owner, original in originals:
            owner.checkpoint = original


# which declared activation terms each module of the reference GPT keeps (``layers.<i>.`` and
# ``experts.<e>.`` taken off its name); the MoE module keeps its router's outputs and the
# weighted expert outputs, a dense MLP module its activation function's tensors
MODULE_TERMS = {
    "word_embeddings": ("embedding",), "position_embeddings": ("embedding",),
    "embedding_norm": ("embedding",), "embedding_dropout": ("embedding",),
    "input_norm": ("norm_inputs",), "post_attention_norm": ("norm_inputs",),
    "attention.query_key_value": ("qkv_input",),
    "attention": ("core_attention_inputs",),
    "attention.core.query_key": ("query_key",),
    "attention.core": ("attention_mask", "attention_softmax"),
    "attention.core.dropout": ("attention_dropout_mask",),
    "attention.core.probs_value": ("attention_probs", "value"),
    "attention.dense": ("attention_output_input",),
    "dropout": ("hidden_dropout_masks",),
    "mlp.up": ("mlp_input",), "mlp.router": ("mlp_input",),
    "mlp": ("mlp_activation", "moe_router", "expert_combine"),
    "mlp.down": ("mlp_down_input",),
    "mlp.up@expert": ("expert_inputs",), "mlp@expert": ("expert_activation",),
    "mlp.down@expert": ("expert_down_input",),
    "final_norm": ("final_norm",), "output_layer": ("logits_input",),
    "loss": ("loss",), CHECKPOINT: ("checkpoint_input",),
}


def module_kind(name: str) -> str:
    """``layers.3.mlp.experts.1.up`` -> ``mlp.up@expert``; ``layers.0.input_norm`` -> ``input_norm``."""
    parts = name.split(".")
    if parts[0] == "layers" and len(parts) > 1:
        parts = parts[2:]
    if "experts" in parts:
        at = parts.index("experts")
        return ".".join(parts[:at] + parts[at + 2:]) + "@expert"
    return ".".join(parts) if parts else CHECKPOINT


class MemoryRow(NamedTuple):
    """One group of terms: what the modules keeping them saved, and what the formulas say."""

    terms: Tuple[str, ...]
    modules: Tuple[str, ...]
    measured: int
    formula: int

    @property
    def matches(self) -> bool:
        return self.measured == self.formula


def _groups(module_terms) -> List[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    """(terms, module kinds) joined where a module keeps several terms (a term several modules)."""
    groups: List[Tuple[set, set]] = []
    for kind, terms in module_terms.items():
        merged = (set(terms), {kind})
        for group in [g for g in groups if g[0] & merged[0]]:
            groups.remove(group)
            merged[0].update(group[0])
            merged[1].update(group[1])
        groups.append(merged)
    order = list(ACTIVATIONS)
    return sorted(((tuple(sorted(t, key=order.index)), tuple(sorted(k))) for t, k in groups),
                  key=lambda group: order.index(group[0][0]))


def compare_saved(by_module: Dict[str, int], formula: Dict[str, int], module_terms=None,
                  kind_of=None) -> List[MemoryRow]:
    """Rows of measured (per module, summed over layers) against formula bytes (per term).

    ``module_terms`` (module kind -> the terms it keeps) and ``kind_of`` (module name -> kind)
    default to the reference GPT's.  A module no term is declared for shows as a row of its
    own with formula 0 (a failure)."""
    module_terms = MODULE_TERMS if module_terms is None else module_terms
    kind_of = module_kind if kind_of is None else kind_of
    measured_by_kind: Dict[str, int] = defaultdict(int)
    for name, value in by_module.items():
        measured_by_kind[kind_of(name)] += value
    rows = []
    for terms, kinds in _groups(module_terms):
        measured = sum(measured_by_kind.pop(kind, 0) for kind in kinds)
        expected = sum(formula.get(term, 0) for term in terms)
        if measured or expected:
            present = tuple(term for term in terms if term in formula) or terms
            rows.append(MemoryRow(present, kinds, measured, expected))
    for kind, value in measured_by_kind.items():
        rows.append(MemoryRow(("(undeclared)",), (kind,), value, 0))
    return rows


def measure_reference(model: ModelShape, seq_length: int, micro_batch_size: int = 1,
                      recompute: Recompute = NO_RECOMPUTE, dropout: float = 0.0,
                      dtype: torch.dtype = torch.float32, seed: int = 0,
                      device: str = "cpu") -> SavedBytes:
    """Build the reference GPT (real tensors, training mode, on ``device``), run one forward
    and its loss under :func:`saved_bytes`, and return what each module saved for backward."""
    from . import model as reference_model
    torch.manual_seed(seed)
    gpt = ReferenceGPT(model, seq_length, recompute, dropout=dropout, dtype=dtype, device=device)
    gpt.train()
    ids = torch.randint(0, model.vocab_size, (micro_batch_size, seq_length), device=device)
    labels = torch.randint(0, model.vocab_size, (micro_batch_size, seq_length), device=device)
    with saved_bytes(gpt, [reference_model]) as saved:
        loss = gpt.loss(ids, labels)
    saved.freeze()   # while the loss keeps the graph (and what it saved) alive
    del loss
    return saved


def verify_memory(model: ModelShape, seq_length: int, micro_batch_size: int = 1,
                  recompute: Recompute = NO_RECOMPUTE, dropout: float = 0.0,
                  dtype: torch.dtype = torch.float32, device: str = "cpu") -> List[MemoryRow]:
    """Measured bytes saved for backward by the reference GPT against the activation formulas,
    with the device's conventions: on a CPU masks and statistics in the activation dtype; on
    CUDA a bool dropout mask and fp32 LayerNorm statistics."""
    check_modelled(model, positions=True)
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    settings = ActivationSettings.for_reference(dtype_bytes, dropout > 0,
                                                cuda=device.startswith("cuda"))
    saved = measure_reference(model, seq_length, micro_batch_size, recompute, dropout, dtype,
                              device=device)
    formula = activation_breakdown(model, micro_batch_size, seq_length, settings, recompute)
    return compare_saved(saved.by_module, formula)
