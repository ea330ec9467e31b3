"""FlashRNN (NX-AI/flashrnn, the strongest public fused-RNN peer) beside rnnkernels' Triton kernels
and cuDNN on one GPU, same run (issue 12, item 3; issue 16's head-wise targets).

    python -m bench.flashrnn_peer [--budget-s 150] [--out DIR | --jsonl FILE] [--shapes NAME,...]

Shapes (T = 1024, B = 16, bfloat16, FlashRNN's own benchmark settings): ``h512`` one head of
512 units (LSTM, GRU: cuDNN runs it too), ``nh12-d64`` and ``nh1-d768`` (FlashRNN's head-wise
and single-head shapes; LSTM, GRU and sLSTM). Each provider runs one training step: the input
projection (an ``nn.Linear`` to the gates, as FlashRNN's benchmark adds one, so every provider
does the same GEMM) and the recurrence, forward and backward from a random upstream gradient:

* ``flashrnn``: ``flashrnn.flashrnn(Wx, R, b, function, backend="cuda_fused")`` (its CUDA
  kernels, compiled with nvcc on first use: that compile is outside the timing but inside the
  budget);
* ``ours``: ``rnnkernels.LSTM/GRU/SLSTM(num_heads=NH, backend="triton")``;
* ``cudnn``: ``torch.nn.LSTM/GRU`` (one head only).

Times: CUDA events, the L2 flushed before each call, providers interleaved in rounds
(``bench/measure.py``), median ms; the ratio beside each is FlashRNN's time ÷ that provider's.
A shape or provider that fails (no nvcc, a FlashRNN shape it does not support) is recorded with
its error. FlashRNN is not a dependency: on a machine without it (or without a GPU) this prints
why and exits 0. On the device machine, which reaches no registry, carry its wheels:
``pip download --no-deps flashrnn==1.0.8 einops -d .whl`` here, then install them there
(``bench/gpu.sh`` does when ``.whl/`` holds them).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from . import measure as M

T_STEPS, BATCH = 1024, 16
SHAPES = {"h512": (1, 512, ("lstm", "gru")),
          "nh12-d64": (12, 64, ("lstm", "gru", "slstm")),
          "nh1-d768": (1, 768, ("lstm", "gru", "slstm"))}
_GATES = {"lstm": 4, "gru": 4, "slstm": 4}     # FlashRNN's gate counts (its GRU has four)
_OURS = {"lstm": "LSTM", "gru": "GRU", "slstm": "SLSTM"}


def _flashrnn_step(fn: str, NH: int, D: int, dtype):
    from flashrnn import flashrnn  # noqa: PLC0415 - optional peer
    G = _GATES[fn]
    dev = "cuda"
    lin = nn.Linear(NH * D, G * NH * D, device=dev, dtype=dtype)
    R = (torch.randn(G, NH, D, D, device=dev, dtype=dtype) / D ** 0.5).requires_grad_()
    b = torch.zeros(G, NH, D, device=dev, dtype=dtype, requires_grad=True)
    x = torch.randn(BATCH, T_STEPS, NH * D, device=dev, dtype=dtype, requires_grad=True)
    grad = torch.randn(BATCH, T_STEPS, NH * D, device=dev, dtype=dtype)

    def step():
        wx = lin(x).view(BATCH, T_STEPS, G, NH, D)
        h, _ = flashrnn(wx, R, b, function=fn, backend="cuda_fused", dtype="bfloat16")
        h[0].reshape(BATCH, T_STEPS, NH * D).backward(grad)
    return step


def _module_step(module: nn.Module, D_total: int, dtype):
    x = torch.randn(BATCH, T_STEPS, D_total, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn(BATCH, T_STEPS, D_total, device="cuda", dtype=dtype)

    def step():
        out = module(x)[0]
        out.backward(grad)
    return step


def _ours_step(fn: str, NH: int, D: int, dtype):
    import rnnkernels  # noqa: PLC0415
    H = NH * D
    kw = {"num_heads": NH} if NH > 1 or fn == "slstm" else {}
    module = getattr(rnnkernels, _OURS[fn])(H, H, batch_first=True, backend="triton", **kw)
    return _module_step(module.to(device="cuda", dtype=dtype), H, dtype)


def _cudnn_step(fn: str, NH: int, D: int, dtype):
    module = {"lstm": nn.LSTM, "gru": nn.GRU}[fn](D, D, batch_first=True)
    return _module_step(module.to(device="cuda", dtype=dtype), D, dtype)


def run(shapes, budget_s: float, path: Path) -> list[dict]:
    dtype = torch.bfloat16
    start = time.perf_counter()
    round_budget = M.TimingBudget(warmup_ms=10.0, rep_time_ms=40.0, min_reps=3, max_reps=20)
    records = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as sink:
        for name in shapes:
            NH, D, fns = SHAPES[name]
            for fn in fns:
                if time.perf_counter() - start > budget_s:
                    print(f"budget of {budget_s:g} s spent: {name} {fn} and after not measured")
                    return records
                builders = {"flashrnn": _flashrnn_step, "ours": _ours_step}
                if NH == 1 and fn != "slstm":
                    builders["cudnn"] = _cudnn_step
                steps, errors = {}, {}
                for prov, build in builders.items():
                    try:
                        step = build(fn, NH, D, dtype)
                        step()                      # compiles (FlashRNN: nvcc; ours: triton)
                        torch.cuda.synchronize()
                        steps[prov] = step
                    except Exception as exc:  # noqa: BLE001 - a provider that fails is a result
                        errors[prov] = f"{type(exc).__name__}: {str(exc)[:300]}"
                names = list(steps)
                times = M.interleaved([steps[p] for p in names],
                                      lambda f: M.time_cuda(f, round_budget), 5, 5) \
                    if names else []
                med = {p: statistics.median(t) for p, t in zip(names, times)}
                base = med.get("flashrnn")
                for prov in builders:
                    rec = {"kind": "flashrnn-peer", "shape": name, "T": T_STEPS, "B": BATCH,
                           "NH": NH, "D": D, "function": fn, "provider": prov,
                           "dtype": "bfloat16", "mode": "fwdbwd",
                           "device": torch.cuda.get_device_name()}
                    if prov in med:
                        rec["ms"] = round(med[prov], 4)
                        rec["flashrnn_over_this"] = round(base / med[prov], 3) if base else None
                    else:
                        rec["error"] = errors.get(prov)
                    records.append(rec)
                    sink.write(json.dumps(rec) + "\n")
                    sink.flush()
                    shown = (f"{rec['ms']:9.3f} ms  flashrnn/this {rec['flashrnn_over_this']}"
                             if "ms" in rec else f"FAILED {rec['error']}")
                    print(f"{name:9s} {fn:6s} {prov:9s} {shown}", flush=True)
    print(f"wrote {path}")
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=150.0)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--jsonl", default=None,
                    help="append the records to this file (default: a new one in --out)")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"bench.flashrnn_peer: unknown shapes {unknown}; expected {list(SHAPES)}")
    if not torch.cuda.is_available():
        print("bench.flashrnn_peer: needs a CUDA GPU; nothing measured")
        return 0
    try:
        import flashrnn  # noqa: F401, PLC0415
    except ImportError as exc:
        print(f"bench.flashrnn_peer: flashrnn is not importable ({exc}); nothing measured")
        return 0
    M.configure_precision(torch.device("cuda"), allow_tf32=False)
    path = Path(args.jsonl) if args.jsonl else \
        Path(args.out) / f"flashrnn-peer-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    run(shapes, args.budget_s, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
