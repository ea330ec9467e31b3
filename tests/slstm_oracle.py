"""An independent oracle of the sLSTM (xLSTM, Beck et al. 2024, section 2.2 and appendix).

Written from the paper's equations, not from rnnkernels' code: one sequence at a time, one step
at a time, vectors only, autograd for the gradients; no schedules, no padding tricks; the
head-wise W_hh expanded to the dense block-diagonal matrix it stands for. Per unit, with
pre-activations ĩ, f̃, z̃, õ of W_ih x_t + b_ih + W_hh h_{t-1} + b_hh (order i, f, z, o):

    log f = log σ(f̃)                      (sigmoid forget gate)
    m_t   = max(log f + m_{t-1}, ĩ)        (stabilizer, eq. 15)
            or ĩ where n_{t-1} = 0          (the first step from zero states: xlstm's rule)
    i'    = exp(ĩ - m_t),  f' = exp(log f + m_{t-1} - m_t), each at most 1 (eq. 16-17; xlstm
            clips both, which only matters for f' where n_{t-1} = 0)
    c_t = f' c_{t-1} + i' tanh(z̃),  n_t = f' n_{t-1} + i',  h_t = σ(õ) c_t / n_t

``unstabilized`` is the same cell without the stabilizer (C_t, N_t in exp scale: eq. 8-12), which
the stabilized states must equal up to the factor exp(m_t).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from tests.variants_oracle import dense_recurrent_weight


def _pre(x: Tensor, h: Tensor, w: dict) -> list[Tensor]:
    z = w["w_ih"] @ x + w["w_hh"] @ h
    if w["b_ih"] is not None:
        z = z + w["b_ih"] + w["b_hh"]
    return list(z.chunk(4))


def _step(x: Tensor, states: list[Tensor], w: dict) -> list[Tensor]:
    h, c, n, m = states
    i_t, f_t, z_t, o_t = _pre(x, h, w)
    log_f = -torch.nn.functional.softplus(-f_t)            # log σ(f̃), without overflow
    m_new = torch.stack([i_t[u] if n[u] == 0 else torch.max(log_f[u] + m[u], i_t[u])
                         for u in range(h.shape[0])])
    i_p = torch.exp(i_t - m_new).clamp(max=1)
    f_p = torch.exp(log_f + m - m_new).clamp(max=1)
    c_new = f_p * c + i_p * torch.tanh(z_t)
    n_new = f_p * n + i_p
    return [torch.sigmoid(o_t) * c_new / n_new, c_new, n_new, m_new]


def _weights(params: dict, sfx: str, num_heads: int) -> dict:
    return {"w_ih": params[f"weight_ih{sfx}"],
            "w_hh": dense_recurrent_weight(params[f"weight_hh{sfx}"], 4, num_heads),
            "b_ih": params.get(f"bias_ih{sfx}"), "b_hh": params.get(f"bias_hh{sfx}")}


def run(params: dict, x: Tensor, lengths: list[int], hx: list[Tensor], *, num_layers: int = 1,
        bidirectional: bool = False, num_heads: int = 1,
        cell: bool = False) -> tuple[Tensor, list[Tensor]]:
    """The module's computation: x [T, B, I] (zero beyond each length), lengths per batch entry,
    hx = [h0, c0, n0, m0] each [L·D, B, H] → (out [T, B, D·H] zero beyond each length, the final
    states [L·D, B, H]). ``params``: the module's parameters by name (a cell's have no ``_l0``
    suffix: ``cell=True``)."""
    T, B = x.shape[:2]
    dirs = 2 if bidirectional else 1
    outs, finals = [], [[[] for _ in range(num_layers * dirs)] for _ in hx]
    for b in range(B):
        L = lengths[b]
        layer_in = [x[t, b] for t in range(L)]
        for layer in range(num_layers):
            per_dir = []
            for d in range(dirs):
                k = layer * dirs + d
                sfx = "" if cell else f"_l{layer}" + ("_reverse" if d else "")
                w = _weights(params, sfx, num_heads)
                states = [h[k, b] for h in hx]
                seq = [None] * L
                for t in (reversed(range(L)) if d else range(L)):
                    states = _step(layer_in[t], states, w)
                    seq[t] = states[0]
                per_dir.append(seq)
                for s, st in enumerate(states):
                    finals[s][k].append(st)
            layer_in = [torch.cat([seq[t] for seq in per_dir]) for t in range(L)]
        out_b = torch.stack(layer_in)
        outs.append(torch.cat([out_b, out_b.new_zeros((T - L, out_b.shape[-1]))]))
    out = torch.stack(outs, dim=1)
    return out, [torch.stack([torch.stack(per_k) for per_k in f]) for f in finals]


def unstabilized(params: dict, x: Tensor, h0: Tensor, C0: Tensor, N0: Tensor,
                 num_heads: int = 1) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """One layer, one direction, no stabilizer: x [T, B, I], h0, C0, N0 [B, H] (C, N in exp
    scale) → per step (h_t, C_t, N_t) [B, H]. Only for moderate pre-activations (exp(ĩ) must
    not overflow), which is why the cell has the stabilizer."""
    w = _weights(params, "_l0", num_heads)
    bias = 0 if w["b_ih"] is None else w["b_ih"] + w["b_hh"]
    hs, Cs, Ns = [], [], []
    h, C, N = h0, C0, N0
    for x_t in x:
        i_t, f_t, z_t, o_t = (x_t @ w["w_ih"].t() + h @ w["w_hh"].t() + bias).chunk(4, dim=1)
        C = torch.sigmoid(f_t) * C + torch.exp(i_t) * torch.tanh(z_t)
        N = torch.sigmoid(f_t) * N + torch.exp(i_t)
        h = torch.sigmoid(o_t) * C / N
        hs.append(h)
        Cs.append(C)
        Ns.append(N)
    assert all(math.isfinite(float(t.detach().abs().max())) for t in Cs + Ns), \
        "pre-activations too large for the unstabilized cell"
    return hs, Cs, Ns
