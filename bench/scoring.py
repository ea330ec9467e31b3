"""Error metrics: how far a provider's outputs and parameter grads are from torch.nn's, and the
tolerance each dtype is held to (used by ``bench/harness.py``'s ``checked_step`` and by
``--validate``)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

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
