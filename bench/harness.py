"""Measurement machinery shared by the runner (``bench/run.py``), ``--validate`` and the
pytest-benchmark tests: providers, inputs, one training/inference step, error metrics, timers,
peak memory and the environment record.

A *provider* is who computes the layer: ``torch`` (torch.nn itself: cuDNN on a GPU, ATen/oneDNN on
the CPU) or one of the rnnkernels backends (``cpu``, ``cuda``, ``triton``, ``reference``). Every
provider gets the same weights (one seeded torch.nn ``state_dict``), the same inputs and the same
output gradients, so errors and speedups compare like with like.
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

REPO = Path(__file__).resolve().parent.parent
HALF = (torch.float16, torch.bfloat16)

# Error tolerances (see ``tensor_error``). fp32/fp64: outputs by max abs error scaled by
# max(1, max|ref|) (outputs are tanh-bounded, so this is an absolute error unless a projection
# makes them large); grads by max abs error relative to max|ref grad| (grads scale with T and
# B). Half types: relative RMS error against torch.nn run in fp32 on the same (half-rounded)
# weights and inputs; torch.nn's own half run is scored the same way, so its row shows what
# "as good as cuDNN/ATen in half" means.
TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64,
          "fp64": torch.float64, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------ providers
# Tests register fake providers here: name -> factory(class_name, ctor_kwargs) -> nn.Module.
EXTRA_PROVIDERS: dict[str, Callable[[str, dict], nn.Module]] = {}


@functools.lru_cache(maxsize=None)
def import_rnnkernels():
    """(module, None) or (None, reason). The bench must keep working, on torch.nn alone, in a
    checkout where the package or its compiled extension is broken: it says so once instead."""
    try:
        import rnnkernels  # noqa: PLC0415
    except Exception as exc:  # ImportError, or an extension that fails to load
        return None, f"{type(exc).__name__}: {exc}"
    return rnnkernels, None


def available_providers(device: torch.device, dtype: torch.dtype = torch.float32,
                        timing: bool = True) -> list[str]:
    """``torch`` first, then the rnnkernels backends that can run on ``device`` for ``dtype``.

    With ``timing=True`` the Triton backend is dropped on the CPU: there it runs under
    TRITON_INTERPRET=1, a Python interpreter of the kernel, whose timings mean nothing.
    """
    names = ["torch"]
    rk, reason = import_rnnkernels()
    if rk is None:
        _warn_once(f"bench: rnnkernels is not importable ({reason}); measuring torch.nn only")
    else:
        try:
            backends = list(rk.available_backends(device, dtype))
        except TypeError:  # an older signature without dtype
            backends = list(rk.available_backends(device))
        order = ["cuda", "cpu", "triton", "reference"]
        backends.sort(key=lambda n: order.index(n) if n in order else len(order))
        for b in backends:
            if timing and b == "triton" and device.type == "cpu":
                continue
            names.append(b)
    names += [n for n in EXTRA_PROVIDERS if n not in names]
    return names


def build_module(provider: str, cls_name: str, kwargs: dict, state: dict,
                 device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A ``cls_name`` module for ``provider`` with weights ``state``, on ``device``/``dtype``."""
    if provider == "torch":
        m = getattr(nn, cls_name)(**kwargs)
    elif provider in EXTRA_PROVIDERS:
        m = EXTRA_PROVIDERS[provider](cls_name, kwargs)
    else:
        rk, reason = import_rnnkernels()
        if rk is None:
            raise RuntimeError(f"provider {provider!r} needs rnnkernels, which failed: {reason}")
        m = getattr(rk, cls_name)(**kwargs, backend=provider)
    m.load_state_dict(state)
    return m.to(device=device, dtype=dtype)


