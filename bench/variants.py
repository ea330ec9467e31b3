"""The recurrent variants (docs/VARIANTS.md): a training step of each, ours against what a user
writes without rnnkernels, against that compiled, and against our plain cell of the same size.

For each variant in ``VARIANTS`` and each batch size: one training step (zero the grads,
forward, backward from fixed random upstream gradients of the output and the final states into
every parameter) of

* ``ours``: the rnnkernels module with the variant, ``backend="auto"`` (the backend it resolves
  to is recorded: the reference loop until a fused kernel implements the variant);
* ``loop``: the same variant as a user writes it from the equations: ``nn.Parameter`` weights
  (ours' values), the input projection of all steps as one GEMM, then a Python ``for`` loop over
  the steps (``bench/variant_loops.py``; fresh masks per step for zoneout, as users draw them);
* ``compiled``: ``torch.compile`` of that loop (guarded: a compile that fails or takes longer
  than ``--compile-timeout`` s is recorded with why, and the row goes on without it);
* ``plain``: our plain LSTM / GRU of the same size and layers (``auto``): what the variant costs.

Calls are interleaved (one of each provider per round, the order rotating) so that drift of a
shared machine hits all alike; medians (and p20/p80) of the rounds. Before timing, the loop is
checked against ours in eval mode (no random masks): ``max_err`` in each record. Targets of issue
16 beside the ratios: ours ≥ 5x the loop at B=1 and ≥ 2x at B>1; ≥ 2x the compiled loop at
B=1 and ≥ 1.3x at B>1; at most 1.3x our plain cell.

    python -m bench.variants [--B 1,64] [--T 100] [--H 256] [--rounds 7] [--threads N]
        [--variants NAME,...] [--no-compile] [--device cpu,cuda] [--json F] [--md F]

One entry of ``VARIANTS`` adds a variant (module class, options, the user loop's step).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from . import measure as M
from . import provenance as P
from .variant_loops import (UserLoop, gru_step, ln_gru_step, ln_lstm_step, lstm_step,
                            slstm_step)

PROVIDERS = ("ours", "loop", "compiled", "plain")


# ---------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Variant:
    """One row group of the table: ``module`` (an rnnkernels class name) with ``options``, the
    user loop's ``step`` (with ``states`` carried states), and the plain class it is compared
    with (``plain``: our module of the same size and layers, no option)."""

    module: str
    options: dict
    step: Callable
    states: int
    plain: str
    layers: int = 1
    extra: dict = field(default_factory=dict)     # non-variant constructor arguments


VARIANTS: dict[str, Variant] = {
    "peephole-lstm": Variant("LSTM", dict(peephole=True), lstm_step, 2, "LSTM"),
    "heads4-lstm": Variant("LSTM", dict(num_heads=4), lstm_step, 2, "LSTM"),
    "heads4-gru": Variant("GRU", dict(num_heads=4), gru_step, 1, "GRU"),
    "zoneout-lstm": Variant("LSTM", dict(zoneout=0.1), lstm_step, 2, "LSTM"),
    "zoneout-gru": Variant("GRU", dict(zoneout=0.1), gru_step, 1, "GRU"),
    "locked-dropout-lstm": Variant("LSTM", dict(locked_dropout=True, input_dropout=0.25,
                                                output_dropout=0.25), lstm_step, 2, "LSTM",
                                   layers=2, extra=dict(dropout=0.25)),
    "layer-norm-lstm": Variant("LSTM", dict(layer_norm=True), ln_lstm_step, 2, "LSTM"),
    "layer-norm-gru": Variant("GRU", dict(layer_norm=True), ln_gru_step, 1, "GRU"),
    "slstm-heads4": Variant("SLSTM", dict(num_heads=4), slstm_step, 4, "LSTM"),
}


def targets(B: int) -> dict:
    """Issue 16's targets: (loop, compiled loop) speedups at least, ours/plain at most."""
    return {"loop": 5.0 if B == 1 else 2.0, "compiled": 2.0 if B == 1 else 1.3, "plain": 1.3}


# ------------------------------------------------------------------------------ measurement
class CompileTimeout(Exception):
    pass


def _compiled(loop: UserLoop, first_call: Callable, timeout_s: float):
    """(torch.compile of ``loop``, None) once its first call (the compile) ran within
    ``timeout_s`` s, else (None, why). The limit is a SIGALRM timer, so only in the main
    thread; elsewhere the compile runs unguarded."""
    start = time.perf_counter()
    guard = timeout_s > 0 and hasattr(signal, "setitimer") and \
        threading.current_thread() is threading.main_thread()

    def alarm(signum, frame):
        raise CompileTimeout

    old = signal.signal(signal.SIGALRM, alarm) if guard else None
    try:
        if guard:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
        compiled = torch.compile(loop)
        first_call(compiled)
    except Exception as exc:  # a loop Dynamo/Inductor cannot compile is a result, not a crash
        cause = exc
        while cause is not None and not isinstance(cause, CompileTimeout):
            cause = cause.__cause__ or cause.__context__        # Dynamo may wrap the timer's
        if cause is not None:
            return None, f"torch.compile took more than {timeout_s:g} s (stopped)"
        return None, f"torch.compile failed: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        if guard:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    return (compiled, round(time.perf_counter() - start, 1)), None


