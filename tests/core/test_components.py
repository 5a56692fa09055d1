"""The component registry against the two tables written for people: the decomposition of a
layer in ``components``' docstring (24·s·h² + 4·s²·h, a GLU's gate +8 -> 32) and the README's
"What is counted" table; and a component added at runtime reaches every reader of the registry."""

import re
from pathlib import Path

import pytest

from megatron_flops import components, flops
from megatron_flops.components import (DENSE_LAYERS, EVERY_LAYER, ONCE, REGISTRY, matmul_flops,
                                       register_component, unregister_component)
from megatron_flops.flops import flops_breakdown
from megatron_flops.report import breakdown_table
from megatron_flops.shapes import ModelShape, Recompute, VisionEncoder

README = Path(__file__).resolve().parents[2] / "README.md"
# (s, n, d): h = n·d; three shapes with different s/h, so a·s·h² + b·s²·h pins a and b
SHAPES = ((3, 2, 4), (5, 3, 4), (16, 1, 6))


def docstring_table():
    """{row label: (coefficient of s·h², coefficient of s²·h)} from the components docstring.

    A number belongs to the column whose heading it ends under (right-aligned).
    """
    lines = components.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["component", "s·h²", "s²·h"])
    header = lines[start]
    first, second = header.index("s·h²") + len("s·h²"), header.index("s²·h") + len("s²·h")
    labels_end = header.index("s·h²") - 2
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        label = line[:labels_end].strip()
        value = [0, 0]
        for number in re.finditer(r"\d+", line[labels_end:]):
            end = number.end() + labels_end
            assert end in (first, second), f"misaligned number in {line!r}"
            value[end == second] = int(number.group())
        rows[label] = tuple(value)
    return rows


def default_layer(s, n, d, glu=None):
    return ModelShape(num_layers=1, hidden_size=n * d, num_attention_heads=n, vocab_size=1,
                      glu_activation=glu)


def test_docstring_decomposes_the_default_layer():
    rows = docstring_table()
    assert rows["layer"] == (24, 4) and rows["layer with a GLU"] == (32, 4)
    parts = {label.split()[0]: value for label, value in rows.items() if label.split()[0] in REGISTRY}
    # the table's parts add up to its totals
    plain = [v for name, v in parts.items() if name != "mlp_gate"]
    assert tuple(map(sum, zip(*plain))) == rows["layer"]
    assert tuple(map(sum, zip(*parts.values()))) == rows["layer with a GLU"]
    for s, n, d in SHAPES:
        h = n * d
        glu = default_layer(s, n, d, "swiglu")
        # every component with FLOPs in a default GLU layer is a row, and each row is its formula
        nonzero = {name for name, spec in REGISTRY.items()
                   if spec.occurs in (EVERY_LAYER, DENSE_LAYERS) and spec.formula(glu, s, 1)}
        assert nonzero == set(parts)
        for name, (a, b) in parts.items():
            assert REGISTRY[name].formula(glu, s, 1) == a * s * h * h + b * s * s * h, name
        for model, label in ((default_layer(s, n, d), "layer"), (glu, "layer with a GLU")):
            a, b = rows[label]
            assert sum(flops.layer_forward_flops(model, s, 0).values()) == a * s * h * h + b * s * s * h


def readme_table():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## What is counted"):]
    start = section.index("| component | occurs |")
    return section[start:section.index("\n\n", start)]


def test_readme_table_is_the_registry():
    assert readme_table() == components.markdown_table()


def evaluate(flops_text, symbols):
    """The README's count, e.g. ``2·B·n·s²·d``, as a number."""
    return eval(flops_text.replace("²", "**2").replace("·", "*"), {"__builtins__": {}}, dict(symbols))


