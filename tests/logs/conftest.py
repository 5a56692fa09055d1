"""Log text in each fork's ``training_log`` format, written by the tests themselves.

The field order and format specifiers follow the forks' ``megatron/training.py``
(bigscience-workshop at 8387ae1, microsoft at f4157be), read, not copied: every field is
`` key: value |``; bigscience prints the elapsed time in seconds with 2 decimals, microsoft
in milliseconds with 1 decimal; microsoft always prints ``actual seqlen`` and ``tgs``.

Hand formulas used to derive expected values live here too, written from the notation of
docs/relog.md: a matmul (m×k)(k×n) is 2mkn FLOPs, backward = 2 × forward.
"""

import json
import types

import pytest

from megatron_flops.cli import main


def bigscience_line(iteration, consumed_samples, consumed_tokens, seconds_per_iteration, batch,
                    samples_per_second, tflops, curriculum_seqlen=None, skipped=0,
                    train_iters=1000, loss_scale=None):
    text = " iteration {:8d}/{:8d} |".format(iteration, train_iters)
    text += " consumed samples: {:12d} |".format(consumed_samples)
    text += " consumed tokens: {:12d} |".format(consumed_tokens)
    text += " elapsed time per iteration (s): {:.2f} |".format(seconds_per_iteration)
    text += " learning rate: {:.3E} |".format(6e-5)
    text += " global batch size: {:5d} |".format(batch)
    text += " lm loss: {:.6E} |".format(5.4321)
    if loss_scale is not None:
        text += " loss scale: {:.1f} |".format(loss_scale)
    text += " grad norm: {:.3f} |".format(0.987)
    if curriculum_seqlen is not None:
        text += " curriculum seqlen: {:5d} |".format(curriculum_seqlen)
    text += " number of skipped iterations: {:3d} |".format(skipped)
    text += " number of nan iterations: {:3d} |".format(0)
    text += " samples per second: {:.3f} |".format(samples_per_second)
    text += " TFLOPs: {:.2f} |".format(tflops)
    return text


def microsoft_line(iteration, consumed_samples, consumed_tokens, seconds_per_iteration, batch,
                   samples_per_second, tflops, actual_seqlen, world_size, skipped=0,
                   curriculum_seqlen=None, train_iters=1000):
    text = " iteration {:8d}/{:8d} |".format(iteration, train_iters)
    text += " consumed samples: {:12d} |".format(consumed_samples)
    text += " consumed tokens: {:12d} |".format(consumed_tokens)
    text += " elapsed time per iteration (ms): {:.1f} |".format(seconds_per_iteration * 1000.0)
    text += " learning rate: {:.3E} |".format(6e-5)
    text += " global batch size: {:5d} |".format(batch)
    text += " lm loss: {:.6E} |".format(5.4321)
    text += " loss scale: {:.1f} |".format(1.0)
    text += " grad norm: {:.3f} |".format(0.987)
    if curriculum_seqlen is not None:
        text += " curriculum seqlen: {:5d} |".format(curriculum_seqlen)
    text += " actual seqlen: {:5d} |".format(actual_seqlen)
    text += " number of skipped iterations: {:3d} |".format(skipped)
    text += " number of nan iterations: {:3d} |".format(0)
    text += " samples per second: {:.3f} |".format(samples_per_second)
    text += " tokens per gpu per second (tgs): {:.3f} |".format(
        samples_per_second * actual_seqlen / world_size)
    text += " TFLOPs: {:.2f} |".format(tflops)
    return text


def arguments_dump(**values):
    lines = ["------------------------ arguments ------------------------"]
    for name, value in values.items():
        lines.append("  {} {} {}".format(name, "." * (48 - len(name)), value))
    lines.append("-------------------- end of arguments ---------------------")
    return lines


# ---- hand formulas -----------------------------------------------------------------------

def hand_layer_forward(s, h, n, d, g, f, glu):
    """One transformer layer's forward matmul FLOPs for one sample of length s."""
    query = 2 * s * h * (n * d)
    key_value = 2 * s * h * (2 * g * d)
    scores = 2 * n * s * d * s
    over_values = 2 * n * s * s * d
    output = 2 * s * (n * d) * h
    mlp = (3 if glu else 2) * 2 * s * h * f
    return query + key_value + scores + over_values + output + mlp


def hand_flops_per_sample(s, l, h, n, V, f=None, g=None, d=None, glu=False,
                          full_recompute=False):
    """(model, hardware) FLOPs per sample: 3 × forward; full recompute adds l layer forwards."""
    d = d or h // n
    g = g or n
    f = f or 4 * h
    layer = hand_layer_forward(s, h, n, d, g, f, glu)
    logits = 2 * s * h * V
    model = 3 * (l * layer + logits)
    hardware = model + (l * layer if full_recompute else 0)
    return model, hardware


def bigscience_logged_tflops(batch, s, l, h, V, seconds, world, glu=False, checkpoint=False):
    """The number the bigscience fork prints (its Eq. 3 variant), for generating test logs."""
    coefficient = 32 if glu else 24
    factor = 4 if checkpoint else 3
    flops = coefficient * factor * batch * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
    return flops / (seconds * world * 1e12)


def microsoft_logged_tflops(batch, s, l, h, n, kv_heads, f, V, seconds, world, swiglu=False):
    """The number the microsoft fork prints (its MAC count), for generating test logs."""
    gqa = n // kv_heads
    macs = batch * l * (1 + (2 // gqa) + 1) * h * h * s
    macs += batch * l * 2 * (h // n) * n * s * s
    macs += batch * l * (3 if swiglu else 2) * f * h * s
    macs += batch * V * h * s
    return 2 * 3 * macs / (seconds * world * 1e12)


def run_cli(capsys, *argv):
    code = main(["relog", *map(str, argv)])
    captured = capsys.readouterr()
    return types.SimpleNamespace(code=code, out=captured.out, err=captured.err)


def json_intervals(result):
    return [json.loads(line) for line in result.out.splitlines() if line.strip()]


def json_summary(result):
    for line in result.err.splitlines():
        if line.startswith('{"summary"'):
            return json.loads(line)["summary"]
    raise AssertionError(f"no summary on stderr: {result.err!r}")


@pytest.fixture
def logfmt():
    return types.SimpleNamespace(
        bigscience_line=bigscience_line, microsoft_line=microsoft_line,
        arguments_dump=arguments_dump, hand_flops_per_sample=hand_flops_per_sample,
        bigscience_logged_tflops=bigscience_logged_tflops,
        microsoft_logged_tflops=microsoft_logged_tflops, run_cli=run_cli,
        json_intervals=json_intervals, json_summary=json_summary)
