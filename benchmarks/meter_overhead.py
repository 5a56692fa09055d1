"""Cost of the throughput meter: per iteration (add_iteration), per reported interval (report),
and per interval of several iterations added at once (add_iterations, what relog does).

Target (issue 2): <= 10 µs per reported interval on a 2-core CPU.  Timings are medians of
repeated batches so a noisy shared machine shows its typical cost, not its worst.

    python benchmarks/meter_overhead.py
"""

import statistics
import time

from megatron_flops.meter import ThroughputMeter
from megatron_flops.shapes import ModelShape, Recompute


def median_seconds(function, repeats=7, number=20000):
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            function()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def main():
    model = ModelShape(num_layers=70, hidden_size=14336, num_attention_heads=112, vocab_size=250880)
    meter = ThroughputMeter(model, world_size=384, recompute=Recompute("full"), peak_tflops=312.0)
    meter.add_iteration(batch_size=2048, seq_length=2048)  # first sight of a length builds the cache
    meter.report(1.0)

    def one_iteration():
        meter.add_iteration(batch_size=2048, seq_length=2048)

    def one_interval():
        meter.add_iteration(batch_size=2048, seq_length=2048)
        meter.report(1.0)

    per_iteration = median_seconds(one_iteration)
    per_interval = median_seconds(one_interval) - per_iteration
    print(f"add_iteration:          {per_iteration * 1e6:.2f} µs")
    print(f"report (per interval):  {per_interval * 1e6:.2f} µs   (target <= 10 µs)")
    print(f"interval of 1 iteration, add + report: {(per_iteration + per_interval) * 1e6:.2f} µs")
    if hasattr(meter, "add_iterations"):
        def several_iterations():
            meter.add_iterations(100, 204800, 2048)

        print(f"add_iterations (100 at once): {median_seconds(several_iterations) * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
