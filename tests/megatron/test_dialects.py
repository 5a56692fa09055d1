"""A pasted command read in its framework's dialect, its vocabulary from the tokenizer it names,
its world size from its launcher, and everything not given in one provenance record (issue 18
items 1, 2 and 4; issue 24: launch lines)."""

import json
import os
import struct

import pytest

from megatron_flops.commands import main
from megatron_flops.megatron import dialects
from megatron_flops.megatron.resolve import ASSUMED, resolve_command
from megatron_flops.megatron.vocab import huggingface_vocab_size, sentencepiece_piece_count

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data", "megatron_lm")
SMALL = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
         "--seq-length", "32", "--micro-batch-size", "1", "--vocab-size", "1000"]
B, S, H, F = 1, 32, 64, 256   # micro batch 1, one replica; ffn 4h


def estimate(argv, capsys, env=None):
    code = main(["estimate", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def component(result, name):
    return {c["name"]: c for c in result["components"]}[name]["forward"]


def assumed(result):
    """The assumed entries but the world size (these small runs give none)."""
    return [a for a in result["assumptions"] if a["kind"] == ASSUMED and a["what"] != "world size"]


# ---- the must-show: Mixtral 8x7B's example script, verbatim ------------------------------
def mixtral_argv():
    with open(os.path.join(DATA, "mixtral_8x7b_distributed.json")) as stream:
        return json.load(stream)["argv"]


def mixtral_parameters_by_hand():
    h, layers, f, experts, vocab, query_groups, head = 4096, 32, 14336, 8, 32000, 8, 128
    attention = 2 * h * h + 2 * h * query_groups * head      # Q and O; K and V (GQA), no bias
    moe = experts * 3 * h * f + h * experts                  # SwiGLU experts + router
    norms = 2 * h                                            # RMSNorm: one weight each
    return layers * (attention + moe + norms) + 2 * vocab * h + h  # untied + final norm


def test_mixtral_example_script_pasted_verbatim_is_46_7b_with_the_vocabulary_named(capsys):
    code, result, err = estimate(mixtral_argv(), capsys)
    assert code == 0, err
    assert result["parameters"] == mixtral_parameters_by_hand() == 46_702_792_704
    assert round(result["parameters"] / 1e9, 1) == 46.7   # Mistral AI: "46.7B total parameters"
    assert result["dialect"]["name"] == "megatron-lm"
    vocab = [a for a in assumed(result) if a["what"] == "vocabulary"]
    assert len(vocab) == 1 and vocab[0]["value"] == 32000 and vocab[0]["flag"] == "--vocab-size"
    assert "Llama2Tokenizer" in vocab[0]["source"] and "tokenizer.model" in vocab[0]["source"]
    assert "warning: vocabulary 32000 ASSUMED" in err and "give --vocab-size" in err
    # the launcher's words are read, not warned about: torchrun --nproc_per_node 8 --nnodes 1
    assert result["world_size"] == 8 and "launch line" in result["world_size_source"]
    assert "unknown flag" not in err and "--nproc_per_node" not in err
    # Megatron-LM's --moe-layer-freq default: all 32 layers MoE, top-2 as given
    moe_layers = component(result, "expert_up") / (2 * 256 * 4096 * 4096 * 14336 * 2)
    assert moe_layers == 32


def test_mixtral_with_its_vocab_size_given_leaves_no_assumption(capsys):
    code, result, err = estimate(mixtral_argv() + ["--vocab-size", "32000"], capsys)
    assert code == 0, err
    assert assumed(result) == [] and "ASSUMED" not in err
    assert result["parameters"] == mixtral_parameters_by_hand()
    kinds = {a["what"]: a["kind"] for a in result["assumptions"]}
    assert kinds == {"dialect": "inferred", "MoE layers": "inferred", "world size": "inferred"}


# ---- dialects: the defaults that differ ---------------------------------------------------
def expert_layers(result, topk):
    return component(result, "expert_up") // (2 * B * S * H * F * topk)


def test_megatron_lm_moe_is_every_layer_top2_the_microsoft_fork_every_other_top1(capsys):
    moe = ["--num-experts", "4"]
    code, mlm, err = estimate(SMALL + moe + ["--use-mcore-models"], capsys)
    assert code == 0, err
    assert mlm["dialect"]["name"] == "megatron-lm" and expert_layers(mlm, 2) == 4
    code, ms, err = estimate(SMALL + moe + ["--deepspeed"], capsys)
    assert code == 0, err
    assert ms["dialect"]["name"] == "microsoft" and expert_layers(ms, 1) == 2
    # the Megatron-LM convention reads the dialect's layers: as with --moe-layer-freq 1 typed
    code, typed, _ = estimate(SMALL + moe + ["--moe-layer-freq", "1", "--moe-router-topk", "2",
                                             "--deepspeed"], capsys)
    assert code == 0
    for name, convention in mlm["conventions"].items():
        if name.startswith("megatron-lm"):
            assert convention["flops_per_iteration"] == \
                typed["conventions"][name]["flops_per_iteration"], name
    # (the 2023-11 era formula has no MoE term; today's counts the MoE layers)
    assert mlm["conventions"]["megatron-lm"]["flops_per_iteration"] != \
        ms["conventions"]["megatron-lm"]["flops_per_iteration"]


def test_ambiguous_evidence_with_a_default_that_matters_is_said_and_refused_by_strict(capsys):
    code, result, err = estimate(SMALL + ["--num-experts", "4"], capsys)
    assert code == 0
    dialect = result["assumptions"][0]
    assert dialect["what"] == "dialect" and dialect["kind"] == ASSUMED
    assert dialect["flag"] == "--framework NAME"
    assert "warning: dialect megatron-lm ASSUMED" in err and "which layers are MoE" in err
    code, _, err = estimate(SMALL + ["--num-experts", "4", "--strict"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--framework" in err
    code, result, err = estimate(SMALL + ["--num-experts", "4", "--framework", "microsoft"],
                                 capsys)
    assert code == 0 and "ASSUMED" not in err and expert_layers(result, 1) == 2
    # a dense model: the dialects agree, nothing to say
    code, result, err = estimate(SMALL, capsys)
    assert code == 0 and "ASSUMED" not in err and result["assumptions"][0]["kind"] == "inferred"


def test_the_removed_checkpoint_activations_is_refused_in_megatron_lm_only(capsys):
    code, _, err = estimate(SMALL + ["--use-mcore-models", "--checkpoint-activations"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--checkpoint-activations was removed from Megatron-LM" in err
    assert "--recompute-activations" in err
    code, result, err = estimate(SMALL + ["--deepspeed", "--checkpoint-activations"], capsys)
    assert code == 0 and str(result["recompute"]).startswith("full")
    # evidence for a fork: Megatron-LM exits on it
    code, result, _ = estimate(SMALL + ["--checkpoint-activations"], capsys)
    assert code == 0 and result["dialect"]["name"] != "megatron-lm"


@pytest.mark.parametrize("argv, expected", [
    (["--use-mcore-models"], "megatron-lm"),
    (["--moe-router-topk", "2", "--num-experts", "4"], "megatron-lm"),
    (["--glu-activation", "swiglu"], "bigscience"),
    (["--num-key-value-heads", "4"], "microsoft"),
    (["--deepspeed"], "microsoft"),
    (["--framework", "bigscience"], "bigscience"),
    (["--num-experts", "2", "4"], "microsoft"),          # one number per MoE layer
])
def test_the_dialect_is_inferred_from_the_flags(argv, expected, capsys):
    code, result, err = estimate(SMALL + argv, capsys)
    assert code == 0, err
    assert result["dialect"]["name"] == expected


def test_the_script_path_says_the_framework():
    choice = dialects.infer_dialect([], ["/opt/Megatron-LM/pretrain_gpt.py"])
    assert choice.name == "megatron-lm" and not choice.ambiguous
    choice = dialects.infer_dialect([], ["/src/bigscience/Megatron-DeepSpeed/pretrain_gpt.py"])
    assert choice.name == "bigscience"


def test_framework_must_be_a_known_name(capsys):
    code, _, err = estimate(SMALL + ["--framework", "nemo"], capsys)
    assert code == 2 and "--framework must be one of" in err


def test_the_table_of_differing_defaults_names_its_sources():
    table = {d.dest: d for d in dialects.DIFFERING_DEFAULTS}
    assert table["moe_layers"].values["megatron-lm"][0].startswith("every layer")
    assert table["moe_layers"].values["microsoft"][0].startswith("every 2nd")
    assert table["topk"].values["megatron-lm"][0] == 2 and table["topk"].values["microsoft"][0] == 1
    for difference in table.values():
        for value, source in difference.values.values():
            assert "@" in source and len(source.split("@")[1].split()[0]) == 40


# ---- the vocabulary from the tokenizer named --------------------------------------------
def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def sentencepiece_model(pieces):
    """A ModelProto: pieces (field 1: piece, score, type), trainer/normalizer specs."""
    body = field(2, field(1, b"input.txt") + varint(3 << 3) + varint(len(pieces)))
    for text in pieces:
        piece = field(1, text.encode()) + varint(2 << 3 | 5) + struct.pack("<f", -1.5) + \
            varint(3 << 3) + varint(1)
        body += field(1, piece)
    return body + field(3, field(1, b"nmt_nfkc"))


def test_a_sentencepiece_model_is_counted_by_its_pieces(tmp_path, capsys):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(sentencepiece_model([f"p{i}" for i in range(300)]))
    assert sentencepiece_piece_count(str(path)) == 300
    code, result, err = estimate(SMALL[:-2] + ["--tokenizer-type", "Llama2Tokenizer",
                                               "--tokenizer-model", str(path)], capsys)
    assert code == 0, err
    assert component(result, "logits") == 2 * B * S * H * 384   # 300 padded to 128 × 3
    vocab = [a for a in result["assumptions"] if a["what"] == "vocabulary"]
    assert vocab[0]["kind"] == "inferred" and vocab[0]["value"] == 300


def test_a_hugging_face_tokenizer_json_counts_added_tokens_once(tmp_path, capsys):
    data = {"model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(500)}},
            "added_tokens": [{"id": 499, "content": "t499"},       # already in the vocabulary
                             {"id": 500, "content": "<|a|>"}, {"id": 501, "content": "<|b|>"}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    assert huggingface_vocab_size(str(path)) == 502
    code, result, err = estimate(SMALL[:-2] + ["--tokenizer-type", "HuggingFaceTokenizer",
                                               "--tokenizer-model", str(tmp_path)], capsys)
    assert code == 0, err
    assert component(result, "logits") == 2 * B * S * H * 512
    assert assumed(result) == []


def test_a_gpt2_vocab_file_is_read_and_gpt2_size_is_only_for_gpt2(tmp_path, capsys):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({f"t{i}": i for i in range(700)}))
    code, result, err = estimate(SMALL[:-2] + ["--tokenizer-type", "GPT2BPETokenizer",
                                               "--vocab-file", str(path)], capsys)
    assert code == 0 and component(result, "logits") == 2 * B * S * H * 768
    # GPT2BPETokenizer with its vocab file elsewhere: GPT-2's own 50,257, inferred
    code, result, err = estimate(SMALL[:-2] + ["--tokenizer-type", "GPT2BPETokenizer",
                                               "--vocab-file", "/nowhere/gpt2-vocab.json"], capsys)
    assert code == 0 and component(result, "logits") == 2 * B * S * H * 50304
    assert assumed(result) == []
    # a Hugging Face tokenizer that is not here: assumed, said, refused by --strict
    code, result, err = estimate(SMALL[:-2] + ["--tokenizer-type", "HuggingFaceTokenizer",
                                               "--tokenizer-model", "org/model"], capsys)
    assert code == 0 and "vocabulary 50257 ASSUMED" in err and "--vocab-size" in err
    code, _, err = estimate(SMALL[:-2] + ["--tokenizer-type", "HuggingFaceTokenizer",
                                          "--tokenizer-model", "org/model", "--strict"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--vocab-size" in err


def test_tiktoken_and_null_tokenizers_follow_the_framework(capsys):
    code, result, _ = estimate(SMALL[:-2] + ["--tokenizer-type", "TikTokenizer"], capsys)
    assert code == 0 and component(result, "logits") == 2 * B * S * H * 2 ** 17
    # NullTokenizer: today's Megatron-LM uses --vocab-size as is; the microsoft fork adds eod
    null = SMALL[:-2] + ["--tokenizer-type", "NullTokenizer", "--vocab-size", "1024"]
    code, mlm, err = estimate(null + ["--use-mcore-models"], capsys)
    assert code == 0 and component(mlm, "logits") == 2 * B * S * H * 1024
    # 1024 vs 1025 pad differently (1024 vs 1152): the era is said as an assumption
    era = [a for a in assumed(mlm) if a["what"] == "vocabulary"]
    assert era and era[0]["flag"] == "--padded-vocab-size" and "1152" in era[0]["source"]
    code, ms, _ = estimate(null + ["--deepspeed"], capsys)
    assert code == 0 and component(ms, "logits") == 2 * B * S * H * 1152
    code, _, err = estimate(SMALL[:-2] + ["--tokenizer-type", "NullTokenizer"], capsys)
    assert code == 0 and "NullTokenizer needs --vocab-size" in err


def test_no_tokenizer_at_all_is_an_assumption_in_json(capsys):
    code, result, err = estimate(SMALL[:-2], capsys)
    assert code == 0
    vocab = [a for a in assumed(result) if a["what"] == "vocabulary"]
    assert vocab and vocab[0]["value"] == 50257 and vocab[0]["flag"] == "--vocab-size"
    code, _, err = estimate(SMALL[:-2] + ["--strict"], capsys)
    assert code == 2 and "--vocab-size" in err


# ---- the world size: flag, launch line, environment, assumed -----------------------------
@pytest.mark.parametrize("launcher, world", [
    (["torchrun", "--nproc_per_node", "8", "--nnodes", "4"], 32),
    (["torchrun", "--nproc-per-node=8", "--nnodes=2:4"], 32),
    (["python", "-m", "torch.distributed.run", "--nproc_per_node", "4"], 4),
    (["CUDA_DEVICE_MAX_CONNECTIONS=1", "python3", "-u", "-m", "torch.distributed.launch",
      "--nproc_per_node=2", "--nnodes=3"], 6),
    (["deepspeed", "--num_gpus", "8", "--num_nodes", "2"], 16),
    (["srun", "--nodes", "2", "--ntasks-per-node", "8", "python"], 16),
    (["srun", "-n", "64", "python"], 64),
])
def test_a_launch_line_gives_the_world_size_said_as_its_source(launcher, world, capsys,
                                                               monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    code, result, err = estimate(launcher + ["pretrain_gpt.py"] + SMALL, capsys)
    assert code == 0, err
    assert result["world_size"] == world
    entry = [a for a in result["assumptions"] if a["what"] == "world size"]
    assert entry[0]["kind"] == "inferred" and "launch line" in entry[0]["source"]
    assert "unknown flag" not in err and "ignoring arguments" not in err


def test_the_environment_gives_the_world_size_and_an_assumed_one_is_in_json(capsys,
                                                                             monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "24")
    code, result, _ = estimate(SMALL, capsys)
    assert result["world_size"] == 24
    assert result["world_size_source"] == "SLURM_NTASKS in the environment"
    monkeypatch.delenv("SLURM_NTASKS")
    code, result, _ = estimate(SMALL + ["--tensor-model-parallel-size", "2"], capsys)
    entry = [a for a in result["assumptions"] if a["what"] == "world size"]
    assert entry == [{"what": "world size", "value": 2, "kind": ASSUMED,
                      "source": "TP × PP, one data-parallel replica",
                      "flag": entry[0]["flag"]}] and "--world-size" in entry[0]["flag"]


def test_the_reader_returns_values_and_writes_nothing_on_the_namespace():
    ns, resolved, report, unknown = resolve_command(SMALL + ["--num-experts", "4"])
    assert not [name for name in vars(ns) if name.startswith("_")]
    assert ns.moe_layer_freq is None and ns.topk is None   # the defaults went to a copy
    assert resolved.model.moe_layer_freq == 1 and resolved.model.moe_topk == 2


def test_one_list_of_unsupported_features_read_on_a_runs_args_and_a_dump_alike():
    import argparse
    from megatron_flops.megatron.args import refuse_unsupported, unsupported_features
    from megatron_flops.shapes import ShapeError
    # what Megatron-LM sets on every run (encoder_num_layers = num_layers) is no feature
    ns = argparse.Namespace(num_layers=2, encoder_num_layers=2, decoder_num_layers=None,
                            hybrid_override_pattern=None, is_hybrid_model=False,
                            dsa_indexer_topk=None, vision_pretraining=False)
    assert unsupported_features(vars(ns)) == []
    refuse_unsupported(ns)
    ns.dsa_indexer_topk = 2048
    assert [flag for flag, _, _ in unsupported_features(vars(ns))] == ["--dsa-indexer-topk"]
    ns.dsa_indexer_topk, ns.vision_pretraining = None, True   # a switch of the microsoft fork
    with pytest.raises(ShapeError, match="--vision-pretraining"):
        refuse_unsupported(ns)
