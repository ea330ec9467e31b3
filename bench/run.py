"""The benchmark runner: ``python -m bench.run`` (what ``make bench`` calls).

For each config × cell × mode × provider it builds the provider's module with the shared weights,
runs the timed step once and scores that call against torch.nn (outputs, and in ``fwdbwd`` every
parameter grad); then times the providers of that case together, their calls interleaved
(median, p20, p80), measures each one's peak extra memory, and prints a table row each. Every row is also one JSON line in ``bench/results/<device>-<suite>-<stamp>.jsonl``
(next to a PNG of the speedups), self-contained: config, provider, mode, dtype, times, memory,
error and tolerance, the environment (torch/triton/CUDA/cuDNN versions, device name, CPU
model, git sha), the thread count and the rnnkernels build measured (``bench/provenance.py``).
A short validation table (odd sizes, every module incl. cells vs torch.nn) runs first;
``--validate`` runs only it. ``--strict`` exits 1 if any error is above tolerance or any
provider failed. Named configs or any shape (``--shape T=200,B=8,H=64``); a progress line with
an ETA on stderr. See bench/README.md for the options and what each number means.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import torch

from . import configs as C
from . import harness as H
from . import measure as M
from . import provenance as P
from . import table
from .plan import auto_route
from .progress import Progress

DEFAULT_OUT = H.REPO / "bench" / "results"


def _spec(text: str) -> C.Config:
    """argparse type of ``--shape``: a shape spec, or a usage error that says what is wrong."""
    try:
        return C.parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad shape spec {text!r}: {exc} (see --help)")


def _config_item(text: str) -> str | C.Config:
    """argparse type of ``--configs``: a shape spec (it has '=') or a name pattern that must
    match a config."""
    if "=" in text:
        return _spec(text)
    if not C.matching(text):
        raise argparse.ArgumentTypeError(f"no config matches {text!r} (known: "
                                         f"{', '.join(C.REGISTRY)}; or a shape spec, see --help)")
    return text


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=C.SPEC_HELP)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="suite", action="store_const", const="quick",
                   help="the quick suite (small shapes, a minute or two on a small CPU)")
    g.add_argument("--full", dest="suite", action="store_const", const="full",
                   help="the full suite (the GPU sweep)")
    p.set_defaults(suite="auto")
    p.add_argument("--validate", action="store_true",
                   help="only the validation table (each module vs torch.nn at odd sizes)")
    p.add_argument("--no-validate", action="store_true",
                   help="skip the validation table that otherwise precedes the benchmark")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda[:N]")
    p.add_argument("--configs", nargs="+", metavar="PATTERN|SPEC", type=_config_item,
                   help="config names or shell patterns from any suite (see --list), or shape "
                        "specs (below)")
    p.add_argument("--shape", action="append", metavar="SPEC", type=_spec, default=[],
                   help="a shape to measure, e.g. cell=lstm,T=200,B=8,H=64 (repeatable; "
                        "spec below)")
    p.add_argument("--cells", default="LSTM,GRU,RNN", help="comma list (default: all three)")
    p.add_argument("--modes", default="fwd,fwdbwd", help="comma list of fwd, fwdbwd")
    p.add_argument("--providers", default=None,
                   help="comma list from torch,cpu,cuda,triton,reference (default: every one "
                        "available on the device; reference only on configs marked for it)")
    p.add_argument("--dtypes", default="float32",
                   help="comma list: float32, bfloat16, float16, float64 (default float32)")
    p.add_argument("--out", default=None,
                   help=f"results folder (default {DEFAULT_OUT.relative_to(H.REPO)})")
    p.add_argument("--tag", default="", help="appended to the result file names")
    p.add_argument("--no-save", action="store_true", help="write no JSONL/PNG, only print")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any error is above tolerance or any provider failed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 in fp32 matmuls and cuDNN (off by default: fp32 is fp32)")
    p.add_argument("--min-time", type=float, default=None,
                   help="CPU: seconds of timed calls per measurement (quick 0.3, full 1.0)")
    p.add_argument("--min-reps", type=int, default=None, help="minimum timed calls (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="CPU: untimed calls before timing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress line with an ETA on stderr (default: when stderr is a "
                        "terminal)")
    p.add_argument("--list", action="store_true", help="list the configs and exit")
    p.add_argument("--variants", action=argparse.BooleanOptionalAction, default=None,
                   help="the recurrent variants' table after the benchmark (bench/variants.py; "
                        "default: on unless --configs or --shape narrow the run)")
    return p.parse_args(argv)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(name)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda requested but torch.cuda.is_available() is False")
    return d


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _dtypes(s: str) -> list[torch.dtype]:
    out = []
    for name in _csv(s):
        if name not in H.DTYPES:
            raise SystemExit(f"bench: unknown dtype {name!r}; expected one of {sorted(H.DTYPES)}")
        out.append(H.DTYPES[name])
    return out


def _budget(args, suite: str, device: torch.device) -> M.TimingBudget:
    b = M.TimingBudget()
    if device.type == "cpu":
        b.min_time = 0.3 if suite == "quick" else 1.0
        b.warmup = 1 if suite == "quick" else 2
        b.min_reps = 3 if suite == "quick" else 5
    else:
        b.min_reps, b.max_reps = 10, 500
        b.warmup_ms, b.rep_time_ms = 50.0, 300.0
    if args.min_time is not None:
        b.min_time = args.min_time
        b.rep_time_ms = 1e3 * args.min_time
    if args.min_reps is not None:
        b.min_reps = args.min_reps
    if args.warmup is not None:
        b.warmup = args.warmup
    return b


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


# ------------------------------------------------------------------------------- measurement
def measure(case: H.Case, providers: list[str], mode: str, budget: M.TimingBudget
            ) -> list[dict]:
    """One record per provider of one case and mode: check each provider's step against
    torch.nn, time all of them together with their calls interleaved (``M.time_steps``: a burst
    of load on a shared machine hits every provider alike, so the ratios hold even when the
    absolute times do not), then measure each one's peak memory."""
    recs, ready = [], []          # ready: (record, module, step) of the providers that run
    for provider in providers:
        rec = {"kind": "bench", "config": case.cfg.to_dict(), "cell": case.cell, "mode": mode,
               "provider": provider, "dtype": H.dtype_name(case.dtype),
               "device": case.device.type, "loadavg_1m": M.loadavg()}
        recs.append(rec)
        try:
            module, step, rec["error"] = H.checked_step(case, provider, mode)
            ready.append((rec, module, step))
        except Exception as exc:  # a provider that cannot run a case is reported, not fatal
            _failed(rec, exc)
    try:
        samples, timer = M.time_steps([step for _, _, step in ready], case.device, budget)
    except Exception:             # which provider raised is not known: time them one by one
        samples, timer = [], "one provider at a time (an interleaved round raised)"
        for rec, _, step in ready:
            try:
                samples.append(M.time_fn(step, case.device, budget)[0])
            except Exception as exc:
                _failed(rec, exc)
                samples.append(None)
    for (rec, module, step), times in zip(ready, samples):
        if times is None:
            continue
        try:
            rec["time_ms"], rec["timer"] = M.summarize(times), timer
            rec["peak_mem_bytes"], rec["mem_kind"] = M.peak_memory(step, case.device, module)
            if rec["provider"] == "torch":
                rec["impl"] = H.torch_impl(module, case.inputs)
            elif rec["provider"] == "auto":
                rec["impl"] = auto_route(case.cfg, case.cell, mode, case.dtype, case.device)
            rec["status"] = "ok"
        except Exception as exc:
            _failed(rec, exc)
    del ready
    if case.device.type == "cuda":
        torch.cuda.empty_cache()
    return recs


