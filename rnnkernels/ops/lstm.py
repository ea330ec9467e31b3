"""``torch.ops.rnnkernels.lstm_scan``: the LSTM recurrence (optionally with projection).

Forward (per step, torch's gate order i, f, g, o; see docs/BACKENDS.md):
    gates = xp_t + h_{t-1}·W_hhᵀ;  c_t = σ(f)⊙c_{t-1} + σ(i)⊙tanh(g)
    h_t = σ(o)⊙tanh(c_t)  [·W_hrᵀ with a projection]
Backward: the backend's reverse scan gives dxp (= d gates), dh0, dc0 and, with a projection, the
total gradient dh of every projected output; this op adds dW_hh = Σ dxpᵀ·h_{t-1} and
dW_hr = Σ dhᵀ·(σ(o)⊙tanh(c_t)) as one GEMM each.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..cells import CELLS
from . import _common as C
from . import variants

CELL = CELLS["lstm"]


@torch.library.custom_op("rnnkernels::lstm_scan", mutates_args=())
def lstm_scan(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None,
              lengths: Tensor | None, reverse: bool, save: bool, backend: str
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The LSTM recurrence of one layer and direction, after the input projection.

    xp [T,B,4H] (x_t·W_ihᵀ + b_ih + b_hh of every step), h0 [B,P], c0 [B,H], w_hh [4H,P],
    w_hr [P,H] or None (no projection), lengths [B] int64 or None (all T), ``reverse`` (run
    backwards within each length), ``save`` (keep the workspaces for backward), ``backend`` (a
    concrete backend's name) → out [T,B,P], h_n [B,P], c_n [B,H] and the workspaces
    gates [T,B,4H], cs [T,B,H] (may be empty when not saved). Semantics: docs/BACKENDS.md."""
    return tuple(C.call_backend(backend, "lstm_forward", xp, h0, c0, w_hh, w_hr, lengths,
                                reverse, save))


@lstm_scan.register_fake
def _(xp, h0, c0, w_hh, w_hr, lengths, reverse, save, backend):
    return CELL.fake_forward(xp, h0, save)


@torch.library.custom_op("rnnkernels::lstm_scan_backward", mutates_args=())
def lstm_scan_backward(grad_out: Tensor, grad_hn: Tensor, grad_cn: Tensor, h0: Tensor, c0: Tensor,
                       w_hh: Tensor, w_hr: Tensor | None, lengths: Tensor | None, reverse: bool,
                       backend: str, out: Tensor, gates: Tensor, cs: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The LSTM's reverse scan: the sequential part of ``lstm_scan``'s backward.

    From the gradients of out, h_n, c_n and the forward's inputs, output and workspaces:
    dxp [T,B,4H], dh0 [B,P], dc0 [B,H], dh [T,B,P] (empty without w_hr). docs/BACKENDS.md."""
    if C.empty_batch(grad_out):
        return CELL.fake_backward(grad_out, h0, w_hh, w_hr)
    return tuple(C.call_backend(backend, "lstm_backward", grad_out, grad_hn, grad_cn, h0, c0,
                                w_hh, w_hr, lengths, reverse, out, gates, cs))


@lstm_scan_backward.register_fake
def _(grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, lengths, reverse, backend, out, gates, cs):
    return CELL.fake_backward(grad_out, h0, w_hh, w_hr)


def _setup_context(ctx, inputs, output):
    xp, h0, c0, w_hh, w_hr, lengths, reverse, save, backend = inputs
    out, _, _, gates, cs = output
    C.setup_common(ctx, reverse, backend, save)
    # gates and cs stay differentiable outputs: a double backward sends gradients to them.
    ctx.save_for_backward(h0, c0, w_hh, w_hr, lengths, out, gates, cs)


def _backward(ctx, grad_out, grad_hn, grad_cn, grad_gates, grad_cs):
    C.check_saved(ctx, "lstm_scan")
    h0, c0, w_hh, w_hr, lengths, out, gates, cs = ctx.saved_tensors
    grad_out, grad_hn, grad_cn = C.dense(grad_out, out), C.dense(grad_hn, h0), C.dense(grad_cn, c0)
    if C.differentiable_backward(grad_gates, grad_cs):
        dxp, dh0, dc0, dh = C.reference().lstm_backward(
            grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, lengths, ctx.reverse, out, gates, cs,
            grad_gates=grad_gates, grad_cs=grad_cs)
    else:
        dxp, dh0, dc0, dh = lstm_scan_backward(grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr,
                                               lengths, ctx.reverse, ctx.backend, out, gates, cs)
    h_prev = C.previous_states(out, h0, lengths, ctx.reverse)
    dw_hh = C.sum_over_steps(dxp, h_prev, w_hh.dtype) if ctx.needs_input_grad[3] else None
    dw_hr = None
    if w_hr is not None and ctx.needs_input_grad[4]:
        hidden = CELL.gate_block(gates, "o") * torch.tanh(cs)   # o ⊙ tanh(c_t), pre-projection
        dw_hr = C.sum_over_steps(dh, hidden, w_hr.dtype)
    return dxp, dh0, dc0, dw_hh, dw_hr, None, None, None, None


lstm_scan.register_autograd(_backward, setup_context=_setup_context)
C.forbid_double_backward(lstm_scan_backward, "rnnkernels::lstm_scan")


def scan(xp, states, w_hh, w_hr, b_hn, lengths, reverse, relu, backend, variant=None):
    """One direction of one layer: (out, (h_n, c_n)). ``functional`` calls every cell this way;
    a scan with a ``variant`` (peephole, head-wise, zoneout) runs ``ops/variants.py``'s."""
    if variant is not None:
        return variants.scan(CELL, xp, states, w_hh, w_hr, b_hn, lengths, reverse, relu,
                             backend, variant)
    h0, c0 = states
    save = C.needs_grad(xp, h0, c0, w_hh, w_hr)
    out, h_n, c_n, _, _ = lstm_scan(xp, h0, c0, w_hh, w_hr, lengths, reverse, save, backend)
    return out, (h_n, c_n)
