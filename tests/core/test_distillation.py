"""Knowledge distillation (the microsoft fork's ``--kd`` / ``--mos``): the teacher's forward
is counted once per iteration in hardware FLOPs only, so MFU stays the student's.

What the fork runs (microsoft/Megatron-DeepSpeed f4157bea): ``training.py``
``setup_teacher_model`` builds the teacher from the student's arguments with only
``num_layers``, ``num_experts``, ``hidden_size`` and ``num_attention_heads`` swapped for
``--num-layers-teacher`` … (ffn_hidden_size and kv_channels stay what ``validate_args``
resolved for the student); ``pretrain_gpt.py`` ``forward_step`` → ``calculate_mos_loss`` runs
``teacher_model(tokens, …)`` under ``torch.no_grad`` on every training micro-batch: a whole
forward (layers and logits), no backward, nothing recomputed.
"""

import contextlib
import io
import json
from dataclasses import replace

import pytest

from megatron_flops.commands import main
from megatron_flops.flops import flops_breakdown
from megatron_flops.megatron.args import parse_megatron_args, shapes_from_args
from megatron_flops.shapes import ModelShape, Recompute, ShapeError

S, B, V = 128, 4, 1024
T = B * S


def dense_layer_forward(h, s=S):
    """Default layer (d = h/n, g = n, f = 4h) per token: Q, K, V, output 4·2·h², QKᵀ and A·V
    2·2·s·h, MLP up and down 2·2·h·4h: 24·h² + 4·s·h."""
    return 24 * h * h + 4 * s * h


def test_teacher_forward_is_hardware_only_and_written_out():
    student = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=V)
    teacher = ModelShape(num_layers=3, hidden_size=96, num_attention_heads=6, vocab_size=V)
    alone = flops_breakdown(student, S, B, Recompute("full"))
    with_teacher = flops_breakdown(replace(student, teacher=teacher), S, B, Recompute("full"))
    # teacher forward = T·(per-token forward of a teacher layer)·l_t + logits 2·T·h_t·V
    teacher_forward = T * (3 * dense_layer_forward(96) + 2 * 96 * V)
    component = with_teacher["teacher_forward"]
    assert (component.forward, component.backward, component.recompute) == (teacher_forward, 0, 0)
    assert with_teacher.model_flops == alone.model_flops  # MFU: the student's
    assert with_teacher.hardware_flops == alone.hardware_flops + teacher_forward  # HFU: what ran
    student_forward = T * (2 * dense_layer_forward(64) + 2 * 64 * V)
    assert alone.model_flops == 3 * student_forward


def test_the_teacher_follows_the_attention_convention():
    teacher = ModelShape(num_layers=3, hidden_size=96, num_attention_heads=6, vocab_size=V)
    student = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=V,
                         teacher=teacher)
    dense = flops_breakdown(student, S, B)["teacher_forward"].forward
    causal = flops_breakdown(student, S, B, causal=True)["teacher_forward"].forward
    # causal halves QKᵀ and A·V: 3 layers × 2·s·h per token less
    assert dense - causal == T * 3 * 2 * S * 96


KD_FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--seq-length", str(S), "--micro-batch-size", "1", "--global-batch-size", str(B),
            "--padded-vocab-size", str(V), "--world-size", "1"]
TEACHER_FLAGS = ["--kd", "--num-layers-teacher", "3", "--hidden-size-teacher", "128",
                 "--num-attention-heads-teacher", "8"]


def shapes(argv):
    ns, unknown = parse_megatron_args(argv)
    assert unknown == []
    return shapes_from_args(ns)


@pytest.mark.parametrize("switch", ["--kd", "--mos"])
def test_the_teacher_is_built_as_the_fork_builds_it(switch):
    model, _ = shapes(KD_FLAGS + [switch] + TEACHER_FLAGS[1:])
    t = model.teacher
    assert (t.num_layers, t.hidden_size, t.num_attention_heads) == (3, 128, 8)
    # kept from the student's resolved arguments: kv_channels 64/4 = 16, ffn 4·64 = 256
    assert (t.kv_channels, t.ffn_hidden_size, t.num_query_groups) == (16, 256, 8)
    # per token: Q and output 2·2·128·(8·16), K and V 2·128·2·(8·16), QKᵀ and A·V 2·2·8·s·16,
    # MLP up and down 2·2·128·256; logits 2·128·V
    layer = 2 * 2 * 128 * 128 + 2 * 128 * 2 * 128 + 2 * 2 * 8 * S * 16 + 2 * 2 * 128 * 256
    b = flops_breakdown(model, S, B)
    assert b["teacher_forward"].forward == T * (3 * layer + 2 * 128 * V)


