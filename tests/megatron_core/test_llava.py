"""Megatron-Core's LLaVAModel (CLIP ViT + MLP/affine projection + GPT, local specs, CPU, fp32)
with frozen parts: counted FLOPs = our breakdown, exactly, per component and per phase.

Issue 20 item 3.  The model is built as ``examples/multimodal/model.py`` builds it (at
Megatron-LM d98e8a64), with local layer specs instead of Transformer Engine's, and frozen with
``LLaVAModel.freeze`` (``requires_grad = False``) as ``--freeze-ViT`` / ``--freeze-LM`` /
``--freeze-vision-projection`` do.  One sample of ``t`` tiles: the language model runs at the
decoder length ``D`` exactly (text length ``D − t·N + 1``: the one image token becomes ``t·N``
embeddings).

Hand derivation of the default case (CLIP-like ViT: lv = 2 layers, hv = 32, nv = 4 heads of
kv = 8, fv = 64, no GLU; 16×16 images, p = 4: P = 16 patches, Sv = 17 with the class token;
t = 2 tiles; mlp projection hv = 32 -> fp = 48 -> h = 64; class token kept, N = 17), forward,
per sample:

    vision_patch_embedding  t·2·P·3p²·hv        = 2·2·16·48·32         =    98,304
    vision_layers           t·lv·2·Sv·hv·(2·nv·kv + 2·nv·kv + 2·fv)
                                                = 2·2·2·17·32·(64+64+128) = 1,114,112
    vision_attention        t·lv·4·nv·Sv²·kv    = 2·2·4·4·289·8        =   147,968
    vision_projection_up    t·2·N·hv·fp         = 2·2·17·32·48         =   104,448
    vision_projection_down  t·2·N·fp·h          = 2·2·17·48·64         =   208,896

Backward (autograd computes dX = dY·Wᵀ only where something before X trains, dW = Xᵀ·dY only
where W trains), each a multiple of the forward above:

    case                 patch  ViT layers  ViT attn  proj up  proj down  LM matmuls  LM attn
    nothing frozen         1        2          2         2        2          2          2
    --freeze-ViT           0        0          0         1        2          2          2
    --freeze-LM            1        2          2         2        2          1          2
    ViT + LM (LLaVA pre)   0        0          0         1        2          1          2
    ViT + projection       0        0          0         0        0          2          2

(the patch embedding never computes dX: its input is pixels).  What Megatron-Core runs adds one
thing training does not need: its linear computes dX in every backward it runs, so the
projection's first linear after a frozen ViT runs 1× more (``extra_backward``: hardware FLOPs
only); a convolution does not.  ``test_hand_derivation``
checks these numbers against the breakdown; the counting tests check the breakdown against
what Megatron-Core executes.
"""

import contextlib
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import mcore_counting  # noqa: E402
import torch  # noqa: E402

from megatron_flops.flops import flops_breakdown  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute, VisionEncoder  # noqa: E402

LANGUAGE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128,
                position_embedding="rotary", tie_embeddings=False)
VIT = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=1)
DECODER_LENGTH = 48


def vision_encoder(**overrides):
    fields = dict(transformer=ModelShape(**VIT), img_h=16, img_w=16, patch_dim=4, class_tokens=1,
                  tiles=2, projector="mlp", projector_ffn_hidden_size=48)
    fields.update(overrides)
    return VisionEncoder(**fields)


# ---- Megatron-Core module names -> our vision components ----------------------------------

VISION_MODULES = (
    (r"vision_model\.conv1", "vision_patch_embedding"),
    (r"vision_model\.decoder\.layers\.\d+\.self_attention\.core_attention", "vision_attention"),
    (r"vision_model\.decoder\.layers\.\d+\..*", "vision_layers"),
    (r"vision_projection\.encoder(\.linear_fc1)?", "vision_projection_up"),
    (r"vision_projection\.encoder\.linear_fc2", "vision_projection_down"),
)


def counted_by_component(counted):
    """``{group: {phase: flops}}``: vision modules by VISION_MODULES, the language model's by
    mcore_counting's table."""
    table = {}
    for (module, phase), flops in counted.flops.items():
        if not flops:
            continue
        group = next((name for pattern, name in VISION_MODULES if re.fullmatch(pattern, module)),
                     None)
        if group is None:
            assert module.startswith("language_model."), module
            group = mcore_counting._group_of(module[len("language_model."):])
        row = table.setdefault(group, dict.fromkeys(mcore_counting.PHASES, 0))
        row[phase] += flops
    return table


