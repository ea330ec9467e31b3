"""Triton launch strategies and step-kernel tiles on a GPU, against cuDNN: data to place the
``auto`` threshold of ``rnnkernels/backends/triton/plan.py`` (what it measured on an H200 and
the rules drawn from it: ``bench/results/gpu-h200-20261126/README.md``, "Figures behind the
Triton plan").

    python -m bench.triton_strategy [--out DIR] [--quick]

Part A: inference forward (no_grad) of one layer, T=200, fp32, for each strategy forced
(step / persistent / persistent-grid / resident) over small hidden sizes and two batch sizes.
Part B: the step strategy's hidden tile and warp count at H=512 (B=1 and B=64).
Times are CUDA-event medians (L2 flushed per call, see bench/measure.py). One JSON line per
measurement goes to ``DIR/triton-strategy-<stamp>.jsonl``; a table is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from bench import measure as M


def _measure(mod, x, budget) -> float:
    def fn():
        with torch.no_grad():
            mod(x)
    return statistics.median(M.time_cuda(fn, budget))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--T", type=int, default=200)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    import rnnkernels
    import rnnkernels.backends.triton as rt

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(args.device)
    budget = M.TimingBudget(min_reps=5, max_reps=200, warmup_ms=10.0, rep_time_ms=60.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"triton-strategy-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    T = args.T
    rows = []

    def record(**rec):
        rows.append(rec)
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in rec.items()), flush=True)

    cells = ["LSTM", "GRU"] if not args.quick else ["LSTM"]
    for cell in cells:
        for hidden in ((32, 64, 128, 256) if not args.quick else (32,)):
            for batch in (1, 64):
                torch.manual_seed(0)
                ref = getattr(torch.nn, cell)(hidden, hidden).to(dev)
                ours = getattr(rnnkernels, cell)(hidden, hidden, backend="triton").to(dev)
                ours.load_state_dict(ref.state_dict())
                x = torch.randn(T, batch, hidden, device=dev)
                base = _measure(ref, x, budget)
                record(part="A", cell=cell, H=hidden, B=batch, provider="cudnn", ms=base)
                with torch.no_grad():
                    want = ref(x)[0]
                for strat in ("step", "persistent", "persistent-grid", "resident"):
                    try:
                        with rt.strategy(strat):
                            with torch.no_grad():
                                err = float((ours(x)[0] - want).abs().max())
                            ms = _measure(ours, x, budget)
                        record(part="A", cell=cell, H=hidden, B=batch, provider=strat, ms=ms,
                               vs_cudnn=base / ms, err=err)
                    except Exception as exc:  # noqa: BLE001 - a failing strategy is a result
                        record(part="A", cell=cell, H=hidden, B=batch, provider=strat,
                               failure=f"{type(exc).__name__}: {str(exc)[:160]}")
    hidden = 512 if not args.quick else 32
    for batch in (1, 64):
        torch.manual_seed(0)
        ref = torch.nn.LSTM(hidden, hidden).to(dev)
        ours = rnnkernels.LSTM(hidden, hidden, backend="triton").to(dev)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, batch, hidden, device=dev)
        base = _measure(ref, x, budget)
        record(part="B", cell="LSTM", H=hidden, B=batch, provider="cudnn", ms=base)
        for bh in (16, 32, 64, 128):
            for warps in (2, 4, 8):
                ctx = contextlib.ExitStack()
                ctx.enter_context(rt.strategy("step"))
                ctx.enter_context(rt.tuning(block_h=bh, num_warps=warps))
                try:
                    with ctx:
                        ms = _measure(ours, x, budget)
                    record(part="B", cell="LSTM", H=hidden, B=batch, provider="step",
                           block_h=bh, num_warps=warps, ms=ms, vs_cudnn=base / ms)
                except Exception as exc:  # noqa: BLE001
                    record(part="B", cell="LSTM", H=hidden, B=batch, provider="step",
                           block_h=bh, num_warps=warps,
                           failure=f"{type(exc).__name__}: {str(exc)[:160]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
