"""The ``cpu`` backend of the recurrent variants (peephole, head-wise recurrence, zoneout; layer
norm: ``cpu_layer_norm``).

``scan`` has ``reference_variants.scan``'s signature and semantics (docs/VARIANTS.md, the backend
contract of docs/BACKENDS.md) and runs the fused C++ scans of ``csrc/cpu/variant_impl.h``
(through ``torch.ops.rnnkernels_C.variant_forward`` / ``variant_backward``) inside the custom op
``torch.ops.rnnkernels.variant_scan_cpu``: a fake impl (so ``torch.compile`` traces it) and an
autograd formula, as the plain scans' ops (``rnnkernels/ops``) have.

Backward: the kernel's reverse scan gives dxp (the d pre-activations), dh0, dc0; the rest is
here, once per call and never per step (docs/BACKENDS.md):

* dW_hh = Σ_t dghᵀ·h_{t-1} as ONE GEMM, or for a head-wise W_hh one batched GEMM over the heads
  ([k, G·d, T·B] × [k, T·B, d]), dgh = dxp except the GRU's n block (dxp_n ⊙ r);
* the peephole weights' gradient as one reduction over steps and batch:
  Σ dxp_i ⊙ c_{t-1}, Σ dxp_f ⊙ c_{t-1}, Σ dxp_o ⊙ c̃_t (c̃_t = f ⊙ c_{t-1} + i ⊙ u, the
  candidate before zoneout, rebuilt from the saved gates; the kernel saves the zoned c_t, the
  state the next step reads);
* the zoneout masks are constants (no gradient), like a dropout mask.

Every other autograd mode runs ``reference_variants.scan`` (autograd through a plain loop),
never a zero or stale result: a backward under ``create_graph=True`` (double backward)
recomputes the reference forward from the saved inputs and differentiates it with the graph
kept; forward-mode AD, ``torch.func`` transforms and traces (``routes.unsupported_autograd_mode``)
call the reference from ``scan`` directly. No projection (``proj_size``): ``variants.resolve``
routes such a call to the reference, and this module refuses it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import routes
from ..cells import CELLS, CellSpec, acc_dtype
from ..ops import _common as C
from ..variants import ScanVariant
from . import reference_variants

# The kernels' cell codes (rnnk::Cell).
_CELLS = {"lstm": 0, "gru": 1, "rnn": 2}
_NAMES = {0: "lstm", 1: "gru", 2: "rnn", 3: "rnn"}


def _keep(keep) -> tuple[Tensor | None, float]:
    """A ScanVariant.keep entry → (mask or None, eval probability)."""
    if keep is None:
        return None, 0.0
    if isinstance(keep, float):
        return None, keep
    return keep, 0.0


def zoneout_args(keep: tuple) -> tuple[Tensor | None, Tensor | None, float, float]:
    """ScanVariant.keep → the ops' (mask_h, mask_c, p_h, p_c)."""
    (mask_h, p_h), (mask_c, p_c) = (_keep(k) for k in (*keep, None)[:2])
    return mask_h, mask_c, p_h, p_c


def keep_of(mask_h, mask_c, p_h: float, p_c: float, states: int) -> tuple:
    """The inverse of ``zoneout_args``: a ScanVariant.keep of ``states`` entries."""
    keep = tuple(m if m is not None else (p if p > 0 else None)
                 for m, p in ((mask_h, p_h), (mask_c, p_c)))
    return keep[:states]


def _ext():
    """torch.ops.rnnkernels_C, the extension loaded (lazily, as ``compiled`` does it)."""
    from . import compiled
    if not compiled.AVAILABLE:
        raise RuntimeError(f"rnnkernels: backend 'cpu' is unavailable: {compiled.ERROR}")
    return torch.ops.rnnkernels_C


