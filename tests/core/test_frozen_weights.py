"""Frozen weights and vision encoders in the core breakdown (issue 20 item 3), without
Megatron-Core: the backward rule on text models, recompute, JSON, FP8 and the shape checks.
tests/megatron_core/test_llava.py proves the same rule against what Megatron-Core executes."""

import pytest

from megatron_flops.errors import ShapeError
from megatron_flops.flops import flops_breakdown
from megatron_flops.fp8 import Fp8Recipe, fp8_flops
from megatron_flops.shapes import ModelShape, Recompute, VisionEncoder

TEXT = dict(num_layers=3, hidden_size=32, num_attention_heads=4, vocab_size=64)


def vit(**overrides):
    fields = dict(transformer=ModelShape(num_layers=2, hidden_size=16, num_attention_heads=2,
                                         vocab_size=1),
                  img_h=8, img_w=8, patch_dim=2, class_tokens=1, projector="mlp",
                  projector_ffn_hidden_size=24)
    fields.update(overrides)
    return VisionEncoder(**fields)


def test_a_fully_frozen_text_model_runs_forward_only():
    """--freeze-all-layers: nothing trains, so there is no backward (Megatron-LM runs the step
    forward-only) and no recompute either (recompute re-runs a forward for a backward)."""
    trained = flops_breakdown(ModelShape(**TEXT), 16, 2, Recompute("full"))
    frozen = flops_breakdown(ModelShape(**TEXT, frozen={"language"}), 16, 2, Recompute("full"))
    assert frozen.forward_flops == trained.forward_flops
    assert frozen.backward_flops == frozen.recompute_flops == 0
    assert frozen.model_flops == frozen.hardware_flops == trained.forward_flops
    assert trained.model_flops == 3 * trained.forward_flops  # unchanged when nothing is frozen


def test_a_frozen_language_model_keeps_its_input_gradients():
    """--freeze-LM with a trained projection: every language matmul computes dX (1×) and no dW;
    the attention core's two input gradients stay (2×); full recompute still re-runs."""
    model = ModelShape(**TEXT, vision=vit(), frozen={"language"})
    b = flops_breakdown(model, 40, 1, Recompute("full"))
    for c in b:
        if c.name.startswith("vision_"):
            continue
        multiple = 2 if c.name.startswith("attention_") and c.name != "attention_output" else 1
        assert c.backward == multiple * c.forward, c.name
        assert c.weight_gradient == 0, c.name
        assert c.recompute == (0 if c.name == "logits" else c.forward), c.name  # layers only


def test_json_names_extra_backward_only_where_it_runs():
    trained = flops_breakdown(ModelShape(**TEXT, vision=vit()), 40).to_dict()
    assert all("extra_backward" not in row for row in trained["components"])
    frozen = flops_breakdown(ModelShape(**TEXT, vision=vit(), frozen={"vision"}), 40)
    rows = {row["name"]: row for row in frozen.to_dict()["components"]}
    assert rows["vision_projection_up"]["extra_backward"] == rows["vision_projection_up"]["forward"]
    assert frozen.hardware_flops == frozen.model_flops + rows["vision_projection_up"]["forward"]


def test_radio_linear_patch_embedding_runs_its_input_gradient():
    """RADIO's patch embedding is Megatron's linear: trained, it computes dX on the pixels."""
    conv = flops_breakdown(ModelShape(**TEXT, vision=vit()), 40)["vision_patch_embedding"]
    linear = flops_breakdown(ModelShape(**TEXT, vision=vit(linear_patch_embedding=True)),
                             40)["vision_patch_embedding"]
    assert conv.backward == linear.backward == conv.forward  # dW only is needed
    assert (conv.extra_backward, linear.extra_backward) == (0, linear.forward)


def test_fp8_without_wgrad_keeps_only_the_trained_weight_gradients_in_bf16():
    """--no-fp8-wgrad: the weight gradients run BF16; a frozen language model has none."""
    recipe = Fp8Recipe(fp8_format="e4m3", wgrad=False)
    model = ModelShape(**TEXT, vision=vit(), frozen={"language"})
    b = flops_breakdown(model, 40)
    split = fp8_flops(b, model, recipe)
    layer_rows = [c for c in b if c.name in ("query", "key_value", "attention_output", "mlp_up",
                                             "mlp_down")]
    # the layers' weight matmuls run FP8, their backward (dX only) too; the attention core,
    # the logits and the vision rows stay BF16
    assert split["fp8"] == sum(c.forward + c.backward for c in layer_rows)


@pytest.mark.parametrize("fields, flag", [
    (dict(TEXT, frozen={"vision"}), "--freeze-ViT"),
    (dict(TEXT, frozen={"projector"}), "--freeze-vision-projection"),
    (dict(TEXT, frozen={"decoder"}), "frozen parts must be among vision, projector, language"),
])
def test_frozen_parts_the_model_does_not_have_are_refused(fields, flag):
    with pytest.raises(ShapeError) as error:
        ModelShape(**fields)
    assert flag in str(error.value)


@pytest.mark.parametrize("overrides, flag", [
    (dict(img_h=9), "--patch-dim"),
    (dict(pixel_shuffle=True), "--pixel-shuffle"),  # 16 patches + 1 class token: no grid
    (dict(projector="mlp", projector_ffn_hidden_size=None), "--language-model-type"),
    (dict(projector="conv"), "--vision-projection-type"),
])
def test_vision_shape_errors_name_the_flag(overrides, flag):
    with pytest.raises(ShapeError) as error:
        vit(**overrides)
    assert flag in str(error.value)
