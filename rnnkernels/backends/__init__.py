"""The backends: registry, the ``Backend`` protocol, and ``resolve()`` — their one home.

A backend implements the six scan functions of ``docs/BACKENDS.md`` plus ``supports``:

============  =====================================  =============================================
name          module                                 what it is
============  =====================================  =============================================
triton        ``backends/triton/``                   @triton.jit kernels and one launcher (GPU)
cuda, cpu     ``backends/compiled.py``               the compiled extension ``rnnkernels._C``
reference     ``backends/reference.py``              plain PyTorch loops: the test oracle
torch         (``functional``)                       not a scan backend: the whole call goes to
                                                     torch's own RNN (``torch._VF``); what ``auto``
                                                     uses for autograd modes the scans lack
============  =====================================  =============================================

Choosing one for a call (``resolve``):

* an explicit name (module kwarg, or env ``RNNKERNELS_BACKEND`` when the kwarg is ``"auto"``) must
  run the case or raise ``RuntimeError`` saying why; an unknown name raises ``ValueError``;
* ``"auto"`` takes the first backend of the device's preference list that can run the case. When
  it passes over a preferred backend it says so once (a ``RuntimeWarning`` per distinct reason).

Every environment variable and option the backends read is in ``backends/config.py``.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Protocol

import torch

from . import config

NAMES = config.BACKEND_NAMES
TORCH = config.TORCH_ROUTE
# name -> (module, attribute of the module that is the backend, or None for the module itself)
_WHERE = {
    "triton": ("rnnkernels.backends.triton", None),
    "cuda": ("rnnkernels.backends.compiled", "cuda"),
    "cpu": ("rnnkernels.backends.compiled", "cpu"),
    "reference": ("rnnkernels.backends.reference", None),
}
# Fastest first. Triton is never auto-picked on the CPU: there it is an interpreter (tests only).
_PREFERENCE = {
    "cuda": ("triton", "cuda", "reference"),
    "cpu": ("cpu", "reference"),
}
_warned: set[str] = set()


class Backend(Protocol):
    """What a backend provides (shapes, dtypes and semantics: ``docs/BACKENDS.md``)."""

    NAME: str

    def supports(self, device_type: str, dtype: torch.dtype) -> str | None:
        """None if the backend can run tensors of this device type and dtype, else why not."""

    def lstm_forward(self, xp, h0, c0, w_hh, w_hr, lengths, reverse, save): ...
    def gru_forward(self, xp, h0, w_hh, b_hn, lengths, reverse, save): ...
    def rnn_forward(self, xp, h0, w_hh, lengths, reverse, relu, save): ...
    def lstm_backward(self, grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, lengths, reverse,
                      out, gates, cs): ...
    def gru_backward(self, grad_out, grad_hn, h0, w_hh, b_hn, lengths, reverse, out, gates,
                     hn_lin): ...
    def rnn_backward(self, grad_out, grad_hn, h0, w_hh, lengths, reverse, relu, out): ...


def check_name(name: str) -> str:
    """``name`` if it is ``"auto"``, ``"torch"`` or a backend's name, else ``ValueError``."""
    if name not in ("auto", TORCH) and name not in NAMES:
        raise ValueError(f"unknown rnnkernels backend {name!r}; expected 'auto', {TORCH!r} or one "
                         f"of {NAMES}")
    return name


def get(name: str) -> Backend:
    """The backend called ``name`` (``ValueError`` if there is no such backend)."""
    if check_name(name) in ("auto", TORCH):
        raise ValueError(f"{name!r} is not a scan backend: resolve() 'auto' first; 'torch' hands "
                         "the whole call to torch's own RNN in rnnkernels.functional")
    module, attr = _WHERE[name]
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)


def why_not(name: str, device_type: str, dtype: torch.dtype) -> str | None:
    """None if backend ``name`` can run this case, else the reason it cannot."""
    try:
        backend = get(name)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        return f"backend {name!r} cannot be imported: {exc}"
    return backend.supports(device_type, dtype)


def available_backends(device: str | torch.device | None = None,
                       dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the scan backends that can run tensors of ``device`` and ``dtype`` here.

    ``device`` defaults to cuda if present, else cpu; the names come in registry order
    (``NAMES``), each one a backend whose ``supports()`` says yes in this installation (the
    compiled extension built, triton importable, ...). Any of them, ``"auto"`` or ``"torch"``
    (torch's own kernels, always there) is a valid ``backend=`` of the modules and functions.

    >>> "reference" in rnnkernels.available_backends("cpu")
    True
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    return [n for n in NAMES if why_not(n, device_type, dtype) is None]


def requested(backend: str) -> str:
    """Apply the env override: ``RNNKERNELS_BACKEND`` replaces ``"auto"``, never an explicit
    name."""
    check_name(backend)
    if backend == "auto":
        return config.get("backend")
    return backend


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def torch_route(backend: str, unsupported_mode: str | None, torch_is_faster: bool = False) -> bool:
    """Whether a call goes to torch's own RNN: asked for by name; or under ``auto`` where the
    measured plan says torch's kernel is faster (``torch_is_faster``: ``auto`` is never slower
    than torch.nn), or when the call runs in an autograd mode the scans cannot differentiate
    (``unsupported_mode`` says which; said once). A named scan backend in such a mode raises
    ``RuntimeError``. ``torch_is_faster`` is ``backends/plan.py``'s answer for a layer call
    (a cell's own rule for cells) and counts only when the backend requested stays ``auto``
    after ``RNNKERNELS_BACKEND``: a named backend never routes for speed."""
    backend = requested(backend)
    if backend == TORCH:
        return True
    if unsupported_mode is None:
        return backend == "auto" and torch_is_faster
    if backend == "auto":
        _warn_once(f"rnnkernels: backend='auto' hands calls made under {unsupported_mode} to "
                   "torch's own RNN kernels (the fused scans do not support that mode)")
        return True
    raise RuntimeError(f"rnnkernels: backend {backend!r} cannot run under {unsupported_mode}; "
                       f"use backend='auto' or {TORCH!r} (torch's own RNN kernels)")


def resolve(backend: str, device_type: str, dtype: torch.dtype) -> str:
    """The concrete scan backend that will run a call (see the module docstring)."""
    backend = requested(backend)
    if backend == TORCH:
        raise ValueError("backend 'torch' has no scan: check torch_route() first")
    if backend != "auto":
        reason = why_not(backend, device_type, dtype)
        if reason is not None:
            raise RuntimeError(
                f"rnnkernels: backend {backend!r} cannot run this case ({device_type}, {dtype}): "
                f"{reason}. Use backend='auto' to route to one that can.")
        return backend
    skipped = []
    for name in _PREFERENCE.get(device_type, ("reference",)):
        reason = why_not(name, device_type, dtype)
        if reason is None:
            if skipped:
                _warn_once(f"rnnkernels: backend='auto' on {device_type}/{dtype} uses {name!r}; "
                           + "; ".join(f"{n!r} skipped: {r}" for n, r in skipped))
            return name
        skipped.append((name, reason))
    raise RuntimeError(
        f"rnnkernels: no backend can run this case ({device_type}, {dtype}): "
        + "; ".join(f"{n}: {r}" for n, r in skipped))
