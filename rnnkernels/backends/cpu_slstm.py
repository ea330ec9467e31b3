"""The ``cpu`` backend of the sLSTM (``rnnkernels/slstm.py``): the fused C++ scan.

``scan`` has ``slstm.scan``'s signature and semantics (the backend contract of docs/BACKENDS.md:
time order, lengths, frozen state after a sequence's end, zeros beyond it, reverse within each
sequence's own length) and runs the head-wise LSTM scan of ``csrc/cpu/variant_impl.h`` with the
sLSTM's unit (``csrc/cpu/slstm_unit.h``; formulas in ``cell_math.h``'s ``slstm_cell_fwd`` /
``slstm_cell_bwd``) through ``torch.ops.rnnkernels_C.slstm_forward`` / ``slstm_backward``,
inside the custom op ``torch.ops.rnnkernels.slstm_scan_cpu``: a fake impl (so ``torch.compile``
traces it) and an autograd formula, as ``cpu_variants`` has for the other variants.

The three states besides h (c, n, m) travel stacked [3, B, H] through the ops (one tensor, one
check, one buffer in the kernels); ``scan`` stacks and unbinds them, so their gradients flow
through ordinary autograd. Saved for the backward: the pre-activations [T, B, 4H] and c_t, n_t,
m_t [T, B, 3H] (accumulation dtype); half inputs keep their state and arithmetic in float32 as
the reference does (its ``acc_dtype``), so every dtype of the reference runs here.

Backward: the kernel's reverse scan gives dxp (the d pre-activations), dh0 and the initial
states' gradients, with torch's rules where the forward chooses (torch.where, torch.maximum's
half/half tie, clamp at exactly 0; derivation in ``cell_math.h``), so the numbers are those of
autograd through the reference; dW_hh is ONE batched per-head GEMM over all steps
(``cpu_variants._weight_grad``). Every other autograd mode runs the reference loop, never a zero
or stale result: under ``create_graph=True`` the backward recomputes the reference forward from
the saved inputs and differentiates it with the graph kept; forward-mode AD, ``torch.func``
transforms and traces (``routes.unsupported_autograd_mode``) call ``slstm.scan`` from ``scan``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import routes
from .. import slstm as reference
from ..cells import acc_dtype
from ..ops import _common as C
from .cpu_variants import _ext, _weight_grad


@torch.library.custom_op("rnnkernels::slstm_scan_cpu", mutates_args=())
def slstm_scan_cpu(xp: Tensor, h0: Tensor, s0: Tensor, w_hh: Tensor, num_heads: int,
                   lengths: Tensor | None, reverse: bool, save: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer and direction of the sLSTM on the CPU kernels: xp [T,B,4H] (gates i, f, z, o),
    h0 [B,H], s0 = (c0, n0, m0) stacked [3,B,H], w_hh [4H, H/num_heads] → out [T,B,H], h_n
    [B,H], s_n [3,B,H], workspaces gates [T,B,4H] (pre-activations) and ws [T,B,3H] (c_t, n_t,
    m_t; both empty when not ``save``)."""
    return tuple(_ext().slstm_forward(xp, h0, s0, w_hh, num_heads, lengths, reverse, save))


@slstm_scan_cpu.register_fake
def _(xp, h0, s0, w_hh, num_heads, lengths, reverse, save):
    T, B, GH = xp.shape
    H = GH // 4
    acc = acc_dtype(xp.dtype)
    return (xp.new_empty((T, B, H)), xp.new_empty((B, H)), xp.new_empty((3, B, H)),
            xp.new_empty((T, B, GH) if save else (0,), dtype=acc),
            xp.new_empty((T, B, 3 * H) if save else (0,), dtype=acc))


