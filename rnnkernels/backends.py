"""Backend registry and selection.

A backend is a module (or object) implementing the six functions of ``docs/BACKENDS.md``. This
file knows their names, imports them lazily, and picks one for a call:

* an explicit name (module kwarg, or env ``RNNKERNELS_BACKEND`` when the kwarg is ``"auto"``) must
  run the case or raise ``RuntimeError`` saying why; an unknown name raises ``ValueError``;
* ``"auto"`` takes the first backend of the device's preference list that can run the case. When
  it passes over a preferred backend it says so once (a ``RuntimeWarning`` per distinct reason).
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch

NAMES = ("triton", "cuda", "cpu", "reference")
# Fastest first. Triton is never auto-picked on the CPU: there it is an interpreter (tests only).
_PREFERENCE = {
    "cuda": ("triton", "cuda", "reference"),
    "cpu": ("cpu", "reference"),
}
_warned: set[str] = set()


def _load(name: str):
    if name == "reference":
        return importlib.import_module("rnnkernels.reference.scan")
    if name == "triton":
        return importlib.import_module("rnnkernels.triton")
    if name in ("cpu", "cuda"):
        ext = importlib.import_module("rnnkernels.ext")
        return getattr(ext, name)
    raise ValueError(f"unknown rnnkernels backend {name!r}; expected 'auto' or one of {NAMES}")


def get(name: str):
    """The backend module/object called ``name`` (``ValueError`` if there is no such backend)."""
    if name not in NAMES:
        raise ValueError(f"unknown rnnkernels backend {name!r}; expected 'auto' or one of {NAMES}")
    return _load(name)


def check_name(name: str) -> str:
    if name != "auto" and name not in NAMES:
        raise ValueError(f"unknown rnnkernels backend {name!r}; expected 'auto' or one of {NAMES}")
    return name


def why_not(name: str, device_type: str, dtype: torch.dtype, **sizes) -> str | None:
    """None if backend ``name`` can run this case, else the reason it cannot."""
    try:
        backend = get(name)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        return f"backend {name!r} cannot be imported: {exc}"
    return backend.supports(device_type, dtype, **sizes)


def available_backends(device: str | torch.device | None = None,
                       dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can run on ``device`` (default: cuda if present, else cpu).

    >>> "reference" in rnnkernels.available_backends("cpu")
    True
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    return [n for n in NAMES if why_not(n, device_type, dtype) is None]


def requested(backend: str) -> str:
    """Apply the env override: ``RNNKERNELS_BACKEND`` replaces ``"auto"``, never an explicit name."""
    check_name(backend)
    if backend == "auto":
        env = os.environ.get("RNNKERNELS_BACKEND", "").strip()
        if env:
            return check_name(env)
    return backend


def resolve(backend: str, device_type: str, dtype: torch.dtype, **sizes) -> str:
    """The concrete backend name that will run a call (see the module docstring)."""
    backend = requested(backend)
    if backend != "auto":
        reason = why_not(backend, device_type, dtype, **sizes)
        if reason is not None:
            raise RuntimeError(
                f"rnnkernels: backend {backend!r} cannot run this case ({device_type}, {dtype}): "
                f"{reason}. Use backend='auto' to route to one that can.")
        return backend
    skipped = []
    for name in _PREFERENCE.get(device_type, ("reference",)):
        reason = why_not(name, device_type, dtype, **sizes)
        if reason is None:
            if skipped:
                msg = (f"rnnkernels: backend='auto' on {device_type}/{dtype} uses {name!r}; "
                       + "; ".join(f"{n!r} skipped: {r}" for n, r in skipped))
                if msg not in _warned:
                    _warned.add(msg)
                    warnings.warn(msg, RuntimeWarning, stacklevel=3)
            return name
        skipped.append((name, reason))
    raise RuntimeError(
        f"rnnkernels: no backend can run this case ({device_type}, {dtype}): "
        + "; ".join(f"{n}: {r}" for n, r in skipped))
