"""Triton backend: the LSTM / GRU / RNN recurrences as fused Triton kernels.

Implements the backend contract of ``docs/BACKENDS.md`` (the six functions below have exactly the
signatures, return tuples, dtypes and time/length/reverse semantics of
``rnnkernels/backends/reference.py``). Only the sequential part runs here: the op layer
(``rnnkernels/ops``) does the input projection and the weight-gradient GEMMs.

* GPU: fp32 (``tl.dot`` with ``input_precision="ieee"``: matches cuDNN/ATen with TF32 off),
  fp16 and bf16 (tensor cores, fp32 state and accumulation). float64 is not supported.
* CPU: only under ``TRITON_INTERPRET=1`` (set before triton is first imported); this is for
  tests, it is slow, and ``auto`` never picks it.
* Strategy (one launch per step, or one persistent launch for the whole sequence): chosen by a
  size heuristic, or forced with ``RNNKERNELS_TRITON_STRATEGY`` / :func:`strategy`; see
  ``plan.py``. Kernels: ``lstm.py``, ``gru.py``, ``rnn.py`` (math, loads and stores), run by
  the one launcher ``launch.py``; shared gate math in ``cell.py``, tile helpers in ``tiles.py``.

Importing this package never fails when triton is missing: :func:`supports` then gives the
reason and the six functions raise ``RuntimeError``.

    >>> import rnnkernels.backends.triton as tb
    >>> with tb.strategy("persistent"):
    ...     out, h_n, c_n, gates, cs = tb.lstm_forward(xp, h0, c0, w_hh, None, None, False, True)
"""
from __future__ import annotations

import torch

from .. import config

NAME = "triton"

try:
    import triton  # noqa: F401

    from . import gru as _gru
    from . import launch as _launch
    from . import lstm as _lstm
    from . import plan as _plan
    from . import rnn as _rnn
    from .plan import strategy, tuning
    _IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a triton too old for the kernels' syntax
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
    _plan = None

    def strategy(name: str):  # noqa: D103 - same API without triton, so callers need no guard
        raise RuntimeError(f"rnnkernels triton backend unavailable: {_IMPORT_ERROR}")

    def tuning(**blocks):  # noqa: D103
        raise RuntimeError(f"rnnkernels triton backend unavailable: {_IMPORT_ERROR}")

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = ["NAME", "supports", "strategy", "tuning", "lstm_forward", "lstm_backward",
           "gru_forward", "gru_backward", "rnn_forward", "rnn_backward"]


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    """None if this backend can run the case, else the reason (see ``docs/BACKENDS.md``).

    Every size the other backends take runs here too (int64 indexing; a variant whose limits a
    size breaks is never chosen), so the answer never depends on T, B or H.
    """
    if _IMPORT_ERROR is not None:
        return f"triton is not importable ({_IMPORT_ERROR})"
    if dtype not in _DTYPES:
        return f"triton backend supports float32, float16 and bfloat16, not {dtype}"
    if device_type == "cuda":
        if _plan.INTERPRET:
            return None  # the interpreter copies CUDA tensors to the host and back
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        if torch.cuda.get_device_capability() < (7, 0):
            return "triton needs a GPU of compute capability 7.0 or newer"
        return None
    if device_type == "cpu":
        if not _plan.INTERPRET:
            if config.flag("triton_interpret"):
                return ("TRITON_INTERPRET=1 was set after rnnkernels.backends.triton was "
                        "imported; set it before the first import of triton")
            return ("triton kernels run on the CPU only under the interpreter (set "
                    "TRITON_INTERPRET=1 before importing triton; slow, meant for tests)")
        return None
    return f"triton backend does not run on device type {device_type!r}"


def _check(name: str, ref: torch.Tensor, *tensors) -> None:
    reason = supports(ref.device.type, ref.dtype)
    if reason is not None:
        raise RuntimeError(f"rnnkernels triton backend cannot run {name}: {reason}")
    for t in tensors:
        if t is not None and t.numel() and (not t.is_contiguous() or t.device != ref.device):
            raise RuntimeError(f"rnnkernels triton backend {name}: every tensor must be "
                               f"contiguous and on {ref.device}")


