"""Per-call cost of one cell call (no_grad): torch.nn against the same rnnkernels module under
``auto`` (the fused C++ step on the CPU) and under ``backend="torch"`` (torch.nn's own forward
behind our routing). Blocks of calls are interleaved and the median of the blocks is reported,
so drift of a shared machine hits all three alike.

    python -m bench.cell_call [--blocks 15] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import rnnkernels

SIZES = [(1, 64), (1, 256), (32, 64), (32, 256)]


def _per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; µs per call, median of {args.blocks} interleaved blocks")
    print(f"{'cell':9} {'B':>3} {'H':>4} {'torch.nn':>9} {'step':>8} {'x':>6} "
          f"{'torch route':>11} {'x':>6}")
    for cls in ("LSTMCell", "GRUCell", "RNNCell"):
        for B, H in SIZES:
            ref = getattr(torch.nn, cls)(H, H)
            modules = [ref]
            for backend in ("auto", "torch"):
                m = getattr(rnnkernels, cls)(H, H, backend=backend)
                m.load_state_dict(ref.state_dict())
                modules.append(m)
            x, h = torch.randn(B, H), torch.randn(B, H)
            hx = (h, h.clone()) if cls == "LSTMCell" else h
            calls = [lambda m=m: m(x, hx) for m in modules]
            n = max(50, 20000 // (B * H // 64 + 10))
            times = [[] for _ in calls]
            with torch.no_grad():
                for fn in calls:
                    _per_call(fn, n // 10)
                for _ in range(args.blocks):
                    for fn, acc in zip(calls, times):
                        acc.append(_per_call(fn, n))
            t_ref, t_step, t_torch = (statistics.median(v) for v in times)
            print(f"{cls:9} {B:>3} {H:>4} {t_ref:>9.1f} {t_step:>8.1f} {t_ref / t_step:>5.2f}x "
                  f"{t_torch:>11.1f} {t_ref / t_torch:>5.2f}x")


if __name__ == "__main__":
    main()