def _train_step(module: nn.Module, x: Tensor, grads: list[Tensor], device) -> Callable:
    """One training step: grads cleared, forward, backward from ``grads`` (output, states)."""
    def step():
        for p in module.parameters():
            p.grad = None
        out = module(x)
        out = [out[0], *out[1]] if isinstance(out[1], tuple) else list(out)
        torch.autograd.backward(out, grads)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def _backend_of(module: nn.Module, x: Tensor) -> str:
    """The backend ``auto`` runs ``module`` on (for the record)."""
    import rnnkernels  # noqa: PLC0415
    if isinstance(module, rnnkernels.SLSTM):
        return rnnkernels.slstm.resolve("auto", x.device.type, x.dtype)
    spec = getattr(module, "_variant", None)
    if spec is not None and spec.recurrent():
        return rnnkernels.variants.resolve("auto", spec, x.device.type, x.dtype)
    return rnnkernels.backends.resolve("auto", x.device.type, x.dtype)


def measure(name: str, var: Variant, T: int, B: int, H: int, device, rounds: int,
            compile_timeout: float | None) -> list[dict]:
    """The records of one variant at one batch size: one per provider, timed interleaved."""
    import rnnkernels  # noqa: PLC0415
    torch.manual_seed(0)
    ctor = dict(num_layers=var.layers, **var.extra)
    ours = getattr(rnnkernels, var.module)(H, H, **ctor, **var.options).to(device)
    plain = getattr(rnnkernels, var.plain)(H, H, **ctor).to(device)
    loop = UserLoop(ours, var.step, var.states).to(device)
    x = torch.randn(T, B, H, device=device)
    with torch.no_grad():
        out = ours.eval()(x)[0]
        max_err = float((loop.eval()(x)[0] - out).abs().max())
    ours.train(), loop.train()
    sizes = [(T, B, H)] + [(var.layers, B, H)] * var.states
    grads = [torch.randn(s, device=device) for s in sizes]
    steps = {"ours": _train_step(ours, x, grads, device),
             "loop": _train_step(loop, x, grads, device),
             "plain": _train_step(plain, x, grads, device)}
    notes = {"ours": f"backend {_backend_of(ours, x)}", "loop": "", "plain": "",
             "compiled": ""}
    if compile_timeout is None:
        notes["compiled"] = "not measured (--no-compile)"
    else:
        torch._dynamo.reset()
        result, why = _compiled(loop, lambda c: _train_step(c, x, grads, device)(),
                                compile_timeout)
        if result is None:
            notes["compiled"] = why
        else:
            steps["compiled"] = _train_step(result[0], x, grads, device)
            notes["compiled"] = f"compile {result[1]} s"
    names = [p for p in PROVIDERS if p in steps]
    samples: dict[str, list[float]] = {p: [] for p in names}
    for r in range(rounds + 1):                        # round 0 warms up
        for p in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            steps[p]()
            if r:
                samples[p].append((time.perf_counter() - t0) * 1e3)
    base = dict(kind="variants", variant=name, module=var.module, options=var.options,
                T=T, B=B, H=H, layers=var.layers, dtype="float32", mode="fwdbwd",
                device=device.type, max_err=max_err, loadavg_1m=M.loadavg(),
                env=M.environment(device.type))
    records = []
    for p in PROVIDERS:
        rec = dict(base, provider=p, note=notes[p], status="ok" if p in samples else "skipped")
        if p in samples:
            rec["time_ms"] = M.summarize(samples[p])
        records.append(P.stamp(rec))
    return records


# ---------------------------------------------------------------------------------- reporting
def ratios(records: list[dict]) -> dict:
    """Per provider's median, the ratios against the targets, for one (variant, B) group."""
    med = {r["provider"]: r["time_ms"]["median"] for r in records if r["status"] == "ok"}
    want = targets(records[0]["B"])
    out = {}
    if "ours" in med:
        for p in ("loop", "compiled"):
            if p in med:
                out[p] = {"speedup": med[p] / med["ours"], "target": want[p],
                          "met": med[p] / med["ours"] >= want[p]}
        if "plain" in med:
            out["plain"] = {"ratio": med["ours"] / med["plain"], "target": want["plain"],
                            "met": med["ours"] / med["plain"] <= want["plain"]}
    return out


