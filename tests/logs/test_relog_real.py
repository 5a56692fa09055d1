"""relog of logs as real runs leave them: a full console log with its arguments dump read
flag-free, gaps across a batch-size ramp-up, the fork read from the line's own fields,
several files / a folder of one run's logs, a restart that re-shapes the run, the world
size's source and an MFU above 100 % said on the same screen.

The full log is shaped like BigScience's tr8-104B (bigscience-workshop/bigscience,
train/tr8-104B-wide/tr8-104B.slurm at 0738fcd5: 64 layers, hidden 11600, 80 heads, seq 2048,
micro batch 1, global 2048, ``--rampup-batch-size 16 16 6_000_000``, TP 4, PP 32 on 128 nodes
× 4 GPUs = 512, fp16, ``--checkpoint-activations``, ``--embed-layernorm``, GPT-2 vocabulary
50257, ``--log-interval 1``).  Its arguments dump holds these values as the fork's
``validate_args`` leaves them (kv_channels = 11600 / 80 = 145, ffn_hidden_size = 4 · 11600)
among the run's other arguments; the padded vocab line is what Megatron prints for 50257
padded to a multiple of 128 × TP 4 = 512: 99 · 512 = 50688, 431 dummy tokens.
"""

import json

import pytest

from megatron_flops.logs.arguments import DUMP_END, DUMP_START

# the published tr8-104B shape (see the module docstring)
TR8 = dict(num_layers=64, hidden_size=11600, num_attention_heads=80, seq_length=2048,
           micro_batch_size=1, global_batch_size=2048, tp=4, pp=32, world=512, vocab=50688)


def dump_lines(prefix, values):
    lines = [prefix + DUMP_START]
    for name, value in sorted(values.items(), key=lambda item: item[0].lower()):
        lines.append(prefix + "  {} {} {}".format(name, "." * (48 - len(name)), value))
    lines.append(prefix + DUMP_END)
    return lines


def tr8_arguments():
    """The run's arguments as its dump prints them (a real dump has ~200; these are the
    shape's and a sample of the others, FLOP-neutral ones included)."""
    return {
        "adam_beta1": 0.9, "adam_beta2": 0.95, "adam_eps": 1e-08, "apply_query_key_layer_scaling": True,
        "checkpoint_activations": True, "checkpoint_num_layers": 1, "clip_grad": 1.0,
        "consumed_train_samples": 0, "curriculum_learning": False, "data_impl": "mmap",
        "data_parallel_size": 4, "data_path": "['/gpfswork/oscar-en/meg-gpt2_text_document']",
        "deepspeed": True, "deepspeed_activation_checkpointing": True,
        "distributed_backend": "nccl", "embed_layernorm": True, "eval_interval": 1000,
        "eval_iters": 5, "exit_duration_in_mins": 1190, "ffn_hidden_size": 46400, "fp16": True,
        "bf16": False, "glu_activation": None, "global_batch_size": 2048, "hidden_size": 11600,
        "init_method_std": 0.006, "kv_channels": 145, "log_interval": 1, "loss_scale": 12.0,
        "lr": 6e-05, "lr_decay_samples": 126953125, "lr_decay_style": "cosine",
        "lr_warmup_samples": 216320, "make_vocab_size_divisible_by": 128,
        "max_position_embeddings": 2048, "merge_file": "data/gpt2-merges.txt",
        "micro_batch_size": 1, "min_lr": 6e-06, "num_attention_heads": 80, "num_layers": 64,
        "optimizer": "adam", "pad_vocab_size_to": None, "params_dtype": "torch.float16",
        "pipeline_model_parallel_size": 32, "position_embedding_type":
        "PositionEmbeddingType.absolute", "rampup_batch_size": "['16', '16', '6_000_000']",
        "rank": 0, "save_interval": 300, "seed": 43, "seq_length": 2048,
        "skip_train_iteration_range": None, "split": "949,50,1",
        "tensor_model_parallel_size": 4, "tensorboard_dir": "tr8-104B-logs/tensorboard",
        "tokenizer_type": "GPT2BPETokenizer", "train_iters": None, "train_samples": 300000000,
        "vocab_file": "data/gpt2-vocab.json", "weight_decay": 0.1, "world_size": 512,
        "zero_stage": 1,
    }


