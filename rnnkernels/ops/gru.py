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

from ..cells import CELLS
from . import _common as C
from . import variants

CELL = CELLS["gru"]


@torch.library.custom_op("rnnkernels::gru_scan", mutates_args=())
def gru_scan(xp: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Tensor | None, lengths: Tensor | None,
             reverse: bool, save: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The GRU recurrence of one layer and direction, after the input projection.

    xp [T,B,3H] (x_t·W_ihᵀ + b_ih + [b_hr, b_hz, 0] of every step), h0 [B,H], w_hh [3H,H],
    b_hn [H] or None, lengths [B] int64 or None (all T), ``reverse``, ``save``, ``backend`` (as
    ``lstm_scan``) → out [T,B,H], h_n [B,H] and the workspaces gates [T,B,3H],
    hn_lin [T,B,H] (may be empty when not saved). Semantics: docs/BACKENDS.md."""
    return tuple(C.call_backend(backend, "gru_forward", xp, h0, w_hh, b_hn, lengths, reverse, save))


@gru_scan.register_fake
def _(xp, h0, w_hh, b_hn, lengths, reverse, save, backend):
    return CELL.fake_forward(xp, h0, save)


@torch.library.custom_op("rnnkernels::gru_scan_backward", mutates_args=())
def gru_scan_backward(grad_out: Tensor, grad_hn: Tensor, h0: Tensor, w_hh: Tensor,
                      b_hn: Tensor | None, lengths: Tensor | None, reverse: bool, backend: str,
                      out: Tensor, gates: Tensor, hn_lin: Tensor) -> tuple[Tensor, Tensor]:
    """The GRU's reverse scan: the sequential part of ``gru_scan``'s backward.

    From the gradients of out, h_n and the forward's inputs, output and workspaces:
    dxp [T,B,3H], dh0 [B,H]. docs/BACKENDS.md."""
    if C.empty_batch(grad_out):
        return CELL.fake_backward(grad_out, h0, w_hh)
    return tuple(C.call_backend(backend, "gru_backward", grad_out, grad_hn, h0, w_hh, b_hn,
                                lengths, reverse, out, gates, hn_lin))


@gru_scan_backward.register_fake
def _(grad_out, grad_hn, h0, w_hh, b_hn, lengths, reverse, backend, out, gates, hn_lin):
    return CELL.fake_backward(grad_out, h0, w_hh)


def _setup_context(ctx, inputs, output):
    xp, h0, w_hh, b_hn, lengths, reverse, save, backend = inputs
    out, _, gates, hn_lin = output
    C.setup_common(ctx, reverse, backend, save)
    # gates and hn_lin stay differentiable outputs: a double backward sends gradients to them.
    ctx.save_for_backward(h0, w_hh, b_hn, lengths, out, gates, hn_lin)


def _backward(ctx, grad_out, grad_hn, grad_gates, grad_hn_lin):
    C.check_saved(ctx, "gru_scan")
    h0, w_hh, b_hn, lengths, out, gates, hn_lin = ctx.saved_tensors
    grad_out, grad_hn = C.dense(grad_out, out), C.dense(grad_hn, h0)
    dn_hidden = None
    if C.differentiable_backward(grad_gates, grad_hn_lin):
        dxp, dh0, *rest = C.reference().gru_backward(
            grad_out, grad_hn, h0, w_hh, b_hn, lengths, ctx.reverse, out, gates, hn_lin,
            grad_gates=grad_gates, grad_hn_lin=grad_hn_lin)
        dn_hidden = rest[0] if rest else None
    else:
        dxp, dh0 = gru_scan_backward(grad_out, grad_hn, h0, w_hh, b_hn, lengths, ctx.reverse,
                                     ctx.backend, out, gates, hn_lin)
    dw_hh = db_hn = None
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        r = CELL.gate_block(gates, "r")
        # d(h·W_hnᵀ + b_hn) = dn ⊙ r (plus hn_lin's own gradient in a double backward, which
        # the reference returns whole); the r and z blocks equal dxp's.
        if dn_hidden is None:
            dn_hidden = CELL.gate_block(dxp, "n").to(r.dtype) * r
        dgh = torch.cat([dxp[..., :2 * r.shape[-1]].to(r.dtype), dn_hidden], dim=-1)
        if ctx.needs_input_grad[2]:
            dw_hh = C.sum_over_steps(dgh, C.previous_states(out, h0, lengths, ctx.reverse),
                                     w_hh.dtype)
        if b_hn is not None and ctx.needs_input_grad[3]:
            db_hn = dn_hidden.sum(dim=(0, 1)).to(b_hn.dtype)
    return dxp, dh0, dw_hh, db_hn, None, None, None, None


gru_scan.register_autograd(_backward, setup_context=_setup_context)
C.forbid_double_backward(gru_scan_backward, "rnnkernels::gru_scan")


def scan(xp, states, w_hh, w_hr, b_hn, lengths, reverse, relu, backend, variant=None):
    """One direction of one layer: (out, (h_n,)). ``functional`` calls every cell this way;
    a scan with a ``variant`` (peephole, head-wise, zoneout) runs ``ops/variants.py``'s."""
    if variant is not None:
        return variants.scan(CELL, xp, states, w_hh, w_hr, b_hn, lengths, reverse, relu,
                             backend, variant)
    (h0,) = states
    save = C.needs_grad(xp, h0, w_hh, b_hn)
    out, h_n, _, _ = gru_scan(xp, h0, w_hh, b_hn, lengths, reverse, save, backend)
    return out, (h_n,)