def markdown(groups: list[list[dict]]) -> str:
    """The table: one row per (variant, B), times in ms (median), ratios beside the targets."""
    def ms(group, p):
        rec = next(r for r in group if r["provider"] == p)
        return f"{rec['time_ms']['median']:.2f}" if rec["status"] == "ok" else "—"

    def mark(rat, key, fmt):
        if key not in rat:
            return "—"
        v = rat[key].get("speedup", rat[key].get("ratio"))
        return f"{fmt.format(v)} {'✓' if rat[key]['met'] else '✗'}"

    lines = ["| variant | B | ours ms | ours runs on | loop ms | loop/ours (≥5x B=1, ≥2x) | "
             "compiled ms | compiled/ours (≥2x B=1, ≥1.3x) | plain ms | ours/plain (≤1.3x) | "
             "max err (eval) |", "|" + "---|" * 11]
    notes = []
    for group in groups:
        g0, rat = group[0], ratios(group)
        backend = next(r["note"] for r in group if r["provider"] == "ours")
        lines.append(f"| {g0['variant']} | {g0['B']} | {ms(group, 'ours')} | "
                     f"{backend.removeprefix('backend ')} | {ms(group, 'loop')} | "
                     f"{mark(rat, 'loop', '{:.2f}x')} | {ms(group, 'compiled')} | "
                     f"{mark(rat, 'compiled', '{:.2f}x')} | {ms(group, 'plain')} | "
                     f"{mark(rat, 'plain', '{:.2f}x')} | {g0['max_err']:.1e} |")
        compiled = next(r for r in group if r["provider"] == "compiled")
        if compiled["status"] != "ok":
            notes.append(f"- {g0['variant']} B={g0['B']}: compiled loop {compiled['note']}")
    g0 = groups[0][0] if groups else {}
    head = (f"Training step (forward + backward), T={g0.get('T')}, H=I={g0.get('H')}, fp32, "
            f"{g0.get('device')}, {g0.get('threads')} thread(s), load {g0.get('loadavg_1m')}; "
            "medians of interleaved rounds.\n\n")
    return head + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def run(names: list[str], T: int, Bs: list[int], H: int, device, rounds: int,
        compile_timeout: float | None, sink: Callable[[dict], None] = lambda rec: None,
        log=print) -> list[list[dict]]:
    """Every variant in ``names`` at every B: the record groups (each record also to ``sink``;
    the ``ours`` record carries the group's ``ratios``)."""
    groups = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="rnnkernels: backend='auto' runs")
        for name in names:
            for B in Bs:
                log(f"variants: {name} B={B} ...", flush=True)
                try:
                    group = measure(name, VARIANTS[name], T, B, H, device, rounds,
                                    compile_timeout)
                except Exception as exc:  # a variant that cannot run here is a result
                    sink(P.stamp(dict(kind="variants", variant=name, B=B, T=T, H=H,
                                      device=device.type, status="failed",
                                      failure=f"{type(exc).__name__}: {exc}")))
                    log(f"variants: {name} B={B} FAILED: {type(exc).__name__}: {exc}")
                    continue
                group[0]["ratios"] = ratios(group)
                for rec in group:
                    sink(rec)
                groups.append(group)
    return groups


def runner_table(device, suite: str, jsonl: Path | None, T: int = 100, Bs=(1, 64),
                 H: int = 256) -> int:
    """The variants table of ``python -m bench.run`` (``make bench``): T=100, H=I=256,
    B ∈ {1, 64}; quick: 3 rounds and no compiled loop (its compile alone takes minutes), full:
    7 rounds and the compiled loop. Writes ``jsonl`` and the markdown next to it (``.md``);
    returns the number of variants that failed to run."""
    full = suite == "full"
    print(f"\n== variants: training step, T={T}, H=I={H}, {device.type}"
          + ("" if full else " (quick: no compiled loop)"), flush=True)
    records = []
    groups = run(list(VARIANTS), T, list(Bs), H, device, 7 if full else 3,
                 120.0 if full else None, sink=records.append)
    table = markdown(groups)
    print(table, flush=True)
    if jsonl is not None:
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        jsonl.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
        jsonl.with_suffix(".md").write_text(table)
        print(f"wrote {jsonl} and {jsonl.with_suffix('.md')}")
    return sum(r.get("status") == "failed" for r in records)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.variants",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma list from {', '.join(VARIANTS)}")
    p.add_argument("--B", default="1,64", help="batch sizes, comma list")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--H", type=int, default=256, help="hidden size (= input size)")
    p.add_argument("--rounds", type=int, default=7, help="timed interleaved rounds")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto",
                   help="comma list of cpu, cuda; auto: the CPU, and CUDA when present")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd loop")
    p.add_argument("--compile-timeout", type=float, default=120.0,
                   help="seconds a compile may take before it is recorded as too slow")
    p.add_argument("--json", default=None, help="write one JSON line per record to this file")
    p.add_argument("--md", default=None, help="write the markdown table to this file")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) \
        if args.device == "auto" else args.device.split(",")
    P.warn()
    lines, tables = [], []
    for device in map(torch.device, devices):
        M.configure_precision(device, allow_tf32=False)
        groups = run(names, args.T, [int(b) for b in args.B.split(",")], args.H, device,
                     args.rounds, None if args.no_compile else args.compile_timeout,
                     sink=lambda rec: lines.append(json.dumps(rec, default=str)),
                     log=lambda *a, **k: print(*a, file=sys.stderr, **k))
        tables.append(markdown(groups))
    table = "\n".join(tables)
    print(table)
    if args.json:
        Path(args.json).write_text("\n".join(lines) + "\n")
    if args.md:
        Path(args.md).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
