"""``torch.ops.rnnkernels.gru_scan``: the GRU recurrence, torch's r, z, n convention.

Forward (a = xp_t holds x·W_ihᵀ + b_ih + [b_hr, b_hz, 0]; b = h_{t-1}·W_hhᵀ + [0, 0, b_hn]):
    r = σ(a_r + b_r);  z = σ(a_z + b_z);  n = tanh(a_n + r⊙b_n);  h_t = (1-z)⊙n + z⊙h_{t-1}
Backward: the backend gives dxp = (dr, dz, dn) at the pre-activations and dh0; the gradient of
b = h·W_hhᵀ differs only in the n block (dn ⊙ r), so here dW_hh = Σ dghᵀ·h_{t-1} and
db_hn = Σ dgh_n, one reduction each.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _common as C


@torch.library.custom_op("rnnkernels::gru_scan", mutates_args=())
def gru_scan(xp: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Tensor | None, lengths: Tensor | None,
             reverse: bool, save: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xp [T,B,3H], h0 [B,H], w_hh [3H,H], b_hn [H]|None, lengths [B]|None →
    out [T,B,H], h_n [B,H], gates [T,B,3H] and hn_lin [T,B,H] (workspaces for backward)."""
    return tuple(C.call_backend(backend, "gru_forward", xp, h0, w_hh, b_hn, lengths, reverse, save))


@gru_scan.register_fake
def _(xp, h0, w_hh, b_hn, lengths, reverse, save, backend):
    T, B, G = xp.shape
    return (xp.new_empty((T, B, G // 3)), xp.new_empty((B, G // 3)),
            C.workspace_like(xp, (T, B, G), save), C.workspace_like(xp, (T, B, G // 3), save))


@torch.library.custom_op("rnnkernels::gru_scan_backward", mutates_args=())
def gru_scan_backward(grad_out: Tensor, grad_hn: Tensor, h0: Tensor, w_hh: Tensor,
                      b_hn: Tensor | None, lengths: Tensor | None, reverse: bool, backend: str,
                      out: Tensor, gates: Tensor, hn_lin: Tensor) -> tuple[Tensor, Tensor]:
    """The reverse scan: dxp [T,B,3H], dh0 [B,H]."""
    return tuple(C.call_backend(backend, "gru_backward", grad_out, grad_hn, h0, w_hh, b_hn,
                                lengths, reverse, out, gates, hn_lin))


@gru_scan_backward.register_fake
def _(grad_out, grad_hn, h0, w_hh, b_hn, lengths, reverse, backend, out, gates, hn_lin):
    return h0.new_empty(gates.shape), h0.new_empty(h0.shape)


def _setup_context(ctx, inputs, output):
    xp, h0, w_hh, b_hn, lengths, reverse, save, backend = inputs
    out, _, gates, hn_lin = output
    ctx.unsaved = not save
    ctx.reverse, ctx.backend = reverse, backend
    ctx.save_for_backward(h0, w_hh, b_hn, lengths, out, gates, hn_lin)
    ctx.mark_non_differentiable(gates, hn_lin)
    # Unused outputs get None, not a materialized [T, B, G·H] of zeros (a 26 MB fill per layer
    # at T=100, B=64, H=256); C.dense makes the ones the scan needs.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_hn, _g_gates, _g_hn):
    if ctx.unsaved:
        raise RuntimeError("rnnkernels.gru_scan was run with save=False (inference); "
                           "it cannot be differentiated")
    h0, w_hh, b_hn, lengths, out, gates, hn_lin = ctx.saved_tensors
    grad_out, grad_hn = C.dense(grad_out, out), C.dense(grad_hn, h0)
    dxp, dh0 = gru_scan_backward(grad_out, grad_hn, h0, w_hh, b_hn, lengths, ctx.reverse,
                                 ctx.backend, out, gates, hn_lin)
    dw_hh = db_hn = None
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        H = out.shape[-1]
        r = gates[..., :H]
        # d(h·W_hnᵀ + b_hn) = dn ⊙ r; the r and z blocks equal dxp's.
        dgh = torch.cat([dxp[..., :2 * H].to(r.dtype), dxp[..., 2 * H:].to(r.dtype) * r], dim=-1)
        if ctx.needs_input_grad[2]:
            dw_hh = C.sum_over_steps(dgh, C.previous_states(out, h0, lengths, ctx.reverse),
                                     w_hh.dtype)
        if b_hn is not None and ctx.needs_input_grad[3]:
            db_hn = dgh[..., 2 * H:].sum(dim=(0, 1)).to(b_hn.dtype)
    return dxp, dh0, dw_hh, db_hn, None, None, None, None


gru_scan.register_autograd(_backward, setup_context=_setup_context)