def test_without_kd_the_teacher_flags_change_nothing():
    model, _ = shapes(KD_FLAGS + TEACHER_FLAGS[1:])
    assert model.teacher is None


def test_the_deepspeed_pipeline_model_never_runs_the_teacher():
    # train_step calls the pipeline engine's train_batch: forward_step (and its teacher
    # forward) is never called
    model, _ = shapes(KD_FLAGS + TEACHER_FLAGS + ["--deepspeed"])
    assert model.teacher is None
    model, _ = shapes(KD_FLAGS + TEACHER_FLAGS + ["--deepspeed", "--no-pipeline-parallel"])
    assert model.teacher is not None


@pytest.mark.parametrize("argv, flag", [
    (KD_FLAGS + ["--kd", "--num-layers-teacher", "3"], "--hidden-size-teacher"),
    (KD_FLAGS + TEACHER_FLAGS + ["--num-key-value-heads", "2"], "--kd"),  # the fork asserts
])
def test_what_the_fork_cannot_build_is_refused_naming_the_flag(argv, flag):
    with pytest.raises(ShapeError) as error:
        shapes(argv)
    assert error.value.flag == flag


def estimate(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["estimate", *argv, "--json"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


def test_estimate_keeps_mfu_the_students_and_hfu_what_ran():
    """microsoft examples_deepspeed/compression/ds_pretrain_gpt_125M_dense_kd.sh (f4157bea):
    student 10 layers, teacher 12, both h 768, 12 heads, s 2048, batch 2048, vocab 50257
    padded to 50304, --checkpoint-activations."""
    base = ["--num-layers", "10", "--hidden-size", "768", "--num-attention-heads", "12",
            "--seq-length", "2048", "--max-position-embeddings", "2048",
            "--micro-batch-size", "8", "--global-batch-size", "2048", "--fp16",
            "--checkpoint-activations", "--world-size", "64", "--iteration-time", "10",
            "--gpu", "a100"]
    kd = base + ["--kd", "--num-layers-teacher", "12", "--hidden-size-teacher", "768",
                 "--num-attention-heads-teacher", "12"]
    student, distilled = estimate(base), estimate(kd)
    tokens = 2048 * 2048
    layer = 24 * 768 ** 2 + 4 * 2048 * 768  # 20,447,232 per token
    logits = 2 * 768 * 50304  # 77,266,944 per token
    teacher = tokens * (12 * layer + logits)  # 322,633,728 per token
    assert distilled["flops_per_iteration"]["model"] == student["flops_per_iteration"]["model"] \
        == 3 * tokens * (10 * layer + logits)
    assert distilled["flops_per_iteration"]["hardware"] \
        == student["flops_per_iteration"]["hardware"] + teacher
    assert distilled["throughput"]["mfu"] == student["throughput"]["mfu"]
    assert distilled["throughput"]["hfu"] == pytest.approx(
        student["throughput"]["hfu"] + teacher / (10 * 64 * 312e12))
    (component,) = [c for c in distilled["components"] if c["name"] == "teacher_forward"]
    assert component == {"name": "teacher_forward", "forward": teacher, "backward": 0,
                         "recompute": 0}


def test_random_ltd_is_accepted_with_a_note_saying_full_length():
    """microsoft --random-ltd: which layers drop tokens and how many they keep live in the
    DeepSpeed config and its scheduler (known at run time): estimate counts full length and
    says so, on stderr and in the JSON."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["estimate", *KD_FLAGS, "--random-ltd", "--json"])
    assert code == 0, err.getvalue()
    result = json.loads(out.getvalue())
    (note,) = result["notes"]
    assert note.startswith("--random-ltd: ") and "full --seq-length" in note
    assert f"megatron-flops: note: {note}" in err.getvalue().splitlines()
    assert result["flops_per_iteration"] == estimate(KD_FLAGS)["flops_per_iteration"]


def test_verify_refuses_a_teacher_it_does_not_run():
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["verify", *KD_FLAGS, *TEACHER_FLAGS])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("megatron-flops: error: --kd/--mos: the reference model runs no")
