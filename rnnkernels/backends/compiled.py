"""The compiled backends ``cpu`` and ``cuda``: thin wrappers over ``torch.ops.rnnkernels_C``.

The extension (built from ``csrc/`` and ``python/``) registers the six functions of the backend
contract (``docs/BACKENDS.md``) as torch ops in the namespace ``rnnkernels_C``, with a CPU and,
when built with CUDA, a CUDA implementation. This module exposes two backend objects with the
contract's signatures::

    >>> from rnnkernels.backends import compiled as ext
    >>> ext.AVAILABLE, ext.cpu.NAME
    (True, 'cpu')
    >>> out, h_n, c_n, gates, cs = ext.cpu.lstm_forward(xp, h0, c0, w_hh, None, None, False, True)

The extension is loaded lazily, the first time it is needed (a backend's ``supports()``,
``AVAILABLE``, ``build_info()``...), never at ``import rnnkernels``: ``jit_build.load()`` imports
the prebuilt ``rnnkernels._C`` when it was built for the running torch, else builds it for this
torch on first use (1-2 min, cached; ``RNNKERNELS_NO_JIT=1`` turns that off). When neither works
the package still runs: ``AVAILABLE`` is False, ``ERROR`` says why and what to do, and
``supports()`` of both backends returns that reason, so ``backend="auto"`` routes elsewhere (and
says so once) while ``backend="cpu"`` raises it.

Process-wide switches (mostly for tests and benchmarks), see ``set_option``:
``cpu_path`` = auto | gemm | fused, ``cuda_path`` = auto | step | persistent,
``cpu_isa`` = auto | avx512 | avx2 | generic.
"""
from __future__ import annotations

import contextlib
import threading

import torch

from ..cells import CELLS
from . import jit_build

_loaded: jit_build.Loaded | None = None
_load_lock = threading.Lock()


def _load() -> jit_build.Loaded:
    """Load the extension once per process (thread-safe; a failure is remembered too)."""
    global _loaded
    if _loaded is None:
        with _load_lock:
            if _loaded is None:
                loaded = jit_build.load()
                if loaded.error is None:
                    _register_fakes()
                _loaded = loaded
    return _loaded


def __getattr__(name: str):
    """``AVAILABLE`` (whether the extension is loaded) and ``ERROR`` (why not, or None): module
    attributes computed on first access, which loads the extension."""
    if name == "AVAILABLE":
        return _load().error is None
    if name == "ERROR":
        return _load().error
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_info() -> dict | None:
    """How the loaded extension was built (loading it first, which may build it), or None when it
    is unavailable (``ERROR`` says why). Keys: ``torch`` and ``cuda`` (versions it was built for;
    cuda None for a CPU-only build), ``isa`` (CPU instruction sets compiled in), ``compiler``,
    ``built_by`` ("setup.py" ahead of time, or "jit" on first use), ``built_at``, ``path`` (the
    shared object), ``rnnkernels`` (version) and ``sources`` (digest of the sources and flags).

    >>> ext.build_info()["built_by"]
    'setup.py'
    """
    info = _load().info
    return None if info is None else dict(info)

_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}


def _ops():
    return torch.ops.rnnkernels_C


def has_cuda() -> bool:
    """Whether the extension was built with its CUDA kernels."""
    return _load().error is None and bool(_ops().has_cuda())


def set_option(name: str, value: str) -> None:
    """Set a process-wide option of the extension (``cpu_path``, ``cuda_path``, ``cpu_isa``)."""
    _require()
    _ops().set_option(name, value)
    if name == "cpu_isa":     # the measured plan's table is the running ISA's (backends/plan.py)
        from . import plan
        plan.forget()


def get_option(name: str) -> str:
    _require()
    return _ops().get_option(name)


@contextlib.contextmanager
def option(name: str, value: str):
    """Temporarily set an option: ``with ext.option("cpu_path", "fused"): ...``."""
    old = get_option(name)  # for cpu_isa the ISA in use, which set_option accepts back
    set_option(name, value)
    try:
        yield
    finally:
        set_option(name, old)


def _require() -> None:
    error = _load().error
    if error is not None:
        raise RuntimeError(f"rnnkernels: the compiled extension rnnkernels._C is not available: "
                           f"{error}")