def _failed(rec: dict, exc: Exception) -> None:
    rec["status"] = "failed"
    rec["failure"] = f"{type(exc).__name__}: {exc}"


def _providers_for(cfg, device, dtype, explicit: list[str] | None) -> list[str]:
    if explicit:
        return explicit
    avail = H.available_providers(device, dtype, timing=True)
    # Also what a user gets by default: ``auto``, which follows the measured plan (our kernels,
    # or torch's RNN where the plan says it is faster), after our first backend. On a GPU only
    # once the plan has its table: before that ``auto`` is that backend, measured already.
    from rnnkernels.backends import plan as P  # noqa: PLC0415
    ours = next((p for p in ("cpu", "triton", "cuda") if p in avail), None)
    if ours is not None and (device.type == "cpu" or P.table(device.type, device.index)):
        avail.insert(avail.index(ours) + 1, "auto")
    # The reference is a plain Python loop: timed only on small CPU configs marked for it.
    return [p for p in avail if p != "reference" or (cfg.reference and device.type == "cpu")]


def _plan(args, device: torch.device, suite: str) -> list[tuple]:
    """What will be measured, in order: (dtype, config, cells, providers) — known up front so
    the progress line can count it."""
    cfgs = C.select((args.configs or []) + args.shape, suite)
    cells = _csv(args.cells)
    for c in cells:
        if c not in C.CELLS:
            raise SystemExit(f"bench: unknown cell {c!r}; expected {C.CELLS}")
    for m in _csv(args.modes):
        if m not in C.MODES:
            raise SystemExit(f"bench: unknown mode {m!r}; expected {C.MODES}")
    explicit = _csv(args.providers) if args.providers else None
    return [(dtype, cfg, list(cfg.cells) or cells, _providers_for(cfg, device, dtype, explicit))
            for dtype in _dtypes(args.dtypes) for cfg in cfgs]


