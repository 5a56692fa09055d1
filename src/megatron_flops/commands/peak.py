"""``megatron-flops peak``: measure this device's achievable dense matmul TFLOP/s per dtype
(the work is :mod:`megatron_flops.demo.peak`)."""

import json
from typing import List

from ..demo.peak import (CPU_SIZES, CUDA_SIZES, DTYPES, cache_file, check_device,
                         measure_matmul_tflops, remember)
from ..hardware import peak_table_lines, peak_tflops
from ..report import format_tflops
from .common import EXIT_OK, Parser, positive


def peak_main(argv: List[str]) -> int:
    parser = Parser(prog="megatron-flops peak", allow_abbrev=False,
                     description="Measure the achievable dense matmul TFLOP/s of this device "
                                 "per dtype (warm-up, several sizes, best of repeats).")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, action="append",
                        help="dtype to measure (repeatable; default: all of fp32, bf16, fp16)")
    parser.add_argument("--size", type=positive(int, "--size"), action="append", metavar="N",
                        help="matrix size n of the n×n products (repeatable; default: "
                             f"{', '.join(map(str, CPU_SIZES))} on CPU, "
                             f"{', '.join(map(str, CUDA_SIZES))} on CUDA)")
    parser.add_argument("--repeats", type=positive(int, "--repeats"), default=5,
                        help="timed products per size; the best counts (default 5)")
    parser.add_argument("--threads", type=positive(int, "--threads"),
                        help="torch intra-op threads on CPU (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--list", action="store_true",
                        help="print the datasheet peak table (the names --gpu takes) and exit; "
                             "needs no torch")
    args = parser.parse_args(argv)
    if args.list:
        print("dense datasheet peak TFLOP/s per GPU (never the sparsity figure); "
              "give --gpu NAME to estimate, relog, compare, profile or the demo:")
        for line in peak_table_lines():
            print(line)
        return EXIT_OK
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..terminal import ProgressLine
    status = ProgressLine()   # on a terminal only: a pipe or a log sees just the results
    results = []
    dtypes = args.dtype or DTYPES
    for index, dtype in enumerate(dtypes, 1):
        def on_size(n, dtype=dtype, index=index):
            status.show(f"measuring {dtype} ({index}/{len(dtypes)}): {n}×{n} matmuls ... "
                        "(up to a few seconds per size)")
        try:
            measured = measure_matmul_tflops(device, dtype, args.size, args.repeats,
                                             on_size=on_size)
        finally:
            status.clear()
        remember(measured)
        datasheet = peak_tflops(measured.device_name, dtype) if device.startswith("cuda") else None
        results.append((measured, datasheet))
    if args.json:
        print(json.dumps({"measurements": [
            dict(m.as_dict(), datasheet_tflops=d,
                 fraction_of_datasheet=(m.tflops / d if d else None)) for m, d in results]}))
        return EXIT_OK
    first = results[0][0]
    where = f"{first.threads} threads" if first.device == "cpu" else first.device
    print(f"measured dense matmul peak of {first.device_name} ({where}):")
    for m, datasheet in results:
        sizes = ", ".join(f"{n}: {format_tflops(t)}" for n, t in m.per_size_tflops.items())
        line = (f"  {m.dtype:<5} {format_tflops(m.tflops):>10} TFLOP/s   (best at n={m.best_size}; "
                f"per size {sizes})")
        if datasheet:
            line += f"   datasheet {datasheet:g}, {100 * m.tflops / datasheet:.0f}% of it"
        print(line)
    print(f"the best rate per dtype is remembered in {cache_file()}; the demo measures again "
          "at start and uses the best known (or give --peak-tflops)")
    return EXIT_OK
