"""The C++ CPU backend's targets (T=100, I=H=256, fp32, B=64 and B=1) measured the robust way:
torch.nn and rnnkernels (backend="cpu") calls interleaved, so that drift of a shared machine hits
both alike, and each ratio shown next to the ceiling the FLOP count allows.

    python -m bench.cpu_targets [--reps 15] [--threads 2]

The floor of a configuration is its multiply-adds (the projection x·W_ihᵀ and the recurrent
h·W_hhᵀ; a training step adds dx, dW_ih, the recurrent backward and dW_hh) over the best GEMM
rate measured on this machine in the same run (oneDNN's linear at [6400, 256]·[256, 1024]), and
over the CPU's peak (``--peak``, GFLOP/s; default: 2 FMA units × 8 fp32 lanes × 2 flops × cores
× the clock read from /proc/cpuinfo). "max x" is torch's time over that floor: no
implementation can be faster than that ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import rnnkernels

TARGETS = {  # (cell, B, mode): the speedup target over torch.nn
    ("LSTM", 64, "train"): 1.2, ("LSTM", 1, "train"): 1.0, ("LSTM", 64, "infer"): 1.0,
    ("GRU", 64, "train"): 2.5, ("GRU", 1, "train"): 3.0, ("GRU", 64, "infer"): 2.0,
    ("RNN", 64, "train"): 2.5, ("RNN", 1, "train"): 3.0, ("RNN", 64, "infer"): 2.0,
}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _peak_gflops(threads: int) -> float:
    mhz = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            mhz = max(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        pass
    return 2 * 8 * 2 * threads * mhz / 1e3 if mhz else float("nan")


def _gemm_rate(reps: int) -> float:
    x, w, b = torch.randn(6400, 256), torch.randn(1024, 256), torch.randn(1024)
    op = torch.ops.mkldnn._linear_pointwise
    times = []
    for _ in range(reps + 2):
        t0 = time.perf_counter()
        op(x, w, b, "none", [], "")
        times.append(time.perf_counter() - t0)
    return 2 * 6400 * 256 * 1024 / min(times[2:]) / 1e9   # the best: what the machine can do


def _step(mod, x, train: bool):
    if train:
        out, _ = mod(x)
        out.sum().backward()
    else:
        with torch.no_grad():
            mod(x)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak", type=float, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peak = args.peak or _peak_gflops(args.threads)
    rate = _gemm_rate(args.reps)
    print(f"threads {args.threads}; best GEMM rate measured {rate:.0f} GFLOP/s; peak {peak:.0f}")
    print(f"{'cell':4s} {'B':>3s} {'mode':5s} {'torch ms':>9s} {'ours ms':>8s} {'speedup':>8s} "
          f"{'target':>7s} {'floor ms':>9s} {'max x':>6s} {'peak-floor':>10s} {'max x':>6s}")
    T, I, H = 100, 256, 256
    for (cell, B, mode), target in TARGETS.items():
        torch.manual_seed(0)
        ref = getattr(torch.nn, cell)(I, H)
        ours = getattr(rnnkernels, cell)(I, H, backend="cpu")
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I)
        train = mode == "train"
        t_ref, t_ours = [], []
        for k in range(args.reps + 2):
            for mod, acc in ((ref, t_ref), (ours, t_ours)) if k % 2 else ((ours, t_ours),
                                                                           (ref, t_ref)):
                t0 = time.perf_counter()
                _step(mod, x, train)
                acc.append(time.perf_counter() - t0)
        a, b = statistics.median(t_ref[2:]) * 1e3, statistics.median(t_ours[2:]) * 1e3
        macs = T * B * GATES[cell] * H * (I + H) * (3 if train else 1)
        floor = 2 * macs / rate / 1e6
        pfloor = 2 * macs / peak / 1e6
        print(f"{cell:4s} {B:3d} {mode:5s} {a:9.2f} {b:8.2f} {a / b:7.2f}x {target:6.1f}x "
              f"{floor:9.2f} {a / floor:5.2f}x {pfloor:10.2f} {a / pfloor:5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