TR8_FLAGS = ["--num-layers", 64, "--hidden-size", 11600, "--num-attention-heads", 80,
             "--seq-length", 2048, "--max-position-embeddings", 2048, "--micro-batch-size", 1,
             "--rampup-batch-size", 16, 16, "6_000_000", "--global-batch-size", 2048,
             "--train-samples", "300_000_000", "--embed-layernorm", "--fp16",
             "--checkpoint-activations", "--tensor-model-parallel-size", 4,
             "--pipeline-model-parallel-size", 32, "--world-size", 512,
             "--padded-vocab-size", 50688]


def megatron_batch(consumed, start=16, increment=16, ramp=6_000_000, final=2048, per_step=4):
    """Megatron's ramp-up rule (its RampupBatchsizeNumMicroBatches, restated): after
    ``consumed`` samples the batch is start + ⌊consumed / (ramp / n)⌋ · increment with
    n = (final − start) / increment increments, the final one past ``ramp`` samples."""
    if consumed > ramp:
        return final
    steps = (final - start) // increment
    size = min(start + int(consumed / (ramp / steps)) * increment, final)
    return size - size % per_step


def tr8_log(logfmt, first=2935, last=2975, dropped=range(2941, 2960), seconds=(2.5, 4.0)):
    """The console log from iteration ``first`` (resumed: consumed samples from iteration 1)
    to ``last``, one line an iteration (log interval 1) but the ``dropped`` ones; the batch
    ramps 16 → 32 on the way (at 47244.09… samples, iteration 2953); the time per iteration
    grows with the batch.  The printed TFLOPs are the bigscience formula's."""
    s, world = TR8["seq_length"], TR8["world"]
    consumed, lines = 0, dump_lines("[default0]:", tr8_arguments())
    lines.append("[default0]: > padded vocab (size: 50257) with 431 dummy tokens "
                 "(new size: 50688)")
    lines.append("[default0]:> finished creating GPT datasets ...")
    for iteration in range(1, last + 1):
        batch = megatron_batch(consumed)
        consumed += batch
        if iteration < first or iteration in dropped:
            continue
        elapsed = seconds[0] if batch == 16 else seconds[1]
        tflops = logfmt.bigscience_logged_tflops(batch, s, 64, 11600, 50688, elapsed, world,
                                                 checkpoint=True)
        lines.append("[default3]:" + logfmt.bigscience_line(
            iteration, consumed, consumed * s, elapsed, batch, batch / elapsed, tflops,
            train_iters=146484, loss_scale=2048.0))
    return lines


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def without_provenance(text):
    """The table and summary, the provenance block (before the first blank line) left out."""
    return text.split("\n\n", 1)[1]


def test_flag_free_relog_gives_the_same_table_as_all_flags_typed(tmp_path, logfmt, capsys):
    path = write(tmp_path / "main_log.txt", tr8_log(logfmt))
    typed = logfmt.run_cli(capsys, path, *TR8_FLAGS, "--gpu", "v100-sxm")
    free = logfmt.run_cli(capsys, path, "--gpu", "v100-sxm")
    assert typed.code == free.code == 0, (typed.err, free.err)
    assert without_provenance(free.out) == without_provenance(typed.out)
    rows = without_provenance(free.out).splitlines()
    assert rows[0].split()[:2] == ["iteration", "batch"] and len(rows) > 20
    # the provenance block says where the values came from
    assert free.out.startswith("sources: world size 512 (log arguments); TP 4, PP 32, DP 4")
    assert "from the log arguments: num_layers 64, hidden_size 11600" in free.out
    assert "from the log padded vocab line: padded_vocab_size 50688" in free.out
    assert typed.out.startswith("sources: world size 512 (command line); TP 4, PP 32, DP 4")
    # the same in JSON, the summary's sources aside
    typed_json = logfmt.run_cli(capsys, path, *TR8_FLAGS, "--gpu", "v100-sxm", "--json")
    free_json = logfmt.run_cli(capsys, path, "--gpu", "v100-sxm", "--json")
    assert logfmt.json_intervals(free_json) == logfmt.json_intervals(typed_json)
    typed_summary, free_summary = (logfmt.json_summary(typed_json),
                                   logfmt.json_summary(free_json))
    assert free_summary["sources"]["num_layers"] == "log arguments"
    assert free_summary["sources"]["padded_vocab_size"] == "log padded vocab line"
    assert free_summary["sources"]["log_interval"] == "log arguments"
    assert typed_summary["sources"]["num_layers"] == "command line"
    for summary in (typed_summary, free_summary):
        del summary["sources"], summary["segments"], summary["world_size_source"]
    assert free_summary == typed_summary
    # the fork's own formula, with the shapes from the dump, reproduces every logged TFLOPs
    assert free_summary["fork_formula_mismatches"] == 0
    assert free_summary["fork_formula_checked"] == free_summary["intervals"]
    # one gap (iterations 2941–2959 lost); the ramp step at 2953 inside it
    assert free_summary["gaps"] == 1


