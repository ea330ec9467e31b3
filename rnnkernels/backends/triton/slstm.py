"""Triton backend of the sLSTM (xLSTM, Beck et al. 2024): the fused scan as a custom op.

``scan(xp, states, w_hh, lengths, reverse, num_heads)`` has the signature and results of
``rnnkernels.slstm.scan`` (one layer and direction: xp [T,B,4H] = x·W_ihᵀ + biases, states
(h0, c0, n0, m0) [B,H], W_hh head-wise [4H, H/num_heads]; time, lengths and reverse as the
backend contract, docs/BACKENDS.md). The kernels (one program a head, its W_hh blocks and states
resident for the whole sequence) are ``slstm_kernels.py``, the math ``cell.slstm_cell_fwd`` /
``cell.slstm_cell_bwd``.

The scan is the custom op ``rnnkernels::triton_slstm_scan`` (fake impl, autograd), so
``torch.compile`` traces it. Its backward runs the reverse-scan kernel
(``triton_slstm_scan_backward``: dxp and the gradients of h0, c0, n0, m0, exactly autograd's
through ``slstm.step``, the stabilizer m included), then dW_hh = Σ_t dgᵀ·h_{t-1} as one GEMM over
all steps (head-wise: one batched GEMM over the heads). Other autograd modes run the reference
loop (``rnnkernels.slstm.scan``) instead: the whole scan under forward-mode AD and ``torch.func``
(``routes.unsupported_autograd_mode``), the backward when it must itself be differentiable
(``create_graph=True``), recomputed from the inputs (so the workspaces are non-differentiable
outputs). Dtypes: float32, float16, bfloat16 (float32 state), and float64 under
``TRITON_INTERPRET=1`` (tests, gradcheck).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ... import routes
from ...ops import _common as C
from . import _check as _package_check
from . import _lengths, _need_workspaces
from . import launch as _launch
from . import plan as _plan
from . import supports as _package_supports
from .slstm_kernels import CELL, KERNELS
from .variants import _head_weight_grad

__all__ = ["supports", "scan"]


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    """None if the Triton sLSTM runs this case, else the reason: the package's answer, and
    float64 under the interpreter (the other Triton scans have no float64)."""
    if dtype == torch.float64:
        if not _plan.INTERPRET:
            return ("the triton sLSTM runs float64 only under TRITON_INTERPRET=1 (tests); on a "
                    "GPU float32, float16 or bfloat16")
        dtype = torch.float32
    return _package_supports(device_type, dtype)


def _check(name: str, ref: Tensor, *tensors) -> None:
    reason = supports(ref.device.type, ref.dtype)
    if reason is not None:
        raise RuntimeError(f"rnnkernels triton backend cannot run {name}: {reason}")
    # the package's device and contiguity checks (its dtype check is the one above)
    like = ref if ref.dtype != torch.float64 else ref.new_empty((0,), dtype=torch.float32)
    _package_check(name, like, *tensors)


def _flags(w_hh: Tensor, num_heads: int) -> dict:
    """The kernels' constexprs: NH heads of width d, padded to DP (a power of two ≥ 16)."""
    d = w_hh.shape[1]
    return dict(NH=int(num_heads), DP=max(16, 1 << max(0, d - 1).bit_length()))