def run_bench(args, device: torch.device, suite: str, sink) -> list[dict]:
    plan = _plan(args, device, suite)
    modes = _csv(args.modes)
    budget = _budget(args, suite, device)
    env = M.environment(device.type)
    print(f"\n== benchmark: suite={suite}, device={env['device_name']}, torch {env['torch']}, "
          f"triton {env['triton']}, CUDA {env['cuda']}, threads {torch.get_num_threads()}, "
          f"git {env['git_sha'][:12]}", flush=True)
    load = M.loadavg()
    if device.type == "cpu" and load is not None and load > 0.5 * (env["cpu_count"] or 1):
        print(f"WARNING: 1-min load average is {load} on {env['cpu_count']} CPUs: other work is "
              "running and CPU timings will be noisy (each record keeps its loadavg_1m); "
              "--threads 1 avoids OpenMP threads waiting on descheduled peers.",
              flush=True)
    progress = Progress(sum(len(cells) * len(modes) * len(provs) for _, _, cells, provs in plan),
                        sys.stderr.isatty() if args.progress is None else args.progress)
    records = []
    for dtype, cfg, cells, providers in plan:
        shape = "" if cfg.name == cfg.shape() else f" [{cfg.shape()}]"
        progress.print(f"\n{cfg.name}{shape} {H.dtype_name(dtype)} — {cfg.note}\n"
                       + table.header())
        for cell in cells:
            try:
                case = H.prepare_case(cfg, cell, device, dtype, args.seed)
            except Exception as exc:  # e.g. out of memory for torch.nn itself
                rec = {"kind": "bench", "config": cfg.to_dict(), "cell": cell, "mode": "-",
                       "provider": "torch", "dtype": H.dtype_name(dtype),
                       "device": device.type, "status": "failed", "suite": suite,
                       "failure": f"preparing the torch.nn reference: "
                                  f"{type(exc).__name__}: {exc}", "env": env}
                records.append(rec)
                sink(rec)
                progress.print(f"{cell:4s}  {rec['failure']}")
                for _ in range(len(modes) * len(providers)):
                    progress.advance()
                continue
            for mode in modes:
                progress.start(f"{cfg.name} {cell} {mode} ({len(providers)} providers)")
                recs = measure(case, providers, mode, budget)
                base = next((r.get("time_ms", {}).get("median") for r in recs
                             if r["provider"] == "torch"), None)
                for rec in recs:
                    rec["suite"], rec["env"] = suite, env
                    med = (rec.get("time_ms") or {}).get("median")
                    rec["speedup"] = (base / med) if (base and med) else None
                    records.append(rec)
                    sink(rec)
                    progress.advance()
                    progress.print(table.row(rec) + ("" if rec["status"] == "ok" else
                                                     f"\n      {rec['failure']}"))
            del case
    progress.close()
    return records


class _Sink:
    """Appends each record to the JSONL file as it is made, so an interrupted run keeps data;
    every record first gets the fields of ``provenance.stamp`` (schema, threads, rnnkernels)."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def __call__(self, rec: dict) -> None:
        P.stamp(rec)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(rec, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.list:
        for c in C.REGISTRY.values():
            ref = " (+reference)" if c.reference else ""
            print(f"{c.suite:5s}  {c.name:12s}  {c.shape():34s}  {c.note}{ref}")
        print("\nAny other shape: --shape SPEC (or a SPEC among --configs); see --help.")
        return 0
    device = _device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)   # so names, events and memory stats refer to it
    if args.threads:
        torch.set_num_threads(args.threads)
    M.configure_precision(device, args.tf32)
    suite = args.suite if args.suite != "auto" else ("full" if device.type == "cuda" else "quick")
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    stamp = _stamp() + (f"-{args.tag}" if args.tag else "")
    P.warn()   # a missing extension or another copy of rnnkernels: said before any number
    failures = 1 if H.import_rnnkernels()[0] is None else 0

    if not args.no_validate or args.validate:
        from . import validate as V  # noqa: PLC0415
        vpath = None if args.no_save else out_dir / f"{device.type}-validate-{stamp}.jsonl"
        vrecs = V.run_validation(device, _dtypes(args.dtypes), args.seed, _Sink(vpath),
                                 _csv(args.providers) if args.providers else None)
        failures += table.summary(vrecs, "validation")
        if vpath is not None:
            print(f"wrote {vpath}")
    if args.validate:
        return 1 if (args.strict and failures) else 0

    path = None if args.no_save else out_dir / f"{device.type}-{suite}-{stamp}.jsonl"
    records = run_bench(args, device, suite, _Sink(path))
    failures += table.summary(records, "benchmark")
    if path is not None:
        print(f"wrote {path}")
        if not args.no_plot:
            from .plot import plot_speedups  # noqa: PLC0415
            png = plot_speedups(records, path.with_suffix(".png"))
            if png is not None:
                print(f"wrote {png}")
    if args.variants or (args.variants is None and not (args.configs or args.shape)
                         and H.import_rnnkernels()[0] is not None):
        from . import variants as VB  # noqa: PLC0415
        failures += VB.runner_table(device, suite, None if args.no_save else
                                    out_dir / f"{device.type}-variants-{stamp}.jsonl")
    return 1 if (args.strict and failures) else 0


if __name__ == "__main__":
    sys.exit(main())
