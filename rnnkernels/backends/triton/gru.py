"""GRU scan kernels and their launchers.

Recurrence (step s, row b active iff s < L_b, time index t = s or L_b-1-s in reverse)::

    a = xp_t (r, z, n parts; xp holds b_ih and b_hh's r, z parts)
    b = h_{t-1}·W_hhᵀ, b_n += b_hn                (W_hh [3H, H]; b_hn may be absent)
    r = σ(a_r + b_r)   z = σ(a_z + b_z)   n = tanh(a_n + r⊙b_n)
    h_t = (1-z)⊙n + z⊙h_{t-1}

Inactive rows keep their state; ``out`` is 0 at t ≥ L_b. Forward saves the activated gates
(r, z, n) and ``hn_lin`` = b_n (the value r multiplies) as fp32 workspaces when ``save``.

Gradient (reverse scan, carry dh [B, H] fp32)::

    dh_t = carry + grad_out_t                  (carry = grad_hn until the row's last step)
    dn = dh_t⊙(1-z)⊙(1-n²)   dz = dh_t⊙(h_{t-1}-n)⊙z(1-z)   dr = dn⊙b_n⊙r(1-r)
    carry ← [dr, dz, dn⊙r]·W_hh + dh_t⊙z       (rows active at s only)

``dxp`` = (dr, dz, dn), 0 at t ≥ L_b; dh0 = the carry after step 0. h_{t-1} is read back from
``out`` (h0 at s = 0), as the contract's saved tensors allow.

One phase per step in both directions (tiles of H; see ``plan.py`` for the strategies):
forward = three gate products over all H inputs + the cell update; backward = the tile of
``[dr, dz, dn⊙r]_{s+1}·W_hh`` + the local part dh⊙z saved by the same program, then the
pointwise derivative of step s. The GEMM operand dg and the local part are double-buffered by
step parity; a last backward pass at s = -1 forms dh0. No atomics: bitwise reproducible.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import graphs as _graphs
from . import plan as _plan
from .cell import gru_cell_bwd, gru_cell_fwd, mma
from .tiles import (batch_tile, load_tile, load_w, phase_sync, previous_state,
                    recurrent_carry, step_schedule, store_tile)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _gru_fwd_kernel(
        xp_ptr, w_hh_ptr, bhn_ptr, len_ptr, out_ptr, gates_ptr, hnl_ptr, h_ptr, sync_ptr,
        s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, HAS_BHN: tl.constexpr, REVERSE: tl.constexpr,
        SAVE: tl.constexpr, SYNC: tl.constexpr, DOT_F32: tl.constexpr,
        BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
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
        g_row = (t * B + rows64) * (3 * H)
        o_row = (t * B + rows64) * H
        for j in range(pid_h, (H + BH - 1) // BH, nprog):
            cols = j * BH + tl.arange(0, BH)
            cmask = cols < H
            n_i = cols.to(tl.int64)
            acc_r = tl.full([BB, BH], 0.0, tl.float32)
            acc_z = tl.full([BB, BH], 0.0, tl.float32)
            acc_n = tl.full([BB, BH], 0.0, tl.float32)
            for k0 in range(0, H, BK):
                ks = k0 + tl.arange(0, BK)
                kmask = ks < H
                hk = load_tile(h_cur, rows64 * H, rmask, ks, kmask)
                acc_r = mma(acc_r, hk, load_w(w_hh_ptr, ks, kmask, n_i, cmask, 1, H), DOT_F32)
                acc_z = mma(acc_z, hk, load_w(w_hh_ptr, ks, kmask, n_i + H, cmask, 1, H), DOT_F32)
                acc_n = mma(acc_n, hk, load_w(w_hh_ptr, ks, kmask, n_i + 2 * H, cmask, 1, H),
                            DOT_F32)
            if HAS_BHN:
                acc_n += tl.load(bhn_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            h_prev = load_tile(h_cur, rows64 * H, rmask, cols, cmask)
            r, z, n, h = gru_cell_fwd(load_tile(xp_ptr, g_row, rmask, cols, cmask),
                                      load_tile(xp_ptr, g_row + H, rmask, cols, cmask),
                                      load_tile(xp_ptr, g_row + 2 * H, rmask, cols, cmask),
                                      acc_r, acc_z, acc_n, h_prev)
            store_tile(h_nxt, rows64 * H, rmask, cols, cmask, tl.where(act2, h, h_prev))
            store_tile(out_ptr, o_row, rmask, cols, cmask, tl.where(act2, h, 0.0))
            if SAVE:
                store_tile(gates_ptr, g_row, active, cols, cmask, r)
                store_tile(gates_ptr, g_row + H, active, cols, cmask, z)
                store_tile(gates_ptr, g_row + 2 * H, active, cols, cmask, n)
                store_tile(hnl_ptr, o_row, active, cols, cmask, acc_n)
        phase_sync(sync_ptr, it, SYNC)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _gru_bwd_kernel(
        gout_ptr, ghn_ptr, h0_ptr, w_hh_ptr, len_ptr, out_ptr, gates_ptr, hnl_ptr,
        dxp_ptr, dh0_ptr, dg_ptr, loc_ptr, sync_ptr,
        s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SYNC: tl.constexpr, DOT_F32: tl.constexpr,
        BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
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
        cur = 1 - nxt
        dg_next = dg_ptr + nxt * B * (3 * H)
        dg_s = dg_ptr + cur * B * (3 * H)
        loc_next = loc_ptr + nxt * B * H
        loc_s = loc_ptr + cur * B * H
        g_row = (t * B + rows64) * (3 * H)
        o_row = (t * B + rows64) * H
        dg_row = rows64 * (3 * H)
        for j in range(pid_h, (H + BH - 1) // BH, nprog):
            cols = j * BH + tl.arange(0, BH)
            cmask = cols < H
            # The local part was written by this same program for the same tile last step.
            local = load_tile(loc_next, rows64 * H, act_next, cols, cmask)
            carry = recurrent_carry(dg_next, w_hh_ptr, ghn_ptr, local, act_next, rmask, rows64,
                                    cols, cmask, 3 * H, H, DOT_F32, BB, BH, BK)
            if s >= 0:
                dh_t = carry + load_tile(gout_ptr, o_row, rmask, cols, cmask)
                r = load_tile(gates_ptr, g_row, active, cols, cmask)
                z = load_tile(gates_ptr, g_row + H, active, cols, cmask)
                n = load_tile(gates_ptr, g_row + 2 * H, active, cols, cmask)
                b_n = load_tile(hnl_ptr, o_row, active, cols, cmask)
                h_prev = previous_state(out_ptr, h0_ptr, s, t, active, rows64, B, H, cols, cmask,
                                        REVERSE)
                d_r, d_z, d_n, d_nr, loc = gru_cell_bwd(dh_t, r, z, n, b_n, h_prev)
                store_tile(dxp_ptr, g_row, rmask, cols, cmask, tl.where(act2, d_r, 0.0))
                store_tile(dxp_ptr, g_row + H, rmask, cols, cmask, tl.where(act2, d_z, 0.0))
                store_tile(dxp_ptr, g_row + 2 * H, rmask, cols, cmask, tl.where(act2, d_n, 0.0))
                store_tile(dg_s, dg_row, rmask, cols, cmask, d_r)
                store_tile(dg_s, dg_row + H, rmask, cols, cmask, d_z)
                store_tile(dg_s, dg_row + 2 * H, rmask, cols, cmask, d_nr)
                store_tile(loc_s, rows64 * H, rmask, cols, cmask, loc)
            else:
                store_tile(dh0_ptr, rows64 * H, rmask, cols, cmask, carry)
        phase_sync(sync_ptr, it, SYNC)


# ------------------------------------------------------------------------------------ launchers
def forward(xp, h0, w_hh, b_hn, lengths, reverse, save):
    T, B, G = xp.shape
    H = G // 3
    dt, dev = xp.dtype, xp.device
    acc = _plan.acc_dtype(dt)
    pl = _plan.make_plan(dev, dt, B, H, H, 3, False)
    out = _plan.empty((T, B, H), dt, dev)
    gates = _plan.workspace((T, B, G) if save else (0,), acc, dev, lengths)
    hn_lin = _plan.workspace((T, B, H) if save else (0,), acc, dev, lengths)
    hbuf = _plan.empty((2, B, H), torch.float32, dev)
    hbuf[0].copy_(h0)
    nb = pl.grid_b(B)
    sync = _plan.sync_counters(pl, nb, dev, hbuf)
    dummy = hbuf

    bufs = dict(xp=xp, w_hh=w_hh, b_hn=b_hn if b_hn is not None else dummy,
                lens=lengths if lengths is not None else dummy, out=out,
                gates=gates if save else dummy, hn_lin=hn_lin if save else dummy, hbuf=hbuf,
                sync=sync)
    flags = dict(HAS_LEN=lengths is not None, HAS_BHN=b_hn is not None, REVERSE=bool(reverse),
                 SAVE=bool(save))

    def launch(b, s_first, n_steps, sync_mode):
        _gru_fwd_kernel[(nb, pl.nprog_h)](
            b["xp"], b["w_hh"], b["b_hn"], b["lens"], b["out"], b["gates"], b["hn_lin"],
            b["hbuf"], b["sync"], s_first, n_steps, T, B, H, **flags, SYNC=sync_mode,
            DOT_F32=pl.dot_f32, BB=pl.BB, BH=pl.BH, BK=pl.BK, **pl.launch_options())

    if B > 0:
        with _plan.device_guard(xp):
            if pl.strategy == "step":
                _graphs.run("gru_fwd", bufs, ("out", "gates", "hn_lin", "hbuf"),
                            (T, B, H, pl, tuple(flags.items())),
                            lambda b: [launch(b, s, 1, 0) for s in range(T)])
            else:
                launch(bufs, 0, T, pl.sync)
                _plan.check_sync(pl, sync)
    return out, hbuf[T % 2].to(dt, copy=True), gates, hn_lin


def backward(grad_out, grad_hn, h0, w_hh, b_hn, lengths, reverse, out, gates, hn_lin):
    T, B, G = gates.shape
    H = G // 3
    dt, dev = h0.dtype, h0.device
    pl = _plan.make_plan(dev, dt, B, H, H, 3, False)
    dxp = _plan.empty((T, B, G), dt, dev)
    dh0 = _plan.empty((B, H), dt, dev)
    dg = _plan.empty((2, B, G), torch.float32, dev)
    loc = _plan.empty((2, B, H), torch.float32, dev)
    nb = pl.grid_b(B)
    sync = _plan.sync_counters(pl, nb, dev, loc)

    bufs = dict(grad_out=grad_out, grad_hn=grad_hn, h0=h0, w_hh=w_hh,
                lens=lengths if lengths is not None else dg, out=out, gates=gates,
                hn_lin=hn_lin, dxp=dxp, dh0=dh0, dg=dg, loc=loc, sync=sync)
    flags = dict(HAS_LEN=lengths is not None, REVERSE=bool(reverse))

    def launch(b, s_first, n_steps, sync_mode):
        _gru_bwd_kernel[(nb, pl.nprog_h)](
            b["grad_out"], b["grad_hn"], b["h0"], b["w_hh"], b["lens"], b["out"], b["gates"],
            b["hn_lin"], b["dxp"], b["dh0"], b["dg"], b["loc"], b["sync"],
            s_first, n_steps, T, B, H, **flags, SYNC=sync_mode,
            DOT_F32=pl.dot_f32, BB=pl.BB, BH=pl.BH, BK=pl.BK, **pl.launch_options())

    if B > 0:
        with _plan.device_guard(h0):
            if pl.strategy == "step":
                _graphs.run("gru_bwd", bufs, ("dxp", "dh0"), (T, B, H, pl, tuple(flags.items())),
                            lambda b: [launch(b, s, 1, 0) for s in range(T - 1, -2, -1)])
            else:
                launch(bufs, T - 1, T + 1, pl.sync)
                _plan.check_sync(pl, sync)
    return dxp, dh0
