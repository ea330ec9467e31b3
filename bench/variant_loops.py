"""What a user writes without rnnkernels, for ``bench/variants.py``: each recurrent variant as a
Python loop over the steps with ``nn.Parameter`` weights, from the equations of
docs/VARIANTS.md (not from rnnkernels' code). ``UserLoop`` runs a stack of one-direction layers
of any cell given its ``step``; a variant adds its step here (or reuses one, as the options of
the module it copies its weights from switch peepholes, heads and zoneout on).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


# ------------------------------------------------------------------------ the user's loops
# step(P, sfx, xw_t, state, module, keep) -> new state (h first): one step of one layer and
# direction as a user writes it. P: the parameters by name; xw_t = x_t·W_ihᵀ (no bias);
# keep: per state a 0/1 zoneout mask of this step (training), p (eval) or None.
def _recurrent(P: dict, sfx: str, h: Tensor, module) -> Tensor:
    w = P[f"weight_hh{sfx}"]
    k = getattr(module, "num_heads", 1)
    if k == 1:
        return h @ w.t()
    d = w.shape[1]                                   # head-wise [G·H, d]: per gate and head
    blocks = w.view(-1, k, d, d)
    return torch.einsum("bjv,gjuv->bgju", h.view(h.shape[0], k, d), blocks).reshape(h.shape[0], -1)


def _zone(new: Tensor, old: Tensor, keep) -> Tensor:
    return new if keep is None else keep * old + (1 - keep) * new


def lstm_step(P, sfx, xw, state, module, keep):
    h, c = state
    z = xw + P[f"bias_ih{sfx}"] + P[f"bias_hh{sfx}"] + _recurrent(P, sfx, h, module)
    i, f, g, o = z.chunk(4, 1)
    if getattr(module, "peephole", False):
        w = P[f"weight_ch{sfx}"]
        i, f = i + w[0] * c, f + w[1] * c
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if getattr(module, "peephole", False):
        o = o + P[f"weight_ch{sfx}"][2] * c_new
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return _zone(h_new, h, keep[0]), _zone(c_new, c, keep[1])


def gru_step(P, sfx, xw, state, module, keep):
    (h,) = state
    a_r, a_z, a_n = (xw + P[f"bias_ih{sfx}"]).chunk(3, 1)
    b_r, b_z, b_n = (_recurrent(P, sfx, h, module) + P[f"bias_hh{sfx}"]).chunk(3, 1)
    r, z = torch.sigmoid(a_r + b_r), torch.sigmoid(a_z + b_z)
    n = torch.tanh(a_n + r * b_n)
    return (_zone((1 - z) * n + z * h, h, keep[0]),)


def _ln(v: Tensor, gain: Tensor, bias: Tensor | None = None) -> Tensor:
    return nn.functional.layer_norm(v, v.shape[-1:], gain, bias, 1e-5)


def ln_lstm_step(P, sfx, xw, state, module, keep):
    """haste's LayerNormLSTM: the input and recurrent products normalised apart, then c_t."""
    h, c = state
    z = _ln(xw, P[f"weight_ln_ih{sfx}"]) + _ln(_recurrent(P, sfx, h, module),
                                              P[f"weight_ln_hh{sfx}"])
    i, f, g, o = (z + P[f"bias_ih{sfx}"] + P[f"bias_hh{sfx}"]).chunk(4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(_ln(c_new, P[f"weight_ln_c{sfx}"], P[f"bias_ln_c{sfx}"]))
    return _zone(h_new, h, keep[0]), _zone(c_new, c, keep[1])


def ln_gru_step(P, sfx, xw, state, module, keep):
    """haste's LayerNormGRU: b_ih after the input norm, b_hh after the recurrent one."""
    (h,) = state
    a_r, a_z, a_n = (_ln(xw, P[f"weight_ln_ih{sfx}"]) + P[f"bias_ih{sfx}"]).chunk(3, 1)
    b_r, b_z, b_n = (_ln(_recurrent(P, sfx, h, module), P[f"weight_ln_hh{sfx}"])
                     + P[f"bias_hh{sfx}"]).chunk(3, 1)
    r, z = torch.sigmoid(a_r + b_r), torch.sigmoid(a_z + b_z)
    n = torch.tanh(a_n + r * b_n)
    return (_zone((1 - z) * n + z * h, h, keep[0]),)


def slstm_step(P, sfx, xw, state, module, keep):
    """xLSTM's sLSTM (gates i, f, z, o; states h, c, n, m), stabilised as xlstm's vanilla cell."""
    h, c, n, m = state
    i_raw, f_raw, z_raw, o_raw = (xw + P[f"bias_ih{sfx}"] + P[f"bias_hh{sfx}"]
                                  + _recurrent(P, sfx, h, module)).chunk(4, 1)
    log_f = nn.functional.logsigmoid(f_raw) + m
    m_new = torch.where(n == 0, i_raw, torch.maximum(i_raw, log_f))
    i, f = torch.exp(i_raw - m_new), torch.exp(log_f - m_new)
    c_new = f * c + i * torch.tanh(z_raw)
    n_new = f * n + i
    return torch.sigmoid(o_raw) * c_new / n_new, c_new, n_new, m_new


class UserLoop(nn.Module):
    """What a user writes without rnnkernels: the module's weights as ``nn.Parameter``s, the
    input projection as one GEMM, a Python loop over the steps; zoneout draws a mask per step,
    locked dropout one per sequence (``torch.bernoulli``), as in the papers' code."""

    def __init__(self, ours: nn.Module, step: Callable, states: int):
        super().__init__()
        self.params = nn.ParameterDict({n: nn.Parameter(p.detach().clone())
                                        for n, p in ours.named_parameters()})
        self.module, self.step, self.states = ours, step, states

    def forward(self, x: Tensor):
        m, P = self.module, dict(self.params)
        T, B, _ = x.shape
        H = m.hidden_size
        zone = getattr(m, "zoneout", 0.0)
        zone = zone if isinstance(zone, tuple) else (zone,) * self.states
        finals = []
        layer_in = self._locked(x, getattr(m, "input_dropout", 0.0))
        for layer in range(m.num_layers):
            sfx = f"_l{layer}"
            xw = layer_in @ P[f"weight_ih{sfx}"].t()
            state = tuple(x.new_zeros(B, H) for _ in range(self.states))
            outs = []
            for t in range(T):
                keep = [None if p == 0 else (torch.bernoulli(torch.full_like(s, p))
                                             if self.training else p)
                        for p, s in zip(zone, state)]
                state = self.step(P, sfx, xw[t], state, m, keep)
                outs.append(state[0])
            finals.append(state)
            layer_in = torch.stack(outs)
            if layer < m.num_layers - 1 and m.dropout > 0:
                layer_in = self._locked(layer_in, m.dropout) if getattr(m, "locked_dropout",
                                                                        False) \
                    else nn.functional.dropout(layer_in, m.dropout, self.training)
        out = self._locked(layer_in, getattr(m, "output_dropout", 0.0))
        return out, *(torch.stack([f[s] for f in finals]) for s in range(self.states))

    def _locked(self, x: Tensor, p: float) -> Tensor:
        if not self.training or p == 0:
            return x
        return x * torch.bernoulli(x.new_full(x.shape[1:], 1 - p)) / (1 - p)