def _need_workspaces(name: str, *ws) -> None:
    if any(w is None or w.numel() == 0 for w in ws):
        raise RuntimeError(f"rnnkernels triton backend {name}: needs the workspaces of a forward "
                           f"run with save=True (got empty ones)")


def _lengths(lengths, ref):
    if lengths is None:
        return None
    if lengths.dtype != torch.int64 or lengths.device != ref.device:
        lengths = lengths.to(device=ref.device, dtype=torch.int64)
    return lengths.contiguous()


def lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse, save=True):
    """-> out [T,B,P], h_n [B,P], c_n [B,H], gates [T,B,4H] acc, cs [T,B,H] acc."""
    _check("lstm_forward", xp, h0, c0, w_hh, w_hr)
    return _launch.forward(_lstm.KERNELS, xp, (h0, c0), w_hh, _lengths(lengths, xp), reverse,
                           save, inputs=dict(w_hr=w_hr), flags=dict(PROJ=w_hr is not None))


def lstm_backward(grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, lengths, reverse, out, gates,
                  cs):
    """-> dxp [T,B,4H] dt, dh0 [B,P] dt, dc0 [B,H] dt, dh [T,B,P] acc (empty without w_hr)."""
    _check("lstm_backward", h0, grad_out, grad_hn, grad_cn, c0, w_hh, w_hr, gates, cs)
    _need_workspaces("lstm_backward", gates, cs)
    return _launch.backward(_lstm.KERNELS, grad_out, (grad_hn, grad_cn), (h0, c0), w_hh,
                            _lengths(lengths, h0), reverse, out, (gates, cs),
                            inputs=dict(w_hr=w_hr), flags=dict(PROJ=w_hr is not None))


def gru_forward(xp, h0, w_hh, b_hn, lengths, reverse, save=True):
    """-> out [T,B,H], h_n [B,H], gates [T,B,3H] acc, hn_lin [T,B,H] acc."""
    _check("gru_forward", xp, h0, w_hh, b_hn)
    return _launch.forward(_gru.KERNELS, xp, (h0,), w_hh, _lengths(lengths, xp), reverse, save,
                           inputs=dict(b_hn=b_hn), flags=dict(HAS_BHN=b_hn is not None))


def gru_backward(grad_out, grad_hn, h0, w_hh, b_hn, lengths, reverse, out, gates, hn_lin):
    """-> dxp [T,B,3H] dt, dh0 [B,H] dt."""
    _check("gru_backward", h0, grad_out, grad_hn, w_hh, b_hn, out, gates, hn_lin)
    _need_workspaces("gru_backward", gates, hn_lin)
    return _launch.backward(_gru.KERNELS, grad_out, (grad_hn,), (h0,), w_hh,
                            _lengths(lengths, h0), reverse, out, (gates, hn_lin),
                            inputs=dict(b_hn=b_hn), flags=dict(HAS_BHN=b_hn is not None))


def rnn_forward(xp, h0, w_hh, lengths, reverse, relu, save=True):
    """-> out [T,B,H], h_n [B,H]."""
    _check("rnn_forward", xp, h0, w_hh)
    return _launch.forward(_rnn.KERNELS, xp, (h0,), w_hh, _lengths(lengths, xp), reverse, save,
                           flags=dict(RELU=bool(relu)))


def rnn_backward(grad_out, grad_hn, h0, w_hh, lengths, reverse, relu, out):
    """-> dxp [T,B,H] dt, dh0 [B,H] dt."""
    _check("rnn_backward", h0, grad_out, grad_hn, w_hh, out)
    return _launch.backward(_rnn.KERNELS, grad_out, (grad_hn,), (h0,), w_hh,
                            _lengths(lengths, h0), reverse, out, (), flags=dict(RELU=bool(relu)))
