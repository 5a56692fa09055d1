"""Attribution on traces of known structure: every counted FLOP lands in the right component.

Each trace is one training step (forward + backward) of a tiny reference GPT under
``torch.profiler`` with ``record_shapes``, wrapped in a ``ProfilerStep#1`` span.  Expected
FLOPs come from two independent places: PyTorch's ``FlopCounterMode`` for the step's total,
and ``flops_breakdown`` (itself checked against FlopCounterMode by the verifier's tests) per
component.  Shapes are chosen so that no two matmuls share a shape (tokens per micro batch
= 2 × 24 = 48, which is no model dimension), except where ambiguity is the point.
"""

import pytest

torch = pytest.importorskip("torch")

from megatron_flops.flops import flops_breakdown  # noqa: E402
from megatron_flops.profile.attribute import MODEL, RECOMPUTE, attribute  # noqa: E402
from megatron_flops.profile.trace import load_trace  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute, RunShape  # noqa: E402

SEQ, MICRO = 24, 2


def profile_step(model, tmp_path, recompute=Recompute(), scopes=True, sdpa=False):
    """(trace path, FlopCounterMode's count of the same step) for one step of ``model``."""
    from torch.profiler import ProfilerActivity, profile, record_function
    from torch.utils.checkpoint import set_checkpoint_early_stop
    from torch.utils.flop_counter import FlopCounterMode

    from megatron_flops.demo.fused import sdpa_flop_mapping, use_sdpa_attention
    from megatron_flops.profile.scopes import install_scopes
    from megatron_flops.reference.model import ReferenceGPT
    torch.manual_seed(0)
    gpt = ReferenceGPT(model, SEQ, recompute)
    if sdpa:
        use_sdpa_attention(gpt)
    ids = torch.randint(0, model.vocab_size, (MICRO, SEQ))
    with set_checkpoint_early_stop(False), \
            FlopCounterMode(display=False, custom_mapping=sdpa_flop_mapping()) as counter:
        gpt.loss(ids, ids).backward()
    if scopes:
        install_scopes(gpt)
    with set_checkpoint_early_stop(False), \
            profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with record_function("ProfilerStep#1"):
            gpt.loss(ids, ids).backward()
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    return path, counter.get_total_flops()


def attributed(model, tmp_path, recompute=Recompute(), **kwargs):
    path, counted = profile_step(model, tmp_path, recompute, **kwargs)
    run = RunShape(seq_length=SEQ, micro_batch_size=MICRO, recompute=recompute)
    return attribute(load_trace(str(path)), model, run), counted, run


def check_every_flop(profile, counted, model, run, rule):
    """The trace's matmul FLOPs: total = PyTorch's count; per component = the breakdown's."""
    assert sum(r.trace_flops for r in profile.rows) == counted
    assert profile.unattributed == []
    breakdown = flops_breakdown(model, run.seq_length, run.global_batch_size, run.recompute)
    rows = {(r.component, r.kind): r for r in profile.rows}
    for component in breakdown:
        assert rows[(component.name, MODEL)].trace_flops == pytest.approx(
            component.model_flops, rel=1e-12), component.name
        if component.recompute:
            assert rows[(component.name, RECOMPUTE)].trace_flops == pytest.approx(
                component.recompute, rel=1e-12), component.name
        else:
            assert (component.name, RECOMPUTE) not in rows
    for row in profile.rows:
        assert row.flops == pytest.approx(row.trace_flops, rel=1e-12)
        assert set(row.rules) <= rule, (row.name, row.rules)
    # the parts of the step add up to its span
    assert profile.accounted_seconds == pytest.approx(profile.iteration_seconds, rel=1e-6)


GQA_GLU = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256,
                     num_query_groups=2, ffn_hidden_size=160, glu_activation="swiglu")
MOE = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256,
                 ffn_hidden_size=160, num_experts=4, moe_topk=2, expert_interval=1)
DENSE_AND_MOE = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256,
                           ffn_hidden_size=160, num_experts=3, moe_topk=1, expert_interval=2)
BY_SCOPE = {"scope", "scope via autograd"}
BY_SHAPE = {"shape", "shape via autograd"}


@pytest.mark.parametrize("model", [GQA_GLU, MOE, DENSE_AND_MOE], ids=["gqa-glu", "moe", "dense+moe"])
@pytest.mark.parametrize("scopes", [True, False], ids=["scopes", "shapes"])
def test_every_flop_in_its_component(model, scopes, tmp_path):
    profile, counted, run = attributed(model, tmp_path, scopes=scopes)
    check_every_flop(profile, counted, model, run, BY_SCOPE if scopes else BY_SHAPE)
    if model is DENSE_AND_MOE and not scopes:
        # a dense MLP matmul sees all 48 tokens of the micro batch; an expert that every
        # token chose would too: the shape alone cannot rule that out, and says so
        assert profile.ambiguous
        assert all("filed under mlp_" in text and "also matches expert_" in text
                   for text in profile.ambiguous)
    else:
        assert profile.ambiguous == []


@pytest.mark.parametrize("recompute", [Recompute("full"), Recompute("selective")],
                         ids=["full", "selective"])
@pytest.mark.parametrize("scopes", [True, False], ids=["scopes", "shapes"])
def test_recomputed_forward_is_its_own_row(recompute, scopes, tmp_path):
    profile, counted, run = attributed(GQA_GLU, tmp_path, recompute, scopes=scopes)
    check_every_flop(profile, counted, GQA_GLU, run, BY_SCOPE if scopes else BY_SHAPE)
    recomputed = {r.component for r in profile.rows if r.kind == RECOMPUTE and r.calls}
    if recompute.granularity == "full":
        assert recomputed == {"query", "key_value", "attention_scores", "attention_over_values",
                              "attention_output", "mlp_up", "mlp_gate", "mlp_down"}
    else:
        assert recomputed == {"attention_scores", "attention_over_values"}


def test_fused_attention_kernel_is_counted_and_attributed(tmp_path):
    """--attention sdpa: the CPU flash kernel's call is the scores and attention·V rows."""
    for scopes in (True, False):
        profile, counted, run = attributed(GQA_GLU, tmp_path, scopes=scopes, sdpa=True)
        check_every_flop(profile, counted, GQA_GLU, run, BY_SCOPE if scopes else BY_SHAPE)
        rows = {r.component: r for r in profile.rows if r.kind == MODEL}
        # one fused call per layer forward and one backward (2 layers), carrying both products
        assert rows["attention_scores"].calls == rows["attention_over_values"].calls == 4


def test_shared_shapes_are_reported_ambiguous_and_scopes_decide(tmp_path):
    """h = n·d = f = 64: the output projection and both MLP matmuls are all [T × 64]·[64 × 64].
    Without scopes the shape rule says so; with scopes each is in its own row."""
    model = ModelShape(num_layers=1, hidden_size=64, num_attention_heads=4, vocab_size=256,
                       ffn_hidden_size=64)
    profile, counted, run = attributed(model, tmp_path, scopes=False)
    assert sum(r.trace_flops for r in profile.rows) == counted  # still every FLOP somewhere
    assert any("also matches" in text for text in profile.ambiguous)
    profile, counted, run = attributed(model, tmp_path, scopes=True)
    check_every_flop(profile, counted, model, run, BY_SCOPE)
    assert profile.ambiguous == []