@torch.library.custom_op("rnnkernels::slstm_scan_cpu_backward", mutates_args=())
def slstm_scan_cpu_backward(grad_out: Tensor, grad_hn: Tensor, grad_sn: Tensor, h0: Tensor,
                            s0: Tensor, w_hh: Tensor, num_heads: int, lengths: Tensor | None,
                            reverse: bool, out: Tensor, gates: Tensor, ws: Tensor
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """The reverse scan of ``slstm_scan_cpu``: dxp [T,B,4H], dh0 [B,H], ds0 [3,B,H]."""
    if C.empty_batch(grad_out):
        return _fake_backward(grad_out, h0, w_hh)
    return tuple(_ext().slstm_backward(grad_out, grad_hn, grad_sn, h0, s0, w_hh, num_heads,
                                       lengths, reverse, out, gates, ws))


def _fake_backward(grad_out, h0, w_hh):
    T, B, H = grad_out.shape
    return (grad_out.new_zeros((T, B, w_hh.shape[0])), h0.new_zeros((B, H)),
            h0.new_zeros((3, B, H)))


@slstm_scan_cpu_backward.register_fake
def _(grad_out, grad_hn, grad_sn, h0, s0, w_hh, num_heads, lengths, reverse, out, gates, ws):
    return _fake_backward(grad_out, h0, w_hh)


def _setup_context(ctx, inputs, output):
    xp, h0, s0, w_hh, num_heads, lengths, reverse, save = inputs
    out, _, _, gates, ws = output
    C.setup_common(ctx, reverse, "cpu", save)
    # No workspace gradients: a double backward recomputes the reference forward instead.
    ctx.mark_non_differentiable(gates, ws)
    ctx.num_heads = num_heads
    ctx.save_for_backward(xp, h0, s0, w_hh, lengths, out, gates, ws)


def _backward(ctx, grad_out, grad_hn, grad_sn, grad_gates, grad_ws):
    C.check_saved(ctx, "slstm_scan_cpu")
    xp, h0, s0, w_hh, lengths, out, gates, ws = ctx.saved_tensors
    grads = C.dense(grad_out, out), C.dense(grad_hn, h0), C.dense(grad_sn, s0)
    if C.differentiable_backward():
        return _reference_backward(ctx, grads)
    k = ctx.num_heads
    dxp, dh0, ds0 = slstm_scan_cpu_backward(*grads, h0, s0, w_hh, k, lengths, ctx.reverse, out,
                                            gates, ws)
    dw_hh = None
    if ctx.needs_input_grad[3]:
        h_prev = C.previous_states(out, h0, lengths, ctx.reverse)
        dw_hh = _weight_grad(dxp, h_prev, k, w_hh.dtype)
    return dxp, dh0, ds0, dw_hh, None, None, None, None


def _reference_backward(ctx, grads):
    """The backward under create_graph=True: the reference forward recomputed from the saved
    inputs and differentiated by autograd with its graph kept (gradients of gradients exact)."""
    xp, h0, s0, w_hh, lengths, _, _, _ = ctx.saved_tensors
    inputs = (xp, h0, s0, w_hh)
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i] and t.requires_grad]
    result = [None] * 8
    if not wanted:
        return tuple(result)
    with torch.enable_grad():
        out, (h_n, *rest) = reference.scan(xp, (h0, *s0.unbind(0)), w_hh, lengths, ctx.reverse,
                                           ctx.num_heads)
        got = torch.autograd.grad((out, h_n, torch.stack(rest)), [inputs[i] for i in wanted],
                                  grads, create_graph=True, allow_unused=True)
    for i, g in zip(wanted, got):
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return tuple(result)


slstm_scan_cpu.register_autograd(_backward, setup_context=_setup_context)
C.forbid_double_backward(slstm_scan_cpu_backward, "rnnkernels::slstm_scan_cpu")


def scan(xp: Tensor, states: tuple[Tensor, ...], w_hh: Tensor, lengths: Tensor | None,
         reverse: bool, num_heads: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``slstm.scan`` on the fused CPU kernel: (out [T,B,H] in time order, (h_n, c_n, n_n,
    m_n)). Forward-mode AD, torch.func transforms and traces run the reference loop."""
    if routes.unsupported_autograd_mode(lambda: [xp, *states, w_hh]) is not None:
        return reference.scan(xp, states, w_hh, lengths, reverse, num_heads)
    h0, *rest = states
    save = C.needs_grad(xp, *states, w_hh)
    out, h_n, s_n, _, _ = slstm_scan_cpu(xp, h0, torch.stack(rest), w_hh, num_heads, lengths,
                                         reverse, save)
    return out, (h_n, *s_n.unbind(0))