def test_tr8_batches_across_the_gap_and_the_ramp(tmp_path, logfmt, capsys):
    """Log interval 1: each line's batch is its iteration's own.  Consumed samples over the
    gap 2940 → 2960 (20 iterations, 13 of 16 and 7 of 32 samples) would say 20.8 for
    iteration 2960's time; the line after the gap is all batch 32 (logged, and the schedule)."""
    path = write(tmp_path / "main_log.txt", tr8_log(logfmt))
    intervals = {i["iteration"]: i for i in logfmt.json_intervals(
        logfmt.run_cli(capsys, path, "--json"))}
    assert intervals[2940]["batch_size"] == 16 and intervals[2961]["batch_size"] == 32
    after_gap = intervals[2960]
    assert after_gap["batch_size"] == 32 and after_gap["batch_source"] == "logged batch size"
    assert intervals[2961]["batch_source"] == "consumed samples"
    # hardware TFLOP/s by hand: batch × FLOPs per sample (full recompute) / (t × 512 × 1e12)
    _, hardware = logfmt.hand_flops_per_sample(2048, 64, 11600, 80, 50688, full_recompute=True)
    assert after_gap["tflops_per_gpu"]["hardware"] == pytest.approx(
        32 * hardware / (4.0 * 512 * 1e12), rel=1e-9)


RAMP_DUMP = dict(num_layers=2, hidden_size=256, num_attention_heads=4, seq_length=128,
                 micro_batch_size=1, global_batch_size=48, tensor_model_parallel_size=1,
                 pipeline_model_parallel_size=1, world_size=16, log_interval=2,
                 rampup_batch_size="['16', '16', '96']", padded_vocab_size=1024,
                 deepspeed=True, glu_activation=None)


def ramp_lines(logfmt, logged_iterations, seconds=0.5):
    """Batches by Megatron's ramp rule with start 16, +16, over 96 samples to 48 (two
    increments, one every 48 samples; DP 16, micro 1): worked by hand,

        iteration   1   2   3   4   5    6    7    8    9   10
        batch      16  16  16  32  32   48   48   48   48   48
        consumed   16  32  48  80  112  160  208  256  304  352
    """
    batches = [16, 16, 16, 32, 32, 48, 48, 48, 48, 48]
    consumed, lines = 0, []
    for iteration, batch in enumerate(batches, 1):
        consumed += batch
        if iteration in logged_iterations:
            lines.append(logfmt.bigscience_line(iteration, consumed, consumed * 128, seconds,
                                                batch, batch / seconds, 1.0))
    return lines