def seeded_state(cls_name: str, kwargs: dict, seed: int) -> dict:
    """torch.nn's default init under ``seed``: the one set of weights every provider loads."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = getattr(nn, cls_name)(**kwargs)
    return {k: v.detach().clone() for k, v in ref.state_dict().items()}


def module_kwargs(cfg, cell: str) -> dict:
    return dict(input_size=cfg.I, hidden_size=cfg.H, num_layers=cfg.layers,
                bidirectional=cfg.bidirectional, bias=True)


# --------------------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """What one call gets: ``x`` (tensor or PackedSequence) and ``hx``. ``grads`` (the upstream
    gradients of output, h_n[, c_n]) are filled in once the output shapes are known."""

    x: Tensor | PackedSequence
    hx: Tensor | tuple | None
    grads: list[Tensor] | None = None
    lengths: Tensor | None = None

    def to(self, dtype: torch.dtype) -> "Inputs":
        def cast(t):
            if t is None:
                return None
            if isinstance(t, PackedSequence):   # a namedtuple: not to be taken apart below
                return t.to(dtype)
            if isinstance(t, tuple):
                return tuple(cast(u) for u in t)
            return t.to(dtype)
        return Inputs(cast(self.x), cast(self.hx),
                      None if self.grads is None else [g.to(dtype) for g in self.grads],
                      self.lengths)


def _randn(gen: torch.Generator, shape, device, dtype) -> Tensor:
    # Drawn in fp32 on the CPU so every device and dtype sees the same numbers (rounded once).
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


def make_inputs(cfg, cell: str, device: torch.device, dtype: torch.dtype, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed + 1)
    D = 2 if cfg.bidirectional else 1
    x = _randn(gen, (cfg.T, cfg.B, cfg.I), device, dtype)
    h0 = _randn(gen, (cfg.layers * D, cfg.B, cfg.H), device, dtype)
    hx: Tensor | tuple = h0
    if cell == "LSTM":
        hx = (h0, _randn(gen, (cfg.layers * D, cfg.B, cfg.H), device, dtype))
    lengths = None
    if cfg.packed:
        lengths = torch.randint(max(1, cfg.T // 4), cfg.T + 1, (cfg.B,), generator=gen)
        lengths[torch.randint(0, cfg.B, (1,), generator=gen)] = cfg.T
        x = pack_padded_sequence(x, lengths, enforce_sorted=False)
    return Inputs(x, hx, None, lengths)


def output_dict(result, cell: bool = False) -> dict[str, Tensor]:
    """A module's result as {'output', 'h_n'[, 'c_n']}; for cells {'h'[, 'c']}."""
    if cell:
        if isinstance(result, Tensor):                   # RNNCell / GRUCell
            return {"h": result}
        return {"h": result[0], "c": result[1]}          # LSTMCell
    first, second = result
    d = {"output": first.data if isinstance(first, PackedSequence) else first}
    if isinstance(second, tuple):
        d["h_n"], d["c_n"] = second
    else:
        d["h_n"] = second
    return d


def make_grads(outputs: dict[str, Tensor], seed: int) -> list[Tensor]:
    """Random upstream gradients (fp32, CPU-drawn) so the loss touches every output element."""
    gen = torch.Generator().manual_seed(seed + 2)
    return [torch.randn(t.shape, generator=gen).to(device=t.device, dtype=t.dtype)
            for t in outputs.values()]


# ---------------------------------------------------------------------------------------- steps
def make_step(module: nn.Module, inp: Inputs, mode: str,
              cell: bool = False) -> Callable[[], object]:
    """The callable that is timed. ``fwd``: inference under no_grad. ``fwdbwd``: one training
    step: clear grads, forward, backward from (output, h_n[, c_n]) into every parameter."""
    params = [p for p in module.parameters() if p.requires_grad]
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return module(inp.x, inp.hx)
    elif mode == "fwdbwd":
        assert inp.grads is not None

        def step():
            for p in params:
                p.grad = None
            res = module(inp.x, inp.hx)
            torch.autograd.backward(list(output_dict(res, cell).values()), inp.grads)
            return res
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return step


