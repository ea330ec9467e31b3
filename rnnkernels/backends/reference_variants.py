"""Reference backend of the recurrent variants (peephole, head-wise recurrence, zoneout, layer
norm).

One scan (one layer and direction) as a plain PyTorch loop, for every cell, following the
backend contract of docs/BACKENDS.md (time order, per-sequence lengths with the state frozen
after the end, reverse within each sequence's own length, ``out`` zero beyond a length); the
variants' semantics are docs/VARIANTS.md's. State and arithmetic in the accumulation dtype
(float32 for half inputs), cast on store, as ``reference.py``.

Autograd differentiates the loop (there is no hand-written reverse scan, unlike
``reference.py``). Why: its gradients are exact, of exactly the forward that ran, with no second
formula to drift from it; every autograd mode torch.nn supports (double backward, forward-mode
AD, ``torch.func``) works as it does for plain PyTorch code — the plain scans reach those
through torch's own RNN, which no variant has; and the hand-written reverse scan belongs with
the fused kernels (cpu_variants.py, triton/variants.py), where this loop is the oracle its gradients are tested against, as
``reference.py`` is for the plain cells. The loop is written so its backward stays linear in T:
the input and the masks are put in processing order once and split with ``unbind`` (one
autograd node, where indexing a step at a time would make each step's backward a full-size
scatter), and the outputs are stacked once and put back in time order with one ``gather``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells import CellSpec, acc_dtype
from ..variants import LAYER_NORM_EPS, LayerNormScan, ScanVariant
from .reference import _Schedule


def _in_step_order(seq: Tensor, order: Tensor) -> Tensor:
    """seq [T, B, n] indexed by order [T, B]: row s of b is seq[order[s, b], b]. With
    ``_Schedule.time`` as ``order`` this maps time order to processing order and back (the map
    is its own inverse within each length; beyond it the rows are never used). The index is
    made contiguous: the backward of a gather by an expanded index takes scatter_add's sorting
    path for such indices, which costs up to ~100 ms a call on the CPU even at a few elements."""
    return seq.gather(0, order[..., None].expand(-1, -1, seq.shape[-1]).contiguous())


def _recurrent(w_hh: Tensor, num_heads: int, gates: int):
    """h [B, P] ↦ h·W_hhᵀ [B, G·H], W_hh dense [G·H, P] or head-wise [G·H, d]: row
    g·H + j·d + u holds unit j·d+u of gate g's weights from the d units of head j."""
    if num_heads == 1:
        return lambda h: h @ w_hh.t()
    GH, d = w_hh.shape
    blocks = w_hh.view(gates, num_heads, d, d)           # [gate, head, out unit, in unit]

    def product(h: Tensor) -> Tensor:
        per_head = torch.einsum("bjv,gjuv->bgju", h.view(h.shape[0], num_heads, d), blocks)
        return per_head.reshape(h.shape[0], GH)
    return product


# One step of each cell: (x·W_ihᵀ + bias of the step, h·W_hhᵀ, previous states, weights) →
# the new states before zoneout (h̃[, c̃]).
def _lstm_step(xp: Tensor, rec: Tensor, states, w_hr, b_hn, peephole, relu, norm_c=None):
    h, c = states
    i, f, g, o = (xp + rec).chunk(4, dim=1)
    if peephole is not None:                  # rows i, f, o: i and f see c_{t-1}, o sees c_t
        i, f = i + peephole[0] * c, f + peephole[1] * c
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if peephole is not None:
        o = o + peephole[2] * c_new
    h_new = torch.sigmoid(o) * torch.tanh(c_new if norm_c is None else norm_c(c_new))
    return (h_new if w_hr is None else h_new @ w_hr.t()), c_new


def _gru_step(xp: Tensor, rec: Tensor, states, w_hr, b_hn, peephole, relu):
    (h,) = states
    a_r, a_z, a_n = xp.chunk(3, dim=1)
    b_r, b_z, b_n = rec.chunk(3, dim=1)
    if b_hn is not None:
        b_n = b_n + b_hn
    r, z = torch.sigmoid(a_r + b_r), torch.sigmoid(a_z + b_z)
    n = torch.tanh(a_n + r * b_n)
    return ((1 - z) * n + z * h,)


