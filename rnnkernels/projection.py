"""The input projection of a layer: x·W_ihᵀ + bias for all steps at once, as ONE GEMM.

The only part of a layer that is not sequential, so ``functional`` computes it here for every
backend before the scan op runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_ONEDNN_LINEAR = None      # torch.ops.mkldnn._linear_pointwise, once known to work here


def _onednn_linear():
    global _ONEDNN_LINEAR
    if _ONEDNN_LINEAR is None:
        op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
        ok = op is not None and torch.backends.mkldnn.is_available()
        if ok:
            try:   # probe once: a build may list the op without a kernel for this CPU
                a = torch.ones(2, 3)
                ok = bool(torch.equal(op(a, torch.ones(4, 3), torch.ones(4), "none", [], ""),
                                      torch.full((2, 4), 4.0)))
            except Exception:  # noqa: BLE001 - any failure: fall back to F.linear for good
                ok = False
        _ONEDNN_LINEAR = op if ok else False
    return _ONEDNN_LINEAR


class _OneDNNLinear(torch.autograd.Function):
    """x·Wᵀ + b, x [N, I]: oneDNN's GEMM forward; the backward is F.linear's (the same MKL mm
    calls autograd would make: dx = g·W, dW = gᵀ·x, db = Σ g)."""

    @staticmethod
    def forward(x, w, b):
        return _onednn_linear()(x, w, b, "none", [], "")

    @staticmethod
    def setup_context(ctx, inputs, output):   # the torch.func-compatible form
        x, w, b = inputs
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = g.mm(w) if ctx.needs_input_grad[0] else None
        gw = g.t().mm(x) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def input_projection(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """xp = x·W_ihᵀ + bias for all steps at once, [T, B, G·H] contiguous.

    On the CPU in float32 this is oneDNN's GEMM (``mkldnn._linear_pointwise``, the one torch's
    own inference uses), faster than ``F.linear`` on the 3-D input (MKL, plus a copy of the
    broadcast bias into the output first): bench/results/cpu-20261126/README.md. Anywhere else
    (GPU, other dtypes, small inputs, torch.compile, which cannot trace that op) ``F.linear``."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and w_ih.dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32) and x.numel() >= 1 << 16
            and not torch.compiler.is_compiling() and _onednn_linear()):
        T, B, I = x.shape
        return _OneDNNLinear.apply(x.reshape(T * B, I), w_ih, bias).view(T, B, -1)
    return F.linear(x, w_ih, bias).contiguous()
