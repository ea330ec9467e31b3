"""Reference backend: the recurrences as plain PyTorch loops, one step at a time.

This is the oracle every kernel is tested against, written independently of the kernels' shared
gate math (``csrc/include/rnnkernels/cell_math.h``, ``backends/triton/cell.py``) so that it can
catch a mistake they share (only shapes come from ``rnnkernels/cells.py``). It follows the
backend contract in ``docs/BACKENDS.md``: time order, per-sequence lengths with a frozen state
after the end, reverse within each sequence's own length.

Half inputs are computed in float32 (state and accumulation), cast on store; float32 and float64
are computed in their own precision. The backward is the hand-written reverse scan (not autograd
through the loop), so gradient checks of the op test the backward formulas themselves.

The backward is also what makes the scans twice differentiable: it is written in differentiable
PyTorch ops of the saved tensors, and it accepts gradients on the workspaces (``grad_gates``,
``grad_cs`` / ``grad_hn_lin``: the vector-Jacobian product of the whole forward, workspaces
included). The ops run it, whatever the backend, when a backward must itself be differentiated
(``create_graph=True``, then its gradients' own backward): see ``ops/_common.py``.
"""
from __future__ import annotations

import torch

from ..cells import CELLS, acc_dtype

NAME = "reference"


def supports(device_type: str, dtype: torch.dtype) -> str | None:
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"reference backend does not support dtype {dtype}"
    return None


class _Schedule:
    """Time index and activity of every sequence at every step (see docs/BACKENDS.md)."""

    def __init__(self, T: int, B: int, lengths: torch.Tensor | None, reverse: bool, device):
        steps = torch.arange(T, device=device)
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=device)
        lengths = lengths.to(device=device, dtype=torch.long)
        self.active = steps[:, None] < lengths[None, :]  # [T, B]
        if reverse:
            time = lengths[None, :] - 1 - steps[:, None]
        else:
            time = steps[:, None].expand(T, B)
        self.time = time.clamp(0, max(T - 1, 0))  # [T, B], valid where active
        self.batch = torch.arange(B, device=device)

    def gather(self, seq: torch.Tensor, s: int) -> torch.Tensor:
        """Rows of a time-ordered [T, B, ...] tensor at step s."""
        return seq[self.time[s], self.batch]

    def scatter(self, seq: torch.Tensor, s: int, value: torch.Tensor) -> None:
        mask = self.active[s]
        seq[self.time[s][mask], self.batch[mask]] = value[mask].to(seq.dtype)

    def keep(self, s: int, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(self.active[s][:, None], new, old)


def _workspaces(cell: str, xp: torch.Tensor, save: bool) -> list[torch.Tensor]:
    """The cell's zeroed workspaces (its spec's widths), or empty ones when not saved."""
    T, B, GH = xp.shape
    H = GH // CELLS[cell].gates
    acc = acc_dtype(xp.dtype)
    return [xp.new_zeros((T, B, width * H) if save else (0,), dtype=acc)
            for _, width in CELLS[cell].workspaces]


def _start(cell: str, seq: torch.Tensor, dtype: torch.dtype, w_hh: torch.Tensor, lengths,
           reverse):
    """(T, B, H, accumulation dtype, schedule, W_hh in it) of a scan over ``seq`` [T, B, ...]
    (xp forward, grad_out backward) whose data is in ``dtype``."""
    T, B = seq.shape[:2]
    acc = acc_dtype(dtype)
    return (T, B, CELLS[cell].hidden_size(w_hh), acc,
            _Schedule(T, B, lengths, reverse, seq.device), w_hh.to(acc))


def _extra(grad_ws, sched: _Schedule, s: int, acc: torch.dtype, chunks: int = 0):
    """A workspace's incoming gradient at step s, zero where the sequence has ended (there the
    workspace is a constant 0); split into its gate blocks when ``chunks`` is given. 0 (or
    ``chunks`` zeros) without one: the plain backward."""
    if grad_ws is None:
        return (0.0,) * chunks if chunks else 0.0
    g = torch.where(sched.active[s][:, None], sched.gather(grad_ws, s).to(acc), 0.0)
    return g.chunk(chunks, dim=1) if chunks else g


# ----------------------------------------------------------------------------------------- LSTM
def lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse, save=True):
    T, B, H, acc, sched, W = _start("lstm", xp, xp.dtype, w_hh, lengths, reverse)
    Wr = None if w_hr is None else w_hr.to(acc)
    h, c = h0.to(acc), c0.to(acc)
    out = xp.new_zeros((T, B, h0.shape[1]))
    gates_ws, cs_ws = _workspaces("lstm", xp, save)
    for s in range(T):
        g = sched.gather(xp, s).to(acc) + h @ W.t()
        i = torch.sigmoid(g[:, 0 * H:1 * H])
        f = torch.sigmoid(g[:, 1 * H:2 * H])
        u = torch.tanh(g[:, 2 * H:3 * H])
        o = torch.sigmoid(g[:, 3 * H:4 * H])
        c_new = f * c + i * u
        h_new = o * torch.tanh(c_new)
        if Wr is not None:
            h_new = h_new @ Wr.t()
        h, c = sched.keep(s, h_new, h), sched.keep(s, c_new, c)
        sched.scatter(out, s, h_new)
        if save:
            sched.scatter(gates_ws, s, torch.cat([i, f, u, o], dim=1))
            sched.scatter(cs_ws, s, c_new)
    return out, h.to(xp.dtype), c.to(xp.dtype), gates_ws, cs_ws