@pytest.mark.parametrize("fields", [
    dict(num_layers=2, hidden_size=12, num_attention_heads=6, kv_channels=5, num_query_groups=2,
         ffn_hidden_size=20, vocab_size=7),
    dict(num_layers=2, hidden_size=16, num_attention_heads=4, num_query_groups=1, vocab_size=50,
         glu_activation="swiglu", num_experts=3, moe_topk=2, expert_interval=1, ffn_hidden_size=9),
    # Megatron-Core features: expert and shared-expert sizes, MTP, MLA with and without q-lora
    dict(num_layers=3, hidden_size=16, num_attention_heads=4, vocab_size=50, glu_activation="swiglu",
         num_experts=4, moe_topk=2, moe_layer_freq=(0, 1, 1), moe_ffn_hidden_size=6,
         moe_shared_expert_intermediate_size=10, mtp_num_layers=2, multi_latent_attention=True,
         q_lora_rank=7, kv_lora_rank=5, qk_head_dim=3, qk_pos_emb_head_dim=2, v_head_dim=4),
    dict(num_layers=2, hidden_size=16, num_attention_heads=4, vocab_size=50,
         multi_latent_attention=True, kv_lora_rank=5, qk_head_dim=3, qk_pos_emb_head_dim=2,
         v_head_dim=4),
    # issue 20 item 2: quick-GeGLU, attention output gate, latent MoE, shared-expert gate
    dict(num_layers=3, hidden_size=16, num_attention_heads=4, num_query_groups=2, vocab_size=50,
         glu_activation="quick_geglu", num_experts=4, moe_topk=2, moe_layer_freq=(0, 1, 1),
         moe_ffn_hidden_size=6, moe_shared_expert_intermediate_size=10, moe_latent_size=7,
         moe_shared_expert_gate=True, attention_output_gate=True),
    # a vision-language run (issue 20 item 3): GQA SwiGLU ViT, 3 tiles, mlp projection, pixel
    # shuffle of a 4×4 grid (class token dropped); and an affine projection, class token kept
    dict(num_layers=2, hidden_size=16, num_attention_heads=4, vocab_size=50, vision=VisionEncoder(
        ModelShape(num_layers=3, hidden_size=12, num_attention_heads=4, kv_channels=5,
                   num_query_groups=2, ffn_hidden_size=7, glu_activation="swiglu", vocab_size=1),
        img_h=8, img_w=8, patch_dim=2, class_tokens=1, tiles=3, drop_class_tokens=True,
        pixel_shuffle=True, projector="mlp", projector_ffn_hidden_size=9)),
    dict(num_layers=2, hidden_size=16, num_attention_heads=4, vocab_size=50, vision=VisionEncoder(
        ModelShape(num_layers=2, hidden_size=8, num_attention_heads=2, vocab_size=1),
        img_h=6, img_w=4, patch_dim=2, class_tokens=2, projector="affine")),
])
def test_readme_counts_are_the_formulas(fields):
    """Each README row's forward FLOPs, read as arithmetic, is the registered formula × B."""
    model, B, s = ModelShape(**fields), 3, 5
    vision = model.vision
    vit = vision.transformer if vision else ModelShape(num_layers=1, hidden_size=1,
                                                        num_attention_heads=1, vocab_size=1)
    vision_symbols = dict(
        t=vision.tiles if vision else 0, P=vision.patches if vision else 0,
        c=vision.patch_size if vision else 0, hv=vit.hidden_size, lv=vit.num_layers,
        Sv=vision.seq_length if vision else 0, nv=vit.num_attention_heads, kv=vit.kv_channels,
        gv=vit.num_query_groups, fv=vit.ffn_hidden_size, gluv=int(vit.glu),
        N=vision.image_embeddings if vision else 0,
        hi=vision.projector_input_size if vision else 0,
        fp=(vision.projector_ffn_hidden_size if vision.projector == "mlp"
            else model.hidden_size) if vision else 0,
        mlp=int(vision is not None and vision.projector == "mlp"))
    experts = max(model.num_experts or (1,))
    symbols = dict(B=B, s=s, T=B * s, h=model.hidden_size, n=model.num_attention_heads,
                   d=model.kv_channels, g=model.num_query_groups, f=model.ffn_hidden_size,
                   V=model.vocab_size, E=experts, k=model.moe_topk, glu=int(model.glu),
                   fe=model.expert_ffn_hidden_size, fs=model.shared_expert_ffn_hidden_size,
                   m=model.mtp_num_layers, mla=int(model.multi_latent_attention),
                   lq=int(model.q_lora_rank is not None), rq=model.q_lora_rank or 0,
                   rkv=model.kv_lora_rank or 0, dqk=model.qk_head_dim or 0,
                   dpe=model.qk_pos_emb_head_dim or 0, dk=model.attention_key_head_dim,
                   dv=model.attention_value_head_dim,
                   # issue 20 item 2: the experts' width, the latent size, the two gates
                   he=model.expert_hidden_size, L=model.moe_latent_size or 0,
                   gate=int(model.attention_output_gate),
                   sg=int(model.moe_shared_expert_gate and model.shared_expert_ffn_hidden_size > 0),
                   # a distillation teacher's forward of one sample (none here: 0)
                   Ft=0 if model.teacher is None else flops.flops_breakdown(model.teacher, s).forward_flops)
    symbols.update(vision_symbols)
    rows = [line.split(" | ") for line in readme_table().splitlines()[2:]]
    assert [row[0].strip("|` ") for row in rows] == list(REGISTRY)
    for row in rows:
        name, text = row[0].strip("|` "), row[3].strip("| ")
        assert evaluate(text, symbols) == B * REGISTRY[name].formula(model, s, experts), name


