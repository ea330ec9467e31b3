"""``python -m rnnkernels``: everything a bug report needs, and a self-check against torch.nn.

:func:`report` collects the versions (rnnkernels, Python, torch, triton), the machine (CPU model
and the ISA flags the CPU kernels care about, GPUs), the compiled extension's build, every backend
on every device type with the reason it cannot run when it cannot, the effective settings of
``backends/config.py``, and then runs a short self-check: LSTM, GRU, RNN and a cell at tiny odd
sizes, one forward and backward on each available backend, compared with torch.nn on the same
weights and inputs. :func:`format_report` renders it for a terminal. The one place a user's
environment is described, so that it is described the same way every time.

Not imported by ``import rnnkernels`` (it imports triton and runs kernels).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import sys
import warnings
from pathlib import Path

import torch

import rnnkernels

from . import backends
from .backends import config

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
DEVICE_TYPES = ("cpu", "cuda")
# What the compiled CPU kernels dispatch on (csrc/cpu/scan_dispatch.cpp).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512dq")
# The self-check: module, constructor kwargs. Odd sizes so an indexing slip cannot hide.
CHECK_T, CHECK_B, CHECK_I, CHECK_H = 5, 3, 7, 11
CHECK_CASES = (
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("GRU", dict(batch_first=True)),
    ("RNN", dict(nonlinearity="relu")),
    ("GRUCell", dict()),
)
# float32, TF32 off: max|ours - torch.nn| <= TOLERANCE * max(1, max|torch.nn|), tensor by tensor.
TOLERANCE = 1e-4


def _dtype(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------- environment
def _cpu() -> dict:
    """CPU model and ISA flags from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    info = {"model": platform.processor() or platform.machine(), "count": os.cpu_count(),
            "isa": None, "torch_capability": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    if model:
        info["model"] = model.group(1).strip()
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    if flags:
        present = set(flags.group(1).split())
        info["isa"] = {f: f in present for f in ISA_FLAGS}
    get_cap = getattr(torch.backends.cpu, "get_cpu_capability", None)
    if get_cap is not None:
        info["torch_capability"] = get_cap()
    return info


def _gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1)})
    return out


def _torch() -> dict:
    cudnn = torch.backends.cudnn
    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "hip": getattr(torch.version, "hip", None),
            "cudnn": cudnn.version() if cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}


def _triton() -> dict:
    info = {"version": None, "error": None, "interpret": None}
    try:
        import triton  # noqa: PLC0415  (optional dependency)
        info["version"] = triton.__version__
    except Exception as exc:  # ImportError, or a broken install
        info["error"] = _error(exc)
    try:
        info["interpret"] = config.flag("triton_interpret")
    except ValueError as exc:
        info["interpret"] = str(exc)
    return info


def extension_info() -> dict:
    """The compiled extension ``rnnkernels._C``: whether it loads (and why not), where it is, how
    it was built (``compiled.build_info()`` when this version of the package has it), whether it
    has CUDA kernels, and the current values of its process-wide options."""
    from .backends import compiled  # noqa: PLC0415
    available = bool(compiled.AVAILABLE)   # loads it (or builds it) on first access
    info = {"available": available, "error": compiled.ERROR, "path": None, "has_cuda": None,
            "build": None, "options": {}}
    build_info = getattr(compiled, "build_info", None)
    if callable(build_info):
        try:
            info["build"] = build_info()
        except Exception as exc:  # diagnostics must report, not crash
            info["build"] = {"error": _error(exc)}
    info["path"] = (info["build"] or {}).get("path")
    if info["path"] is None:
        spec = importlib.util.find_spec("rnnkernels._C")
        info["path"] = spec.origin if spec is not None else None
    if available:
        with contextlib.suppress(Exception):
            info["has_cuda"] = bool(compiled.has_cuda())
        for name in config.EXTENSION_OPTIONS:
            try:
                info["options"][name] = compiled.get_option(name)
            except Exception as exc:  # e.g. cuda_path on a build without CUDA
                info["options"][name] = f"({_error(exc)})"
    return info