@torch.library.custom_op("rnnkernels::variant_scan_cpu", mutates_args=())
def variant_scan_cpu(cell: int, xp: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor,
                     b_hn: Tensor | None, peephole: Tensor | None, mask_h: Tensor | None,
                     mask_c: Tensor | None, p_h: float, p_c: float, num_heads: int,
                     lengths: Tensor | None, reverse: bool, save: bool
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer and direction of a cell with variants on the CPU kernels.

    cell 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu; xp [T,B,G·H], h0 [B,H], c0 [B,H] (LSTM) or None,
    w_hh [G·H, H/num_heads], b_hn [H] (GRU) or None, peephole [3,H] (rows i, f, o) or None,
    mask_h / mask_c [T,B,H] zoneout keep-masks (accumulation dtype) or None with p_h / p_c the
    eval probability (0: no zoneout) → out [T,B,H], h_n [B,H], c_n [B,H] (LSTM; else empty),
    workspaces gates [T,B,G·H] and ws [T,B,H] (LSTM the zoned c_t, GRU hn_lin; empty when not
    ``save`` and for the RNN)."""
    return tuple(_ext().variant_forward(
        cell, xp, h0, c0, w_hh, b_hn, peephole, mask_h, mask_c, p_h, p_c, num_heads, lengths,
        reverse, save))


@variant_scan_cpu.register_fake
def _(cell, xp, h0, c0, w_hh, b_hn, peephole, mask_h, mask_c, p_h, p_c, num_heads, lengths,
      reverse, save):
    T, B, GH = xp.shape
    H = h0.shape[-1]
    acc = acc_dtype(xp.dtype)
    saved = save and GH > H
    return (xp.new_empty((T, B, H)), xp.new_empty((B, H)),
            xp.new_empty((B, H) if cell == 0 else (0,)),
            xp.new_empty((T, B, GH) if saved else (0,), dtype=acc),
            xp.new_empty((T, B, H) if saved else (0,), dtype=acc))


@torch.library.custom_op("rnnkernels::variant_scan_cpu_backward", mutates_args=())
def variant_scan_cpu_backward(cell: int, grad_out: Tensor, grad_hn: Tensor,
                              grad_cn: Tensor | None, h0: Tensor, c0: Tensor | None,
                              w_hh: Tensor, b_hn: Tensor | None, peephole: Tensor | None,
                              mask_h: Tensor | None, mask_c: Tensor | None, p_h: float,
                              p_c: float, num_heads: int, lengths: Tensor | None, reverse: bool,
                              out: Tensor, gates: Tensor, ws: Tensor
                              ) -> tuple[Tensor, Tensor, Tensor]:
    """The reverse scan of ``variant_scan_cpu``: dxp [T,B,G·H], dh0 [B,H], dc0 [B,H] (LSTM;
    else empty)."""
    if C.empty_batch(grad_out):
        return _fake_backward(cell, grad_out, h0, w_hh)
    return tuple(_ext().variant_backward(
        cell, grad_out, grad_hn, grad_cn, h0, c0, w_hh, b_hn, peephole, mask_h, mask_c, p_h, p_c,
        num_heads, lengths, reverse, out, gates, ws))


def _fake_backward(cell, grad_out, h0, w_hh):
    T, B, H = grad_out.shape
    return (grad_out.new_zeros((T, B, w_hh.shape[0])), h0.new_zeros((B, H)),
            h0.new_zeros((B, H) if cell == 0 else (0,)))


@variant_scan_cpu_backward.register_fake
def _(cell, grad_out, grad_hn, grad_cn, h0, c0, w_hh, b_hn, peephole, mask_h, mask_c, p_h, p_c,
      num_heads, lengths, reverse, out, gates, ws):
    return _fake_backward(cell, grad_out, h0, w_hh)


_INPUTS = ("cell", "xp", "h0", "c0", "w_hh", "b_hn", "peephole", "mask_h", "mask_c", "p_h", "p_c",
           "num_heads", "lengths", "reverse", "save")


def _setup_context(ctx, inputs, output):
    args = dict(zip(_INPUTS, inputs))
    out, _, _, gates, ws = output
    C.setup_common(ctx, args["reverse"], "cpu", args["save"])
    # The workspaces have no gradient: a double backward recomputes the reference forward from
    # the inputs instead of differentiating the reverse scan (so no workspace gradients exist).
    ctx.mark_non_differentiable(gates, ws)
    ctx.args = {k: args[k] for k in ("cell", "p_h", "p_c", "num_heads")}
    ctx.save_for_backward(args["xp"], args["h0"], args["c0"], args["w_hh"], args["b_hn"],
                          args["peephole"], args["mask_h"], args["mask_c"], args["lengths"], out,
                          gates, ws)


def _backward(ctx, grad_out, grad_hn, grad_cn, grad_gates, grad_ws):
    C.check_saved(ctx, "variant_scan_cpu")
    xp, h0, c0, w_hh, b_hn, peep, mask_h, mask_c, lengths, out, gates, ws = ctx.saved_tensors
    cell, k = ctx.args["cell"], ctx.args["num_heads"]
    grad_out, grad_hn = C.dense(grad_out, out), C.dense(grad_hn, h0)
    grad_cn = C.dense(grad_cn, c0) if cell == 0 else None
    if C.differentiable_backward():
        return _reference_backward(ctx, (grad_out, grad_hn, grad_cn))
    p_h, p_c = ctx.args["p_h"], ctx.args["p_c"]
    dxp, dh0, dc0 = variant_scan_cpu_backward(cell, grad_out, grad_hn, grad_cn, h0, c0, w_hh,
                                              b_hn, peep, mask_h, mask_c, p_h, p_c, k, lengths,
                                              ctx.reverse, out, gates, ws)
    need = ctx.needs_input_grad
    H = out.shape[-1]
    dgh = dxp
    if cell == 1:   # d(h·W_hnᵀ + b_hn) = dn ⊙ r; the r and z blocks are dxp's
        dn_hidden = dxp[..., 2 * H:].to(gates.dtype) * gates[..., :H]
        dgh = torch.cat([dxp[..., :2 * H].to(gates.dtype), dn_hidden], dim=-1)
    dw_hh = db_hn = dpeep = None
    if need[4]:
        h_prev = C.previous_states(out, h0, lengths, ctx.reverse)
        dw_hh = _weight_grad(dgh, h_prev, k, w_hh.dtype)
    if cell == 1 and b_hn is not None and need[5]:
        db_hn = dn_hidden.sum(dim=(0, 1)).to(b_hn.dtype)
    if peep is not None and need[6]:
        dpeep = _peephole_grad(dxp, gates, ws, c0, lengths, ctx.reverse).to(peep.dtype)
    return (None, dxp, dh0, dc0 if cell == 0 else None, dw_hh, db_hn, dpeep,
            None, None, None, None, None, None, None, None)


def _weight_grad(dgh: Tensor, h_prev: Tensor, heads: int, dtype: torch.dtype) -> Tensor:
    """dW_hh = Σ_t dghᵀ·h_{t-1}: one GEMM, or per head one batched GEMM into the head-wise
    layout [G·H, d] (row g·H + j·d + u: gate g, unit u of head j)."""
    if heads == 1:
        return C.sum_over_steps(dgh, h_prev, dtype)
    GH, H = dgh.shape[-1], h_prev.shape[-1]
    G, d = GH // H, H // heads
    common = torch.promote_types(dgh.dtype, h_prev.dtype)
    g = dgh.reshape(-1, G, heads, d).to(common)                    # [T·B, G, k, d]
    x = h_prev.reshape(-1, heads, d).to(common).transpose(0, 1)   # [k, T·B, d]
    # Per gate one batched GEMM over the heads on strided views (a transposed operand with a
    # leading dimension, which BLAS reads as it is), straight into the [G, k, d, d] layout:
    # permuting dgh into [k, G·d, T·B] first would copy it with a transposing stride, which
    # cost as much as the reverse scan itself (T=100, B=64, H=256).
    dw = torch.empty((G, heads, d, d), dtype=common, device=dgh.device)
    for q in range(G):
        torch.bmm(g[:, q].permute(1, 2, 0), x, out=dw[q])           # [k, d, T·B] × [k, T·B, d]
    return dw.view(GH, d).to(dtype)


def _peephole_grad(dxp: Tensor, gates: Tensor, cs: Tensor, c0: Tensor, lengths, reverse: bool):
    """[3, H]: Σ over steps and batch of dxp_i ⊙ c_{t-1}, dxp_f ⊙ c_{t-1}, dxp_o ⊙ c̃_t (zero
    beyond each length, where dxp is 0)."""
    c_prev = C.previous_states(cs, c0, lengths, reverse)
    i, f, u, _ = gates.chunk(4, dim=-1)
    d_i, d_f, _, d_o = dxp.to(gates.dtype).chunk(4, dim=-1)
    cand = f * c_prev + i * u
    return torch.stack([(d_i * c_prev).sum((0, 1)), (d_f * c_prev).sum((0, 1)),
                        (d_o * cand).sum((0, 1))])


def _reference_backward(ctx, grads):
    """The backward under create_graph=True: the reference forward recomputed from the saved
    inputs and differentiated by autograd with its graph kept, so gradients of gradients are
    exact."""
    xp, h0, c0, w_hh, b_hn, peep, mask_h, mask_c, lengths, _, _, _ = ctx.saved_tensors
    cell, k = ctx.args["cell"], ctx.args["num_heads"]
    states = (h0, c0) if cell == 0 else (h0,)
    keep = keep_of(mask_h, mask_c, ctx.args["p_h"], ctx.args["p_c"], len(states))
    spec = CELLS[_NAMES[cell]]
    with torch.enable_grad():
        out, finals = reference_variants.scan(spec, xp, states, w_hh, None, b_hn, lengths,
                                              ctx.reverse, cell == 3,
                                              ScanVariant(peep, k, keep))
        outputs = (out, *finals)
        names = (1, 2, 3, 4, 5, 6)   # xp, h0, c0, w_hh, b_hn, peephole
        tensors = (xp, h0, c0, w_hh, b_hn, peep)
        wanted = [i for i, t in zip(names, tensors)
                  if t is not None and ctx.needs_input_grad[i] and t.requires_grad]
        got = torch.autograd.grad(outputs, [tensors[i - 1] for i in wanted],
                                  [g for g in grads if g is not None], create_graph=True,
                                  allow_unused=True)
    result = [None] * len(_INPUTS)
    for i, g in zip(wanted, got):
        result[i] = g
    return tuple(result)


variant_scan_cpu.register_autograd(_backward, setup_context=_setup_context)
C.forbid_double_backward(variant_scan_cpu_backward, "rnnkernels::variant_scan_cpu")


def scan(cell: CellSpec, xp: Tensor, states: tuple[Tensor, ...], w_hh: Tensor,
         w_hr: Tensor | None, b_hn: Tensor | None, lengths: Tensor | None, reverse: bool,
         relu: bool, variant: ScanVariant) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``reference_variants.scan`` on the fused CPU kernels: (out [T,B,H] in time order, final
    states). Forward-mode AD, torch.func transforms and traces run the reference loop. Layer
    norm has its own scan (``cpu_layer_norm``)."""
    if variant.layer_norm is not None:
        from . import cpu_layer_norm
        return cpu_layer_norm.scan(cell, xp, states, w_hh, w_hr, b_hn, lengths, reverse, relu,
                                   variant)
    peep = variant.peephole
    if routes.unsupported_autograd_mode(lambda: [xp, *states, w_hh, b_hn, peep]) is not None:
        return reference_variants.scan(cell, xp, states, w_hh, w_hr, b_hn, lengths, reverse,
                                       relu, variant)
    if w_hr is not None:
        raise RuntimeError("rnnkernels: backend 'cpu' cannot run a variant with proj_size > 0: "
                           "no fused kernel for it yet; use backend='auto' or 'reference'")
    if peep is not None and peep.dtype != xp.dtype:   # (autocast casts the module's weights)
        peep = peep.to(xp.dtype)
    code = _CELLS[cell.name] + (1 if cell.name == "rnn" and relu else 0)
    mask_h, mask_c, p_h, p_c = zoneout_args(variant.keep)
    c0 = states[1] if code == 0 else None
    save = C.needs_grad(xp, *states, w_hh, b_hn, peep)
    out, h_n, c_n, _, _ = variant_scan_cpu(code, xp, states[0], c0, w_hh, b_hn, peep, mask_h,
                                           mask_c, p_h, p_c, variant.num_heads, lengths, reverse,
                                           save)
    return out, ((h_n, c_n) if code == 0 else (h_n,))
