"""An independent oracle of the layer-normalised LSTM and GRU (``layer_norm=True``).

Written from the equations of docs/VARIANTS.md (Ba et al. 2016, in haste's LayerNormLSTM /
LayerNormGRU form), not from rnnkernels' code: one sequence at a time, one step at a time,
vectors only, the norm spelled out, autograd for the gradients. With z_x = W_ih x_t and
z_h = W_hh h_{t-1} ([G·H] each; W_hh the dense matrix a head-wise weight stands for) and
LN(v; γ, β) = γ ⊙ (v - mean v) / sqrt(var v + 1e-5) + β (biased variance, over all of v):

* LSTM: a = LN(z_x; γ_ih) + LN(z_h; γ_hh) + b_ih + b_hh, split i, f, g, o;
  i = σ(a_i + w_ci⊙c_{t-1}), f = σ(a_f + w_cf⊙c_{t-1}), g = tanh(a_g), c_t = f⊙c_{t-1} + i⊙g,
  o = σ(a_o + w_co⊙c_t), h_t = o ⊙ tanh(LN(c_t; γ_c, β_c)) [then W_hr h_t]; the peephole terms
  (when present) see the raw cell state.
* GRU: a = LN(z_x; γ_ih) + b_ih, b = LN(z_h; γ_hh) + b_hh, split r, z, n;
  r = σ(a_r + b_r), z = σ(a_z + b_z), n = tanh(a_n + r⊙b_n), h_t = (1-z)⊙n + z⊙h_{t-1}.
* Zoneout on each state the cell outputs, as tests/variants_oracle.py.

``haste_lstm`` / ``haste_gru`` transcribe the CPU path of haste's PyTorch layers
(``LayerNormLSTMScript`` / ``LayerNormGRUScript`` in lmnt-com/haste, frameworks/pytorch/):
haste's own parameter layout ([I, G·H] kernels, gate orders i,g,f,o and z,r,n, one LSTM bias,
the zoneout mask meaning "take the new value"), one layer, full-length sequences. The haste
package itself builds only with CUDA, so its CPU path is compared through this transcription.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tests.variants_oracle import dense_recurrent_weight

EPS = 1e-5
GATES = {"LSTM": 4, "GRU": 3}


def layer_norm(v: Tensor, gain: Tensor, bias: Tensor | None = None) -> Tensor:
    """LN over the whole vector v, with the biased variance and eps = 1e-5."""
    centred = v - v.mean()
    normed = gain * centred / torch.sqrt((centred * centred).mean() + EPS)
    return normed if bias is None else normed + bias


def _or_zero(t: Tensor | None):
    return 0 if t is None else t


def lstm_step(x: Tensor, h: Tensor, c: Tensor, w: dict) -> list[Tensor]:
    a = (layer_norm(w["weight_ih"] @ x, w["weight_ln_ih"])
         + layer_norm(w["weight_hh"] @ h, w["weight_ln_hh"])
         + _or_zero(w["bias_ih"]) + _or_zero(w["bias_hh"]))
    a_i, a_f, a_g, a_o = a.chunk(4)
    w_ci, w_cf, w_co = (0, 0, 0) if w["weight_ch"] is None else w["weight_ch"]
    i = torch.sigmoid(a_i + w_ci * c)
    f = torch.sigmoid(a_f + w_cf * c)
    c_new = f * c + i * torch.tanh(a_g)
    o = torch.sigmoid(a_o + w_co * c_new)
    h_new = o * torch.tanh(layer_norm(c_new, w["weight_ln_c"], w["bias_ln_c"]))
    return [h_new if w["weight_hr"] is None else w["weight_hr"] @ h_new, c_new]


def gru_step(x: Tensor, h: Tensor, w: dict) -> list[Tensor]:
    a_r, a_z, a_n = (layer_norm(w["weight_ih"] @ x, w["weight_ln_ih"])
                     + _or_zero(w["bias_ih"])).chunk(3)
    b_r, b_z, b_n = (layer_norm(w["weight_hh"] @ h, w["weight_ln_hh"])
                     + _or_zero(w["bias_hh"])).chunk(3)
    r = torch.sigmoid(a_r + b_r)
    z = torch.sigmoid(a_z + b_z)
    return [(1 - z) * torch.tanh(a_n + r * b_n) + z * h]


NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ch",
         "weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")


def run(mode: str, params: dict, x: Tensor, lengths: list[int], hx: list[Tensor], *,
        num_layers: int = 1, bidirectional: bool = False, num_heads: int = 1,
        zoneout: tuple[float, ...] = (0.0, 0.0), masks: list[Tensor | None] | None = None,
        training: bool = False, cell: bool = False) -> tuple[Tensor, list[Tensor]]:
    """The module's computation, arguments as ``tests.variants_oracle.run`` (x [T, B, I] zero
    beyond each length; hx per state [L·D, B, size]; masks per state [L·D, T, B, size] in time
    and x's batch order) → (out [T, B, D·P] zero beyond each length, final states per state
    [L·D, B, size])."""
    T, B = x.shape[:2]
    dirs = 2 if bidirectional else 1
    finals = [torch.zeros_like(h) for h in hx]
    columns = []
    for b in range(B):
        seq = [x[t, b] for t in range(lengths[b])]
        for layer in range(num_layers):
            halves = []
            for d in range(dirs):
                k = layer * dirs + d
                sfx = "" if cell else f"_l{layer}{'_reverse' if d else ''}"
                w = {n: params.get(f"{n}{sfx}") for n in NAMES}
                w["weight_hh"] = dense_recurrent_weight(w["weight_hh"], GATES[mode], num_heads)
                states = [h[k, b] for h in hx]
                outs = {}
                order = range(len(seq) - 1, -1, -1) if d else range(len(seq))
                for t in order:
                    new = lstm_step(seq[t], *states, w) if mode == "LSTM" else \
                        gru_step(seq[t], *states, w)
                    for s, p in enumerate(zoneout[:len(new)]):
                        if p:
                            m = masks[s][k, t, b] if training else p
                            new[s] = m * states[s] + (1 - m) * new[s]
                    states = new
                    outs[t] = states[0]
                for s, state in enumerate(states):
                    finals[s] = finals[s].index_put((torch.tensor([k]), torch.tensor([b])),
                                                    state[None])
                halves.append([outs[t] for t in range(len(seq))])
            seq = [torch.cat([half[t] for half in halves]) for t in range(len(seq))]
        width = seq[0].shape[0]
        columns.append(torch.stack(seq + [x.new_zeros(width)] * (T - len(seq))))
    return torch.stack(columns, dim=1), finals


# ------------------------------------------------------------------------- haste's CPU path
def _haste_columns(mode: str, H: int) -> Tensor:
    """Our gate-row indices in haste's gate order (LSTM i,g,f,o; GRU z,r,n)."""
    ours = {"LSTM": "ifgo", "GRU": "rzn"}[mode]
    theirs = {"LSTM": "igfo", "GRU": "zrn"}[mode]
    return torch.cat([torch.arange(H) + ours.index(g) * H for g in theirs])


