"""The machine's matmul rate in float32 and bfloat16, and the dtype ``model.dtype: auto`` picks here.

Times quoted in docs/ and the README are only comparable across machines together with this rate: run it in
the same session as the measurement it scales. The shape is one SmolLM2-135M MLP projection on a batch of 256
tokens (256x576 @ 576x1536), the size that dominates the embedded default's training and scoring.

    python benchmarks/cpu_matmul.py [--threads N] [--seconds S]

Prints GFLOP/s per dtype (2*M*N*K flops per matmul, median of repeated timed blocks) and the bf16/fp32 ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gflops(dtype: torch.dtype, m: int, k: int, n: int, seconds: float) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):  # warm-up: first calls pick kernels and allocate
        a @ b
    rates, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 5:
        reps, t0 = 0, time.perf_counter()
        while reps < 4 or time.perf_counter() - t0 < 0.05:
            a @ b
            reps += 1
        rates.append(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per dtype")
    ap.add_argument("--shape", type=int, nargs=3, default=(256, 576, 1536), metavar=("M", "K", "N"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from emguard.models import dtype_record

    print(f"cpu: {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    m, k, n = args.shape
    f32 = gflops(torch.float32, m, k, n, args.seconds)
    bf16 = gflops(torch.bfloat16, m, k, n, args.seconds)
    print(f"matmul {m}x{k} @ {k}x{n}: float32 {f32:.1f} GFLOP/s, bfloat16 {bf16:.1f} GFLOP/s, "
          f"bf16/fp32 = {bf16 / f32:.2f}x")
    rec = dtype_record("auto", "cpu")
    print(f"model.dtype auto -> {rec['dtype']} ({rec['dtype_reason']})")


if __name__ == "__main__":
    main()