def backend_table() -> dict:
    """{device_type: {"present", backend: {"available", "reason", "dtypes"}, "auto"}}: every
    backend on every device type, ``reason`` saying why it cannot run float32 there."""
    table = {}
    for dev in DEVICE_TYPES:
        entry = {"present": dev == "cpu" or torch.cuda.is_available(), "backends": {}}
        for name in backends.NAMES:
            reasons = {_dtype(d): backends.why_not(name, dev, d) for d in DTYPES}
            entry["backends"][name] = {
                "available": reasons["float32"] is None, "reason": reasons["float32"],
                "dtypes": [d for d, r in reasons.items() if r is None]}
        entry["auto"] = None
        with warnings.catch_warnings():   # resolve() says once when it passes a backend over
            warnings.simplefilter("ignore")
            try:
                if entry["present"]:
                    entry["auto"] = backends.resolve("auto", dev, torch.float32)
            except (RuntimeError, ValueError) as exc:
                entry["auto"] = f"({exc})"
        table[dev] = entry
    return table


def settings() -> list[dict]:
    """The effective value of every setting of ``backends/config.py`` (an invalid value in the
    environment is reported as the error the package raises for it)."""
    rows = []
    for key, s in config.SETTINGS.items():
        row = {"key": key, "env": s.env, "default": s.default, "value": None, "error": None}
        try:
            row["value"] = config.get(key)
        except ValueError as exc:
            row["error"] = str(exc)
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------- self-check
@contextlib.contextmanager
def _exact_fp32():
    """TF32 off while comparing: cuDNN and cuBLAS would otherwise round fp32 matmuls to TF32."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _inputs(cls: str, kwargs: dict, gen: torch.Generator):
    """x and hx (on the CPU, fp32) for one self-check case."""
    if cls.endswith("Cell"):
        x = torch.randn(CHECK_B, CHECK_I, generator=gen)
        h = torch.randn(CHECK_B, CHECK_H, generator=gen)
        return x, ((h, torch.randn_like(h)) if cls == "LSTMCell" else h)
    shape = (CHECK_B, CHECK_T, CHECK_I) if kwargs.get("batch_first") else \
        (CHECK_T, CHECK_B, CHECK_I)
    x = torch.randn(shape, generator=gen)
    L = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    h = torch.randn(L, CHECK_B, CHECK_H, generator=gen)
    return x, ((h, torch.randn_like(h)) if cls == "LSTM" else h)


def _run(module, x, hx, seed: int) -> dict:
    """Outputs, input/state grads and parameter grads of one forward+backward."""
    leaves = [t.clone().requires_grad_(True) for t in [x, *(hx if isinstance(hx, tuple) else
                                                              [hx])]]
    x, states = leaves[0], leaves[1:]
    out = module(x, tuple(states) if len(states) > 1 else states[0])
    flat = [out] if isinstance(out, torch.Tensor) else \
        [out[0], *(out[1] if isinstance(out[1], tuple) else [out[1]])]
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(t.shape, generator=gen).to(t.device) for t in flat]
    torch.autograd.backward(flat, grads)
    result = {f"out{i}": t.detach() for i, t in enumerate(flat)}
    result.update({f"grad_input{i}": t.grad for i, t in enumerate(leaves)})
    result.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
    return result


def check_case(cls: str, kwargs: dict, backend: str, device: str, seed: int = 0) -> dict:
    """One module on one backend against torch.nn: PASS, FAIL (with the worst tensor) or ERROR."""
    row = {"module": cls, "kwargs": kwargs, "backend": backend, "device": device,
           "max_abs_diff": None, "worst": None, "status": "ERROR", "message": None}
    full_kwargs = dict(input_size=CHECK_I, hidden_size=CHECK_H, **kwargs)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ref = getattr(torch.nn, cls)(**full_kwargs)
        ours = getattr(rnnkernels, cls)(**full_kwargs, backend=backend)
        ours.load_state_dict(ref.state_dict())
        ref, ours = ref.to(device), ours.to(device)
        x, hx = _inputs(cls, kwargs, torch.Generator().manual_seed(seed + 1))
        x = x.to(device)
        hx = tuple(h.to(device) for h in hx) if isinstance(hx, tuple) else hx.to(device)
        with _exact_fp32():
            want, got = _run(ref, x, hx, seed + 2), _run(ours, x, hx, seed + 2)
    except Exception as exc:  # a backend that raises is a failed check, reported with why
        row["message"] = _error(exc)
        return row
    worst, worst_key, failed = 0.0, None, []
    for key, w in want.items():
        g = got.get(key)
        if g is None or g.shape != w.shape:
            failed.append(f"{key}: missing or wrong shape")
            continue
        diff = float((g.double() - w.double()).abs().max()) if w.numel() else 0.0
        if diff != diff:   # NaN
            diff = float("inf")
        if diff > worst or worst_key is None:
            worst, worst_key = diff, key
        if diff > TOLERANCE * max(1.0, float(w.abs().max()) if w.numel() else 0.0):
            failed.append(f"{key}: max|diff| {diff:.2e}")
    row.update(max_abs_diff=worst, worst=worst_key, status="FAIL" if failed else "PASS",
               message="; ".join(failed) or None)
    return row


def _interpreted(backend: str, device: str) -> bool:
    """Triton on the CPU (or anywhere with TRITON_INTERPRET on) runs in Python: slow."""
    return backend == "triton" and (device == "cpu" or config.flag("triton_interpret"))


def self_check(table: dict, full: bool = False) -> dict:
    """Every :data:`CHECK_CASES` module on every available backend of every present device."""
    cases, skipped = [], []
    for dev, entry in table.items():
        if not entry["present"]:
            continue
        for name, b in entry["backends"].items():
            if not b["available"]:
                continue
            if _interpreted(name, dev) and not full:
                skipped.append({"backend": name, "device": dev, "reason": "Triton runs in its "
                                "CPU interpreter here (slow); `python -m rnnkernels --full` "
                                "checks it"})
                continue
            cases += [check_case(cls, kw, name, dev) for cls, kw in CHECK_CASES]
    return {"tolerance": TOLERANCE, "sizes": dict(T=CHECK_T, B=CHECK_B, I=CHECK_I, H=CHECK_H),
            "dtype": "float32", "cases": cases, "skipped": skipped,
            "passed": all(c["status"] == "PASS" for c in cases)}


def plan_info() -> dict:
    """The routing plan of ``auto`` on the CPU in force here (``backends/plan.py``'s
    ``describe``): its file, the table key of this machine and whether the file has that table,
    the number of measured points, the threshold and the ``RNNKERNELS_PLAN`` setting."""
    from .backends import plan  # noqa: PLC0415
    try:
        return plan.describe("cpu")
    except Exception as exc:  # noqa: BLE001 - e.g. an invalid RNNKERNELS_PLAN value
        return {"error": _error(exc)}


def _plan_line(info: dict) -> str:
    if info.get("error"):
        return f"plan        cpu: {info.get('file', '?')}: {info['error']}"
    where = f"plan        cpu: {info['file']}"
    if info["setting"] == "off":
        return f"{where}; RNNKERNELS_PLAN=off: auto never hands calls to torch for speed"
    if not info["in_force"]:
        return (f"{where}; none for this machine (table key {info['key']}; the file has "
                f"{', '.join(info['tables']) or 'no tables'}): auto runs our kernels")
    date = (info["measured"] or {}).get("date", "?")
    return (f"{where}; table {info['key']!r} ({info['points']} points, measured {date}): torch's "
            f"RNN where its ratio < {info['threshold']}")


# ------------------------------------------------------------------------------------ report
def report(check: bool = True, full: bool = False) -> dict:
    """The whole diagnostic report as one JSON-serializable dict (``--json`` prints it)."""
    table = backend_table()
    rep = {
        "rnnkernels": {"version": rnnkernels.__version__,
                       "path": str(Path(rnnkernels.__file__).resolve().parent)},
        "python": {"version": sys.version.split()[0],
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": platform.platform(),
        "torch": _torch(), "triton": _triton(),
        "machine": {"cpu": _cpu(), "gpus": _gpus()},
        "extension": extension_info(), "backends": table, "settings": settings(),
        "plan": plan_info(),
        "self_check": self_check(table, full) if check else None,
    }
    rep["ok"] = rep["self_check"] is None or rep["self_check"]["passed"]
    return rep


def _case_name(c: dict) -> str:
    kw = c["kwargs"]
    extra = [f"L{kw['num_layers']}" if kw.get("num_layers") else "",
             "bidir" if kw.get("bidirectional") else "", "bf" if kw.get("batch_first") else "",
             kw.get("nonlinearity", "")]
    return "-".join([c["module"], *[e for e in extra if e]])


def format_report(rep: dict) -> str:
    """The report for a terminal (and a bug report): one fact per line."""
    t, tr, cpu, ext = rep["torch"], rep["triton"], rep["machine"]["cpu"], rep["extension"]
    isa = " ".join(f for f, on in (cpu["isa"] or {}).items() if on) or "unknown"
    lines = [
        f"rnnkernels  {rep['rnnkernels']['version']}  ({rep['rnnkernels']['path']})",
        f"python      {rep['python']['version']} {rep['python']['implementation']} "
        f"({rep['python']['executable']})",
        f"platform    {rep['platform']}",
        f"torch       {t['version']}  CUDA {t['cuda']}  HIP {t['hip']}  cuDNN {t['cudnn']}  "
        f"threads {t['threads']} (interop {t['interop_threads']})",
        f"triton      {tr['version'] or 'not importable: ' + str(tr['error'])}  "
        f"TRITON_INTERPRET {'on' if tr['interpret'] is True else tr['interpret'] or 'off'}",
        f"cpu         {cpu['model']} ({cpu['count']} CPUs); ISA {isa}; torch CPU capability "
        f"{cpu['torch_capability']}",
        "gpus        " + (", ".join(f"[{g['index']}] {g['name']} (sm {g['capability']}, "
                                    f"{g['memory_gib']} GiB)" for g in rep["machine"]["gpus"])
                          or "none"),
    ]
    if ext["available"]:
        build = ext["build"] or {}
        built = ", ".join(f"{k} {'+'.join(map(str, v)) if isinstance(v, list) else v}"
                          for k, v in build.items() if k != "path") or \
            "build info not recorded by this version"
        lines.append(f"extension   loaded from {ext['path']}; CUDA kernels {ext['has_cuda']}; "
                     f"{built}")
        lines.append("            options: " + ", ".join(f"{k}={v}" for k, v in
                                                         ext["options"].items()))
    else:
        lines.append(f"extension   NOT available: {ext['error']}")
    if "plan" in rep:
        lines.append(_plan_line(rep["plan"]))
    lines.append("\nbackends (float32; [dtypes that can run])")
    for dev, entry in rep["backends"].items():
        lines.append(f"  {dev}: " + (f"auto -> {entry['auto']}" if entry["present"] else
                                      "no such device here"))
        for name, b in entry["backends"].items():
            what = f"yes  [{', '.join(b['dtypes'])}]" if b["available"] else f"no   {b['reason']}"
            lines.append(f"    {name:10s} {what}")
    lines.append("\nsettings")
    for s in rep["settings"]:
        value = s["value"] if s["error"] is None else f"INVALID: {s['error']}"
        lines.append(f"  {s['env']:28s} {value}  (default {s['default']})")
    sc = rep["self_check"]
    if sc is None:
        lines.append("\nself-check: not run (--no-check)")
        return "\n".join(lines)
    sz = sc["sizes"]
    lines.append(f"\nself-check vs torch.nn ({sc['dtype']}, forward+backward, T={sz['T']} "
                 f"B={sz['B']} I={sz['I']} H={sz['H']}; PASS: max|diff| <= {sc['tolerance']:.0e}"
                 " * max(1, max|torch.nn|) per tensor)")
    for c in sc["cases"]:
        diff = "-" if c["max_abs_diff"] is None else f"{c['max_abs_diff']:.1e}"
        lines.append(f"  {_case_name(c):18s} {c['device']:5s} {c['backend']:10s} max|diff| "
                     f"{diff:>8s}  {c['status']}" + (f"  {c['message']}" if c["message"] else ""))
    for s in sc["skipped"]:
        lines.append(f"  skipped: {s['backend']} on {s['device']}: {s['reason']}")
    bad = sum(c["status"] != "PASS" for c in sc["cases"])
    lines.append(f"self-check: {len(sc['cases']) - bad} passed, {bad} failed"
                 + (f", {len(sc['skipped'])} backend(s) skipped" if sc["skipped"] else ""))
    return "\n".join(lines)
