"""The drop-in ``throughput_calculator``: the microsoft fork's signature and tuple, exact
hardware TFLOP/s (recompute as configured), analytic parameters, shapes cached per args."""

import argparse
import inspect
import sys
import types

import pytest

from megatron_flops.megatron import calculator

L, H, N, S, V, P = 4, 128, 8, 64, 2048, 64


def ms_args(**overrides):
    """A namespace as the microsoft fork's validate_args leaves it (the fields read)."""
    values = dict(num_layers=L, hidden_size=H, num_attention_heads=N, kv_channels=H // N,
                  num_key_value_heads=N, ffn_hidden_size=4 * H, seq_length=S,
                  max_position_embeddings=P, padded_vocab_size=V, micro_batch_size=2,
                  global_batch_size=8, data_parallel_size=2, world_size=2,
                  tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                  rampup_batch_size=None, swiglu=False, num_experts=[1], topk=1,
                  expert_interval=2, recompute_granularity=None, recompute_method=None,
                  recompute_num_layers=1, checkpoint_activations=False, bf16=True, fp16=False,
                  normalization="layernorm", add_bias_linear=True,
                  untie_embeddings_and_output_weights=False, add_position_embedding=True,
                  use_rotary_position_embeddings=False)
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.fixture(autouse=True)
def fork_microbatches(monkeypatch):
    """The calculator asks the fork for get_num_microbatches() when counting at log time."""
    monkeypatch.setitem(sys.modules, "megatron", types.SimpleNamespace(get_num_microbatches=lambda: 2))
    calculator.forget()
    yield
    calculator.forget()


def layer_forward(s=S, h=H, n=N):
    # Q, K, V and output projections 4·2·s·h², QKᵀ and A·V 2·2·s²·h, MLP 2·2·s·h·4h
    return 8 * s * h * h + 4 * s * s * h + 16 * s * h * h


def logits_forward(s=S, h=H):
    return 2 * s * h * V


def test_signature_is_the_forks():
    names = tuple(inspect.signature(calculator.throughput_calculator).parameters)
    assert names == ("model", "args", "iteration_time", "total_iterations")


def test_values_at_log_time_without_the_hook():
    # no iteration observed: 3 iterations × micro 2 × DP 2 × 2 microbatches = 24 samples
    samples_per_second, tflops, params = calculator.throughput_calculator(None, ms_args(), 1.5, 3)
    assert samples_per_second == pytest.approx(24 / 1.5)
    flops = 24 * 3 * (L * layer_forward() + logits_forward())
    assert tflops == pytest.approx(flops / (1.5 * 2 * 1e12))
    # tied embedding V·h, learned positions P·h, per layer 12h² + 13h, final LayerNorm 2h
    assert params == pytest.approx((V * H + P * H + L * (12 * H * H + 13 * H) + 2 * H) / 1e9)


