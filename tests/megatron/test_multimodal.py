"""Megatron-LM's multimodal example runs read into shapes (issue 20 item 3).

The expected shapes are read by hand from NVIDIA/Megatron-LM d98e8a64: the launch scripts'
flags (tests/data/megatron_lm_corpus.json), ``examples/multimodal/config.py`` (vision and
projection per type) and ``model.py`` (tiles, decoder length, freezing); the image
embeddings from Megatron-Core's ``get_num_image_embeddings``.
"""

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from megatron_flops.commands import main
from megatron_flops.conventions import compare_conventions
from megatron_flops.errors import ShapeError
from megatron_flops.megatron.args import parse_megatron_args, shapes_from_args
from megatron_flops.params import vision_parameters

CORPUS = {case["path"]: case for case in json.loads(
    (Path(__file__).parents[1] / "data" / "megatron_lm_corpus.json").read_text())}
MISTRAL_CLIP = "examples/multimodal/pretrain_mistral_clip.sh"
NVLM_72B = "examples/multimodal/nvlm/pretrain_qwen20_72b_internvit_6b.sh"
NVLM_72B_SFT = "examples/multimodal/nvlm/sft_qwen20_72b_internvit_6b.sh"
NANO_VL_SFT = ("examples/multimodal/llama_3p1_nemotron_nano_vl_8b_v1/"
               "sft_llama_3p1_nemotron_nano_vl_8b_v1.sh")
VIDEO = "examples/multimodal/nvlm/sft_qwen2p5_7b_internvit_6b_video.sh"


def shapes(argv):
    ns, _ = parse_megatron_args(argv + ["--vocab-size", "32000"])
    return shapes_from_args(ns)


def test_mistral_clip_pretraining():
    """CLIP ViT-L/14 at 336 px: 24² = 576 patches + 1 class token; the class token dropped
    (--disable-vision-class-token) leaves 576 embeddings; Mistral's projection 1024 -> 14336
    -> 4096; the language model at --decoder-seq-length 1024 (its --seq-length 576 is the
    image embeddings, which model.py writes there anyway); ViT and LM frozen."""
    model, run = shapes(CORPUS[MISTRAL_CLIP]["argv"])
    vision = model.vision
    vit = vision.transformer
    assert (vit.num_layers, vit.hidden_size, vit.num_attention_heads, vit.kv_channels,
            vit.ffn_hidden_size, vit.glu) == (24, 1024, 16, 64, 4096, False)
    assert (vision.patches, vision.seq_length, vision.image_embeddings, vision.tiles) == \
        (576, 577, 576, 1)
    assert (vision.projector_input_size, vision.projector_ffn_hidden_size) == (1024, 14336)
    assert run.seq_length == 1024
    assert (model.ffn_hidden_size, model.glu) == (14336, True)
    assert model.frozen == {"vision", "language"}


def test_nvlm_internvit_tiles_pixel_shuffle_and_dummy_heads():
    """InternViT-6B at 448 px: 32² = 1024 patches + 1 class token (dropped), pixel shuffle ->
    256 embeddings 12800 wide; --use-tiling --max-num-tiles 6 --use-thumbnail: 7 tiles; TP 8
    pads InternViT's 25 heads to ((24 // 8) + 1)·8 = 32 of the language model's 128 channels;
    --use-tile-tags with qwen2p0 adds 5 tokens per tile (the script's --seq-length 261)."""
    model, run = shapes(CORPUS[NVLM_72B_SFT]["argv"])
    vision = model.vision
    assert (vision.seq_length, vision.image_embeddings, vision.projector_input_size) == \
        (1025, 256, 12800)
    assert (vision.tiles, vision.tile_tag_tokens) == (7, 5)
    assert (vision.transformer.num_attention_heads, vision.transformer.kv_channels) == (32, 128)
    assert vision.projector_ffn_hidden_size == 29568
    assert run.seq_length == 3200 and model.frozen == {"vision"}


def test_radio_tiles_and_recompute_vision():
    """RADIO at 512 px, 16-pixel patches: 1024 patches + 8 class tokens (dropped), pixel
    shuffle -> 256; 12 tiles + thumbnail; its patch embedding is a linear; --recompute-vision."""
    model, run = shapes(CORPUS[NANO_VL_SFT]["argv"])
    vision = model.vision
    assert (vision.seq_length, vision.image_embeddings, vision.tiles) == (1032, 256, 13)
    assert vision.linear_patch_embedding and vision.recompute
    assert vision.projector_ffn_hidden_size == 4096 and run.seq_length == 16384


def test_video_frames_are_tiles():
    """--num-frames 32 with 12 tiles + thumbnail: model.py sizes a sample at max(13, 32)."""
    model, _ = shapes(CORPUS[VIDEO]["argv"])
    assert model.vision.tiles == 32 and model.frozen == {"language"}


def test_internvit_parameters_match_the_published_vit():
    """InternViT-6B-448px-V1-5 (45 layers, 25 heads at TP 1): 5.54B parameters, as the
    InternVL 1.5 model card gives ("ViT 5.54B", https://internvl.github.io/blog/2024-04-30-
    InternVL-1.5); the language model is Qwen2-72B's 72.71B (its Hugging Face card)."""
    argv = CORPUS[NVLM_72B]["argv"] + ["--tensor-model-parallel-size", "1"]
    model, _ = shapes(argv)
    vision = model.vision
    projection = (vision.projector_input_size * vision.projector_ffn_hidden_size
                  + vision.projector_ffn_hidden_size * model.hidden_size)
    vit = vision_parameters(model) - projection
    assert 5.535e9 <= vit < 5.55e9, vit