def expected_by_component(breakdown):
    table = mcore_counting.expected_by_component(breakdown)
    for _, name in VISION_MODULES:
        try:
            component = breakdown[name]
        except KeyError:
            continue
        # what runs in the backward: what training needs, and the input gradient Megatron's
        # linear computes without need (hardware FLOPs only)
        table[name] = dict(forward=component.forward,
                           backward=component.backward + component.extra_backward,
                           recompute=component.recompute)
    return {group: row for group, row in table.items() if any(row.values())}


@contextlib.contextmanager
def cpu_stand_ins():
    """Two construction-time calls without Transformer Engine, neither a matmul: CLIPViTModel
    puts its position ids on ``.cuda()`` (kept on CPU here), and its default ``ln_pre`` is
    ``torch.nn.LayerNorm``, which ``build_module`` cannot give a ``config`` (Megatron-Core's
    ``WrappedTorchNorm`` here, the same LayerNorm).  While the model runs, its local ViT
    spec's default mask (0.16.1's local spec masks causally, the Transformer Engine spec not
    at all: the unfused attention multiplies the whole Sv×Sv either way) is built with
    ``torch.ones(device="cuda")``, redirected to CPU."""
    import functools

    from megatron.core.models.multimodal import llava_model
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    original_cuda, original_vit = torch.Tensor.cuda, llava_model.CLIPViTModel
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    llava_model.CLIPViTModel = functools.partial(original_vit, ln_pre_impl=WrappedTorchNorm,
                                                 ln_post_impl=WrappedTorchNorm)
    try:
        with mcore_counting._redirect_cuda_device():  # the ViT's default mask (below)
            yield
    finally:
        torch.Tensor.cuda = original_cuda
        llava_model.CLIPViTModel = original_vit


def build_llava(model: ModelShape, recompute: Recompute):
    """LLaVAModel as the multimodal example's model provider builds it, local specs."""
    import torch.nn.functional as F
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.multimodal.llava_model import LLaVAModel
    from megatron.core.models.vision.vit_layer_specs import get_vit_layer_with_local_spec
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.mlp import MLPSubmodules
    from megatron.core.transformer.transformer_config import TransformerConfig

    vision = model.vision
    language_config = TransformerConfig(**mcore_counting.transformer_config_kwargs(model, recompute))
    vit_recompute = recompute if vision.recompute else Recompute()
    if vit_recompute.granularity == "full":  # --recompute-vision: every ViT layer
        vit_recompute = Recompute("full", vit_recompute.method, vision.transformer.num_layers)
    vision_config = TransformerConfig(**mcore_counting.transformer_config_kwargs(
        vision.transformer, vit_recompute))
    vision_config.vision_model_type = "clip"
    projection_config = TransformerConfig(**{
        **mcore_counting.transformer_config_kwargs(model, Recompute()),
        "ffn_hidden_size": vision.projector_ffn_hidden_size or model.hidden_size,
        "gated_linear_unit": False, "activation_func": F.gelu, "add_bias_linear": False})
    with cpu_stand_ins():
        llava = LLaVAModel(
            language_transformer_config=language_config,
            language_transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
            language_vocab_size=model.vocab_size,
            language_max_sequence_length=DECODER_LENGTH,
            vision_transformer_config=vision_config,
            vision_transformer_layer_spec=get_vit_layer_with_local_spec(),
            drop_vision_class_token=vision.drop_class_tokens,
            vision_projection_config=projection_config,
            vision_projection_layer_spec=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                       linear_fc2=RowParallelLinear),
            vision_projection_type=vision.projector,
            share_embeddings_and_output_weights=model.tie_embeddings,
            language_position_embedding_type="rope",
            img_h=vision.img_h, img_w=vision.img_w, patch_dim=vision.patch_dim,
            pixel_shuffle=vision.pixel_shuffle,
        )
    llava.freeze(freeze_language_model="language" in model.frozen,
                 freeze_vision_model="vision" in model.frozen,
                 freeze_vision_projection="projector" in model.frozen)
    return llava


def count_llava_step(llava, model: ModelShape):
    """One training step on one sample of ``tiles`` tiles, the decoder at DECODER_LENGTH."""
    from megatron.core.models.multimodal.llava_model import DEFAULT_IMAGE_TOKEN_INDEX

    vision = model.vision
    text_length = DECODER_LENGTH - vision.tiles * vision.image_embeddings + 1
    assert text_length > 1
    input_ids = torch.randint(0, model.vocab_size, (1, text_length))
    input_ids[0, 1] = DEFAULT_IMAGE_TOKEN_INDEX
    position_ids = torch.arange(text_length).unsqueeze(0)
    images = torch.randn(vision.tiles, 3, vision.img_h, vision.img_w)
    tiles = torch.tensor([vision.tiles], dtype=torch.int)
    with torch.utils.checkpoint.set_checkpoint_early_stop(False), cpu_stand_ins():
        with mcore_counting.ModuleFlopCounter(llava) as counted:
            output, _ = llava(images, input_ids, position_ids, attention_mask=None,
                              num_image_tiles=tiles)
            assert output.shape[1] == DECODER_LENGTH  # [b, s, V]: the decoder length
            loss = output.float().sum()
            counted._settle()
            counted.in_backward = True
            if loss.requires_grad:  # something trains
                loss.backward()
    return counted