def param_grads(module: nn.Module) -> dict[str, Tensor | None]:
    return {f"grad.{n}": p.grad for n, p in module.named_parameters()}


# --------------------------------------------------------------------------------------- errors
def error_metric(dtype: torch.dtype) -> str:
    return "rel_rms" if dtype in HALF else "max_abs_scaled"


def tensor_error(test: Tensor | None, ref: Tensor, dtype: torch.dtype, is_grad: bool) -> float:
    """Error of ``test`` against ``ref`` by the metric of ``dtype`` (see TOLERANCE). A missing
    tensor, a shape mismatch or any non-finite value the reference does not have gives inf."""
    if test is None or tuple(test.shape) != tuple(ref.shape):
        return math.inf
    a, b = test.detach().double(), ref.detach().double()
    if not bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all()):
        return math.inf
    if a.numel() == 0:
        return 0.0
    diff = a - b
    if dtype in HALF:
        den = float(b.norm())
        num = float(diff.norm())
        return num / den if den > 0 else (0.0 if num == 0 else math.inf)
    scale = float(b.abs().max())
    if not is_grad:
        scale = max(1.0, scale)
    num = float(diff.abs().max())
    if scale == 0:
        return 0.0 if num == 0 else math.inf
    err = num / scale
    return math.inf if math.isnan(err) else err


def max_abs(test: Tensor | None, ref: Tensor) -> float:
    if test is None or tuple(test.shape) != tuple(ref.shape):
        return math.inf
    if ref.numel() == 0:
        return 0.0
    v = float((test.detach().double() - ref.detach().double()).abs().max())
    return math.inf if math.isnan(v) else v


def compare(test: dict, ref: dict, dtype: torch.dtype) -> dict:
    """Errors of every tensor in ``ref`` (outputs and, if present, ``grad.*``) against ``test``.

    Returns max abs errors of outputs and of grads, the worst metric value and which tensor it
    came from, the tolerance for ``dtype`` and whether everything is within it."""
    tol = TOLERANCE[dtype]
    worst, worst_of = 0.0, None
    out_abs, grad_abs = 0.0, None
    for key, r in ref.items():
        is_grad = key.startswith("grad")
        if r is None:                      # the reference has no grad there (e.g. unused bias)
            continue
        t = test.get(key)
        e = tensor_error(t, r, dtype, is_grad)
        a = max_abs(t, r)
        if is_grad:
            grad_abs = a if grad_abs is None else max(grad_abs, a)
        else:
            out_abs = max(out_abs, a)
        if e > worst or worst_of is None:
            worst, worst_of = e, key
    return {"metric": error_metric(dtype), "worst": worst, "worst_of": worst_of,
            "outputs_max_abs": out_abs, "grads_max_abs": grad_abs, "tol": tol,
            "ok": bool(worst <= tol)}


# --------------------------------------------------------------------------------------- timing
def summarize(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"median": float(np.median(a)), "p20": float(np.percentile(a, 20)),
            "p80": float(np.percentile(a, 80)), "mean": float(a.mean()), "min": float(a.min()),
            "n": int(a.size)}


@dataclass
class TimingBudget:
    """CPU: ``warmup`` calls, then repetitions until ``min_time`` s and ``min_reps`` are both
    reached (at most ``max_reps``). CUDA: ``warmup`` ms of calls, then ``rep_time`` ms of timed
    calls (between ``min_reps`` and ``max_reps``)."""

    warmup: int = 2
    min_time: float = 0.5
    min_reps: int = 5
    max_reps: int = 200
    warmup_ms: float = 25.0
    rep_time_ms: float = 200.0


