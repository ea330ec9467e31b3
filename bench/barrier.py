"""The grid barrier of the ``resident`` strategy, alone: µs per barrier on this GPU (issue 12).

    python -m bench.barrier [--programs 128] [--iters 2000] [--out DIR]

One cooperative launch of ``--programs`` programs (at most one per SM) runs ``--iters`` rounds of
``tiles.grid_arrive`` / ``tiles.grid_wait`` (release add, acquire-load spin), the barrier every
resident scan step pays; ``exchange`` rounds also do what a forward step does around it
without the arithmetic: load the whole h_{t-1} [BB, H] the others wrote, store the own U units of
h_t. Batch rows BB ∈ {1, 16} (B = 64 runs 4 groups of 16 on their own counters) at H = 512.
CUDA events around the launch; µs per round = the launch's time / iters (the launch itself,
~5 µs, spread over the rounds). One JSON line per point into DIR/barrier-<stamp>.jsonl.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the bench runs without triton: it says so and exits
    triton = None

if triton is not None:
    from rnnkernels.backends.triton import plan as _plan
    from rnnkernels.backends.triton.tiles import grid_arrive, grid_wait

    @triton.jit
    def _barrier_kernel(sync_ptr, h_ptr, iters, B, H, EXCHANGE: tl.constexpr,
                        BB: tl.constexpr, U: tl.constexpr, KP: tl.constexpr):
        counter = sync_ptr + tl.program_id(1)
        nprog = tl.num_programs(0)
        rows = tl.program_id(1) * BB + tl.arange(0, BB)
        ks = tl.arange(0, KP)
        units = tl.program_id(0) * U + tl.arange(0, U)
        mask = (rows < B)[:, None]
        for it in range(0, iters):
            if EXCHANGE:
                cur = h_ptr + (it % 2) * B * H
                h = tl.load(cur + rows[:, None] * H + ks[None, :], mask=mask & (ks < H)[None, :],
                            other=0.0)
                new = tl.zeros([BB, U], tl.float32) + tl.sum(h, axis=1)[:, None] * 0.5
                nxt = h_ptr + ((it + 1) % 2) * B * H
                tl.store(nxt + rows[:, None] * H + units[None, :], new,
                         mask=mask & (units < H)[None, :])
            grid_arrive(counter)
            grid_wait(counter, (it + 1) * nprog, sync_ptr + tl.num_programs(1))


def measure(programs: int, B: int, H: int, exchange: bool, iters: int) -> float:
    """µs per round (median of 5 launches)."""
    BB = min(16, triton.next_power_of_2(B))
    groups = triton.cdiv(B, BB)
    U = max(1, triton.cdiv(H, programs))
    h = torch.zeros((2, B, H), device="cuda")
    coop = {"launch_cooperative_grid": True} if _plan._cooperative_launch_supported() else {}
    times = []
    for _ in range(6):
        sync = torch.zeros(groups + 1, dtype=torch.int32, device="cuda")
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        start.record()
        _barrier_kernel[(programs, groups)](sync, h, iters, B, H, EXCHANGE=exchange, BB=BB,
                                           U=triton.next_power_of_2(U),
                                           KP=triton.next_power_of_2(H), num_warps=4,
                                           **coop)
        end.record()
        torch.cuda.synchronize()
        if int(sync[-1].item()):
            raise RuntimeError("a barrier timed out: the programs were not co-resident")
        times.append(start.elapsed_time(end) * 1e3 / iters)
    return sorted(times[1:])[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=0, help="default: SMs // groups, ≤ 128")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    if triton is None or not torch.cuda.is_available():
        print("bench.barrier: needs a CUDA GPU with triton; nothing measured")
        return 0
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    path = Path(args.out) / f"barrier-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for B in (1, 16, 64):
            groups = triton.cdiv(B, 16)
            programs = args.programs or min(128, sms // groups)
            for exchange in (False, True):
                us = measure(programs, B, args.H, exchange, args.iters)
                rec = {"kind": "barrier", "B": B, "H": args.H, "programs": programs,
                       "groups": groups, "exchange": exchange, "us_per_round": round(us, 3),
                       "device": torch.cuda.get_device_name()}
                f.write(json.dumps(rec) + "\n")
                print(f"B={B:3d} groups={groups} programs={programs:3d} "
                      f"{'barrier + h exchange' if exchange else 'barrier only':22s} "
                      f"{us:7.3f} µs/round", flush=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