def assert_counted_exactly(model: ModelShape, recompute: Recompute = Recompute()):
    counted = count_llava_step(build_llava(model, recompute), model)
    breakdown = flops_breakdown(model, DECODER_LENGTH, 1, recompute)
    assert counted_by_component(counted) == expected_by_component(breakdown)
    assert counted.total_flops == breakdown.hardware_flops
    return breakdown


FROZEN = {
    "nothing frozen": frozenset(),
    "--freeze-ViT": frozenset({"vision"}),
    "--freeze-LM": frozenset({"language"}),
    "--freeze-ViT --freeze-LM": frozenset({"vision", "language"}),
    "--freeze-ViT --freeze-vision-projection": frozenset({"vision", "projector"}),
}


@pytest.mark.parametrize("case", sorted(FROZEN))
def test_frozen_parts_counted_exactly(megatron_core, case):
    model = ModelShape(**LANGUAGE, vision=vision_encoder(), frozen=FROZEN[case])
    assert_counted_exactly(model)


VISIONS = {
    "affine projection": dict(projector="affine", projector_ffn_hidden_size=None),
    "class token dropped, pixel shuffle": dict(drop_class_tokens=True, pixel_shuffle=True),
    "gqa vit, 1 tile, 8x12 image": dict(transformer=ModelShape(**{**VIT, "num_query_groups": 2}),
                                        img_h=8, img_w=12, tiles=1),
}


@pytest.mark.parametrize("case", sorted(VISIONS))
def test_vision_shapes_counted_exactly(megatron_core, case):
    model = ModelShape(**LANGUAGE, vision=vision_encoder(**VISIONS[case]),
                       frozen=frozenset({"vision"}))
    assert_counted_exactly(model)


@pytest.mark.parametrize("frozen", [frozenset(), frozenset({"vision"})], ids=["trained", "frozen"])
def test_recompute_vision_counted_exactly(megatron_core, frozen):
    """--recompute-vision with full recompute: every ViT layer re-runs its forward in the
    backward — and nothing re-runs when the ViT is frozen (no backward reaches it)."""
    model = ModelShape(**LANGUAGE, vision=vision_encoder(recompute=True), frozen=frozen)
    breakdown = assert_counted_exactly(model, Recompute("full", "uniform", 1))
    vision_recompute = breakdown["vision_layers"].recompute
    assert (vision_recompute > 0) == (not frozen)


def test_hand_derivation():
    """The module docstring's table, from the breakdown (no Megatron-Core needed)."""
    forward = dict(vision_patch_embedding=98_304, vision_layers=1_114_112,
                   vision_attention=147_968, vision_projection_up=104_448,
                   vision_projection_down=208_896)
    multiples = {  # patch, ViT layers, ViT attention, projection up, down, LM matmul, LM attention
        "nothing frozen": (1, 2, 2, 2, 2, 2, 2),
        "--freeze-ViT": (0, 0, 0, 1, 2, 2, 2),
        "--freeze-LM": (1, 2, 2, 2, 2, 1, 2),
        "--freeze-ViT --freeze-LM": (0, 0, 0, 1, 2, 1, 2),
        "--freeze-ViT --freeze-vision-projection": (0, 0, 0, 0, 0, 2, 2),
    }
    for case, (*vision_rows, lm_matmul, lm_attention) in multiples.items():
        b = flops_breakdown(ModelShape(**LANGUAGE, vision=vision_encoder(), frozen=FROZEN[case]),
                            DECODER_LENGTH)
        for (name, fwd), multiple in zip(forward.items(), vision_rows):
            assert b[name].forward == fwd and b[name].backward == multiple * fwd, (case, name)
        unneeded = "vision" in FROZEN[case] and "projector" not in FROZEN[case]
        assert b["vision_projection_up"].extra_backward == (104_448 if unneeded else 0), case
        for name in ("query", "key_value", "mlp_up", "logits"):
            assert b[name].backward == lm_matmul * b[name].forward, (case, name)
        assert b["attention_scores"].backward == lm_attention * b["attention_scores"].forward
