"""Elman RNN (tanh / relu) scan kernels and their launchers.

Recurrence (step s, row b active iff s < L_b, time index t = s or L_b-1-s in reverse)::

    h_t = act(xp_t + h_{t-1}·W_hhᵀ)          act = tanh or relu, W_hh [H, H]

Inactive rows keep their state; ``out`` is 0 at t ≥ L_b. Nothing is saved: the derivative
comes from ``out`` itself.

Gradient (reverse scan, carry dh [B, H] fp32)::

    dh_t = carry + grad_out_t                  (carry = grad_hn until the row's last step)
    dpre = dh_t⊙(1-h_t²) (tanh) or dh_t⊙[h_t > 0] (relu)
    carry ← dpre·W_hh                          (rows active at s only)

``dxp`` = dpre (0 at t ≥ L_b); dh0 = the carry after step 0. One phase per step in both
directions (tiles of H): forward = the tile of h_{t-1}·W_hhᵀ + xp + act; backward = the tile
of dpre_{s+1}·W_hh, then dpre_s for the same units (dpre double-buffered by step parity; a
last pass at s = -1 forms dh0). Strategies: see ``plan.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import graphs as _graphs
from . import plan as _plan
from .cell import mma, rnn_cell_bwd, rnn_cell_fwd
from .tiles import (batch_tile, load_tile, load_w, phase_sync, recurrent_carry,
                    step_schedule, store_tile)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _rnn_fwd_kernel(
        xp_ptr, w_hh_ptr, len_ptr, out_ptr, h_ptr, sync_ptr,
        s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    nprog = tl.num_programs(1)
    rows, rmask, rows64, L = batch_tile(pid_b, len_ptr, B, T, HAS_LEN, BB)
    for it in range(0, n_steps):
        s = s_first + it
        active, t = step_schedule(s, L, rmask, REVERSE)
        act2 = active[:, None]
        cur = (s % 2).to(tl.int64)
        h_cur = h_ptr + cur * B * H
        h_nxt = h_ptr + (1 - cur) * B * H
        o_row = (t * B + rows64) * H
        for j in range(pid_h, (H + BH - 1) // BH, nprog):
            cols = j * BH + tl.arange(0, BH)
            cmask = cols < H
            acc = tl.full([BB, BH], 0.0, tl.float32)
            for k0 in range(0, H, BK):
                ks = k0 + tl.arange(0, BK)
                kmask = ks < H
                hk = load_tile(h_cur, rows64 * H, rmask, ks, kmask)
                acc = mma(acc, hk, load_w(w_hh_ptr, ks, kmask, cols, cmask, 1, H), DOT_F32)
            h = rnn_cell_fwd(acc + load_tile(xp_ptr, o_row, rmask, cols, cmask), RELU)
            h_prev = load_tile(h_cur, rows64 * H, rmask, cols, cmask)
            store_tile(h_nxt, rows64 * H, rmask, cols, cmask, tl.where(act2, h, h_prev))
            store_tile(out_ptr, o_row, rmask, cols, cmask, tl.where(act2, h, 0.0))
        phase_sync(sync_ptr, it, SYNC)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _rnn_bwd_kernel(
        gout_ptr, ghn_ptr, w_hh_ptr, len_ptr, out_ptr, dxp_ptr, dh0_ptr, dg_ptr, sync_ptr,
        s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    nprog = tl.num_programs(1)
    rows, rmask, rows64, L = batch_tile(pid_b, len_ptr, B, T, HAS_LEN, BB)
    for it in range(0, n_steps):
        s = s_first - it                       # T-1 .. 0, then -1: the pass that forms dh0
        active, t = step_schedule(s, L, rmask, REVERSE)
        act2 = active[:, None]
        act_next = ((s + 1) < L) & rmask
        nxt = ((s + 1) % 2).to(tl.int64)
        dg_next = dg_ptr + nxt * B * H
        dg_s = dg_ptr + (1 - nxt) * B * H
        o_row = (t * B + rows64) * H
        for j in range(pid_h, (H + BH - 1) // BH, nprog):
            cols = j * BH + tl.arange(0, BH)
            cmask = cols < H
            carry = recurrent_carry(dg_next, w_hh_ptr, ghn_ptr, 0.0, act_next, rmask, rows64,
                                    cols, cmask, H, H, DOT_F32, BB, BH, BK)
            if s >= 0:
                dh_t = carry + load_tile(gout_ptr, o_row, rmask, cols, cmask)
                h = load_tile(out_ptr, o_row, active, cols, cmask)
                dpre = rnn_cell_bwd(dh_t, h, RELU)
                store_tile(dxp_ptr, o_row, rmask, cols, cmask, tl.where(act2, dpre, 0.0))
                store_tile(dg_s, rows64 * H, rmask, cols, cmask, dpre)
            else:
                store_tile(dh0_ptr, rows64 * H, rmask, cols, cmask, carry)
        phase_sync(sync_ptr, it, SYNC)


# ------------------------------------------------------------------------------------ launchers
def forward(xp, h0, w_hh, lengths, reverse, relu):
    T, B, H = xp.shape
    dt, dev = xp.dtype, xp.device
    pl = _plan.make_plan(dev, dt, B, H, H, 1, False)
    out = _plan.empty((T, B, H), dt, dev)
    hbuf = _plan.empty((2, B, H), torch.float32, dev)
    hbuf[0].copy_(h0)
    nb = pl.grid_b(B)
    sync = _plan.sync_counters(pl, nb, dev, hbuf)
    bufs = dict(xp=xp, w_hh=w_hh, lens=lengths if lengths is not None else hbuf, out=out,
                hbuf=hbuf, sync=sync)
    flags = dict(HAS_LEN=lengths is not None, REVERSE=bool(reverse), RELU=bool(relu))

    def launch(b, s_first, n_steps, sync_mode):
        _rnn_fwd_kernel[(nb, pl.nprog_h)](
            b["xp"], b["w_hh"], b["lens"], b["out"], b["hbuf"], b["sync"],
            s_first, n_steps, T, B, H, **flags, SYNC=sync_mode, DOT_F32=pl.dot_f32,
            BB=pl.BB, BH=pl.BH, BK=pl.BK, **pl.launch_options())

    if B > 0:
        with _plan.device_guard(xp):
            if pl.strategy == "step":
                _graphs.run("rnn_fwd", bufs, ("out", "hbuf"), (T, B, H, pl, tuple(flags.items())),
                            lambda b: [launch(b, s, 1, 0) for s in range(T)])
            else:
                launch(bufs, 0, T, pl.sync)
                _plan.check_sync(pl, sync)
    return out, hbuf[T % 2].to(dt, copy=True)


def backward(grad_out, grad_hn, h0, w_hh, lengths, reverse, relu, out):
    T, B, H = out.shape
    dt, dev = h0.dtype, h0.device
    pl = _plan.make_plan(dev, dt, B, H, H, 1, False)
    dxp = _plan.empty((T, B, H), dt, dev)
    dh0 = _plan.empty((B, H), dt, dev)
    dg = _plan.empty((2, B, H), torch.float32, dev)
    nb = pl.grid_b(B)
    sync = _plan.sync_counters(pl, nb, dev, dg)
    bufs = dict(grad_out=grad_out, grad_hn=grad_hn, w_hh=w_hh,
                lens=lengths if lengths is not None else dg, out=out, dxp=dxp, dh0=dh0, dg=dg,
                sync=sync)
    flags = dict(HAS_LEN=lengths is not None, REVERSE=bool(reverse), RELU=bool(relu))

    def launch(b, s_first, n_steps, sync_mode):
        _rnn_bwd_kernel[(nb, pl.nprog_h)](
            b["grad_out"], b["grad_hn"], b["w_hh"], b["lens"], b["out"], b["dxp"], b["dh0"],
            b["dg"], b["sync"], s_first, n_steps, T, B, H, **flags, SYNC=sync_mode,
            DOT_F32=pl.dot_f32, BB=pl.BB, BH=pl.BH, BK=pl.BK, **pl.launch_options())

    if B > 0:
        with _plan.device_guard(h0):
            if pl.strategy == "step":
                _graphs.run("rnn_bwd", bufs, ("dxp", "dh0"), (T, B, H, pl, tuple(flags.items())),
                            lambda b: [launch(b, s, 1, 0) for s in range(T - 1, -2, -1)])
            else:
                launch(bufs, T - 1, T + 1, pl.sync)
                _plan.check_sync(pl, sync)
    return dxp, dh0
