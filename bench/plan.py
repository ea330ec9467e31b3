"""``python -m bench.plan``: measure the routing plan of ``backend="auto"`` on this machine.

The plan (``rnnkernels/backends/plan.py``, docs/BACKENDS.md "The plan") tells ``auto`` where
torch's own RNN beats our kernels, so that swapping in rnnkernels is never slower than torch.nn.
This sweeps cell ∈ {LSTM, GRU, RNN(tanh)} × mode ∈ {fwd (under no_grad), fwdbwd (one training
step)} × B ∈ {1, 4, 16, 64, 256} × H = I ∈ {64, 256, 1024} (float32; ``--dtypes`` adds others),
and for each point times torch.nn against rnnkernels with ``backend="cpu"`` (our kernels by
name, never ``auto``, which would consult the plan being measured): same seeded weights, inputs
and upstream gradients (``bench/harness.py``), calls interleaved (torch, ours, ours, torch, ...
so drift hits both alike) after one warm-up call each, the median of ``--reps`` calls each.
``ratio`` = torch's median ÷ ours (above 1: ours is faster).

T is chosen per point so a call lasts about ``--target-ms`` (one probe call at T=8 gives the
time per step; T kept within [8, 400]): big shapes get a small T (the ratio is per step), tiny
ones a long sequence so the timer and per-call costs do not dominate.

The table is MERGED into ``--out`` (default ``rnnkernels/plans/cpu.json``) under the key of the
ISA the compiled CPU kernels run (``--isa`` forces one, e.g. ``avx2`` on an AVX-512 machine);
other ISAs' tables are kept. A maintainer step on a quiet machine (no other load; the record
keeps the load average), not part of ``make bench``. ``--quick``: a small grid (tests, smoke).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from . import harness as H
from . import measure as M
from .configs import Config

CELLS = ("LSTM", "GRU", "RNN")
MODES = ("fwd", "fwdbwd")
GRID_B = (1, 4, 16, 64, 256)
GRID_H = (64, 256, 1024)
QUICK_B, QUICK_H = (1, 16), (64,)
T_MIN, T_MAX, T_PROBE = 8, 400, 8


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _names(text: str, known: tuple[str, ...]) -> tuple[str, ...]:
    got = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in got if v not in known]
    if bad:
        raise argparse.ArgumentTypeError(f"{', '.join(bad)}: expected some of {known}")
    return got


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.plan",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"a small grid: B {QUICK_B}, H {QUICK_H}, 3 reps, ~5 ms calls")
    p.add_argument("--out", default=None, help="the plan file to merge into (default: "
                   "rnnkernels/plans/cpu.json of the imported rnnkernels)")
    p.add_argument("--cells", type=lambda s: _names(s, CELLS), default=CELLS)
    p.add_argument("--modes", type=lambda s: _names(s, MODES), default=MODES)
    p.add_argument("--batches", type=_ints, default=None, help=f"default {GRID_B}")
    p.add_argument("--hidden", type=_ints, default=None, help=f"H = I; default {GRID_H}")
    p.add_argument("--dtypes", type=lambda s: _names(s, tuple(H.DTYPES)), default=("float32",),
                   help="comma list (default float32)")
    p.add_argument("--T", type=int, default=None, help="a fixed T (default: per point)")
    p.add_argument("--target-ms", type=float, default=None, help="call length that sets T "
                   "(default 20; quick 5)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per side (default 7; "
                   "quick 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--isa", default=None, help="run our kernels with this cpu_isa and key the "
                   "table on it (default: what the extension picked)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.batches = args.batches or (QUICK_B if args.quick else GRID_B)
    args.hidden = args.hidden or (QUICK_H if args.quick else GRID_H)
    args.target_ms = args.target_ms or (5.0 if args.quick else 20.0)
    args.reps = args.reps or (3 if args.quick else 7)
    args.dtypes = list(dict.fromkeys(H.DTYPES[d] for d in args.dtypes))
    return args


# ------------------------------------------------------------------------------- measuring
def _steps(cell: str, mode: str, dtype: torch.dtype, B: int, Hs: int, T: int, seed: int):
    """(torch.nn's timed step, ours with backend='cpu'), on the same weights and inputs."""
    cfg = Config(f"plan-{cell}-B{B}-H{Hs}", T=T, B=B, I=Hs, H=Hs, suite="plan")
    kwargs = H.module_kwargs(cfg, cell)
    state = H.seeded_state(cell, kwargs, seed)
    inputs = H.make_inputs(cfg, cell, torch.device("cpu"), dtype, seed)
    steps = []
    for provider in ("torch", "cpu"):
        module = H.build_module(provider, cell, kwargs, state, torch.device("cpu"), dtype)
        if mode == "fwdbwd" and inputs.grads is None:
            with torch.no_grad():
                inputs.grads = H.make_grads(H.output_dict(module(inputs.x, inputs.hx)), seed)
        steps.append(H.make_step(module, inputs, mode))
    return steps


def _time(step) -> float:
    t0 = time.perf_counter()
    step()
    return (time.perf_counter() - t0) * 1e3


def choose_T(cell: str, mode: str, dtype: torch.dtype, B: int, Hs: int, target_ms: float,
             seed: int) -> int:
    """The T whose call lasts about ``target_ms``, from torch's time per step at T=8."""
    ref, _ = _steps(cell, mode, dtype, B, Hs, T_PROBE, seed)
    ref()                                                   # first-call costs out of the probe
    per_step = max(_time(ref) / T_PROBE, 1e-4)
    return int(min(T_MAX, max(T_MIN, round(target_ms / per_step))))


def measure_point(cell: str, mode: str, dtype: torch.dtype, B: int, Hs: int, T: int, reps: int,
                  seed: int) -> dict:
    """One plan point: medians of ``reps`` interleaved calls of each side, and their ratio."""
    ref, ours = _steps(cell, mode, dtype, B, Hs, T, seed)
    ref(), ours()                                           # warm-up (and the one-off costs)
    t_ref, t_ours = [], []
    for r in range(reps):
        pair = ((ref, t_ref), (ours, t_ours))
        for step, acc in (pair if r % 2 == 0 else pair[::-1]):
            acc.append(_time(step))
    m_ref, m_ours = statistics.median(t_ref), statistics.median(t_ours)
    return {"cell": cell, "mode": mode, "dtype": H.dtype_name(dtype), "B": B, "H": Hs, "T": T,
            "ratio": round(m_ref / m_ours, 4), "torch_ms": round(m_ref, 4),
            "ours_ms": round(m_ours, 4)}


def auto_route(cfg, cell: str, mode: str, dtype: torch.dtype) -> str:
    """The route the plan gives ``auto`` on a CPU config of ``bench.run`` (the ``[impl]`` tag
    of its ``auto`` rows): "plan: torch" or "plan: ours"."""
    from rnnkernels.backends import plan as P  # noqa: PLC0415
    routed = P.torch_is_faster("cpu", cell, mode == "fwdbwd", dtype, cfg.B, cfg.H)
    return f"plan: {'torch' if routed else 'ours'}"


# ------------------------------------------------------------------------------- the file
def merge(path: Path, key: str, table: dict) -> dict:
    """The plan in ``path`` (or a new one) with ``table`` under ``key``, other tables kept."""
    from rnnkernels.backends import plan as P  # noqa: PLC0415
    doc = {"schema": P.SCHEMA, "device": "cpu", "threshold": P.DEFAULT_THRESHOLD, "tables": {}}
    if path.is_file():
        doc = json.loads(path.read_text())
        P.validate(doc, str(path))
    doc["tables"][key] = table
    doc["tables"] = dict(sorted(doc["tables"].items()))
    P.validate(doc, str(path))
    return doc


def dumps(doc: dict) -> str:
    """The plan as JSON, one point per line (diffs of a re-measured table stay readable)."""
    head = {k: v for k, v in doc.items() if k != "tables"}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines.append('  "tables": {')
    tables = list(doc["tables"].items())
    for i, (key, table) in enumerate(tables):
        lines.append(f"    {json.dumps(key)}: {{")
        for k, v in table.items():
            if k != "points":
                lines.append(f"      {json.dumps(k)}: {json.dumps(v)},")
        points = table.get("points", [])
        lines.append('      "points": [')
        lines += [f"        {json.dumps(p)}" + ("," if j < len(points) - 1 else "")
                  for j, p in enumerate(points)]
        lines.append("      ]")
        lines.append("    }" + ("," if i < len(tables) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from rnnkernels.backends import compiled  # noqa: PLC0415
    from rnnkernels.backends import plan as P  # noqa: PLC0415
    if not compiled.AVAILABLE:
        print(f"bench.plan: the compiled CPU kernels are not available: {compiled.ERROR}",
              file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else P.PLANS_DIR / "cpu.json"
    env = M.environment("cpu")
    load = M.loadavg()
    if load is not None and load > 0.25 * (os.cpu_count() or 1):
        print(f"WARNING: 1-min load average {load} on {os.cpu_count()} CPUs: a plan measured "
              "on a busy machine routes by noise", file=sys.stderr)
    isa = compiled.option("cpu_isa", args.isa) if args.isa else contextlib.nullcontext()
    points, started = [], time.perf_counter()
    with isa:
        key = compiled.get_option("cpu_isa")
        for dtype in args.dtypes:
            for cell in args.cells:
                for mode in args.modes:
                    for Hs in args.hidden:
                        for B in args.batches:
                            T = args.T or choose_T(cell, mode, dtype, B, Hs, args.target_ms,
                                                   args.seed)
                            p = measure_point(cell, mode, dtype, B, Hs, T, args.reps, args.seed)
                            points.append(p)
                            print(f"{key} {cell:4s} {mode:6s} {p['dtype']:8s} B={B:<4d} "
                                  f"H={Hs:<5d} T={T:<4d} torch {p['torch_ms']:9.3f} ms  ours "
                                  f"{p['ours_ms']:9.3f} ms  ratio {p['ratio']:.2f}", flush=True)
    import rnnkernels  # noqa: PLC0415
    table = {"measured": {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": env["cpu_model"], "cpu_count": env["cpu_count"], "torch": env["torch"],
        "rnnkernels": rnnkernels.__version__, "git_sha": env["git_sha"],
        "threads": torch.get_num_threads(), "reps": args.reps, "statistic": "median",
        "loadavg_1m": load, "quick": args.quick, "seconds": round(time.perf_counter() - started)},
        "points": points}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(merge(out, key, table)))
    P.forget()
    print(f"wrote table {key!r} ({len(points)} points) into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
