"""``python -m bench.plan``: measure the routing plan of ``backend="auto"`` on this machine.

The plan (``rnnkernels/backends/plan.py``, docs/BACKENDS.md "The plan") tells ``auto`` where
torch's own RNN beats our kernels, so that swapping in rnnkernels is never slower than torch.nn.
This sweeps cell ∈ {LSTM, GRU, RNN(tanh)} × mode ∈ {fwd (under no_grad), fwdbwd (one training
step)} × B × H = I, and for each point times torch.nn against our kernels by name, never
``auto`` (which would consult the plan being measured): same seeded weights, inputs and upstream
gradients (``bench/harness.py``), rounds interleaved (torch, ours, ours, torch, ... so drift
hits both alike) after one warm-up call each, the median over ``--reps`` rounds each.
``ratio`` = torch's median ÷ ours (above 1: ours is faster).

``--device cpu`` (default): ours is ``backend="cpu"``; B ∈ {1, 4, 16, 64, 256}, H ∈ {64, 256,
1024}, float32 (``--dtypes`` adds others); a round is one call timed with ``perf_counter``; T
is chosen per point so a call lasts about ``--target-ms`` (one probe call at T=8 gives the time
per step; T kept within [8, 400]): big shapes get a small T (the ratio is per step), tiny ones
a long sequence so the timer and per-call costs do not dominate. The table key is the ISA the
compiled CPU kernels run (``--isa`` forces one, e.g. ``avx2`` on an AVX-512 machine).

``--device cuda``: ours is the backend ``auto`` resolves to there (``backends.resolve``: triton,
or cuda without triton); B ∈ {1, 16, 64, 256}, H ∈ {128, 512, 1024}, float32 (TF32 off),
bfloat16 and float16, T = 128 (a launch, ~10 µs, is then a small part of a call of ≥ 128 steps);
a round is ``bench/measure.py``'s ``time_cuda`` (CUDA events, L2 flushed before each call, as
``bench.run`` times), ~25 ms of calls. The table key is the GPU's (``plan.cuda_key``: name,
compute capability, SM count). Where ours is triton, each one-direction point also times the
Triton strategies ``auto`` takes only where measured (``plan.TRITON_STRATEGIES``: ``resident``)
in the same rounds; the fastest of ours sets the ratio, and the point names the strategy
(``"triton_strategy"``) when it is not auto's own, which ``auto`` then runs near that point.
About 3-5 minutes on an H200.

``--budget-s`` stops the sweep cleanly when the time is spent: the (dtype, cell, mode) group
being measured is dropped whole (a group with only some of its sizes would stand, through the
nearest-point rule, for sizes it never measured) and the table records the missing groups;
when no group was finished the file is left as it is (exit status 1).

The table is MERGED into ``--out`` (default ``rnnkernels/plans/<device>.json``) under the
machine's key; other keys' tables are kept. A maintainer step on a quiet machine (no other load;
the CPU record keeps the load average), not part of ``make bench``; on a GPU ``bench/gpu.sh``
runs it. ``--quick``: a small grid (tests, smoke).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import harness as H
from . import measure as M
from .configs import Config

CELLS = ("LSTM", "GRU", "RNN")
MODES = ("fwd", "fwdbwd")
LAYOUTS = ("uni", "bidir")      # one direction, or both in one call (points' "bidirectional")
GRID = {"cpu": {"B": (1, 4, 16, 64, 256), "H": (64, 128, 256, 512, 1024), "dtypes": ("float32",)},
        "cuda": {"B": (1, 16, 64, 256), "H": (128, 512, 1024),
                 "dtypes": ("float32", "bfloat16", "float16")}}
QUICK_B, QUICK_H = (1, 16), (64,)
T_MIN, T_MAX, T_PROBE = 8, 400, 8
CUDA_T = 128
# One timed round on CUDA: time_cuda's 3 estimating calls, ~5 ms of warm-up, ~25 ms of calls.
CUDA_ROUND = M.TimingBudget(warmup_ms=5.0, rep_time_ms=25.0, min_reps=3, max_reps=25)


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
    p.add_argument("--device", choices=tuple(GRID), default="cpu",
                   help="whose plan: cpu (default) or cuda (the current GPU)")
    p.add_argument("--quick", action="store_true",
                   help=f"a small grid: B {QUICK_B}, H {QUICK_H}, 3 reps, ~5 ms calls")
    p.add_argument("--out", default=None, help="the plan file to merge into (default: "
                   "rnnkernels/plans/<device>.json of the imported rnnkernels)")
    p.add_argument("--cells", type=lambda s: _names(s, CELLS), default=CELLS)
    p.add_argument("--modes", type=lambda s: _names(s, MODES), default=MODES)
    p.add_argument("--layouts", type=lambda s: _names(s, LAYOUTS), default=LAYOUTS,
                   help="uni (one direction), bidir (bidirectional); default both")
    p.add_argument("--batches", type=_ints, default=None, help=f"default {GRID['cpu']['B']}; "
                   f"cuda {GRID['cuda']['B']}")
    p.add_argument("--hidden", type=_ints, default=None, help=f"H = I; default "
                   f"{GRID['cpu']['H']}; cuda {GRID['cuda']['H']}")
    p.add_argument("--dtypes", type=lambda s: _names(s, tuple(H.DTYPES)), default=None,
                   help="comma list (default float32; cuda float32,bfloat16,float16)")
    p.add_argument("--T", type=int, default=None,
                   help=f"a fixed T (default: per point on the CPU, {CUDA_T} on cuda)")
    p.add_argument("--target-ms", type=float, default=None, help="call length that sets T "
                   "on the CPU (default 30; quick 5)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds per side (default 9 "
                   "on the CPU, 3 on cuda; quick 3)")
    p.add_argument("--budget-s", type=float, default=None, help="stop measuring after this "
                   "many seconds and write the complete groups measured so far")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--isa", default=None, help="CPU: run our kernels with this cpu_isa and key "
                   "the table on it (default: what the extension picked)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.isa and args.device != "cpu":
        p.error("--isa is a CPU option")
    grid, cuda = GRID[args.device], args.device == "cuda"
    args.batches = args.batches or (QUICK_B if args.quick else grid["B"])
    args.hidden = args.hidden or (QUICK_H if args.quick else grid["H"])
    args.T = args.T or (CUDA_T if cuda else None)
    args.target_ms = args.target_ms or (5.0 if args.quick else 30.0)
    args.reps = args.reps or (3 if args.quick or cuda else 9)
    args.dtypes = list(dict.fromkeys(H.DTYPES[d] for d in args.dtypes or grid["dtypes"]))
    return args


# ------------------------------------------------------------------------------- the device
class Unavailable(RuntimeError):
    """The device (or our kernels on it) cannot be measured here; the message says why."""


@dataclass
class Target:
    """What is device-specific in a sweep (tests inject a fake one)."""

    device_type: str                                # the plan file: plans/<device_type>.json
    device: torch.device                            # where weights and inputs live
    table_key: Callable[[], str]                    # the machine's key (inside ``context``)
    ours: Callable[[torch.dtype], str]              # the backend measured against torch.nn
    samples: Callable[[Callable], list[float]]      # ms per call of one timed round of a step
    record: dict = field(default_factory=dict)      # the device's fields of "measured"
    context: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    # other ways of running ours, timed beside it: {label: a context manager factory}; the
    # faster is kept (the point's "triton_strategy" when an alternative won)
    alternatives: Callable[[torch.dtype], dict] = lambda dtype: {}


def cpu_target(args) -> Target:
    from rnnkernels.backends import compiled  # noqa: PLC0415
    if not compiled.AVAILABLE:
        raise Unavailable(f"the compiled CPU kernels are not available: {compiled.ERROR}")
    if args.threads:
        torch.set_num_threads(args.threads)
    env, load = M.environment("cpu"), M.loadavg()
    if load is not None and load > 0.25 * (os.cpu_count() or 1):
        print(f"WARNING: 1-min load average {load} on {os.cpu_count()} CPUs: a plan measured "
              "on a busy machine routes by noise", file=sys.stderr)
    return Target("cpu", torch.device("cpu"), lambda: compiled.get_option("cpu_isa"),
                  lambda dtype: "cpu", M.one_call_ms,
                  {"cpu_model": env["cpu_model"], "cpu_count": env["cpu_count"],
                   "threads": torch.get_num_threads(), "loadavg_1m": load,
                   "timer": "time.perf_counter, one call a round"},
                  compiled.option("cpu_isa", args.isa) if args.isa else contextlib.nullcontext())


def cuda_target(args) -> Target:
    if not torch.cuda.is_available():
        raise Unavailable(f"torch.cuda.is_available() is False (torch {torch.__version__}, "
                          f"CUDA {torch.version.cuda}): --device cuda needs a GPU")
    from rnnkernels import backends  # noqa: PLC0415
    from rnnkernels.backends import plan as P  # noqa: PLC0415
    device = torch.device("cuda", torch.cuda.current_device())
    M.configure_precision(device, allow_tf32=False)      # fp32 points are fp32 on both sides
    env = M.environment("cuda")
    props = torch.cuda.get_device_properties(device)
    ours = {dt: backends.resolve("auto", "cuda", dt) for dt in args.dtypes}

    def alternatives(dtype):     # the Triton strategies auto takes only where measured faster
        if ours[dtype] != "triton":
            return {}
        return {name: (lambda name=name: _setting("RNNKERNELS_TRITON_STRATEGY", name))
                for name in P.TRITON_STRATEGIES}
    return Target("cuda", device, lambda: P.table_key("cuda", device.index), ours.__getitem__,
                  lambda step: M.time_cuda(step, CUDA_ROUND),
                  {"device_name": env["device_name"], "capability": env["capability"],
                   "sm_count": props.multi_processor_count, "cuda": env["cuda"],
                   "cudnn": env["cudnn"], "triton": env["triton"], "tf32": False,
                   "ours": {H.dtype_name(dt): name for dt, name in ours.items()},
                   "timer": "cuda-events (L2 flushed per call), bench.measure.time_cuda"},
                  alternatives=alternatives)


@contextlib.contextmanager
def _setting(env: str, value: str):
    """An environment setting of rnnkernels for the block (process-wide, so autograd's device
    threads, which run the backward, see it too: a context variable would not reach them)."""
    old = os.environ.get(env)
    os.environ[env] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[env]
        else:
            os.environ[env] = old


TARGETS = {"cpu": cpu_target, "cuda": cuda_target}


# ------------------------------------------------------------------------------- measuring
def _steps(target: Target, cell: str, mode: str, dtype: torch.dtype, B: int, Hs: int, T: int,
           seed: int, bidir: bool = False):
    """(torch.nn's timed step, ours), on the same weights and inputs."""
    cfg = Config(f"plan-{cell}-B{B}-H{Hs}", T=T, B=B, I=Hs, H=Hs, suite="plan",
                 bidirectional=bidir)
    kwargs = H.module_kwargs(cfg, cell)
    state = H.seeded_state(cell, kwargs, seed)
    inputs = H.make_inputs(cfg, cell, target.device, dtype, seed)
    steps = []
    for provider in ("torch", target.ours(dtype)):
        module = H.build_module(provider, cell, kwargs, state, target.device, dtype)
        if mode == "fwdbwd" and inputs.grads is None:
            with torch.no_grad():
                inputs.grads = H.make_grads(H.output_dict(module(inputs.x, inputs.hx)), seed)
        steps.append(H.make_step(module, inputs, mode))
    return steps


def choose_T(target: Target, cell: str, mode: str, dtype: torch.dtype, B: int, Hs: int,
             target_ms: float, seed: int, bidir: bool = False) -> int:
    """The T whose call lasts about ``target_ms``, from torch's time per step at T=8."""
    ref, _ = _steps(target, cell, mode, dtype, B, Hs, T_PROBE, seed, bidir)
    ref()                                                   # first-call costs out of the probe
    per_step = max(statistics.median(target.samples(ref)) / T_PROBE, 1e-4)
    return int(min(T_MAX, max(T_MIN, round(target_ms / per_step))))


def measure_point(target: Target, cell: str, mode: str, dtype: torch.dtype, B: int, Hs: int,
                  T: int, reps: int, seed: int, bidir: bool = False) -> dict:
    """One plan point: medians over ``reps`` interleaved rounds of each side, and their ratio.
    One-direction points also time ours under each of the target's ``alternatives`` (in the
    same rounds; one that fails on the shape is left out) and keep the fastest of ours."""
    ref, ours = _steps(target, cell, mode, dtype, B, Hs, T, seed, bidir)
    ref(), ours()                                           # warm-up (and the one-off costs)
    steps, contexts = [ref, ours], {}
    for label, context in ({} if bidir else target.alternatives(dtype)).items():
        alt = functools.partial(ours)                       # a step of its own identity
        try:
            with context():
                alt()
        except Exception as exc:  # noqa: BLE001 - an alternative that cannot run is left out
            print(f"  {label}: not run at {cell} B={B} H={Hs}: {type(exc).__name__}: {exc}",
                  flush=True)
            continue
        steps.append(alt)
        contexts[alt] = (label, context)

    def sample(step):
        with contexts.get(step, (None, contextlib.nullcontext))[1]():
            return target.samples(step)
    medians = [statistics.median(t) for t in M.interleaved(steps, sample, reps, reps)]
    m_ref, m_ours, best = medians[0], medians[1], None
    for step, m in zip(steps[2:], medians[2:]):
        if m < m_ours:
            m_ours, best = m, contexts[step][0]
    point = {"cell": cell, "mode": mode, "dtype": H.dtype_name(dtype), "B": B, "H": Hs, "T": T,
             **({"bidirectional": True} if bidir else {}), "ratio": round(m_ref / m_ours, 4),
             "torch_ms": round(m_ref, 4), "ours_ms": round(m_ours, 4)}
    if contexts:
        point["strategies_ms"] = {"auto": round(medians[1], 4), **{
            contexts[step][0]: round(m, 4) for step, m in zip(steps[2:], medians[2:])}}
    if best is not None:
        point["triton_strategy"] = best
    return point


def sweep(args, target: Target, key: str, clock: Callable[[], float] = time.perf_counter):
    """(points, missing groups): every (dtype, cell, mode, layout) group whole, in that order,
    until ``args.budget_s`` is spent; the group running out of time and the ones after it are
    missing ("LSTM/fwd/float16", "LSTM/fwd/float16/bidir"), none of their points kept."""
    layouts = getattr(args, "layouts", ("uni",))
    groups = [(dtype, cell, mode, layout) for dtype in args.dtypes for cell in args.cells
              for mode in args.modes for layout in layouts]
    started, points = clock(), []
    for i, (dtype, cell, mode, layout) in enumerate(groups):
        bidir = layout == "bidir"
        group = []
        for Hs in args.hidden:
            for B in args.batches:
                if args.budget_s is not None and clock() - started >= args.budget_s:
                    missing = [f"{c}/{m}/{H.dtype_name(d)}" + ("/bidir" if lo == "bidir" else "")
                               for d, c, m, lo in groups[i:]]
                    print(f"budget of {args.budget_s:g} s spent: {len(group)} points of "
                          f"{missing[0]} dropped; not measured: {', '.join(missing)}", flush=True)
                    return points, missing
                T = args.T or choose_T(target, cell, mode, dtype, B, Hs, args.target_ms,
                                       args.seed, bidir)
                p = measure_point(target, cell, mode, dtype, B, Hs, T, args.reps, args.seed,
                                  bidir)
                group.append(p)
                print(f"{key} {cell:4s} {mode:6s} {layout:5s} {p['dtype']:8s} B={B:<4d} H={Hs:<5d} "
                      f"T={T:<4d} torch {p['torch_ms']:9.3f} ms  ours {p['ours_ms']:9.3f} ms  "
                      f"ratio {p['ratio']:.2f}"
                      + (f" ({p['triton_strategy']})" if "triton_strategy" in p else ""),
                      flush=True)
        points += group
    return points, []


def auto_route(cfg, cell: str, mode: str, dtype: torch.dtype,
               device: str | torch.device = "cpu") -> str:
    """The route the plan gives ``auto`` on a config of ``bench.run`` on ``device`` (the
    ``[impl]`` tag of its ``auto`` rows): "plan: torch" or "plan: ours"."""
    from rnnkernels.backends import plan as P  # noqa: PLC0415
    device_type = torch.device(device).type
    routed = P.routable(device_type, cfg.packed, projected=False) and P.torch_is_faster(
        device, cell, mode == "fwdbwd", dtype, cfg.B, cfg.H, cfg.bidirectional)
    return f"plan: {'torch' if routed else 'ours'}"


# ------------------------------------------------------------------------------- the file
def merge(path: Path, key: str, table: dict, device_type: str = "cpu") -> dict:
    """The plan in ``path`` (or a new one for ``device_type``) with ``table`` under ``key``,
    other tables kept."""
    from rnnkernels.backends import plan as P  # noqa: PLC0415
    doc = {"schema": P.SCHEMA, "device": device_type, "threshold": P.DEFAULT_THRESHOLD,
           "tables": {}}
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
    from rnnkernels.backends import plan as P  # noqa: PLC0415
    try:
        target = TARGETS[args.device](args)
    except Unavailable as exc:
        print(f"bench.plan --device {args.device}: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else P.PLANS_DIR / f"{target.device_type}.json"
    started = time.perf_counter()
    with target.context:
        key = target.table_key()
        points, missing = sweep(args, target, key)
    if not points:   # the budget ended the first group: keep the file (and its table) as it is
        print(f"bench.plan: no group measured within --budget-s {args.budget_s:g}; {out} left "
              "unchanged", file=sys.stderr)
        return 1
    import rnnkernels  # noqa: PLC0415
    env = M.environment("cpu")      # the device-independent fields (no torch.cuda call)
    table = {"measured": {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **target.record, "torch": env["torch"], "rnnkernels": rnnkernels.__version__,
        "git_sha": env["git_sha"], "reps": args.reps, "statistic": "median",
        "quick": args.quick, "complete": not missing, "missing": missing,
        "seconds": round(time.perf_counter() - started)},
        "points": points}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(merge(out, key, table, target.device_type)))
    P.forget()
    print(f"wrote table {key!r} ({len(points)} points) into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