def haste_parameters(mode: str, params: dict) -> dict:
    """Our single-layer parameters in haste's layout (kernel [I, G·H], haste's gate order)."""
    H = params["weight_hh_l0"].shape[1]
    cols = _haste_columns(mode, H)
    out = {"kernel": params["weight_ih_l0"].t()[:, cols],
           "recurrent_kernel": params["weight_hh_l0"].t()[:, cols],
           "gamma": torch.stack([params["weight_ln_ih_l0"][cols],
                                 params["weight_ln_hh_l0"][cols]])}
    if mode == "LSTM":
        out["bias"] = (params["bias_ih_l0"] + params["bias_hh_l0"])[cols]
        out["gamma_h"], out["beta_h"] = params["weight_ln_c_l0"], params["bias_ln_c_l0"]
    else:
        out["bias"], out["recurrent_bias"] = params["bias_ih_l0"][cols], params["bias_hh_l0"][cols]
    return out


def _ln(v: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return torch.nn.functional.layer_norm(v, weight.shape, weight, bias)   # haste: F.layer_norm


def _haste_zoneout(h_new: Tensor, h_old: Tensor, p: float, training: bool, mask: Tensor | None):
    """haste: the mask is bernoulli(1 - p), 1 taking the new value."""
    if not p:
        return h_new
    if training:
        return (h_new - h_old) * mask + h_old
    return p * h_old + (1 - p) * h_new


def haste_lstm(training: bool, zoneout: float, x: Tensor, h0: Tensor, c0: Tensor, p: dict,
               mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """haste's LayerNormLSTM on x [T, B, I] → (h [T+1, B, H], c [T+1, B, H]), h[0] = h0."""
    hs, cs = [h0], [c0]
    wx = _ln(x @ p["kernel"], p["gamma"][0])
    for t in range(x.shape[0]):
        v = _ln(hs[t] @ p["recurrent_kernel"], p["gamma"][1]) + wx[t] + p["bias"]
        i, g, f, o = v.chunk(4, 1)
        cs.append(torch.sigmoid(f) * cs[t] + torch.sigmoid(i) * torch.tanh(g))
        h = torch.sigmoid(o) * torch.tanh(_ln(cs[-1], p["gamma_h"], p["beta_h"]))
        hs.append(_haste_zoneout(h, hs[t], zoneout, training, None if mask is None else mask[t]))
    return torch.stack(hs), torch.stack(cs)


def haste_gru(training: bool, zoneout: float, x: Tensor, h0: Tensor, p: dict,
              mask: Tensor | None = None) -> Tensor:
    """haste's LayerNormGRU on x [T, B, I] → h [T+1, B, H], h[0] = h0."""
    hs = [h0]
    wx = _ln(x @ p["kernel"], p["gamma"][0]) + p["bias"]
    for t in range(x.shape[0]):
        rh = _ln(hs[t] @ p["recurrent_kernel"], p["gamma"][1]) + p["recurrent_bias"]
        x_z, x_r, x_n = wx[t].chunk(3, 1)
        h_z, h_r, h_n = rh.chunk(3, 1)
        z = torch.sigmoid(x_z + h_z)
        r = torch.sigmoid(x_r + h_r)
        h = z * hs[t] + (1 - z) * torch.tanh(x_n + r * h_n)
        hs.append(_haste_zoneout(h, hs[t], zoneout, training, None if mask is None else mask[t]))
    return torch.stack(hs)
