"""Typed flags override a real dump's without dragging its derived flags along (issue 24):
every real dump prints ``encoder_seq_length`` beside ``seq_length``, and ``ffn_hidden_size`` /
``kv_channels`` as ``validate_args`` derived them from the dump's own hidden size."""

import argparse
import os

from megatron_flops.commands import main
from megatron_flops.logs.arguments import merge_flags

LOG = os.path.join(os.path.dirname(__file__), os.pardir, "data", "logs",
                   "experiments__gpt2-meg-ds-3d__meg_ds_3d_gpt2_perf_n16-ds-off.out")


def test_typing_seq_length_over_a_real_dump_is_not_refused_by_its_encoder_seq_length(capsys):
    # the dump: seq_length 1024 and encoder_seq_length 1024
    assert main(["relog", LOG, "--seq-length", "2048", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "contradicts" not in err and "--encoder-seq-length" not in err
    assert '"seq_length": 2048' in out


def dump():
    return {"hidden_size": "8192", "num_attention_heads": "32", "ffn_hidden_size": "32768",
            "kv_channels": "256", "seq_length": "1024", "encoder_seq_length": "1024",
            "micro_batch_size": "4", "data_parallel_size": "1", "global_batch_size": "1024"}


def test_values_the_framework_derived_from_a_typed_flag_are_derived_again():
    flags = argparse.Namespace(hidden_size=4096, seq_length=None)
    merged, sources = merge_flags(flags, {"hidden_size"}, dump())
    # 32768 = 4 × 8192 and 256 = 8192 / 32 were derived: dropped, the reader derives 4 × 4096
    assert getattr(merged, "ffn_hidden_size", None) is None
    assert getattr(merged, "kv_channels", None) is None
    assert sources["ffn_hidden_size"] == "default" and sources["kv_channels"] == "default"
    assert merged.seq_length == 1024 and merged.encoder_seq_length == 1024


def test_a_dump_value_that_was_given_not_derived_stays():
    given = dict(dump(), ffn_hidden_size="28672")       # not 4h: the run gave it
    merged, _ = merge_flags(argparse.Namespace(hidden_size=4096), {"hidden_size"}, given)
    assert merged.ffn_hidden_size == 28672
    merged, _ = merge_flags(argparse.Namespace(seq_length=2048), {"seq_length"}, dump())
    assert merged.seq_length == 2048 and getattr(merged, "encoder_seq_length", None) is None


# ---- a dump read in its framework's dialect (issue 18.1) ---------------------------------
def write_dump(tmp_path, values):
    from megatron_flops.logs.arguments import DUMP_END, DUMP_START
    lines = [DUMP_START]
    for name, value in sorted(values.items(), key=lambda item: item[0].lower()):
        lines.append("  {} {} {}".format(name, "." * (48 - len(name)), value))
    path = tmp_path / "run.log"
    path.write_text("\n".join(lines + [DUMP_END, ""]))
    return str(path)


SHAPE = {"num_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 32,
         "micro_batch_size": 1, "global_batch_size": 8, "world_size": 8,
         "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
         "padded_vocab_size": 1024, "num_experts": 4}


def test_a_megatron_lm_dump_before_moe_layer_freq_is_every_layer_moe(tmp_path):
    from megatron_flops.logs.segments import segment_from_log
    # Megatron-LM 2024 (moe_router_topk, no moe_layer_freq yet): every layer was MoE
    path = write_dump(tmp_path, dict(SHAPE, moe_router_topk=2, log_throughput=True))
    segment = segment_from_log(argparse.Namespace(), set(), path)
    assert segment.model.moe_layer_pattern == (1, 1, 1, 1)
    said = {a["what"]: a for a in segment.as_dict()["assumptions"]}
    assert said["dialect"]["value"] == "megatron-lm" and said["dialect"]["kind"] == "inferred"
    assert said["MoE layers"]["value"] == "every layer"
    # the microsoft fork's dump carries its expert_interval
    path = write_dump(tmp_path, dict(SHAPE, num_experts=[4], expert_interval=2, topk=1,
                                     deepspeed=True, swiglu=False))
    segment = segment_from_log(argparse.Namespace(), set(), path)
    assert segment.model.moe_layer_pattern == (0, 1, 0, 1)