def time_cpu(fn: Callable, budget: TimingBudget) -> list[float]:
    for _ in range(budget.warmup):
        fn()
    samples = []
    deadline = time.perf_counter() + budget.min_time
    while len(samples) < budget.max_reps and (
            len(samples) < budget.min_reps or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_cuda(fn: Callable, budget: TimingBudget, flush_l2: bool = True) -> list[float]:
    """Per-call CUDA-event times (ms), as ``triton.testing.do_bench`` measures them: the L2 is
    flushed before every call (a 256 MB memset outside the events), so no call is helped by the
    previous call's weights still sitting in L2, and the host never waits inside the loop."""
    torch.cuda.synchronize()
    est_start, est_end = torch.cuda.Event(True), torch.cuda.Event(True)
    est_start.record()
    for _ in range(3):
        fn()
    est_end.record()
    torch.cuda.synchronize()
    est = max(est_start.elapsed_time(est_end) / 3, 1e-3)
    n_warm = max(1, int(budget.warmup_ms / est))
    n_rep = int(min(budget.max_reps, max(budget.min_reps, budget.rep_time_ms / est)))
    cache = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda") if flush_l2 else None
    for _ in range(n_warm):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for i in range(n_rep):
        if cache is not None:
            cache.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def time_fn(fn: Callable, device: torch.device, budget: TimingBudget) -> tuple[list[float], str]:
    if device.type == "cuda":
        return time_cuda(fn, budget), "cuda-events (L2 flushed per call)"
    return time_cpu(fn, budget), "time.perf_counter"


# --------------------------------------------------------------------------------------- memory
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def _proc_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_rss_peak() -> bool:
    # Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


CPU_MEMORY_KIND = "rss_peak_delta"
CUDA_MEMORY_KIND = "cuda_max_allocated_delta"


def peak_memory(fn: Callable, device: torch.device, module: nn.Module) -> tuple[int | None, str]:
    """Extra memory one call needs at its peak, over what is resident before it (weights and
    inputs are already there; parameter grads are cleared first so their allocation counts).

    CUDA: ``max_memory_allocated`` minus ``memory_allocated`` before the call — bytes of tensors
    from PyTorch's caching allocator (cuDNN workspaces included, as they come from it).

    CPU: peak resident set size (VmHWM, reset through /proc/self/clear_refs) minus the RSS before
    the call, after ``malloc_trim(0)`` has handed free heap pages back to the OS so that the
    call's allocations have to fault in fresh pages. It counts every byte the process touches
    (activations, workspaces, oneDNN scratch, the C++ extension's buffers) at page granularity,
    with no tracing overhead. Returns (None, kind) where the OS does not allow the reset."""
    for p in module.parameters():
        p.grad = None
    # No gc.collect(): tensors here are freed by reference counting, and a full collection
    # costs ~1 s per call in a process that has imported triton.
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        res = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del res
        return int(peak), CUDA_MEMORY_KIND
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
    base = _proc_kib("VmRSS")
    if base is None or not _reset_rss_peak():
        return None, CPU_MEMORY_KIND
    base = _proc_kib("VmRSS")
    res = fn()
    peak = _proc_kib("VmHWM")
    del res
    return max(0, (peak - base) * 1024), CPU_MEMORY_KIND


# ---------------------------------------------------------------------------------- environment
def configure_precision(device: torch.device, allow_tf32: bool) -> None:
    """fp32 means fp32: TF32 off for matmuls and cuDNN (cuDNN's RNN would otherwise use TF32 by
    default, making the baseline both faster and less accurate than what it is compared to)."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=None)
def environment(device_type: str) -> dict:
    env = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_sha": _git_sha(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "") not in ("", "0"),
        "hostname": platform.node(),
    }
    try:
        import triton  # noqa: PLC0415
        env["triton"] = triton.__version__
    except Exception:  # triton is optional
        env["triton"] = None
    rk, _ = import_rnnkernels()
    env["rnnkernels"] = getattr(rk, "__version__", "unknown") if rk is not None else None
    if device_type == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
        cap = torch.cuda.get_device_capability()
        env["capability"] = f"{cap[0]}.{cap[1]}"
        try:  # reading the legacy flags raises if someone set TF32 through the newer API
            env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
            env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        except RuntimeError as exc:
            env["tf32_matmul"] = env["tf32_cudnn"] = f"unknown ({exc})"
        env["nvidia_tf32_override"] = os.environ.get("NVIDIA_TF32_OVERRIDE")
    else:
        env["device_name"] = env["cpu_model"]
        env["mkldnn"] = torch.backends.mkldnn.is_available()
    return env


def torch_impl(module: nn.Module, inp: Inputs) -> str:
    """Which ATen kernel torch.nn ran, read off the autograd graph of one forward:
    ``cudnn_rnn``, ``mkldnn_rnn_layer`` (oneDNN), ``miopen_rnn``, or the generic ATen loop
    of per-step ops (``ATen cell loop``), which is what the CPU uses for GRU and RNN."""
    special = {"CudnnRnnBackward0": "cudnn_rnn", "MkldnnRnnLayerBackward0": "mkldnn_rnn_layer",
               "MiopenRnnBackward0": "miopen_rnn"}
    with torch.enable_grad():
        res = module(inp.x, inp.hx)
    out = res[0].data if isinstance(res[0], PackedSequence) else res[0]
    stack, seen = [out.grad_fn], set()
    while stack and len(seen) < 5000:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        name = type(fn).__name__
        if name in special:
            return special[name]
        stack.extend(f for f, _ in fn.next_functions)
    return "ATen cell loop"


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- cases
def oracle_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Case:
    """One (config, cell, dtype) on a device: the shared weights and inputs, and torch.nn's
    answer — outputs and parameter grads of one training step — computed once, in fp32 (fp64
    for fp64) on the same weights and inputs rounded to ``dtype``."""

    cfg: object
    cell: str
    device: torch.device
    dtype: torch.dtype
    kwargs: dict
    state: dict
    inputs: Inputs
    ref: dict

    def ref_for(self, mode: str) -> dict:
        if mode == "fwd":
            return {k: v for k, v in self.ref.items() if not k.startswith("grad")}
        return self.ref


def prepare_case(cfg, cell: str, device: torch.device, dtype: torch.dtype, seed: int) -> Case:
    kwargs = module_kwargs(cfg, cell)
    state = seeded_state(cell, kwargs, seed)
    inputs = make_inputs(cfg, cell, device, dtype, seed)
    odt = oracle_dtype(dtype)
    # Weights and inputs rounded to dtype first, so a half kernel is scored on its arithmetic,
    # not on the rounding of its operands.
    ostate = {k: v.to(dtype).to(odt) for k, v in state.items()}
    oracle = build_module("torch", cell, kwargs, ostate, device, odt)
    oinp = inputs.to(odt)
    with torch.no_grad():
        outs = output_dict(oracle(oinp.x, oinp.hx))
    grads = [g.to(dtype) for g in make_grads(outs, seed)]
    inputs.grads = grads
    oinp.grads = [g.to(odt) for g in grads]
    res = make_step(oracle, oinp, "fwdbwd")()
    ref = {k: v.detach().clone() for k, v in output_dict(res).items()}
    ref.update({k: (None if v is None else v.detach().clone())
                for k, v in param_grads(oracle).items()})
    del oracle, res
    return Case(cfg, cell, device, dtype, kwargs, state, inputs, ref)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def checked_step(case: Case, provider: str, mode: str) -> tuple[nn.Module, Callable, dict]:
    """Build ``provider``'s module, make the timed step, run it once and score that very call
    against torch.nn (the first call of the function that is then timed is the one checked)."""
    m = build_module(provider, case.cell, case.kwargs, case.state, case.device, case.dtype)
    step = make_step(m, case.inputs, mode)
    res = step()
    sync(case.device)
    test = dict(output_dict(res))
    if mode == "fwdbwd":
        test.update(param_grads(m))
    err = compare(test, case.ref_for(mode), case.dtype)
    del res, test
    return m, step, err


def loadavg() -> float | None:
    """1-minute load average: CPU timings taken while other work runs (load above the core
    count) are not comparable, so every record carries it and the runner warns."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