def lstm_backward(grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, lengths, reverse, out, gates, cs,
                  *, grad_gates=None, grad_cs=None):
    dt = h0.dtype
    T, B, H, acc, sched, W = _start("lstm", grad_out, dt, w_hh, lengths, reverse)
    G = w_hh.shape[0]
    Wr = None if w_hr is None else w_hr.to(acc)
    dh, dc = grad_hn.to(acc), grad_cn.to(acc)
    dxp = torch.zeros((T, B, G), dtype=dt, device=h0.device)
    dh_all = torch.zeros((T, B, h0.shape[1]), dtype=acc, device=h0.device) if Wr is not None \
        else h0.new_empty((0,), dtype=acc)
    for s in range(T - 1, -1, -1):
        act = sched.active[s][:, None]
        gts = sched.gather(gates, s)
        i, f, u, o = gts[:, :H], gts[:, H:2 * H], gts[:, 2 * H:3 * H], gts[:, 3 * H:]
        c_t = sched.gather(cs, s)
        if s > 0:
            c_prev = sched.gather(cs, s - 1)
        else:
            c_prev = c0.to(acc)
        dh_t = dh + sched.gather(grad_out, s).to(acc)
        if Wr is not None:
            sched.scatter(dh_all, s, dh_t)
            dhh = dh_t @ Wr
        else:
            dhh = dh_t
        tc = torch.tanh(c_t)
        dc_t = dc + dhh * o * (1 - tc * tc) + _extra(grad_cs, sched, s, acc)
        g_i, g_f, g_u, g_o = _extra(grad_gates, sched, s, acc, chunks=4)
        di = (dc_t * u + g_i) * i * (1 - i)
        df = (dc_t * c_prev + g_f) * f * (1 - f)
        du = (dc_t * i + g_u) * (1 - u * u)
        do = (dhh * tc + g_o) * o * (1 - o)
        dg = torch.cat([di, df, du, do], dim=1)
        sched.scatter(dxp, s, dg)
        dh = torch.where(act, dg @ W, dh)
        dc = torch.where(act, dc_t * f, dc)
    return dxp, dh.to(dt), dc.to(dt), dh_all


# ------------------------------------------------------------------------------------------ GRU
def gru_forward(xp, h0, w_hh, b_hn, lengths, reverse, save=True):
    T, B, H, acc, sched, W = _start("gru", xp, xp.dtype, w_hh, lengths, reverse)
    bn = None if b_hn is None else b_hn.to(acc)
    h = h0.to(acc)
    out = xp.new_zeros((T, B, H))
    gates_ws, hn_ws = _workspaces("gru", xp, save)
    for s in range(T):
        a = sched.gather(xp, s).to(acc)
        b = h @ W.t()
        r = torch.sigmoid(a[:, :H] + b[:, :H])
        z = torch.sigmoid(a[:, H:2 * H] + b[:, H:2 * H])
        bh_n = b[:, 2 * H:] if bn is None else b[:, 2 * H:] + bn
        n = torch.tanh(a[:, 2 * H:] + r * bh_n)
        h_new = (1 - z) * n + z * h
        h = sched.keep(s, h_new, h)
        sched.scatter(out, s, h_new)
        if save:
            sched.scatter(gates_ws, s, torch.cat([r, z, n], dim=1))
            sched.scatter(hn_ws, s, bh_n)
    return out, h.to(xp.dtype), gates_ws, hn_ws