@pytest.mark.parametrize("overrides, extra_forward", [
    ({"recompute_granularity": "full", "recompute_method": "uniform"}, L * layer_forward()),
    ({"checkpoint_activations": True}, L * layer_forward()),
    ({"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 1},
     layer_forward()),
    ({"recompute_granularity": "selective"}, L * 4 * S * S * H),
])
def test_recompute_counted_as_configured(overrides, extra_forward):
    _, tflops, _ = calculator.throughput_calculator(None, ms_args(**overrides), 1.0, 1)
    flops = 8 * (3 * (L * layer_forward() + logits_forward()) + extra_forward)
    assert tflops == pytest.approx(flops / (2 * 1e12))


def test_a_distillation_teacher_is_in_the_hardware_count():
    """microsoft --kd: the teacher (3 layers of the student's shape, --num-layers-teacher 3)
    runs forward only, every training micro-batch: 8 samples × (3 layers + logits) more."""
    teacher = dict(kd=True, num_layers_teacher=3, hidden_size_teacher=H,
                   num_attention_heads_teacher=N, num_experts_teacher=[1])
    _, tflops, _ = calculator.throughput_calculator(None, ms_args(**teacher), 1.0, 1)
    flops = 8 * (3 * (L * layer_forward() + logits_forward()) + 3 * layer_forward()
                 + logits_forward())
    assert tflops == pytest.approx(flops / (2 * 1e12))


def ltd_args(**overrides):
    """microsoft --random-ltd as training.py leaves args after an iteration: 2 of the L layers
    on a reserved S/2 tokens, actual_seq_length the fork's layer average."""
    reserved, layers = S // 2, 2
    return ms_args(random_ltd=True, random_ltd_reserved_length=reserved,
                   random_ltd_layer_num=layers, curriculum_learning_legacy=False,
                   data_efficiency_curriculum_learning=False,
                   actual_seq_length=(S * (L - layers) + reserved * layers) // L, **overrides)


@pytest.mark.parametrize("overrides, passes", [({}, 3), ({"checkpoint_activations": True}, 4)])
def test_random_ltd_layers_are_counted_at_the_reserved_length(overrides, passes):
    """The 2 dropping layers at S/2 tokens (attention among them: (S/2)²), the other L - 2
    layers and the logits at all S; full recompute re-runs the layers at their own lengths."""
    args = ltd_args(**overrides)
    accounting = calculator.accounting_for(args)
    accounting.observe_iteration(8, args.actual_seq_length)
    _, tflops, _ = calculator.throughput_calculator(None, args, 1.0, 1)
    layers = (L - 2) * layer_forward() + 2 * layer_forward(s=S // 2)
    flops = 8 * (passes * layers + 3 * logits_forward())
    assert tflops == pytest.approx(flops / (2 * 1e12))


def test_random_ltd_in_unlike_layers_keeps_the_forks_average():
    """MoE layers differ and the fork does not say which layers drop tokens: counted at the
    fork's actual_seq_length, as before."""
    args = ltd_args(num_experts=[4], topk=1)
    accounting = calculator.accounting_for(args)
    accounting.observe_iteration(8, args.actual_seq_length)
    _, tflops, _ = calculator.throughput_calculator(None, args, 1.0, 1)
    plain = ms_args(num_experts=[4], topk=1, actual_seq_length=args.actual_seq_length)
    calculator.accounting_for(plain).observe_iteration(8, args.actual_seq_length)
    assert tflops == calculator.throughput_calculator(None, plain, 1.0, 1)[1]


def test_observed_iterations_are_used_when_they_are_the_interval():
    args = ms_args()
    accounting = calculator.accounting_for(args)
    accounting.observe_iteration(4, S)
    accounting.observe_iteration(8, S // 2)
    samples_per_second, tflops, _ = calculator.throughput_calculator(None, args, 2.0, 2)
    assert samples_per_second == pytest.approx(12 / 2.0)
    flops = 4 * 3 * (L * layer_forward() + logits_forward()) \
        + 8 * 3 * (L * layer_forward(s=S // 2) + logits_forward(s=S // 2))
    assert tflops == pytest.approx(flops / (2.0 * 2 * 1e12))


def test_shapes_are_built_once_per_args():
    args = ms_args()
    first = calculator.accounting_for(args)
    assert calculator.accounting_for(args) is first
    assert calculator.accounting_for(ms_args()) is not first


def test_peak_from_environment(monkeypatch):
    monkeypatch.setenv("MEGATRON_FLOPS_GPU", "A100-SXM4-80GB")
    assert calculator.accounting_for(ms_args()).peak.tflops == 312.0  # bf16 dense
    calculator.forget()
    monkeypatch.setenv("MEGATRON_FLOPS_PEAK_TFLOPS", "100")
    assert calculator.accounting_for(ms_args()).peak.tflops == 100.0
    calculator.forget()
    monkeypatch.setenv("MEGATRON_FLOPS_PEAK_TFLOPS", "fast")
    with pytest.raises(ValueError, match="MEGATRON_FLOPS_PEAK_TFLOPS"):
        calculator.accounting_for(ms_args())


def test_peak_from_the_device_name_torch_reports(monkeypatch):
    # "NVIDIA H200" is what torch.cuda.get_device_name() returned on an H200 (torch 2.11, cu130)
    fake_cuda = types.SimpleNamespace(is_available=lambda: True,
                                      get_device_name=lambda: "NVIDIA H200")
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake_cuda))
    monkeypatch.delenv("MEGATRON_FLOPS_GPU", raising=False)
    monkeypatch.delenv("MEGATRON_FLOPS_PEAK_TFLOPS", raising=False)
    peak = calculator.accounting_for(ms_args()).peak  # bf16 run
    assert peak.tflops == 989.4 and "h200" in peak.source


def test_a_broken_cuda_gives_no_peak_rather_than_an_error(monkeypatch):
    def broken():
        raise RuntimeError("no CUDA driver")
    fake_cuda = types.SimpleNamespace(is_available=broken, get_device_name=broken)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake_cuda))
    monkeypatch.delenv("MEGATRON_FLOPS_GPU", raising=False)
    monkeypatch.delenv("MEGATRON_FLOPS_PEAK_TFLOPS", raising=False)
    assert calculator.accounting_for(ms_args()).peak.tflops is None


def test_partial_interval_is_counted_at_log_time():
    """Hook installed mid-interval: 1 iteration seen, the fork's interval had 3."""
    args = ms_args()
    accounting = calculator.accounting_for(args)
    accounting.observe_iteration(4, S // 2)
    samples_per_second, tflops, _ = calculator.throughput_calculator(None, args, 3.0, 3)
    assert samples_per_second == pytest.approx(3 * 8 / 3.0)  # 3 × micro 2 × DP 2 × 2
    assert tflops == pytest.approx(24 * 3 * (L * layer_forward() + logits_forward()) / (3.0 * 2e12))
    # and the next interval starts clean
    accounting.observe_iteration(8, S)
    _, tflops, _ = calculator.throughput_calculator(None, args, 1.0, 1)
    assert tflops == pytest.approx(8 * 3 * (L * layer_forward() + logits_forward()) / 2e12)


@pytest.mark.parametrize("flags,recomputed_layers", [
    # the microsoft fork's GPTModelPipe: --recompute-method block gives interval 0 (no recompute)
    (dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=1), 0),
    # --checkpoint-activations checkpoints every layer whatever the method says
    (dict(checkpoint_activations=True, recompute_granularity="full", recompute_method="block",
          recompute_num_layers=1), L),
    (dict(recompute_granularity="full", recompute_method="uniform"), L),
])
def test_deepspeed_pipeline_model_recomputes_what_its_interval_says(flags, recomputed_layers):
    args = ms_args(deepspeed=True, no_pipeline_parallel=False, **flags)
    _, tflops, _ = calculator.throughput_calculator(None, args, 1.0, 1)
    # 1 iteration × 8 samples: 3 × forward, plus the forward of the recomputed layers
    flops = 8 * (3 * (L * layer_forward() + logits_forward()) + recomputed_layers * layer_forward())
    assert tflops == pytest.approx(flops / (1.0 * 2 * 1e12))


def test_block_recompute_outside_the_pipeline_model_counts_the_first_layers():
    args = ms_args(deepspeed=True, no_pipeline_parallel=True, recompute_granularity="full",
                   recompute_method="block", recompute_num_layers=1)
    _, tflops, _ = calculator.throughput_calculator(None, args, 1.0, 1)
    flops = 8 * (3 * (L * layer_forward() + logits_forward()) + 1 * layer_forward())
    assert tflops == pytest.approx(flops / (1.0 * 2 * 1e12))


@pytest.mark.parametrize("make_args", [ms_args, ltd_args])
def test_without_the_hook_the_interval_is_counted_in_one_call(make_args, monkeypatch):
    """Issue 25: counted at log time, an interval of 100 iterations is one bulk
    ``add_iterations`` (not 100 replayed iterations), with the same report as the replay:
    100 × (micro 2 × DP 2 × 2 microbatches) = 800 samples."""
    from megatron_flops.meter import ThroughputMeter
    args = make_args()
    replay = calculator.accounting_for(args)
    seq = calculator.iteration_seq_length(args)
    for _ in range(100):   # what the drop-in did before: one iteration at a time
        replay.observe_iteration(8, seq)
    want = replay.meter.report(7.0)
    calculator.forget()
    calls = []
    original = ThroughputMeter.add_iteration

    def counting(self, *a, **k):
        calls.append(a)
        return original(self, *a, **k)

    monkeypatch.setattr(ThroughputMeter, "add_iteration", counting)
    samples_per_second, tflops, _ = calculator.throughput_calculator(None, args, 7.0, 100)
    assert len(calls) == 1
    assert samples_per_second == want.samples_per_second == 800 / 7.0
    assert tflops == want.hardware_tflops_per_gpu
