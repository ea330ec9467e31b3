"""Triton backend of the recurrent variants: peephole LSTM, head-wise recurrence, zoneout.

``scan`` has the signature and results of ``backends/reference_variants.scan`` (one layer and
direction; semantics in docs/VARIANTS.md, time/length/reverse in docs/BACKENDS.md). The variants
are options of the plain cells' kernels (``lstm.py``, ``gru.py``, ``rnn.py``: constexprs PEEP,
HD, ZH, ZC, see ``launch.VARIANT_FLAGS``) run by the one launcher with the plain scans' plan, so
they take every strategy the plain scans take (``auto``'s choice for typical shapes included);
their math is in ``cell.py`` next to the plain cells' (``lstm_cell_fwd``/``_bwd`` with PEEP,
``zoneout``/``zoneout_bwd``, ``head_gate_products``/``head_carry``).

The scan is the custom op ``rnnkernels::triton_variant_scan`` (fake impl, autograd), so
``torch.compile`` traces it. Its backward runs the hand-written reverse scan
(``triton_variant_scan_backward``) for dxp and the initial states' gradients, then the weight
gradients over all steps at once, as the plain ops do (``ops/_common``):

* dW_hh: one GEMM Σ_t dgᵀ·h_{t-1}; head-wise, one batched GEMM over the heads
  (head j: Σ_t dg[:, gates of head j]ᵀ·h_{t-1}[:, head j]);
* dweight_ch: a reduction, rows Σ di⊙c_{t-1}, Σ df⊙c_{t-1}, Σ do⊙c̃_t (c̃: the new c before
  zoneout, recomputed from the saved gates when c is zoned: the saved ``cs`` is the state);
* GRU db_hn = Σ dn⊙r; LSTM dW_hr = Σ dhᵀ·(o⊙tanh c̃) with dh the candidate's gradient.

Other autograd modes run ``reference_variants``' differentiable loop instead: the whole scan
under forward-mode AD and ``torch.func`` (``routes.unsupported_autograd_mode``), the backward
when it must itself be differentiable (``create_graph=True``), recomputed from the inputs, so
the workspaces are non-differentiable outputs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ... import routes
from ...cells import CELLS, CellSpec, acc_dtype
from ...ops import _common as C
from .. import reference_variants
from ...variants import ScanVariant
from . import _check, _lengths, _need_workspaces
from . import gru as _gru
from . import launch as _launch
from . import lstm as _lstm
from . import rnn as _rnn

_KERNELS = {"lstm": _lstm.KERNELS, "gru": _gru.KERNELS, "rnn": _rnn.KERNELS}


def _zone(keep: Tensor | None) -> int:
    """The kernels' ZH/ZC: 0 no zoneout, 1 a [T, B, size] mask, 2 a scalar p (eval)."""
    return 0 if keep is None else (1 if keep.dim() == 3 else 2)


def _options(cell: str, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c, relu: bool, num_heads: int):
    """The kernels' optional inputs and constexpr flags for one variant scan of ``cell``."""
    flags = {"HD": w_hh.shape[1] if num_heads > 1 else 0}
    if cell == "lstm":
        inputs = dict(w_hr=w_hr, w_ch=w_ch, keep_h=keep_h, keep_c=keep_c)
        flags.update(PROJ=w_hr is not None, PEEP=w_ch is not None, ZH=_zone(keep_h),
                     ZC=_zone(keep_c))
    elif cell == "gru":
        inputs = dict(b_hn=b_hn, keep_h=keep_h)
        flags.update(HAS_BHN=b_hn is not None, ZH=_zone(keep_h))
    else:
        inputs, flags["RELU"] = {}, bool(relu)
    return inputs, flags


def _padded(results, ref: Tensor, n: int, positions) -> tuple[Tensor, ...]:
    """A cell's result tuple with an empty tensor at ``positions`` (what its cell lacks: c, a
    workspace, dh), so every cell's op returns the same n results."""
    results = list(results)
    for k in positions:
        results.insert(k, ref.new_empty((0,), dtype=acc_dtype(ref.dtype)))
    return tuple(results[:n] + [ref.new_empty((0,))] * (n - len(results)))


