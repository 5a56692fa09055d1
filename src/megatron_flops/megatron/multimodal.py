"""Vision-language runs as Megatron-LM's multimodal example builds them (issue 20 item 3).

``examples/multimodal/train.py`` (NVIDIA/Megatron-LM d98e8a64) builds Megatron-Core's
``LLaVAModel`` in ``model.py``'s ``model_provider``:

- the **language model** from the ordinary flags (``--num-layers``, ``--hidden-size``, heads,
  GQA, vocabulary), except what ``config.py`` ``get_language_model_config`` sets per
  ``--language-model-type`` (the FFN size and whether the MLP is gated; activation and bias do
  not change a matmul), run at ``--decoder-seq-length`` (the image embeddings are inside it);
  ``--seq-length`` is overwritten with the image embeddings of one tile, so it is not the
  language model's length;
- the **vision model** entirely from ``config.py`` ``get_vision_model_config`` per
  ``--vision-model-type`` (:data:`VISION_MODELS`), on ``--img-h × --img-w`` tiles of
  ``--patch-dim`` patches, ``--max-num-tiles`` (+1 ``--use-thumbnail``) tiles per image with
  ``--use-tiling`` (``max(tiles, --num-frames)`` for video);
- the **projection** an MLP (``get_vision_projection_config``: hidden size per
  ``--language-model-type``, :data:`PROJECTION_FFN`), on ``4·hv``-wide inputs with
  ``--pixel-shuffle``;
- ``model.freeze(--freeze-LM, --freeze-ViT, --freeze-vision-projection)``.

A run is multimodal when ``--language-model-type`` is given (train.py requires it).  The
vision flags without it are refused: ``pretrain_vlm.py`` (Megatron-LM's functional tests)
builds its ViT from the language flags and is not counted yet.  Standard library only.
"""

import argparse
from dataclasses import replace
from typing import Dict, Optional, Tuple

from ..shapes import ModelShape, RunShape, ShapeError, VisionEncoder

__all__ = ["LANGUAGE_MODELS", "PROJECTION_FFN", "VISION_MODELS", "add_arguments", "apply",
           "vision_encoder"]

# config.py get_language_model_config at d98e8a64: --language-model-type -> (ffn_hidden_size,
# gated_linear_unit).  The hybrid (Mamba) and hf:// language models are not counted here.
LANGUAGE_MODELS: Dict[str, Tuple[int, bool]] = {
    "llama3_8b": (14336, True), "llama3.1_8b": (14336, True), "llama3.1_70B": (28672, True),
    "mistral_7b": (14336, True), "nemotron5-8b": (21504, False), "yi-34b": (20480, True),
    "qwen2.0_72B": (29568, True), "qwen2.5_7B": (18944, True), "qwen2.5_72B": (29568, True),
    "llama3.2_1b": (8192, True), "llama_nemotron_8b": (14336, True),
}

# config.py get_vision_projection_config: --language-model-type -> the MLP projection's hidden
# size (llama3.1_70B has none there: Megatron-LM raises "unknown language model type")
PROJECTION_FFN: Dict[str, int] = {
    "llama3_8b": 14336, "llama3.1_8b": 4096, "mistral_7b": 14336, "yi-34b": 20480,
    "qwen2.0_72B": 29568, "qwen2.5_7B": 3584, "qwen2.5_72B": 29568, "nemotron5-8b": 21504,
    "llama3.2_1b": 2048, "llama_nemotron_8b": 14336,
}

# config.py get_vision_model_config: --vision-model-type -> layers, hidden, heads (None:
# InternViT's ((24 // TP) + 1) · TP, padded for tensor parallelism), kv_channels (None: the
# language model's, which the vision config inherits), ffn, gated MLP, class tokens (as
# LLaVAModel builds them), and whether the patch embedding is a linear (RADIO) or a convolution
_VisionRow = Tuple[int, int, Optional[int], Optional[int], int, bool, int, bool]
VISION_MODELS: Dict[str, _VisionRow] = {
    "clip": (24, 1024, 16, 64, 4096, False, 1, False),
    "siglip": (27, 1152, 16, 72, 4304, False, 0, False),
    "internvit": (45, 3200, None, None, 12800, False, 1, False),
    "internvit300M": (24, 1024, 16, 64, 4096, False, 1, False),
    "radio": (32, 1280, 16, 80, 5120, False, 8, True),
    "radio-g": (40, 1536, 24, 64, 4096, True, 5, True),
    "cradio-g": (40, 1536, 24, 64, 6144, False, 8, True),
}

# the flags train.py reads that select the dialect; given without --language-model-type they
# belong to another entry point
_VISION_ONLY_FLAGS = (("cli_img_h", "--img-h"), ("cli_img_w", "--img-w"),
                      ("cli_patch_dim", "--patch-dim"), ("vision_model_type", "--vision-model-type"),
                      ("decoder_seq_length", "--decoder-seq-length"), ("freeze_ViT", "--freeze-ViT"))