def test_after_a_gap_the_ramp_up_schedule_decides(tmp_path, logfmt, capsys):
    """Lines at 2, 6 and 8 (4 lost), log interval 2 (the dump's).  Line 6 times iterations
    5–6: batches 32 and 48, mean 40.  Consumed samples over the gap, (160 − 32) / 4 = 32, are
    the mean of 3–6 (the 222-for-432 mistake of tr8-104B); the logged 48 is the batch at log
    time (the forks' error).  Line 8 is one interval after 6: (256 − 160) / 2 = 48."""
    dumped = "\n".join(f"  {k} {'.' * (48 - len(k))} {v}" for k, v in RAMP_DUMP.items())
    text = f"{DUMP_START}\n{dumped}\n{DUMP_END}\n" + "\n".join(
        ramp_lines(logfmt, (2, 6, 8))) + "\n"
    path = tmp_path / "run.log"
    path.write_text(text)
    result = logfmt.run_cli(capsys, path, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert [(i["iteration"], i["batch_size"], i["batch_source"]) for i in intervals] == [
        (2, 16, "ramp-up schedule"), (6, 40, "ramp-up schedule"), (8, 48, "consumed samples")]
    model, _ = logfmt.hand_flops_per_sample(128, 2, 256, 4, 1024)
    assert intervals[1]["tflops_per_gpu"]["model"] == pytest.approx(
        40 * model / (0.5 * 16 * 1e12), rel=1e-9)
    assert logfmt.json_summary(result)["gaps"] == 1
    assert "no padded vocab line" not in result.err  # the dump has padded_vocab_size
    # the run's --log-interval typed (a pasted command line) overrides the dump's: with 4,
    # line 6 follows line 2 by one interval, and its batch is (160 − 32) / 4 = 32
    typed = logfmt.json_intervals(logfmt.run_cli(capsys, path, "--json", "--log-interval", 4))
    assert (typed[1]["batch_size"], typed[1]["batch_source"]) == (32, "consumed samples")
    # without the schedule in the dump: the line's logged batch
    text = text.replace("['16', '16', '96']", "None")
    path.write_text(text)
    intervals = logfmt.json_intervals(logfmt.run_cli(capsys, path, "--json"))
    assert (intervals[1]["batch_size"], intervals[1]["batch_source"]) == (48,
                                                                          "logged batch size")


def test_the_fork_is_read_from_the_lines_fields_not_its_time_unit(tmp_path, logfmt, capsys):
    """A 2021 bigscience line prints ms and no tgs (tr8-104B chronicles.md, iteration 7000,
    quoted as published): not microsoft.  Its dump (embed_layernorm: only the bigscience
    fork has it) names the fork; without a dump it is unknown."""
    line = (" iteration     7000/  159576 | consumed samples:       260912 | elapsed time per "
            "iteration (ms): 18706.1 | learning rate: 6.000E-05 | global batch size:    96 | lm "
            "loss: 6.444662E+00 | loss scale: 2048.0 | grad norm: 98258.265 | num zeros: 0.0 "
            "| number of skipped iterations:   0 | number of nan iterations:   0 |")
    flags = ["--num-layers", 32, "--hidden-size", 16384, "--num-attention-heads", 128,
             "--seq-length", 2048, "--world-size", 256, "--json"]
    path = write(tmp_path / "old.log", [line])
    (interval,) = logfmt.json_intervals(logfmt.run_cli(capsys, path, *flags))
    assert interval["fork"] is None and interval["seconds_per_iteration"] == 18.7061
    path = write(tmp_path / "old.log", dump_lines("", {"deepspeed": True,
                                                        "embed_layernorm": False}) + [line])
    result = logfmt.run_cli(capsys, path, *flags)
    (interval,) = logfmt.json_intervals(result)
    assert interval["fork"] == "bigscience"
    # the vocabulary is neither in this log nor typed: the assumption is said
    assert "no padded vocab line in the log" in result.err and "50304" in result.err
    microsoft = logfmt.microsoft_line(10, 640, 640 * 1024, 2.0, 64, 32.0, 50.0,
                                      actual_seqlen=1024, world_size=256)
    path = write(tmp_path / "new.log", [microsoft])
    (interval,) = logfmt.json_intervals(logfmt.run_cli(capsys, path, *flags))
    assert interval["fork"] == "microsoft"


def segment_log(logfmt, iterations, world, tp, batch=64, seconds=2.0, first_consumed=0):
    values = dict(RAMP_DUMP, world_size=world, tensor_model_parallel_size=tp,
                  global_batch_size=batch, rampup_batch_size=None, log_interval=10)
    lines = dump_lines("0: ", values)
    consumed = first_consumed
    for iteration in iterations:
        consumed += 10 * batch
        lines.append("0: " + logfmt.bigscience_line(iteration, consumed, consumed * 128, seconds,
                                                    batch, batch / seconds, 1.0))
    return lines, consumed


def test_a_folder_of_one_runs_logs_with_a_re_shaped_restart(tmp_path, logfmt, capsys):
    """Two files of one run, named against their order (b.log holds iterations 10–30 on 16
    GPUs, a.log the restart at 40–60 on 32 GPUs with TP 2): read in iteration order, each
    segment with its own run shape from its own arguments dump."""
    first, consumed = segment_log(logfmt, (10, 20, 30), world=16, tp=1)
    second, _ = segment_log(logfmt, (40, 50, 60), world=32, tp=2, first_consumed=consumed)
    folder = tmp_path / "logs"
    folder.mkdir()
    write(folder / "b.log", first)
    write(folder / "a.log", second)
    (folder / "notes.md").write_text("not a log\n")
    model, _ = logfmt.hand_flops_per_sample(128, 2, 256, 4, 1024)
    for paths in ([folder], [folder / "a.log", folder / "b.log"]):
        result = logfmt.run_cli(capsys, *paths, "--json")
        assert result.code == 0, result.err
        intervals = logfmt.json_intervals(result)
        assert [i["iteration"] for i in intervals] == [10, 20, 30, 40, 50, 60]
        for interval in intervals:
            world = 16 if interval["iteration"] <= 30 else 32
            assert interval["tflops_per_gpu"]["model"] == pytest.approx(
                64 * model / (2.0 * world * 1e12), rel=1e-9)
        # the first line of the restart has no previous line in its segment
        assert intervals[3]["batch_source"] == "logged batch size"
        summary = logfmt.json_summary(result)
        assert [(s["first_iteration"], s["world_size"], s["tensor_model_parallel_size"])
                for s in summary["segments"]] == [(10, 16, 1), (40, 32, 2)]
        # overall: all FLOPs over all GPU-seconds, each segment with its own world size
        assert summary["overall_tflops_per_gpu"]["model"] == pytest.approx(
            6 * 10 * 64 * model / ((3 * 10 * 2.0 * 16 + 3 * 10 * 2.0 * 32) * 1e12), rel=1e-9)
    table = logfmt.run_cli(capsys, folder).out
    assert "from iteration 40 (a new arguments dump): world size 32 (log arguments); TP 2" in table
    assert "2 run shapes (arguments dumps)" in table


def test_an_assumed_world_size_and_an_impossible_mfu_are_said_with_the_result(
        tmp_path, logfmt, capsys, monkeypatch):
    """No --world-size, no dump, no WORLD_SIZE: TP × PP = 1 GPU is assumed — said in the
    summary and, with MFU above 100 %, named first among the likely causes."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    line = logfmt.bigscience_line(10, 640, 640 * 128, 0.5, 64, 128.0, 1.0)
    path = write(tmp_path / "run.log", [line])
    flags = ["--num-layers", 24, "--hidden-size", 2048, "--num-attention-heads", 16,
             "--seq-length", 2048]
    result = logfmt.run_cli(capsys, path, *flags, "--peak-tflops", 1)
    assert result.code == 0
    assert "world size 1, assumed (tensor × pipeline parallel size, one replica))" in result.out
    (warning,) = [l for l in result.out.splitlines() if "above 100%" in l]
    assert warning.startswith("warning: ")
    # the likely causes, the assumed world size first, then the fp32 peak, then the peak
    assert "likely: the world size was assumed, not read (give --world-size); the peak is " \
           "the fp32 one" in warning
    assert "given (1 TFLOP/s)" in warning
    # from the launcher's environment: said so, no warning about the world size
    monkeypatch.setenv("WORLD_SIZE", "4096")
    result = logfmt.run_cli(capsys, path, *flags, "--json")
    assert "world size 4096 from the launcher environment (WORLD_SIZE)" in result.err
    summary = logfmt.json_summary(result)
    assert summary["world_size"] == 4096 and summary["warnings"] == []
    assert summary["world_size_source"] == "launcher environment (WORLD_SIZE)"


def test_old_and_new_hook_fields_are_read(tmp_path, logfmt, capsys):
    """Lines the hook edited, before issue 10 (``MFU: 45.2%``, ``MFU: n/a``) and after
    (``MFU (%): 45.2``, left out without a peak)."""
    from megatron_flops.logs.console import parse_line
    base = logfmt.bigscience_line(10, 640, 640 * 128, 0.5, 64, 128.0, 1.0)
    old = parse_line(base + " model TFLOP/s per gpu: 12.50 | hardware TFLOP/s per gpu: 13.75 |"
                            " MFU: 45.2% | HFU: n/a |")
    new = parse_line(base + " model TFLOP/s per gpu: 12.50 | hardware TFLOP/s per gpu: 13.75 |"
                            " MFU (%): 45.2 |")
    for record in (old, new):
        assert record.hook_model_tflops == 12.5 and record.hook_hardware_tflops == 13.75
        assert record.hook_mfu == pytest.approx(0.452) and record.hook_hfu is None
        assert record.fork == "bigscience"


def test_without_flags_or_dump_the_missing_flag_is_named(tmp_path, logfmt, capsys):
    path = write(tmp_path / "run.log", [logfmt.bigscience_line(10, 640, 640 * 128, 0.5, 64,
                                                               128.0, 1.0)])
    result = logfmt.run_cli(capsys, path)
    assert result.code == 2 and result.out == ""
    (line,) = result.err.splitlines()
    assert line == ("megatron-flops: error: --num-layers is required (the log has no "
                    "arguments dump to read it from)")


def test_a_pasted_command_lines_script_is_not_a_log(tmp_path, logfmt, capsys):
    path = write(tmp_path / "run.log", [logfmt.bigscience_line(10, 640, 640 * 128, 0.5, 64,
                                                               128.0, 1.0)])
    flags = ["--num-layers", 2, "--hidden-size", 64, "--num-attention-heads", 4,
             "--seq-length", 128, "--world-size", 8]
    result = logfmt.run_cli(capsys, path, "pretrain_gpt.py", *flags)
    assert result.code == 0 and "ignoring arguments: pretrain_gpt.py" in result.err
    result = logfmt.run_cli(capsys, "pretrain_gpt.py", *flags)
    assert result.code == 2 and "PATH is required" in result.err


def test_an_unsupported_feature_in_the_dump_is_refused(tmp_path, logfmt, capsys):
    """The run used the microsoft fork's switch MLP (--num-experts-switch: not counted yet):
    refused like the typed flag, one line naming it; the argument at None is fine."""
    values = dict(RAMP_DUMP, rampup_batch_size=None, num_experts_switch=8)
    lines = dump_lines("", values) + ramp_lines(logfmt, (2, 4))
    result = logfmt.run_cli(capsys, write(tmp_path / "switch.log", lines))
    assert result.code == 2 and result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith("megatron-flops: error: not supported yet: --num-experts-switch "
                           "(the log's arguments: 8)")
    values["num_experts_switch"] = None
    lines = dump_lines("", values) + ramp_lines(logfmt, (2, 4))
    assert logfmt.run_cli(capsys, write(tmp_path / "switch.log", lines)).code == 0


def test_a_distillation_run_counts_its_teacher_in_hardware_only(tmp_path, logfmt, capsys):
    """A microsoft --kd run without the pipeline model: its dump names the teacher (one layer
    of the student's shape here); each interval's hardware TFLOP/s adds the teacher's forward
    (1 layer + logits = a 1-layer model's model FLOPs / 3), model TFLOP/s stay the student's."""
    values = dict(RAMP_DUMP, rampup_batch_size=None, kd=True, no_pipeline_parallel=True,
                  num_layers_teacher=1, hidden_size_teacher=256, num_attention_heads_teacher=4,
                  num_experts_teacher=[1])
    lines = dump_lines("", values) + ramp_lines(logfmt, (8, 10))
    result = logfmt.run_cli(capsys, write(tmp_path / "kd.log", lines), "--json")
    assert result.code == 0, result.err
    last = logfmt.json_intervals(result)[-1]
    model, _ = logfmt.hand_flops_per_sample(128, 2, 256, 4, 1024)
    teacher = logfmt.hand_flops_per_sample(128, 1, 256, 4, 1024)[0] // 3
    per_gpu = last["batch_size"] / (0.5 * 16 * 1e12)
    assert last["tflops_per_gpu"]["model"] == pytest.approx(model * per_gpu, rel=1e-9)
    assert last["tflops_per_gpu"]["hardware"] == pytest.approx((model + teacher) * per_gpu,
                                                               rel=1e-9)