_MISSING_FWD = {"lstm": (), "gru": (2,), "rnn": (2, 3, 4)}     # out, h_n, c_n, ws0, ws1
_MISSING_BWD = {"lstm": (), "gru": (2, 3), "rnn": (2, 3)}      # dxp, dh0, dc0, dh


# ---------------------------------------------------------------------------------- the ops
@torch.library.custom_op("rnnkernels::triton_variant_scan", mutates_args=())
def triton_variant_scan(xp: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor,
                        w_hr: Tensor | None, b_hn: Tensor | None, w_ch: Tensor | None,
                        keep_h: Tensor | None, keep_c: Tensor | None, lengths: Tensor | None,
                        cell: str, reverse: bool, relu: bool, num_heads: int, save: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One variant scan on the Triton kernels → out [T,B,P], h_n [B,P], c_n [B,H] (empty
    unless LSTM) and the cell's two workspaces (empty for the RNN, or when not ``save``).
    keep_h / keep_c: zoneout masks [T,B,size] (time order, fp32) or a 0-dim p, or None."""
    _check("variant_scan", xp, h0, c0, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c)
    inputs, flags = _options(cell, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c, relu, num_heads)
    states = (h0, c0) if cell == "lstm" else (h0,)
    res = _launch.forward(_KERNELS[cell], xp, states, w_hh, _lengths(lengths, xp), reverse, save,
                          inputs=inputs, flags=flags)
    return _padded(res, xp, 5, _MISSING_FWD[cell])


@triton_variant_scan.register_fake
def _(xp, h0, c0, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c, lengths, cell, reverse, relu,
      num_heads, save):
    return _padded(CELLS[cell].fake_forward(xp, h0, save), xp, 5, _MISSING_FWD[cell])


@torch.library.custom_op("rnnkernels::triton_variant_scan_backward", mutates_args=())
def triton_variant_scan_backward(
        grad_out: Tensor, grad_hn: Tensor, grad_cn: Tensor, h0: Tensor, c0: Tensor | None,
        w_hh: Tensor, w_hr: Tensor | None, b_hn: Tensor | None, w_ch: Tensor | None,
        keep_h: Tensor | None, keep_c: Tensor | None, lengths: Tensor | None, cell: str,
        reverse: bool, relu: bool, num_heads: int, out: Tensor, ws0: Tensor, ws1: Tensor
        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The reverse scan of ``triton_variant_scan`` → dxp [T,B,G·H], dh0, dc0 (empty unless
    LSTM) and dh [T,B,P] acc (the projection's input gradient; empty without W_hr)."""
    spec = CELLS[cell]
    if C.empty_batch(grad_out):
        return _padded(spec.fake_backward(grad_out, h0, w_hh, w_hr), h0, 4, _MISSING_BWD[cell])
    _check("variant_scan_backward", h0, grad_out, grad_hn, c0, w_hh, w_hr, b_hn, w_ch, keep_h,
           keep_c, out, ws0, ws1)
    workspaces = (ws0, ws1)[:len(spec.workspaces)]
    _need_workspaces("variant_scan_backward", *workspaces)
    inputs, flags = _options(cell, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c, relu, num_heads)
    lstm = cell == "lstm"
    res = _launch.backward(_KERNELS[cell], grad_out, (grad_hn, grad_cn) if lstm else (grad_hn,),
                           (h0, c0) if lstm else (h0,), w_hh, _lengths(lengths, h0), reverse,
                           out, workspaces, inputs=inputs, flags=flags)
    return _padded(res, h0, 4, _MISSING_BWD[cell])


@triton_variant_scan_backward.register_fake
def _(grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c, lengths, cell,
      reverse, relu, num_heads, out, ws0, ws1):
    return _padded(CELLS[cell].fake_backward(grad_out, h0, w_hh, w_hr), h0, 4, _MISSING_BWD[cell])


# ------------------------------------------------------------------------------ the autograd
_INPUTS = ("xp", "h0", "c0", "w_hh", "w_hr", "b_hn", "w_ch", "keep_h", "keep_c", "lengths")


def _setup_context(ctx, inputs, output):
    *tensors, cell, reverse, relu, num_heads, save = inputs
    C.setup_common(ctx, reverse, "triton", save)
    ctx.cell, ctx.relu, ctx.num_heads = cell, relu, num_heads
    ctx.save_for_backward(*tensors, output[0], output[3], output[4])
    # The backward reads the workspaces, but no gradient flows into them: the double backward
    # recomputes the reference loop from the inputs (``_reference_backward``).
    ctx.mark_non_differentiable(output[3], output[4])


def _head_weight_grad(dg: Tensor, h_prev: Tensor, gates: int, heads: int,
                      dtype: torch.dtype) -> Tensor:
    """dW of a head-wise W [G·H, d] as one batched GEMM over the heads: row g·H + j·d + u,
    column v is Σ_{t,b} dg[t, b, g·H + j·d + u]·h_prev[t, b, j·d + v]."""
    GH = dg.shape[-1]
    d = GH // gates // heads
    common = torch.promote_types(dg.dtype, h_prev.dtype)
    g = dg.reshape(-1, gates, heads, d).permute(2, 1, 3, 0).reshape(heads, gates * d, -1)
    x = h_prev.reshape(-1, heads, d).transpose(0, 1)
    w = torch.bmm(g.to(common), x.to(common))                     # [heads, G·d, d]
    return w.view(heads, gates, d, d).transpose(0, 1).reshape(GH, d).to(dtype)


def _lstm_cell_values(ws0: Tensor, cs: Tensor, c0: Tensor, lengths, reverse, zoned: bool):
    """(c_{t-1}, c̃_t, o) of every step from the saved workspaces (``cs``: the state c_t, which
    is the candidate c̃_t unless c is zoned)."""
    i, f, u, o = ws0.chunk(4, dim=-1)
    c_prev = C.previous_states(cs, c0, lengths, reverse)
    return c_prev, (f * c_prev + i * u if zoned else cs), o      # as cell.lstm_cell_state


def _weight_grads(ctx, dxp, dh, saved):
    """dW_hh, dW_hr, db_hn, dweight_ch (None where not wanted), from the reverse scan."""
    xp, h0, c0, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c, lengths, out, ws0, ws1 = saved
    spec = CELLS[ctx.cell]
    need = dict(zip(_INPUTS, ctx.needs_input_grad))
    dw_hh = dw_hr = db_hn = dw_ch = None
    dg = dxp
    if ctx.cell == "gru":
        r = spec.gate_block(ws0, "r")
        dn_hidden = spec.gate_block(dxp, "n").to(r.dtype) * r     # d(h·W_hnᵀ + b_hn)
        dg = torch.cat([dxp[..., :2 * r.shape[-1]].to(r.dtype), dn_hidden], dim=-1)
        if b_hn is not None and need["b_hn"]:
            db_hn = dn_hidden.sum(dim=(0, 1)).to(b_hn.dtype)
    if need["w_hh"]:
        h_prev = C.previous_states(out, h0, lengths, ctx.reverse)
        dw_hh = (_head_weight_grad(dg, h_prev, spec.gates, ctx.num_heads, w_hh.dtype)
                 if ctx.num_heads > 1 else C.sum_over_steps(dg, h_prev, w_hh.dtype))
    if ctx.cell == "lstm" and ((w_hr is not None and need["w_hr"]) or need["w_ch"]):
        c_prev, c_new, o = _lstm_cell_values(ws0, ws1, c0, lengths, ctx.reverse,
                                             keep_c is not None)
        if w_hr is not None and need["w_hr"]:
            dw_hr = C.sum_over_steps(dh, o * torch.tanh(c_new), w_hr.dtype)
        if w_ch is not None and need["w_ch"]:
            d_i, d_f, _, d_o = dxp.to(c_prev.dtype).chunk(4, dim=-1)
            dw_ch = torch.stack([(d_i * c_prev).sum((0, 1)), (d_f * c_prev).sum((0, 1)),
                                 (d_o * c_new).sum((0, 1))]).to(w_ch.dtype)
    return dw_hh, dw_hr, db_hn, dw_ch


def _reference_backward(ctx, saved, grad_out, grad_hn, grad_cn):
    """The backward as differentiable PyTorch (double backward): autograd through
    ``reference_variants``' loop, recomputed from the saved inputs."""
    xp, h0, c0, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c, lengths = saved[:10]
    lstm = ctx.cell == "lstm"
    keep = [k if k is None or k.dim() else float(k) for k in (keep_h, keep_c)[:1 + lstm]]
    variant = ScanVariant(w_ch, ctx.num_heads, tuple(keep))
    states = (h0, c0) if lstm else (h0,)
    with torch.enable_grad():
        out, finals = reference_variants.scan(CELLS[ctx.cell], xp, states, w_hh, w_hr, b_hn,
                                              lengths, ctx.reverse, ctx.relu, variant)
        outputs = (out, *finals)
        grads = (grad_out, grad_hn, grad_cn)[:len(outputs)]
        return C.reference_grads(outputs, grads, list(saved[:len(_INPUTS)]),
                                 ctx.needs_input_grad)


def _backward(ctx, grad_out, grad_hn, grad_cn, grad_ws0, grad_ws1):
    C.check_saved(ctx, "triton_variant_scan")
    saved = ctx.saved_tensors
    if C.differentiable_backward():
        return (*_reference_backward(ctx, saved, grad_out, grad_hn, grad_cn),
                None, None, None, None, None)
    xp, h0, c0, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c, lengths, out, ws0, ws1 = saved
    lstm = ctx.cell == "lstm"
    grad_out, grad_hn = C.dense(grad_out, out), C.dense(grad_hn, h0)
    grad_cn = C.dense(grad_cn, c0) if lstm else h0.new_empty((0,))
    dxp, dh0, dc0, dh = triton_variant_scan_backward(
        grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, b_hn, w_ch, keep_h, keep_c, lengths,
        ctx.cell, ctx.reverse, ctx.relu, ctx.num_heads, out, ws0, ws1)
    dw_hh, dw_hr, db_hn, dw_ch = _weight_grads(ctx, dxp, dh, saved)
    return (dxp, dh0, dc0 if lstm else None, dw_hh, dw_hr, db_hn, dw_ch, None, None, None,
            None, None, None, None, None)


triton_variant_scan.register_autograd(_backward, setup_context=_setup_context)
C.forbid_double_backward(triton_variant_scan_backward, "rnnkernels::triton_variant_scan")


# ---------------------------------------------------------------------------------- the entry
def _keep_tensor(keep, ref: Tensor) -> Tensor | None:
    """A ScanVariant keep as the op takes it: the mask as is, p as a 0-dim fp32 tensor."""
    if keep is None or isinstance(keep, Tensor):
        return None if keep is None else keep.contiguous()
    return torch.tensor(float(keep), dtype=torch.float32, device=ref.device)


def scan(cell: CellSpec, xp: Tensor, states: tuple[Tensor, ...], w_hh: Tensor,
         w_hr: Tensor | None, b_hn: Tensor | None, lengths: Tensor | None, reverse: bool,
         relu: bool, variant) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer and direction of ``cell`` with ``variant`` (a ``variants.ScanVariant``) on
    the Triton kernels: (out [T,B,P], final states), as ``reference_variants.scan``."""
    tensors = [xp, *states, w_hh, w_hr, b_hn, variant.peephole]
    if routes.unsupported_autograd_mode(tensors) is not None:
        return reference_variants.scan(cell, xp, states, w_hh, w_hr, b_hn, lengths, reverse,
                                       relu, variant)
    lstm = cell.name == "lstm"
    keep = [_keep_tensor(k, xp) for k in variant.keep] + [None]
    h0, c0 = states[0], (states[1] if lstm else None)
    w_ch = variant.peephole.contiguous() if variant.peephole is not None else None
    save = C.needs_grad(xp, *states, w_hh, w_hr, b_hn, w_ch)
    out, h_n, c_n, _, _ = triton_variant_scan(xp, h0, c0, w_hh, w_hr, b_hn, w_ch, keep[0],
                                              keep[1], lengths, cell.name, bool(reverse),
                                              bool(relu), variant.num_heads, save)
    return out, ((h_n, c_n) if lstm else (h_n,))