# the integer flags and their least valid value (0 class tokens is SigLIP's)
_INTEGER_FLAGS = (("cli_img_h", "--img-h", 1), ("cli_img_w", "--img-w", 1),
                  ("cli_patch_dim", "--patch-dim", 1), ("decoder_seq_length",
                                                         "--decoder-seq-length", 1),
                  ("max_num_tiles", "--max-num-tiles", 1), ("num_frames", "--num-frames", 1),
                  ("class_token_len", "--class-token-len", 0))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The multimodal example's flags that change the count (defaults: None, as not given)."""
    g = parser.add_argument_group("Megatron-LM multimodal (examples/multimodal/train.py)")
    add = g.add_argument
    add("--language-model-type", type=str)
    add("--vision-model-type", type=str)
    # a run's own args always carry img_h/img_w/patch_dim (Megatron-LM's defaults 224/224/16):
    # only the command line's are told apart, under their own destinations
    add("--img-h", type=int, dest="cli_img_h")
    add("--img-w", type=int, dest="cli_img_w")
    add("--patch-dim", type=int, dest="cli_patch_dim")
    add("--decoder-seq-length", type=int)
    add("--disable-vision-class-token", action="store_true", default=None)
    add("--pixel-shuffle", action="store_true", default=None)
    add("--use-tiling", action="store_true", default=None)
    add("--max-num-tiles", type=int)
    add("--use-thumbnail", action="store_true", default=None)
    add("--num-frames", type=int)
    add("--use-tile-tags", action="store_true", default=None)
    add("--tokenizer-prompt-format", type=str, help="read for the tile tags' tokens")
    add("--class-token-len", type=int)
    add("--recompute-vision", action="store_true", default=None)
    add("--freeze-LM", action="store_true", default=None)
    add("--freeze-ViT", action="store_true", default=None)
    add("--freeze-vision-projection", action="store_true", default=None)
    add("--dynamic-resolution", action="store_true", default=None)
    add("--conv-merging", action="store_true", default=None)
    add("--freeze-all-layers", action="store_true", default=None,
        help="Megatron-LM: every weight frozen, the step forward-only (no backward counted)")


def _value(ns, name: str, default=None):
    value = getattr(ns, name, None)
    return default if value is None else value


def _image(ns, name: str, default: int) -> int:
    """img_h/img_w/patch_dim: the command line's, else the run's args', else Megatron-LM's."""
    cli = getattr(ns, "cli_" + name, None)
    return cli if cli is not None else _value(ns, name, default)


def _tile_tag_tokens(ns, tiles: int) -> int:
    """Tokens ``--use-tile-tags`` adds per tile (clip_vit_model.get_num_image_embeddings): in
    the decoder's sequence and Megatron-LM's seq_length, through no matmul of the vision side."""
    if not _value(ns, "use_tile_tags", False):
        return 0
    prompt = str(_value(ns, "tokenizer_prompt_format", ""))
    if prompt in ("llama3p1", "chatml", "qwen2p0", "qwen2p5"):
        tokens = 5
    elif prompt.startswith("nemotron5"):
        tokens = 6
    else:  # nvlm-yi-34b and others: Megatron-LM's get_num_image_embeddings raises
        raise ShapeError(f"--use-tile-tags with --tokenizer-prompt-format {prompt or '(none)'}: "
                         "Megatron-LM (d98e8a64) defines tile tags only for llama3p1, chatml, "
                         "qwen2p0, qwen2p5 and nemotron5* and raises \"tokenizer type not "
                         "defined\" for this run", "--use-tile-tags")
    return tokens + (1 if 10 < tiles < 100 and prompt.startswith("qwen") else 0)


