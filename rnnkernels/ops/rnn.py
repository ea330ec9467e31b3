"""``torch.ops.rnnkernels.rnn_scan``: the Elman recurrence h_t = act(xp_t + h_{t-1}·W_hhᵀ).

act is tanh or relu. Backward: dpre_t = dh_t ⊙ act'(h_t) with act' = 1 - h² (tanh) or [h > 0]
(relu), read from the saved outputs; dh_{t-1} = dpre_t·W_hh; dW_hh = Σ dpreᵀ·h_{t-1} here.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..cells import CELLS
from . import _common as C
from . import variants

CELL = CELLS["rnn"]


@torch.library.custom_op("rnnkernels::rnn_scan", mutates_args=())
def rnn_scan(xp: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
             relu: bool, save: bool, backend: str) -> tuple[Tensor, Tensor]:
    """The Elman recurrence of one layer and direction, after the input projection.

    xp [T,B,H] (x_t·W_ihᵀ + b_ih + b_hh of every step), h0 [B,H], w_hh [H,H], lengths [B]
    int64 or None (all T), ``reverse``, ``relu`` (else tanh), ``save``, ``backend`` (as
    ``lstm_scan``) → out [T,B,H], h_n [B,H]. Semantics: docs/BACKENDS.md."""
    return tuple(C.call_backend(backend, "rnn_forward", xp, h0, w_hh, lengths, reverse, relu,
                                save))


@rnn_scan.register_fake
def _(xp, h0, w_hh, lengths, reverse, relu, save, backend):
    return CELL.fake_forward(xp, h0, save)


@torch.library.custom_op("rnnkernels::rnn_scan_backward", mutates_args=())
def rnn_scan_backward(grad_out: Tensor, grad_hn: Tensor, h0: Tensor, w_hh: Tensor,
                      lengths: Tensor | None, reverse: bool, relu: bool, backend: str,
                      out: Tensor) -> tuple[Tensor, Tensor]:
    """The Elman RNN's reverse scan: the sequential part of ``rnn_scan``'s backward.

    From the gradients of out, h_n and the forward's inputs and output: dxp [T,B,H],
    dh0 [B,H]. docs/BACKENDS.md."""
    if C.empty_batch(grad_out):
        return CELL.fake_backward(grad_out, h0, w_hh)
    return tuple(C.call_backend(backend, "rnn_backward", grad_out, grad_hn, h0, w_hh, lengths,
                                reverse, relu, out))


@rnn_scan_backward.register_fake
def _(grad_out, grad_hn, h0, w_hh, lengths, reverse, relu, backend, out):
    return CELL.fake_backward(grad_out, h0, w_hh)


def _setup_context(ctx, inputs, output):
    xp, h0, w_hh, lengths, reverse, relu, save, backend = inputs
    # The derivative comes from `out` alone: differentiable whatever `save` said.
    C.setup_common(ctx, reverse, backend, save=True)
    ctx.relu = relu
    ctx.save_for_backward(h0, w_hh, lengths, output[0])


def _backward(ctx, grad_out, grad_hn):
    h0, w_hh, lengths, out = ctx.saved_tensors
    grad_out, grad_hn = C.dense(grad_out, out), C.dense(grad_hn, h0)
    if C.differentiable_backward():
        dxp, dh0 = C.reference().rnn_backward(grad_out, grad_hn, h0, w_hh, lengths, ctx.reverse,
                                              ctx.relu, out)
    else:
        dxp, dh0 = rnn_scan_backward(grad_out, grad_hn, h0, w_hh, lengths, ctx.reverse, ctx.relu,
                                     ctx.backend, out)
    dw_hh = None
    if ctx.needs_input_grad[2]:
        dw_hh = C.sum_over_steps(dxp, C.previous_states(out, h0, lengths, ctx.reverse), w_hh.dtype)
    return dxp, dh0, dw_hh, None, None, None, None, None


rnn_scan.register_autograd(_backward, setup_context=_setup_context)
C.forbid_double_backward(rnn_scan_backward, "rnnkernels::rnn_scan")


def scan(xp, states, w_hh, w_hr, b_hn, lengths, reverse, relu, backend, variant=None):
    """One direction of one layer: (out, (h_n,)). ``functional`` calls every cell this way;
    a scan with a ``variant`` (peephole, head-wise, zoneout) runs ``ops/variants.py``'s."""
    if variant is not None:
        return variants.scan(CELL, xp, states, w_hh, w_hr, b_hn, lengths, reverse, relu,
                             backend, variant)
    (h0,) = states
    save = C.needs_grad(xp, h0, w_hh)
    out, h_n = rnn_scan(xp, h0, w_hh, lengths, reverse, relu, save, backend)
    return out, (h_n,)
