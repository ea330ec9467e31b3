"""Shared glue of the scan ops: what every cell's op does the same way, once.

The backends compute only the sequential part of the backward (dxp, dh0, dc0). The weight
gradients are ONE GEMM over all steps here, for every backend alike:
``dW_hh = Σ_t dgh_tᵀ · h_{t-1}``, where ``h_{t-1}`` is ``out`` shifted by one step in processing
order (h0 at each sequence's first step). No per-step accumulation, so no atomics and results are
reproducible run to run.
"""
from __future__ import annotations

import torch
from torch import Tensor


def previous_states(out: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """h_{t-1} of every step, in time order: ``out`` shifted one step in processing order.

    Forward: h_prev[t] = out[t-1], h0 at t = 0. Reverse: h_prev[t] = out[t+1], and h0 at each
    sequence's first processed step t = L_b - 1. (Beyond a sequence's end the value does not
    matter: its gradient rows there are zero.)
    """
    h0 = h0.to(out.dtype).unsqueeze(0)
    if not reverse:
        return torch.cat([h0, out[:-1]], dim=0)
    if lengths is None:
        return torch.cat([out[1:], h0], dim=0)
    shifted = torch.cat([out[1:], torch.zeros_like(h0)], dim=0)
    t = torch.arange(out.shape[0], device=out.device)
    first = (t[:, None] == (lengths.to(out.device) - 1)[None, :]).unsqueeze(-1)
    return torch.where(first, h0, shifted)


def sum_over_steps(grad_rows: Tensor, inputs: Tensor, dtype: torch.dtype) -> Tensor:
    """Σ_t grad_rows[t]ᵀ · inputs[t] as one GEMM: [T,B,N] × [T,B,K] → [N, K] in ``dtype``."""
    n, k = grad_rows.shape[-1], inputs.shape[-1]
    common = torch.promote_types(grad_rows.dtype, inputs.dtype)
    g = grad_rows.reshape(-1, n).to(common)
    x = inputs.reshape(-1, k).to(common)
    return (g.t() @ x).to(dtype)


def dense(grad: Tensor | None, like: Tensor) -> Tensor:
    """Autograd hands None (or an undefined grad) for outputs the loss does not use."""
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def needs_grad(*tensors) -> bool:
    """Whether the forward must save its workspaces (some input will want a gradient)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def setup_common(ctx, reverse: bool, backend: str, save: bool) -> None:
    ctx.unsaved = not save
    ctx.reverse, ctx.backend = reverse, backend
    # Unused outputs get None, not a materialized [T, B, G·H] of zeros (a full-size fill per
    # layer); `dense` makes the ones the scan needs.
    ctx.set_materialize_grads(False)


def check_saved(ctx, op: str) -> None:
    if ctx.unsaved:
        raise RuntimeError(f"rnnkernels.{op} was run with save=False (inference); "
                           "it cannot be differentiated")


def differentiable_backward(*workspace_grads) -> bool:
    """Whether this backward runs the reference's reverse scan instead of the backend's.

    Two cases need it, both only when gradients of gradients are taken: the backward runs under
    ``create_graph=True`` (grad mode is on inside it), so its result must be differentiable; or
    gradients arrive on the workspaces (the second pass of a double backward differentiates the
    first pass's reverse scan, which reads them). The reference backward is written in
    differentiable PyTorch ops of the saved tensors and accepts workspace gradients, on any
    device; the fused kernels do neither. Plain first-order training never takes this path."""
    return torch.is_grad_enabled() or any(g is not None for g in workspace_grads)


def reference_grads(outputs, grads, inputs, needs) -> list:
    """The core of a differentiable backward (``differentiable_backward``): the gradients of
    Σ ⟨output, grad⟩ over the outputs of a reference forward recomputed under grad mode, with
    respect to ``inputs`` (a list aligned with the op's inputs, None where not a tensor), with
    the graph kept (``create_graph``) so gradients of gradients are exact. None for an input
    that needs no gradient (``needs``: ctx.needs_input_grad) or does not require one; zeros for
    one the outputs do not reach. Outputs whose gradient is None are left out."""
    wanted = [k for k, t in enumerate(inputs)
              if needs[k] and t is not None and t.requires_grad]
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
    result = [None] * len(inputs)
    if wanted and pairs:
        got = torch.autograd.grad([o for o, _ in pairs], [inputs[k] for k in wanted],
                                  [g for _, g in pairs], create_graph=True, allow_unused=True)
        for k, g in zip(wanted, got):
            result[k] = torch.zeros_like(inputs[k]) if g is None else g
    return result


def reference():
    from ..backends import reference as ref
    return ref


def forbid_double_backward(backward_op, forward_name: str) -> None:
    """Give a ``*_scan_backward`` op an autograd formula that says clearly why it has none.

    The scans' autograd never differentiates this op (under ``create_graph=True`` it runs the
    reference's differentiable backward instead, see ``differentiable_backward``); a direct
    caller of the op gets this error rather than a silently zero gradient."""
    def backward(ctx, *grads):
        raise RuntimeError(f"rnnkernels: the backward op of {forward_name} is not itself "
                           "differentiable (double backward through the module works: it runs "
                           "the reference backward under create_graph=True)")

    backward_op.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)


def call_backend(backend: str, fn: str, *args):
    from .. import backends
    return getattr(backends.get(backend), fn)(*args)


def empty_batch(grad_out: Tensor) -> bool:
    """A batch of 0 sequences: every gradient is empty; no backend needs to run (and a kernel
    cannot tell empty workspaces of B = 0 from unsaved ones)."""
    return grad_out.shape[1] == 0