class _Backend:
    """One device's view of the extension, with the six contract functions."""

    def __init__(self, name: str):
        self.NAME = name

    def __repr__(self) -> str:  # never loads the extension
        state = "not loaded yet" if _loaded is None else _loaded.error is None
        return f"<rnnkernels backend {self.NAME!r} (rnnkernels._C, available={state})>"

    def supports(self, device_type: str, dtype: torch.dtype) -> str | None:
        """None if this backend can run the case, else the reason (see docs/BACKENDS.md)."""
        if device_type != self.NAME:  # first: no reason to load (or build) the extension
            return f"the {self.NAME} backend runs {self.NAME} tensors only, not {device_type}"
        error = _load().error
        if error is not None:
            return f"the compiled extension rnnkernels._C is not available: {error}"
        if self.NAME == "cuda":
            if not has_cuda():
                return "rnnkernels._C was built without CUDA kernels"
            if not torch.cuda.is_available():
                return "no CUDA device is available"
        if dtype not in _DTYPES[self.NAME]:
            names = ", ".join(str(d).replace("torch.", "") for d in _DTYPES[self.NAME])
            return f"the {self.NAME} backend does not support dtype {dtype} (supported: {names})"
        return None

    def _check(self, fn: str, ref: torch.Tensor) -> None:
        _require()
        if ref.device.type != self.NAME:
            raise RuntimeError(f"rnnkernels {self.NAME} backend: {fn} got tensors on {ref.device}; "
                               f"it runs {self.NAME} tensors only")
        if self.NAME == "cuda" and not has_cuda():
            raise RuntimeError("rnnkernels cuda backend: rnnkernels._C was built without CUDA")

    # ------------------------------------------------------------------------ forwards
    def lstm_forward(self, xp, h0, c0, w_hh, w_hr, lengths, reverse, save=True):
        """-> out [T,B,P], h_n [B,P], c_n [B,H], gates [T,B,4H] (acc), cs [T,B,H] (acc)."""
        self._check("lstm_forward", xp)
        return tuple(_ops().lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, bool(reverse),
                                         bool(save)))

    def gru_forward(self, xp, h0, w_hh, b_hn, lengths, reverse, save=True):
        """-> out [T,B,H], h_n [B,H], gates [T,B,3H] (acc), hn_lin [T,B,H] (acc)."""
        self._check("gru_forward", xp)
        return tuple(_ops().gru_forward(xp, h0, w_hh, b_hn, lengths, bool(reverse), bool(save)))

    def rnn_forward(self, xp, h0, w_hh, lengths, reverse, relu, save=True):
        """-> out [T,B,H], h_n [B,H]."""
        self._check("rnn_forward", xp)
        return tuple(_ops().rnn_forward(xp, h0, w_hh, lengths, bool(reverse), bool(relu),
                                        bool(save)))

    # ----------------------------------------------------------------------- backwards
    def lstm_backward(self, grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, lengths, reverse, out,
                      gates, cs):
        """-> dxp [T,B,4H], dh0 [B,P], dc0 [B,H], dh [T,B,P] (acc; empty without w_hr)."""
        self._check("lstm_backward", h0)
        return tuple(_ops().lstm_backward(grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, lengths,
                                          bool(reverse), out, gates, cs))

    def gru_backward(self, grad_out, grad_hn, h0, w_hh, b_hn, lengths, reverse, out, gates,
                     hn_lin):
        """-> dxp [T,B,3H], dh0 [B,H]."""
        self._check("gru_backward", h0)
        return tuple(_ops().gru_backward(grad_out, grad_hn, h0, w_hh, b_hn, lengths,
                                         bool(reverse), out, gates, hn_lin))

    def rnn_backward(self, grad_out, grad_hn, h0, w_hh, lengths, reverse, relu, out):
        """-> dxp [T,B,H], dh0 [B,H]."""
        self._check("rnn_backward", h0)
        return tuple(_ops().rnn_backward(grad_out, grad_hn, h0, w_hh, lengths, bool(reverse),
                                         bool(relu), out))


cpu = _Backend("cpu")
cuda = _Backend("cuda")


# ------------------------------------------------------------------- fake (meta) kernels
# Shapes only, from the cell specs, so torch.library.opcheck / FakeTensor tracing can see through
# the extension's ops (the same shapes as the rnnkernels::*_scan ops').
def _register_fakes() -> None:
    for cell in CELLS.values():
        torch.library.register_fake(f"rnnkernels_C::{cell.name}_forward")(_fake_forward(cell))
        torch.library.register_fake(f"rnnkernels_C::{cell.name}_backward")(_fake_backward(cell))


def _fake_forward(cell):
    def fake(xp, h0, *args):
        return cell.fake_forward(xp, h0, save=args[-1])
    return fake


def _fake_backward(cell):
    # the schema's order: grad_out, grad_<state>n per state, <state>0 per state, w_hh, then
    # (a projection cell) w_hr, ...
    n = len(cell.states)

    def fake(*args):
        w_hr = args[2 + 2 * n] if cell.projection else None
        return cell.fake_backward(args[0], args[1 + n], args[1 + 2 * n], w_hr)
    return fake