# ---------------------------------------------------------------------------------- the ops
@torch.library.custom_op("rnnkernels::triton_slstm_scan", mutates_args=())
def triton_slstm_scan(xp: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor, w_hh: Tensor,
                      lengths: Tensor | None, reverse: bool, num_heads: int, save: bool
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One sLSTM scan → out [T,B,H], h_n, c_n, n_n, m_n [B,H] and the workspaces ``gates``
    [T,B,4H] (pre-activations) and ``states`` [T,B,3H] (c | n | m after each step), in the
    accumulation dtype (empty when not ``save``)."""
    _check("slstm_scan", xp, h0, c0, n0, m0, w_hh)
    return _launch.forward(KERNELS, xp, (h0, c0, n0, m0), w_hh, _lengths(lengths, xp), reverse,
                           save, flags=_flags(w_hh, num_heads))


@triton_slstm_scan.register_fake
def _(xp, h0, c0, n0, m0, w_hh, lengths, reverse, num_heads, save):
    return CELL.fake_forward(xp, h0, save)


@torch.library.custom_op("rnnkernels::triton_slstm_scan_backward", mutates_args=())
def triton_slstm_scan_backward(
        grad_out: Tensor, grad_hn: Tensor, grad_cn: Tensor, grad_nn: Tensor, grad_mn: Tensor,
        h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor, w_hh: Tensor, lengths: Tensor | None,
        reverse: bool, num_heads: int, out: Tensor, gates: Tensor, states: Tensor
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The reverse scan of ``triton_slstm_scan`` → dxp [T,B,4H], dh0, dc0, dn0, dm0 [B,H]."""
    if C.empty_batch(grad_out):
        return CELL.fake_backward(grad_out, h0, w_hh)
    _check("slstm_scan_backward", h0, grad_out, grad_hn, grad_cn, grad_nn, grad_mn, c0, n0, m0,
           w_hh, gates, states)
    _need_workspaces("slstm_scan_backward", gates, states)
    return _launch.backward(KERNELS, grad_out, (grad_hn, grad_cn, grad_nn, grad_mn),
                            (h0, c0, n0, m0), w_hh, _lengths(lengths, h0), reverse, out,
                            (gates, states), flags=_flags(w_hh, num_heads))


@triton_slstm_scan_backward.register_fake
def _(grad_out, grad_hn, grad_cn, grad_nn, grad_mn, h0, c0, n0, m0, w_hh, lengths, reverse,
      num_heads, out, gates, states):
    return CELL.fake_backward(grad_out, h0, w_hh)


# ------------------------------------------------------------------------------ the autograd
_INPUTS = ("xp", "h0", "c0", "n0", "m0", "w_hh")   # then lengths and the non-tensor inputs


def _setup_context(ctx, inputs, output):
    *tensors, reverse, num_heads, save = inputs
    C.setup_common(ctx, reverse, "triton", save)
    ctx.num_heads = num_heads
    ctx.save_for_backward(*tensors, output[0], output[5], output[6])
    # The backward reads the workspaces, but no gradient flows into them: the double backward
    # recomputes the reference loop from the inputs (``_reference_backward``).
    ctx.mark_non_differentiable(output[5], output[6])


def _reference_backward(ctx, saved, grads) -> list:
    """The backward as differentiable PyTorch (double backward): autograd through the
    reference loop, recomputed from the saved inputs."""
    from ... import slstm as reference
    xp, h0, c0, n0, m0, w_hh, lengths = saved[:7]
    with torch.enable_grad():
        out, finals = reference.scan(xp, (h0, c0, n0, m0), w_hh, lengths, ctx.reverse,
                                     ctx.num_heads)
        return C.reference_grads((out, *finals), grads, list(saved[:len(_INPUTS)]),
                                 ctx.needs_input_grad)


def _backward(ctx, grad_out, grad_hn, grad_cn, grad_nn, grad_mn, grad_gates, grad_states):
    C.check_saved(ctx, "triton_slstm_scan")
    saved = ctx.saved_tensors
    grads = (grad_out, grad_hn, grad_cn, grad_nn, grad_mn)
    if C.differentiable_backward(grad_gates, grad_states):
        return (*_reference_backward(ctx, saved, grads), None, None, None, None)
    xp, h0, c0, n0, m0, w_hh, lengths, out, gates, states = saved
    dense = [C.dense(g, like) for g, like in zip(grads, (out, h0, c0, n0, m0))]
    dxp, dh0, dc0, dn0, dm0 = triton_slstm_scan_backward(
        *dense, h0, c0, n0, m0, w_hh, lengths, ctx.reverse, ctx.num_heads, out, gates, states)
    dw_hh = None
    if ctx.needs_input_grad[5]:
        h_prev = C.previous_states(out, h0, lengths, ctx.reverse)
        dw_hh = (_head_weight_grad(dxp, h_prev, 4, ctx.num_heads, w_hh.dtype)
                 if ctx.num_heads > 1 else C.sum_over_steps(dxp, h_prev, w_hh.dtype))
    return dxp, dh0, dc0, dn0, dm0, dw_hh, None, None, None, None


triton_slstm_scan.register_autograd(_backward, setup_context=_setup_context)
C.forbid_double_backward(triton_slstm_scan_backward, "rnnkernels::triton_slstm_scan")


# ---------------------------------------------------------------------------------- the entry
def scan(xp: Tensor, states: tuple[Tensor, ...], w_hh: Tensor, lengths: Tensor | None,
         reverse: bool, num_heads: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer and direction on the Triton kernels: (out [T,B,H] in time order, zero beyond
    each length; the final (h, c, n, m), frozen after each sequence's end), as
    ``rnnkernels.slstm.scan``."""
    if routes.unsupported_autograd_mode([xp, *states, w_hh]) is not None:
        from ... import slstm as reference
        return reference.scan(xp, states, w_hh, lengths, reverse, num_heads)
    h0, c0, n0, m0 = (s.contiguous() for s in states)
    save = C.needs_grad(xp, *states, w_hh)
    out, h_n, c_n, n_n, m_n, _, _ = triton_slstm_scan(
        xp.contiguous(), h0, c0, n0, m0, w_hh.contiguous(), lengths, bool(reverse),
        int(num_heads), save)
    return out, (h_n, c_n, n_n, m_n)