def vision_encoder(ns, language: ModelShape, tensor_parallel: int) -> VisionEncoder:
    """The VisionEncoder ``model_provider`` builds from ``ns`` (``--language-model-type`` set)."""
    kind = _value(ns, "vision_model_type", "clip")
    if kind not in VISION_MODELS:
        raise ShapeError(f"--vision-model-type {kind}: not counted (counted: "
                         f"{', '.join(VISION_MODELS)})", "--vision-model-type")
    language_type = ns.language_model_type
    if language_type not in PROJECTION_FFN:
        raise ShapeError(f"--language-model-type {language_type}: examples/multimodal/config.py "
                         "has no vision projection for it", "--language-model-type")
    layers, hidden, heads, kv_channels, ffn, glu, class_tokens, linear = VISION_MODELS[kind]
    if heads is None:  # InternViT: 25 heads padded to a multiple of TP (dummy heads compute)
        heads = ((24 // tensor_parallel) + 1) * tensor_parallel
    if kind.startswith("radio") or kind == "cradio-g":
        class_tokens = _value(ns, "class_token_len", class_tokens)
        if _value(ns, "fp8", None) or _value(ns, "fp8_format", None):
            # LLaVAModel pads RADIO's class tokens for FP8 (mxfp8: 32, else 16)
            class_tokens = 32 if _value(ns, "fp8_recipe", "") == "mxfp8" else 16
    transformer = ModelShape(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                             kv_channels=kv_channels or language.kv_channels,
                             ffn_hidden_size=ffn, glu_activation="swiglu" if glu else None,
                             normalization="rmsnorm" if kind == "internvit" else "layernorm",
                             vocab_size=1)
    tiles = 1
    if _value(ns, "use_tiling", False):
        tiles = _value(ns, "max_num_tiles", 1) + int(bool(_value(ns, "use_thumbnail", False)))
    tiles = max(tiles, _value(ns, "num_frames", 1))
    drop = bool(_value(ns, "disable_vision_class_token", False))
    if kind == "siglip":
        class_tokens, drop = 0, False
    return VisionEncoder(
        transformer=transformer, img_h=_image(ns, "img_h", 224), img_w=_image(ns, "img_w", 224),
        patch_dim=_image(ns, "patch_dim", 16), class_tokens=class_tokens, tiles=tiles,
        drop_class_tokens=drop, pixel_shuffle=bool(_value(ns, "pixel_shuffle", False)),
        projector="mlp", projector_ffn_hidden_size=PROJECTION_FFN[language_type],
        recompute=bool(_value(ns, "recompute_vision", False)), linear_patch_embedding=linear,
        tile_tag_tokens=_tile_tag_tokens(ns, tiles))


def _frozen(ns, vision: bool) -> frozenset:
    parts = set()
    if _value(ns, "freeze_all_layers", False):
        parts |= {"language", "vision", "projector"} if vision else {"language"}
    if _value(ns, "freeze_LM", False):
        parts.add("language")
    if _value(ns, "freeze_ViT", False):
        parts.add("vision")
    if _value(ns, "freeze_vision_projection", False):
        parts.add("projector")
    return frozenset(parts)


def apply(ns, model: ModelShape, run: RunShape) -> Tuple[ModelShape, RunShape]:
    """``model`` and ``run`` with the run's vision encoder and frozen parts: the language model
    then runs at ``--decoder-seq-length``."""
    for name, flag, least in _INTEGER_FLAGS:  # bad values are refused even where unread
        value = getattr(ns, name, None)
        if value is not None and value < least:
            raise ShapeError(f"{flag} must be {'a positive' if least else 'a non-negative'} "
                             f"integer, got {value}", flag)
    language_type = getattr(ns, "language_model_type", None)
    if language_type is None:
        for name, flag in _VISION_ONLY_FLAGS:
            if _value(ns, name, False):
                raise ShapeError(f"{flag} without --language-model-type: a vision-language "
                                 "run other than examples/multimodal/train.py's (pretrain_vlm.py "
                                 "builds its ViT from the language flags) is not counted yet",
                                 flag)
        frozen = _frozen(ns, vision=False)
        return (replace(model, frozen=frozen) if frozen else model), run
    if language_type not in LANGUAGE_MODELS:
        raise ShapeError(f"--language-model-type {language_type}: not counted (counted: "
                         f"{', '.join(LANGUAGE_MODELS)})", "--language-model-type")
    decoder = getattr(ns, "decoder_seq_length", None)
    if decoder is None:  # model.py asserts it
        raise ShapeError("--decoder-seq-length is required with --language-model-type (the "
                         "language model's sequence, image embeddings included)",
                         "--decoder-seq-length")
    if decoder <= 0:
        raise ShapeError(f"--decoder-seq-length must be a positive integer, got {decoder}",
                         "--decoder-seq-length")
    for name, flag in (("dynamic_resolution", "--dynamic-resolution"),
                       ("conv_merging", "--conv-merging")):
        if _value(ns, name, False):
            raise ShapeError(f"{flag}: a variable number of patches per image is not counted "
                             "yet", flag)
    ffn, glu = LANGUAGE_MODELS[language_type]
    language = replace(model, ffn_hidden_size=ffn, glu_activation="swiglu" if glu else None,
                       max_position_embeddings=max(model.max_position_embeddings or 0, decoder))
    vision = vision_encoder(ns, language, run.tensor_model_parallel_size)
    image_tokens = vision.tiles * (vision.image_embeddings + vision.tile_tag_tokens)
    if decoder <= image_tokens:  # model.py asserts it
        raise ShapeError(f"--decoder-seq-length ({decoder}) must exceed the image embeddings of "
                         f"a sample ({image_tokens})", "--decoder-seq-length")
    return (replace(language, vision=vision, frozen=_frozen(ns, vision=True)),
            replace(run, seq_length=decoder))
