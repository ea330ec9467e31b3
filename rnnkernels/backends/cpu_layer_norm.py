"""The ``cpu`` backend of the layer-norm LSTM and GRU (``layer_norm=True``, docs/VARIANTS.md).

``scan`` has ``reference_variants.scan``'s signature and semantics for a ``ScanVariant`` with
layer norm and at most zoneout besides (``variants.resolve`` sends layer norm combined with
another option to the reference; zoneout's masks are constants, as in ``cpu_variants``), and runs the C++ scan of ``csrc/cpu/ln_scan.h``
(``torch.ops.rnnkernels_C.ln_forward`` / ``ln_backward``) inside the custom op
``torch.ops.rnnkernels.ln_scan_cpu``: a fake impl (so ``torch.compile`` traces it) and an
autograd formula, as the other scans' ops have.

The op takes x·W_ihᵀ as the scan gets it and normalises it itself, all steps in one
``native_layer_norm`` (the input side's norm is one big op, outside the recurrence, with the
biases as its β); the recurrent product's norm, the gates and c_t's norm are the C++ step's.
Why the input norm inside the op rather than before it: a double backward then recomputes the
reference scan from the op's own inputs (the reference normalises x·W_ihᵀ itself), with no second
copy of the reference loop here.

Backward: the kernel's reverse scan gives ∂L/∂x̂ (x̂ the normalised input side), dh0, dc0, the
gradient of each step's raw recurrent product (dgh) and the recurrent norm's and c's norm's
parameter gradients (dγ_hh, and dγ_c, dβ_c or db_hn: sums over steps and batch that the kernel
accumulates per thread while each row is in cache, ``csrc/cpu/ln_scan.h``); the rest is here,
once per call and never per step (docs/BACKENDS.md):

* x·W_ihᵀ, γ_ih and the biases: ``native_layer_norm_backward`` of ∂L/∂x̂, one call;
* dW_hh = Σ_t dghᵀ·h_{t-1} as ONE GEMM.

Dtypes: float32 and float64 run as they are; float16/bfloat16 inputs run in float32 (casts
around the op: the accumulation dtype, as the plain scans keep their state) and are cast back.

Every other autograd mode runs ``reference_variants.scan`` (autograd through a plain loop),
never a zero or stale result: a backward under ``create_graph=True`` recomputes the reference
forward from the saved inputs and differentiates it with the graph kept; forward-mode AD,
``torch.func`` transforms and traces (``routes.unsupported_autograd_mode``) call the reference
from ``scan`` directly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import routes
from ..cells import CELLS, CellSpec, acc_dtype
from ..ops import _common as C
from ..variants import LAYER_NORM_EPS, LayerNormScan, ScanVariant
from . import reference_variants
from .cpu_variants import _ext, keep_of, zoneout_args

_CELLS = {"lstm": 0, "gru": 1}
_NAMES = {0: "lstm", 1: "gru"}
# The ops' results (torch.library infers the schema from these annotations).
_FORWARD_RESULTS = tuple[(Tensor,) * 10]
_BACKWARD_RESULTS = tuple[(Tensor,) * 5]


@torch.library.custom_op("rnnkernels::ln_scan_cpu", mutates_args=())
def ln_scan_cpu(cell: int, xp: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor,
                gain_ih: Tensor, bias: Tensor | None, gain_hh: Tensor, b_hn: Tensor | None,
                gain_c: Tensor | None, bias_c: Tensor | None, mask_h: Tensor | None,
                mask_c: Tensor | None, p_h: float, p_c: float, eps: float,
                lengths: Tensor | None, reverse: bool, save: bool) -> _FORWARD_RESULTS:
    """One layer and direction of the layer-norm LSTM (cell 0) or GRU (cell 1) on the CPU.

    xp [T,B,G·H] = x·W_ihᵀ (no biases), h0 [B,H], c0 [B,H] (LSTM) or None, w_hh [G·H,H],
    gain_ih, gain_hh [G·H], bias [G·H] (added after the input norm) or None, b_hn [H] (GRU) or
    None, gain_c, bias_c [H] (LSTM) or None; mask_h / mask_c [T,B,H] zoneout keep-masks or None
    with p_h / p_c the eval probability (0: no zoneout); float32 or float64, all one dtype →
    out [T,B,H], h_n [B,H], c_n [B,H] (LSTM; else empty), and what the backward reads (empty
    when not ``save``): gates [T,B,G·H], ws [T,B,H] (LSTM c_t, GRU γ_n ⊙ n̂_n + b_hn),
    nrm [T,B,G·H] (n̂), chat [T,B,H] (LSTM ĉ), rstd [T,B,2]; and the input norm's mean and
    rstd [T,B,1]."""
    xhat, mean, rstd_ih = torch.native_layer_norm(xp, [xp.shape[-1]], gain_ih, bias, eps)
    outs = _ext().ln_forward(cell, xhat, h0, c0, w_hh, b_hn, gain_hh, gain_c, bias_c, mask_h,
                             mask_c, p_h, p_c, eps, lengths, reverse, save)
    return (*outs, mean, rstd_ih)


@ln_scan_cpu.register_fake
def _(cell, xp, h0, c0, w_hh, gain_ih, bias, gain_hh, b_hn, gain_c, bias_c, mask_h, mask_c, p_h,
      p_c, eps, lengths, reverse, save):
    T, B, GH = xp.shape
    H = h0.shape[-1]
    lstm = cell == 0

    def saved(*shape, keep=True):
        return xp.new_empty(shape if save and keep else (0,))
    return (xp.new_empty((T, B, H)), xp.new_empty((B, H)), xp.new_empty((B, H) if lstm else (0,)),
            saved(T, B, GH), saved(T, B, H), saved(T, B, GH), saved(T, B, H, keep=lstm),
            saved(T, B, 2), xp.new_empty((T, B, 1)), xp.new_empty((T, B, 1)))


@torch.library.custom_op("rnnkernels::ln_scan_cpu_backward", mutates_args=())
def ln_scan_cpu_backward(cell: int, grad_out: Tensor, grad_hn: Tensor, grad_cn: Tensor | None,
                         h0: Tensor, c0: Tensor | None, w_hh: Tensor, gain_hh: Tensor,
                         gain_c: Tensor | None, bias_c: Tensor | None, mask_h: Tensor | None,
                         mask_c: Tensor | None, p_h: float, p_c: float, lengths: Tensor | None,
                         reverse: bool, out: Tensor, gates: Tensor, ws: Tensor, nrm: Tensor,
                         chat: Tensor, rstd: Tensor) -> _BACKWARD_RESULTS:
    """The reverse scan of ``ln_scan_cpu``: ∂L/∂x̂ [T,B,G·H], dh0 [B,H], dc0 [B,H] (LSTM; else
    empty), dgh [T,B,G·H] (each step's raw h·W_hhᵀ) and dparams [G·H + 2H]: dγ_hh, then LSTM
    dγ_c, dβ_c / GRU db_hn and H zeros."""
    if C.empty_batch(grad_out):
        return _fake_backward(cell, grad_out, h0, w_hh)
    return tuple(_ext().ln_backward(cell, grad_out, grad_hn, grad_cn, h0, c0, w_hh, gain_hh,
                                    gain_c, bias_c, mask_h, mask_c, p_h, p_c, lengths, reverse,
                                    out, gates, ws, nrm, chat, rstd))


def _fake_backward(cell, grad_out, h0, w_hh):
    T, B, H = grad_out.shape
    GH = w_hh.shape[0]
    return (grad_out.new_zeros((T, B, GH)), h0.new_zeros((B, H)),
            h0.new_zeros((B, H) if cell == 0 else (0,)), grad_out.new_zeros((T, B, GH)),
            grad_out.new_zeros((GH + 2 * H,)))


@ln_scan_cpu_backward.register_fake
def _(cell, grad_out, grad_hn, grad_cn, h0, c0, w_hh, gain_hh, gain_c, bias_c, mask_h, mask_c, p_h,
      p_c, lengths, reverse, out, gates, ws, nrm, chat, rstd):
    return _fake_backward(cell, grad_out, h0, w_hh)


_INPUTS = ("cell", "xp", "h0", "c0", "w_hh", "gain_ih", "bias", "gain_hh", "b_hn", "gain_c",
           "bias_c", "mask_h", "mask_c", "p_h", "p_c", "eps", "lengths", "reverse", "save")
_DIFFERENTIABLE = ("xp", "h0", "c0", "w_hh", "gain_ih", "bias", "gain_hh", "b_hn", "gain_c",
                   "bias_c")


def _setup_context(ctx, inputs, output):
    args = dict(zip(_INPUTS, inputs))
    out, _, _, *workspaces = output
    C.setup_common(ctx, args["reverse"], "cpu", args["save"])
    # The workspaces have no gradient: a double backward recomputes the reference forward from
    # the inputs instead of differentiating the reverse scan.
    ctx.mark_non_differentiable(*workspaces)
    ctx.args = {k: args[k] for k in ("cell", "p_h", "p_c")}
    ctx.save_for_backward(*(args[k] for k in _DIFFERENTIABLE), args["mask_h"], args["mask_c"],
                          args["lengths"], out, *workspaces)


def _backward(ctx, grad_out, grad_hn, grad_cn, *workspace_grads):
    C.check_saved(ctx, "ln_scan_cpu")
    saved = ctx.saved_tensors
    n = len(_DIFFERENTIABLE)
    t = dict(zip(_DIFFERENTIABLE, saved[:n]))
    mask_h, mask_c, lengths, out, gates, ws, nrm, chat, rstd, mean_ih, rstd_ih = saved[n:]
    zoneout = (mask_h, mask_c, ctx.args["p_h"], ctx.args["p_c"])
    cell = ctx.args["cell"]
    lstm = cell == 0
    grad_out, grad_hn = C.dense(grad_out, out), C.dense(grad_hn, t["h0"])
    grad_cn = C.dense(grad_cn, t["c0"]) if lstm else None
    if C.differentiable_backward(*workspace_grads):
        return _reference_backward(ctx, t, zoneout, lengths, (grad_out, grad_hn, grad_cn))
    dxhat, dh0, dc0, dgh, dparams = ln_scan_cpu_backward(
        cell, grad_out, grad_hn, grad_cn, t["h0"], t["c0"], t["w_hh"], t["gain_hh"],
        t["gain_c"], t["bias_c"], *zoneout, lengths, ctx.reverse, out, gates, ws, nrm, chat,
        rstd)
    need = dict(zip(_INPUTS, ctx.needs_input_grad))
    grads = dict.fromkeys(_INPUTS)
    GH, H = dxhat.shape[-1], out.shape[-1]
    mask = [need["xp"], need["gain_ih"], need["bias"] and t["bias"] is not None]
    if any(mask):
        grads["xp"], grads["gain_ih"], grads["bias"] = torch.ops.aten.native_layer_norm_backward(
            dxhat, t["xp"], [GH], mean_ih, rstd_ih, t["gain_ih"], t["bias"], mask)
    if need["w_hh"]:
        h_prev = C.previous_states(out, t["h0"], lengths, ctx.reverse)
        grads["w_hh"] = C.sum_over_steps(dgh, h_prev, t["w_hh"].dtype)
    grads["gain_hh"], first, second = dparams.split([GH, H, H])
    if lstm:
        grads["c0"], grads["gain_c"], grads["bias_c"] = dc0, first, second
    elif t["b_hn"] is not None:
        grads["b_hn"] = first
    grads["h0"] = dh0
    return tuple(grads[k] for k in _INPUTS)


def _reference_backward(ctx, t: dict, zoneout, lengths, grads):
    """The backward under create_graph=True (or with workspace gradients): the reference
    forward recomputed from the saved inputs and differentiated by autograd with its graph
    kept, so gradients of gradients are exact."""
    cell = ctx.args["cell"]
    lstm = cell == 0
    states = (t["h0"], t["c0"]) if lstm else (t["h0"],)
    norm = LayerNormScan(t["gain_ih"], t["gain_hh"], (t["gain_c"], t["bias_c"]) if lstm else None,
                         t["bias"], t["b_hn"])
    keep = keep_of(*zoneout, len(states))
    with torch.enable_grad():
        out, finals = reference_variants.scan(CELLS[_NAMES[cell]], t["xp"], states, t["w_hh"],
                                              None, None, lengths, ctx.reverse, False,
                                              ScanVariant(None, 1, keep, norm))
        wanted = [k for k, need in zip(_INPUTS, ctx.needs_input_grad)
                  if need and t.get(k) is not None and t[k].requires_grad]
        got = torch.autograd.grad((out, *finals), [t[k] for k in wanted],
                                  [g for g in grads if g is not None], create_graph=True,
                                  allow_unused=True)
    result = dict.fromkeys(_INPUTS)
    result.update(zip(wanted, got))
    return tuple(result[k] for k in _INPUTS)


ln_scan_cpu.register_autograd(_backward, setup_context=_setup_context)
C.forbid_double_backward(ln_scan_cpu_backward, "rnnkernels::ln_scan_cpu")


def scan(cell: CellSpec, xp: Tensor, states: tuple[Tensor, ...], w_hh: Tensor,
         w_hr: Tensor | None, b_hn: Tensor | None, lengths: Tensor | None, reverse: bool,
         relu: bool, variant: ScanVariant) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``reference_variants.scan`` with layer norm on the C++ kernels: xp = x·W_ihᵀ [T,B,G·H]
    (the biases in ``variant.layer_norm``) → (out [T,B,H] in time order, final states).
    Forward-mode AD, torch.func transforms and traces run the reference loop."""
    norm = variant.layer_norm
    gain_c, bias_c = norm.c if norm.c is not None else (None, None)
    tensors = (xp, *states, w_hh, norm.ih, norm.bias, norm.hh, norm.b_hn, gain_c, bias_c)
    if routes.unsupported_autograd_mode(lambda: tensors) is not None:
        return reference_variants.scan(cell, xp, states, w_hh, w_hr, b_hn, lengths, reverse,
                                       relu, variant)
    if (w_hr is not None or cell.name not in _CELLS or variant.peephole is not None
            or variant.num_heads > 1):
        raise RuntimeError("rnnkernels: backend 'cpu' runs layer norm alone or with zoneout "
                           "(LSTM, GRU; no proj_size, peephole or num_heads with it): no fused "
                           "kernel for that combination yet; use backend='auto' or 'reference'")
    dt, acc = xp.dtype, acc_dtype(xp.dtype)
    code = _CELLS[cell.name]
    cast = [None if x is None else x.to(acc) for x in tensors]
    xp_a, h0, c0 = cast[0], cast[1], cast[2] if code == 0 else None
    w, ih, bias, hh, bn, gc, bc = cast[len(states) + 1:]
    save = C.needs_grad(*tensors)
    out, h_n, c_n, *_ = ln_scan_cpu(code, xp_a, h0, c0, w, ih, bias, hh, bn, gc, bc,
                                    *zoneout_args(variant.keep), LAYER_NORM_EPS, lengths, reverse,
                                    save)
    finals = (h_n, c_n) if code == 0 else (h_n,)
    return out.to(dt), tuple(s.to(dt) for s in finals)