def _estimate(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["estimate", *argv, "--json"])
    return code, out.getvalue(), err.getvalue()


def test_estimate_shows_the_vision_rows_and_frozen_backward():
    code, out, err = _estimate(CORPUS[MISTRAL_CLIP]["argv"] + ["--vocab-size", "32768"])
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)["components"]}
    # frozen ViT: forward only; the trained projection: its weight gradients (and fc2's dX)
    assert rows["vision_layers"]["backward"] == 0 and rows["vision_layers"]["forward"] > 0
    up, down = rows["vision_projection_up"], rows["vision_projection_down"]
    assert up["backward"] == up["forward"] == up["extra_backward"]
    assert down["backward"] == 2 * down["forward"]
    # frozen language model: input gradients only
    assert rows["mlp_up"]["backward"] == rows["mlp_up"]["forward"]


def test_megatron_lm_formula_counts_the_language_model_at_one_tile():
    """Megatron-LM's num_floating_point_operations reads args.seq_length, which model.py set
    to one tile's image embeddings (576 here): our megatron-lm convention is the same formula
    on the text model at 576 tokens."""
    model, run = shapes(CORPUS[MISTRAL_CLIP]["argv"])
    text = replace(model, vision=None, frozen=frozenset())
    vlm = compare_conventions(model, 2, run.seq_length, names=["megatron-lm"])["megatron-lm"]
    lm = compare_conventions(text, 2, 576, names=["megatron-lm"])["megatron-lm"]
    assert vlm.flops_per_iteration == lm.flops_per_iteration


@pytest.mark.parametrize("argv, flag", [
    (["--img-h", "336"], "--img-h"),
    (["--vision-model-type", "clip"], "--vision-model-type"),
    (["--language-model-type", "mistral_7b"], "--decoder-seq-length"),
    (["--language-model-type", "nemotron5-hybrid-8b", "--decoder-seq-length", "2048"],
     "--language-model-type"),
    (["--language-model-type", "llama3.1_70B", "--decoder-seq-length", "2048"],
     "--language-model-type"),
    (["--language-model-type", "mistral_7b", "--decoder-seq-length", "2048",
      "--vision-model-type", "pixtral-vit"], "--vision-model-type"),
    (["--language-model-type", "mistral_7b", "--decoder-seq-length", "500", "--img-h", "336",
      "--img-w", "336", "--patch-dim", "14"],
     "--decoder-seq-length"),  # 577 image embeddings (class token kept) do not fit
    (["--language-model-type", "mistral_7b", "--decoder-seq-length", "2048",
      "--dynamic-resolution"], "--dynamic-resolution"),
    (["--language-model-type", "mistral_7b", "--decoder-seq-length", "2048", "--img-h", "330",
      "--patch-dim", "14"], "--patch-dim"),
])
def test_refusals_name_the_flag(argv, flag):
    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--seq-length", "128", "--max-position-embeddings", "4096"]
    code, _, err = _estimate(base + argv + ["--vocab-size", "100"])
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("megatron-flops: error:") and flag in last, err


def test_freeze_all_layers_is_forward_only():
    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--seq-length", "128", "--max-position-embeddings", "128", "--vocab-size", "100"]
    code, out, err = _estimate(base + ["--freeze-all-layers"])
    assert code == 0, err
    flops = json.loads(out)
    assert flops["flops_per_iteration"]["model"] == sum(
        row["forward"] for row in flops["components"])
    assert all(row["backward"] == 0 for row in flops["components"])


def test_a_live_runs_args_are_read_like_its_command():
    """The runtime hook reads the run's own ``args``: ``img_h``/``img_w``/``patch_dim`` under
    Megatron-LM's names, and ``seq_length`` already overwritten by model.py with one tile's
    image embeddings (576) — the language model still runs at --decoder-seq-length."""
    from megatron_flops.megatron import calculator

    argv = CORPUS[MISTRAL_CLIP]["argv"] + ["--vocab-size", "32000"]
    ns, _ = parse_megatron_args(argv)
    command_model, command_run = shapes_from_args(ns)
    for name in ("img_h", "img_w", "patch_dim"):
        setattr(ns, name, getattr(ns, "cli_" + name))
        delattr(ns, "cli_" + name)
    ns.seq_length = 576  # model.py: args.seq_length = num_image_embeddings
    model, run = shapes_from_args(ns)
    assert model == command_model and run.seq_length == command_run.seq_length == 1024
    assert calculator.iteration_seq_length(ns) == 1024


def test_megatron_lm_formula_assumes_one_class_token():
    """model.py passes class_token_len=1 to get_num_image_embeddings: a RADIO run that keeps
    its 8 class tokens has 1024 + 1 tokens in Megatron-LM's seq_length, not 1024 + 8."""
    argv = [w for w in CORPUS[NANO_VL_SFT]["argv"]
            if w not in ("--disable-vision-class-token", "--pixel-shuffle")]
    model, run = shapes(argv)
    assert model.vision.image_embeddings == 1032
    text = replace(model, vision=None, frozen=frozenset())
    vlm = compare_conventions(model, 1, run.seq_length, names=["megatron-lm"])["megatron-lm"]
    lm = compare_conventions(text, 1, 1025, names=["megatron-lm"])["megatron-lm"]
    assert vlm.flops_per_iteration == lm.flops_per_iteration
