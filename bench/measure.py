"""Timers, peak memory and the environment record, for the runner (``bench/run.py``),
``--validate`` and the pytest-benchmark tests."""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .harness import REPO

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


def interleaved(steps: list[Callable], sample: Callable[[Callable], list[float]],
                min_rounds: int, max_rounds: int | None = None,
                min_time: float = 0.0) -> list[list[float]]:
    """Samples of several steps taken in rounds: each round calls ``sample`` once on every step,
    starting one step further each round (a, b, c; b, c, a; ...), so that drift and bursts of
    load on a shared machine land on every step alike instead of on whichever was timed
    during them. At least ``min_rounds`` rounds, then more until ``min_time`` s of rounds have
    passed, at most ``max_rounds``. One list of samples (ms) per step, in ``steps``' order."""
    out: list[list[float]] = [[] for _ in steps]
    deadline = time.perf_counter() + min_time
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < deadline
                                  and (max_rounds is None or rounds < max_rounds)):
        n = len(steps)
        for k in range(n):
            i = (rounds + k) % n
            out[i].extend(sample(steps[i]))
        rounds += 1
    return out


def one_call_ms(fn: Callable) -> list[float]:
    """One call's time (ms), as a list of samples (``interleaved``'s ``sample``)."""
    t0 = time.perf_counter()
    fn()
    return [(time.perf_counter() - t0) * 1e3]


# Rounds of a CUDA measurement: each round is one ``time_cuda`` of 1/CUDA_ROUNDS of the budget.
CUDA_ROUNDS = 5


def time_steps(steps: list[Callable], device: torch.device, budget: TimingBudget
               ) -> tuple[list[list[float]], str]:
    """``time_fn`` for several providers of one case at once, their calls interleaved
    (``interleaved``): on the CPU one call per step a round, ``budget.warmup`` calls of each
    first, rounds until every step has ``min_reps`` samples and the rounds took ``min_time`` s
    per step; on CUDA ``CUDA_ROUNDS`` rounds of ``time_cuda`` with a fifth of the budget each."""
    if device.type == "cuda":
        part = TimingBudget(min_reps=max(1, budget.min_reps // CUDA_ROUNDS),
                            max_reps=max(1, budget.max_reps // CUDA_ROUNDS),
                            warmup_ms=budget.warmup_ms / CUDA_ROUNDS,
                            rep_time_ms=budget.rep_time_ms / CUDA_ROUNDS)
        return (interleaved(steps, lambda fn: time_cuda(fn, part), CUDA_ROUNDS),
                f"cuda-events (L2 flushed per call), {CUDA_ROUNDS} interleaved rounds")
    for fn in steps:
        for _ in range(budget.warmup):
            fn()
    samples = interleaved(steps, one_call_ms, budget.min_reps, budget.max_reps,
                          budget.min_time * len(steps))
    return samples, "time.perf_counter, providers' calls interleaved"


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
    """What does not change during a run (threads and the rnnkernels build are record fields of
    their own: ``bench/provenance.py``)."""
    env = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_sha": _git_sha(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "") not in ("", "0"),
        "hostname": platform.node(),
    }
    try:
        import triton  # noqa: PLC0415
        env["triton"] = triton.__version__
    except Exception:  # triton is optional
        env["triton"] = None
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



def loadavg() -> float | None:
    """1-minute load average: CPU timings taken while other work runs (load above the core
    count) are not comparable, so every record carries it and the runner warns."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