def _rnn_step(xp: Tensor, rec: Tensor, states, w_hr, b_hn, peephole, relu):
    pre = xp + rec
    return (torch.relu(pre) if relu else torch.tanh(pre),)


_STEPS = {"lstm": _lstm_step, "gru": _gru_step, "rnn": _rnn_step}


def scan(cell: CellSpec, xp: Tensor, states: tuple[Tensor, ...], w_hh: Tensor,
         w_hr: Tensor | None, b_hn: Tensor | None, lengths: Tensor | None, reverse: bool,
         relu: bool, variant: ScanVariant) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer and direction of ``cell`` with ``variant``: xp [T,B,G·H] (x·W_ihᵀ + biases,
    as the plain scans take it; with layer norm x·W_ihᵀ alone, the biases in
    ``variant.layer_norm``), states (h0 [B,P][, c0 [B,H]]), w_hh [G·H, P] or head-wise
    [G·H, H/num_heads], w_hr [P,H] or None, b_hn [H] or None (GRU) → (out [T,B,P] in time
    order, final states). Zoneout: a state's new value is keep·previous + (1-keep)·candidate."""
    T, B = xp.shape[:2]
    dt, acc = xp.dtype, acc_dtype(xp.dtype)
    sched = _Schedule(T, B, lengths, reverse, xp.device)
    xp, product = xp.to(acc), _recurrent(w_hh.to(acc), variant.num_heads, cell.gates)
    norm_c = {}
    if variant.layer_norm is not None:
        xp, product, b_hn, norm_c = _layer_norm(variant.layer_norm, xp, product, acc)
    inputs = _in_step_order(xp, sched.time).unbind(0)
    keep = [k if k is None or isinstance(k, float) else _in_step_order(k, sched.time)
            for k in variant.keep]
    weights = [None if t is None else t.to(acc) for t in (w_hr, b_hn, variant.peephole)]
    step = _STEPS[cell.name]
    state = [s.to(acc) for s in states]
    outs = []
    for s in range(T):
        new = step(inputs[s], product(state[0]), state, *weights, relu, **norm_c)
        new = [n if k is None else _zoned(k if isinstance(k, float) else k[s], old, n)
               for n, old, k in zip(new, state, keep)]
        outs.append(new[0])
        state = [sched.keep(s, n, old) for n, old in zip(new, state)]
    out = _in_step_order(torch.stack(outs), sched.time)
    out = torch.where(sched.active[..., None], out, 0.0)
    return out.to(dt), tuple(h.to(dt) for h in state)


def _layer_norm(norm: LayerNormScan, xp: Tensor, product, acc: torch.dtype):
    """Layer norm's parts of a scan (haste's LayerNormLSTM / LayerNormGRU): xp = x·W_ihᵀ
    [T, B, G·H] normalised over its G·H gate pre-activations, every step in one call, then the
    biases; the recurrent product normalised likewise at each step; GRU's b_hn (added after that
    norm, inside r ⊙ (...)); and for an LSTM the norm of c_t before the output tanh, as the
    step's ``norm_c`` keyword (empty for a GRU). Gains and biases in the accumulation dtype."""
    gh, eps = (xp.shape[-1],), LAYER_NORM_EPS
    ih, hh = norm.ih.to(acc), norm.hh.to(acc)
    xp = F.layer_norm(xp, gh, ih, None, eps)
    if norm.bias is not None:
        xp = xp + norm.bias.to(acc)
    extra = {}
    if norm.c is not None:
        gain, bias = (t.to(acc) for t in norm.c)
        extra["norm_c"] = lambda c: F.layer_norm(c, gain.shape, gain, bias, eps)
    b_hn = None if norm.b_hn is None else norm.b_hn.to(acc)
    return xp, lambda h: F.layer_norm(product(h), gh, hh, None, eps), b_hn, extra


def _zoned(keep, previous: Tensor, candidate: Tensor) -> Tensor:
    """Zoneout (Krueger et al. 2017): keep·previous + (1-keep)·candidate; keep is the 0/1 mask
    in training (so a kept unit is exactly its previous value) and p in eval."""
    return keep * previous + (1 - keep) * candidate