def gru_backward(grad_out, grad_hn, h0, w_hh, b_hn, lengths, reverse, out, gates, hn_lin,
                 *, grad_gates=None, grad_hn_lin=None):
    """dxp, dh0 and, only with ``grad_hn_lin`` given, d(hn_lin) [T,B,H]: the total gradient of
    h·W_hnᵀ + b_hn (the ops otherwise rebuild it as dn ⊙ r from dxp)."""
    dt = h0.dtype
    T, B, H, acc, sched, W = _start("gru", grad_out, dt, w_hh, lengths, reverse)
    G = w_hh.shape[0]
    dh = grad_hn.to(acc)
    dxp = torch.zeros((T, B, G), dtype=dt, device=h0.device)
    dhn_all = None if grad_hn_lin is None else torch.zeros((T, B, H), dtype=acc,
                                                          device=h0.device)
    for s in range(T - 1, -1, -1):
        act = sched.active[s][:, None]
        gts = sched.gather(gates, s)
        r, z, n = gts[:, :H], gts[:, H:2 * H], gts[:, 2 * H:]
        h_prev = sched.gather(out, s - 1).to(acc) if s > 0 else h0.to(acc)
        dh_t = dh + sched.gather(grad_out, s).to(acc)
        g_r, g_z, g_n = _extra(grad_gates, sched, s, acc, chunks=3)
        dn = (dh_t * (1 - z) + g_n) * (1 - n * n)           # d(a_n + r*bh_n)
        dz = (dh_t * (h_prev - n) + g_z) * z * (1 - z)
        dr = (dn * sched.gather(hn_lin, s) + g_r) * r * (1 - r)
        sched.scatter(dxp, s, torch.cat([dr, dz, dn], dim=1))
        dhn = dn * r + _extra(grad_hn_lin, sched, s, acc)
        if dhn_all is not None:
            sched.scatter(dhn_all, s, dhn)
        dgh = torch.cat([dr, dz, dhn], dim=1)
        dh = torch.where(act, dgh @ W + dh_t * z, dh)
    if dhn_all is not None:
        return dxp, dh.to(dt), dhn_all
    return dxp, dh.to(dt)


# ------------------------------------------------------------------------------------------ RNN
def rnn_forward(xp, h0, w_hh, lengths, reverse, relu, save=True):
    T, B, H, acc, sched, W = _start("rnn", xp, xp.dtype, w_hh, lengths, reverse)
    h = h0.to(acc)
    out = xp.new_zeros((T, B, H))
    for s in range(T):
        pre = sched.gather(xp, s).to(acc) + h @ W.t()
        h_new = torch.relu(pre) if relu else torch.tanh(pre)
        h = sched.keep(s, h_new, h)
        sched.scatter(out, s, h_new)
    return out, h.to(xp.dtype)


def rnn_backward(grad_out, grad_hn, h0, w_hh, lengths, reverse, relu, out):
    dt = h0.dtype
    T, B, H, acc, sched, W = _start("rnn", grad_out, dt, w_hh, lengths, reverse)
    dh = grad_hn.to(acc)
    dxp = torch.zeros((T, B, H), dtype=dt, device=h0.device)
    for s in range(T - 1, -1, -1):
        act = sched.active[s][:, None]
        h_t = sched.gather(out, s).to(acc)
        dh_t = dh + sched.gather(grad_out, s).to(acc)
        # relu': torch's threshold_backward zeroes where h <= 0 (so a NaN h passes dh on)
        dpre = torch.where(h_t <= 0, 0.0, dh_t) if relu else dh_t * (1 - h_t * h_t)
        sched.scatter(dxp, s, dpre)
        dh = torch.where(act, dpre @ W, dh)
    return dxp, dh.to(dt)