# ---- adding a component: one declaration ---------------------------------------------------

@pytest.fixture
def example_component():
    """A fictitious per-layer matmul ``[T × h]·[h × h]``, registered for one test only."""
    @register_component("example_probe", EVERY_LAYER, "example probe", "[T × h]·[h × h]", "2·T·h·h")
    def example_probe_flops(model, s, experts=1):
        return matmul_flops(s, model.hidden_size, model.hidden_size)
    yield "example_probe"
    unregister_component("example_probe")


def test_an_added_component_reaches_every_reader(example_component):
    model = ModelShape(num_layers=3, hidden_size=8, num_attention_heads=2, vocab_size=16)
    B, s, T, h = 2, 4, 8, 8
    b = flops_breakdown(model, s, B, Recompute("full"))
    probe = b["example_probe"]
    # by hand: 3 layers × [T × h]·[h × h]; backward 2×; full recompute re-runs every layer
    assert probe.forward == 3 * 2 * T * h * h
    assert (probe.backward, probe.recompute) == (2 * probe.forward, probe.forward)
    assert probe.description == "example probe  [T × h]·[h × h]"
    assert flops.COMPONENTS[-1] == "example_probe"
    assert flops.DESCRIPTIONS["example_probe"] == probe.description
    assert {"name": "example_probe", "forward": probe.forward, "backward": probe.backward,
            "recompute": probe.recompute} in b.to_dict()["components"]
    assert "example_probe" in breakdown_table(b)
    assert "| `example_probe` | every layer | example probe  [T × h]·[h × h] | 2·T·h·h |" \
        in components.markdown_table()
    # not an attention-core product: selective recompute leaves it alone
    assert flops_breakdown(model, s, B, Recompute("selective"))["example_probe"].recompute == 0


def test_removing_the_example_restores_the_breakdown():
    model = ModelShape(num_layers=3, hidden_size=8, num_attention_heads=2, vocab_size=16)
    before = flops_breakdown(model, 4, 2)
    register_component("example_probe", ONCE, "example probe", "[T × h]·[h × h]", "2·T·h·h")(
        lambda model, s, experts=1: matmul_flops(s, model.hidden_size, model.hidden_size))
    try:
        with_probe = flops_breakdown(model, 4, 2)
        assert with_probe.forward_flops == before.forward_flops + 2 * (2 * 4) * 8 * 8
        with pytest.raises(ValueError, match="already registered"):
            register_component("example_probe", ONCE, "", "", "")(lambda *a: 0)
    finally:
        unregister_component("example_probe")
    assert flops_breakdown(model, 4, 2) == before
    assert "example_probe" not in flops.COMPONENTS


def test_unknown_occurrence_is_refused():
    with pytest.raises(ValueError, match="occurs"):
        register_component("x", "sometimes", "", "", "")
