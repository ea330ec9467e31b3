"""An independent oracle of the recurrent variants (peephole, head-wise recurrence, zoneout).

Written from the papers' equations, not from rnnkernels' code: one sequence at a time, one step
at a time, vectors only, autograd for the gradients; no schedules, no padding tricks, no
reshaped weights. The head-wise W_hh is expanded to the dense block-diagonal matrix it stands
for (``dense_recurrent_weight``), so the oracle multiplies by an ordinary [G·H, H] matrix.

* LSTM, peephole (Gers & Schmidhuber 2000; torch's gate order i, f, g, o):
  i = σ(z_i + w_ci⊙c_{t-1}), f = σ(z_f + w_cf⊙c_{t-1}), g = tanh(z_g),
  c_t = f⊙c_{t-1} + i⊙g, o = σ(z_o + w_co⊙c_t), h_t = o⊙tanh(c_t) [then W_hr h_t],
  with z = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh.
* GRU (torch's form) and the Elman RNN, as torch.nn documents them.
* Zoneout (Krueger et al. 2017), on each state the cell outputs: training
  s_t = m⊙s_{t-1} + (1-m)⊙s̃_t with the given 0/1 mask m; eval s_t = p·s_{t-1} + (1-p)·s̃_t.
"""
from __future__ import annotations

import torch
from torch import Tensor

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def dense_recurrent_weight(w_hh: Tensor, gates: int, num_heads: int) -> Tensor:
    """The dense [G·H, H] W_hh of a head-wise [G·H, d] weight: per gate, the block-diagonal
    matrix of the heads' [d, d] blocks (head j's block is rows j·d.. of that gate)."""
    if num_heads == 1:
        return w_hh
    H = w_hh.shape[0] // gates
    d = H // num_heads
    per_gate = []
    for g in range(gates):
        rows = w_hh[g * H:(g + 1) * H]
        per_gate.append(torch.block_diag(*[rows[j * d:(j + 1) * d] for j in range(num_heads)]))
    return torch.cat(per_gate)


def _step(mode: str, x: Tensor, states: list[Tensor], w: dict) -> list[Tensor]:
    """One step of one cell on vectors: the new states before zoneout."""
    h = states[0]
    z_x = w["w_ih"] @ x + (w["b_ih"] if w["b_ih"] is not None else 0)
    z_h = w["w_hh"] @ h + (w["b_hh"] if w["b_hh"] is not None else 0)
    if mode == "LSTM":
        c = states[1]
        z_i, z_f, z_g, z_o = (z_x + z_h).chunk(4)
        w_ci, w_cf, w_co = w["w_ch"] if w["w_ch"] is not None else (0, 0, 0)
        i = torch.sigmoid(z_i + w_ci * c)
        f = torch.sigmoid(z_f + w_cf * c)
        c_new = f * c + i * torch.tanh(z_g)
        o = torch.sigmoid(z_o + w_co * c_new)
        h_new = o * torch.tanh(c_new)
        if w["w_hr"] is not None:
            h_new = w["w_hr"] @ h_new
        return [h_new, c_new]
    if mode == "GRU":
        x_r, x_z, x_n = z_x.chunk(3)
        h_r, h_z, h_n = z_h.chunk(3)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return [(1 - z) * n + z * h]
    pre = z_x + z_h
    return [torch.relu(pre) if mode == "RNN_RELU" else torch.tanh(pre)]


def _weights(params: dict, sfx: str, mode: str, num_heads: int) -> dict:
    get = params.get
    return {"w_ih": params[f"weight_ih{sfx}"],
            "w_hh": dense_recurrent_weight(params[f"weight_hh{sfx}"], GATES[mode], num_heads),
            "b_ih": get(f"bias_ih{sfx}"), "b_hh": get(f"bias_hh{sfx}"),
            "w_hr": get(f"weight_hr{sfx}"), "w_ch": get(f"weight_ch{sfx}")}


def run(mode: str, params: dict, x: Tensor, lengths: list[int], hx: list[Tensor], *,
        num_layers: int = 1, bidirectional: bool = False, num_heads: int = 1,
        zoneout: tuple[float, ...] = (0.0, 0.0), masks: list[Tensor | None] | None = None,
        training: bool = False, cell: bool = False) -> tuple[Tensor, list[Tensor]]:
    """The module's computation: x [T, B, I] (zero beyond each length), lengths per batch entry,
    hx per state [L·D, B, size] → (out [T, B, D·P] zero beyond each length, final states
    [L·D, B, size]). ``params``: the module's parameters by name (a cell's have no ``_l0``
    suffix: ``cell=True``). ``masks``: per state, [L·D, T, B, size] 0/1 (time order, batch in
    ``x``'s order) for training, or None for a state without zoneout."""
    T, B = x.shape[:2]
    dirs = 2 if bidirectional else 1
    outs, finals = [], [[None] * (num_layers * dirs) for _ in hx]
    for b in range(B):
        L = lengths[b]
        layer_in = [x[t, b] for t in range(L)]
        for layer in range(num_layers):
            per_dir = []
            for d in range(dirs):
                k = layer * dirs + d
                sfx = "" if cell else f"_l{layer}" + ("_reverse" if d else "")
                w = _weights(params, sfx, mode, num_heads)
                states = [h[k, b] for h in hx]
                seq = [None] * L
                for t in (reversed(range(L)) if d else range(L)):
                    new = _step(mode, layer_in[t], states, w)
                    for s, p in enumerate(zoneout[:len(states)]):
                        if p == 0:
                            continue
                        keep = masks[s][k, t, b] if training else p
                        new[s] = keep * states[s] + (1 - keep) * new[s]
                    states = new
                    seq[t] = states[0]
                per_dir.append(seq)
                for s, st in enumerate(states):
                    finals[s][k] = (finals[s][k] or []) + [st]
            layer_in = [torch.cat([seq[t] for seq in per_dir]) for t in range(L)]
        out_b = torch.stack(layer_in) if L else x.new_zeros((0, 1))
        pad = out_b.new_zeros((T - L, out_b.shape[-1]))
        outs.append(torch.cat([out_b, pad]))
    out = torch.stack(outs, dim=1)
    return out, [torch.stack([torch.stack(per_k) for per_k in f]) for f in finals]
