"""CUDA-graph replay of the ``step`` strategy's per-step launches.

Why: a ``step`` scan launches one kernel per time step, and a triton launch from Python costs
tens of µs of host time at every size, more than the step's own kernel at small B·H, so the GPU
idles between steps. A CUDA graph replays the T launches with one host call. Figures:
``bench/results/gpu-h200-20261126/README.md`` ("Figures behind the Triton plan").

How: a graph is bound to the addresses it was captured with, so each distinct call signature
(kernel, shapes, strides, dtypes, scalars, device, stream) owns STATIC copies of every buffer the
launches touch. A call copies its buffers into the static ones, replays, and copies the buffers
the kernels write back out: two extra passes over memory for T fewer launches
(``MAX_ENTRY_MB`` bounds what one entry may copy). Layers and directions of the same shape share
one entry (they run one after another on a stream). The first call of a signature runs eagerly
(it also compiles the kernel: nothing is compiled during a capture); the second captures and
replays.

Not used: under ``TRITON_INTERPRET=1``, on CPU tensors, inside a caller's own graph capture
(``torch.cuda.is_current_stream_capturing()``: the eager launches are then recorded into the
caller's graph), for T < ``MIN_STEPS``, for buffers above ``MAX_ENTRY_MB``, or with
``RNNKERNELS_TRITON_GRAPHS=0`` (read through ``backends/config.py``). ``clear()`` frees every
entry (``torch.cuda.empty_cache`` does not: the entries hold their static buffers).
"""
from __future__ import annotations

import collections
import threading
from typing import Callable

import torch

from .. import config
from . import plan as _plan

MIN_STEPS = 8
MAX_ENTRY_MB = 512       # static buffers of one entry
MAX_TOTAL_MB = 2048      # all entries together (least recently used evicted first)

_lock = threading.Lock()
_entries: "collections.OrderedDict[tuple, _Entry]" = collections.OrderedDict()
_run_once: "collections.OrderedDict[tuple, None]" = collections.OrderedDict()


class _Entry:
    def __init__(self, static: dict[str, torch.Tensor], graph: torch.cuda.CUDAGraph):
        self.static = static
        self.graph = graph
        self.nbytes = sum(t.numel() * t.element_size() for t in static.values())


def enabled() -> bool:
    return not _plan.INTERPRET and config.flag("triton_graphs")


def clear() -> None:
    """Drop every captured graph and its static buffers."""
    with _lock:
        _entries.clear()
        _run_once.clear()


def _signature(tag: str, bufs: dict[str, torch.Tensor], scalars: tuple) -> tuple:
    layout = tuple((name, tuple(t.shape), tuple(t.stride()), t.dtype, _alias_of(bufs, name))
                   for name, t in bufs.items())
    dev = next(iter(bufs.values())).device
    stream = torch.cuda.current_stream(dev).cuda_stream
    return (tag, scalars, layout, dev.index, stream)


def _alias_of(bufs: dict[str, torch.Tensor], name: str) -> str:
    """The first name under which this very tensor appears (dummies share one buffer)."""
    t = bufs[name]
    for other, u in bufs.items():
        if u is t:
            return other
    return name


def _static_copies(bufs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    static: dict[str, torch.Tensor] = {}
    for name, t in bufs.items():
        first = _alias_of(bufs, name)
        static[name] = static[first] if first != name else torch.empty_strided(
            t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return static


def run(tag: str, bufs: dict[str, torch.Tensor], writes: tuple[str, ...], scalars: tuple,
        steps: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """``steps(bufs)`` launches every step of one scan, reading tensors only from ``bufs``; the
    tensors named in ``writes`` are the ones the kernels write (copied back after a replay).
    ``scalars`` must hold every non-tensor value the launches depend on (T, flags, plan)."""
    T = scalars[0]
    nbytes = sum(t.numel() * t.element_size() for t in {id(t): t for t in bufs.values()}.values())
    if (not enabled() or T < MIN_STEPS or nbytes > MAX_ENTRY_MB << 20
            or torch.cuda.is_current_stream_capturing()):
        steps(bufs)
        return
    key = _signature(tag, bufs, scalars)
    with _lock:
        entry = _entries.get(key)
        if entry is not None:
            _entries.move_to_end(key)
        first = entry is None and key not in _run_once
        if first:
            _run_once[key] = None
            while len(_run_once) > 256:
                _run_once.popitem(last=False)
    if first:
        steps(bufs)                      # first sighting: eager (also compiles the kernel)
        return
    if entry is None:
        entry = _capture(bufs, steps)
        with _lock:
            _entries[key] = entry
            _evict()
    _replay(entry, bufs, writes)


def _capture(bufs: dict[str, torch.Tensor], steps) -> _Entry:
    static = _static_copies(bufs)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        steps(static)
    return _Entry(static, graph)


def _replay(entry: _Entry, bufs: dict[str, torch.Tensor], writes: tuple[str, ...]) -> None:
    done: set[int] = set()
    for name, t in bufs.items():          # every buffer in: inputs, initial states, zeroed
        s = entry.static[name]            # workspaces (inactive steps must read back as 0)
        if id(s) not in done:
            s.copy_(t)
            done.add(id(s))
    entry.graph.replay()
    for name in writes:
        bufs[name].copy_(entry.static[name])


def _evict() -> None:
    total = sum(e.nbytes for e in _entries.values())
    while total > MAX_TOTAL_MB << 20 and len(_entries) > 1:
        _, old = _entries.popitem(last=False)
        total -= old.nbytes
