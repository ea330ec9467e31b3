"""LSTM scan kernels (with and without projection) and their launchers.

Recurrence (step s, row b active iff s < L_b, time index t = s or L_b-1-s in reverse)::

    g   = xp_t + h_{t-1}·W_hhᵀ                      (gates i, f, g, o; W_hh [4H, P])
    c_t = σ(g_f)⊙c_{t-1} + σ(g_i)⊙tanh(g_g)
    hh  = σ(g_o)⊙tanh(c_t)
    h_t = hh·W_hrᵀ if proj (W_hr [P, H]) else hh

Inactive rows keep their state; ``out`` is 0 at t ≥ L_b. Forward saves the activated gates
(i, f, u, o) and c_t (fp32 workspaces, time order) when ``save``.

Gradient (reverse scan s = T-1..0, carry dh [B, P] and dc [B, H], fp32)::

    dh_t  = carry_h + grad_out_t              (carry_h = grad_hn until the row's last step)
    dhh   = dh_t·W_hr if proj else dh_t
    dc    = carry_c + dhh⊙o⊙(1-tanh²c_t); dg = (di, df, du, do) as in ``cell.lstm_cell_bwd``
    carry_h ← dg·W_hh ;  carry_c ← dc⊙f       (rows active at s only)

``dxp`` = dg (0 at t ≥ L_b), dh0/dc0 = the carries after step 0, and with a projection
``dh`` = dh_t at every active step (the op forms dW_hr from it).

Structure of one step, in both strategies (see ``plan.py``):

* forward, phase *cell* (tiles of H): the four gate products for the tile over all P inputs
  (``tl.dot`` per K chunk), + xp, cell update, length masking, stores of c, workspaces and,
  without projection, h and ``out``. With projection, hh goes to a [B, H] fp32 scratch and
  phase *proj* (tiles of P) computes h = hh·W_hrᵀ, needing every hh unit of the step.
* backward without projection: ONE fused phase per step (tiles of H): the tile of
  carry_h = dg_{s+1}·W_hh[:, tile] (dg_{s+1} complete from the previous step), then the
  pointwise derivative of step s for the same units, writing dg_s. A last pass at s = -1 only
  forms dh0. With projection: phase A (tiles of P) carry_h and dh_t (stored in ``dh``),
  phase B (tiles of H) dhh = dh_t·W_hr and the pointwise part.

Every buffer written by one program and read by another in the next phase is double-buffered
by step parity (h, c, dg, dc), so a phase never reads what the same phase writes; no atomics
anywhere except the opt-in grid barrier, so results are bitwise reproducible.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import graphs as _graphs
from . import plan as _plan
from .cell import lstm_cell_bwd, lstm_cell_fwd, mma
from .tiles import (batch_tile, load_tile, load_w, phase_sync, previous_state,
                    recurrent_carry, step_schedule, store_tile)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _lstm_fwd_kernel(
        xp_ptr, w_hh_ptr, w_hr_ptr, len_ptr,
        out_ptr, gates_ptr, cs_ptr,
        h_ptr, c_ptr, hh_ptr, sync_ptr,
        s_first, n_steps, T, B, H, P,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, PROJ: tl.constexpr,
        DO_CELL: tl.constexpr, DO_PROJ: tl.constexpr, NPH: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr,
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
        h_cur = h_ptr + cur * B * P
        h_nxt = h_ptr + (1 - cur) * B * P
        out_row = (t * B + rows64) * P
        if DO_CELL:
            c_cur = c_ptr + cur * B * H
            c_nxt = c_ptr + (1 - cur) * B * H
            g_row = (t * B + rows64) * (4 * H)
            c_row = (t * B + rows64) * H
            for j in range(pid_h, (H + BH - 1) // BH, nprog):
                cols = j * BH + tl.arange(0, BH)
                cmask = cols < H
                n_i = cols.to(tl.int64)
                acc_i = tl.full([BB, BH], 0.0, tl.float32)
                acc_f = tl.full([BB, BH], 0.0, tl.float32)
                acc_g = tl.full([BB, BH], 0.0, tl.float32)
                acc_o = tl.full([BB, BH], 0.0, tl.float32)
                for k0 in range(0, P, BK):
                    ks = k0 + tl.arange(0, BK)
                    kmask = ks < P
                    hk = load_tile(h_cur, rows64 * P, rmask, ks, kmask)
                    acc_i = mma(acc_i, hk, load_w(w_hh_ptr, ks, kmask, n_i, cmask, 1, P), DOT_F32)
                    acc_f = mma(acc_f, hk, load_w(w_hh_ptr, ks, kmask, n_i + H, cmask, 1, P),
                                DOT_F32)
                    acc_g = mma(acc_g, hk, load_w(w_hh_ptr, ks, kmask, n_i + 2 * H, cmask, 1, P),
                                DOT_F32)
                    acc_o = mma(acc_o, hk, load_w(w_hh_ptr, ks, kmask, n_i + 3 * H, cmask, 1, P),
                                DOT_F32)
                g_i = acc_i + load_tile(xp_ptr, g_row, rmask, cols, cmask)
                g_f = acc_f + load_tile(xp_ptr, g_row + H, rmask, cols, cmask)
                g_g = acc_g + load_tile(xp_ptr, g_row + 2 * H, rmask, cols, cmask)
                g_o = acc_o + load_tile(xp_ptr, g_row + 3 * H, rmask, cols, cmask)
                c_prev = load_tile(c_cur, rows64 * H, rmask, cols, cmask)
                i, f, u, o, c, hh = lstm_cell_fwd(g_i, g_f, g_g, g_o, c_prev)
                # Finished (or not yet started, in reverse) rows carry their state unchanged
                # into the other parity buffer.
                store_tile(c_nxt, rows64 * H, rmask, cols, cmask, tl.where(act2, c, c_prev))
                if SAVE:
                    store_tile(gates_ptr, g_row, active, cols, cmask, i)
                    store_tile(gates_ptr, g_row + H, active, cols, cmask, f)
                    store_tile(gates_ptr, g_row + 2 * H, active, cols, cmask, u)
                    store_tile(gates_ptr, g_row + 3 * H, active, cols, cmask, o)
                    store_tile(cs_ptr, c_row, active, cols, cmask, c)
                if PROJ:
                    # h needs every hh unit of this step: the proj phase, after a barrier.
                    store_tile(hh_ptr, rows64 * H, rmask, cols, cmask, hh)
                else:
                    h_prev = load_tile(h_cur, rows64 * P, rmask, cols, cmask)
                    store_tile(h_nxt, rows64 * P, rmask, cols, cmask, tl.where(act2, hh, h_prev))
                    # inactive rows have t = s ≥ L_b: exactly the position that must be 0
                    store_tile(out_ptr, out_row, rmask, cols, cmask, tl.where(act2, hh, 0.0))
            phase_sync(sync_ptr, it * NPH, SYNC)
        if DO_PROJ:
            for j in range(pid_h, (P + BH - 1) // BH, nprog):
                cols = j * BH + tl.arange(0, BH)
                cmask = cols < P
                acc = tl.full([BB, BH], 0.0, tl.float32)
                for k0 in range(0, H, BK):
                    ks = k0 + tl.arange(0, BK)
                    kmask = ks < H
                    a = load_tile(hh_ptr, rows64 * H, rmask, ks, kmask)
                    acc = mma(acc, a, load_w(w_hr_ptr, ks, kmask, cols, cmask, 1, H), DOT_F32)
                h_prev = load_tile(h_cur, rows64 * P, rmask, cols, cmask)
                store_tile(h_nxt, rows64 * P, rmask, cols, cmask, tl.where(act2, acc, h_prev))
                store_tile(out_ptr, out_row, rmask, cols, cmask, tl.where(act2, acc, 0.0))
            phase_sync(sync_ptr, it * NPH + DO_CELL, SYNC)


@triton.jit
def _lstm_bwd_pointwise(dhh, s, t, active, rmask, rows64, cols, cmask,
                        c0_ptr, gates_ptr, cs_ptr, dxp_ptr, dg_s, dc_next, dc_s, B, H,
                        REVERSE: tl.constexpr):
    """Step s of the reverse scan for one tile of H units, given dhh (the gradient of hh_t)."""
    act2 = active[:, None]
    g_row = (t * B + rows64) * (4 * H)
    i = load_tile(gates_ptr, g_row, active, cols, cmask)
    f = load_tile(gates_ptr, g_row + H, active, cols, cmask)
    u = load_tile(gates_ptr, g_row + 2 * H, active, cols, cmask)
    o = load_tile(gates_ptr, g_row + 3 * H, active, cols, cmask)
    c = load_tile(cs_ptr, (t * B + rows64) * H, active, cols, cmask)
    c_prev = previous_state(cs_ptr, c0_ptr, s, t, active, rows64, B, H, cols, cmask, REVERSE)
    dc = load_tile(dc_next, rows64 * H, rmask, cols, cmask)
    d_i, d_f, d_u, d_o, dc_prev = lstm_cell_bwd(dhh, dc, i, f, u, o, c, c_prev)
    store_tile(dxp_ptr, g_row, rmask, cols, cmask, tl.where(act2, d_i, 0.0))
    store_tile(dxp_ptr, g_row + H, rmask, cols, cmask, tl.where(act2, d_f, 0.0))
    store_tile(dxp_ptr, g_row + 2 * H, rmask, cols, cmask, tl.where(act2, d_u, 0.0))
    store_tile(dxp_ptr, g_row + 3 * H, rmask, cols, cmask, tl.where(act2, d_o, 0.0))
    # dg_s rows of inactive sequences are never used (step s-1 masks them with s < L_b).
    dg_row = rows64 * (4 * H)
    store_tile(dg_s, dg_row, rmask, cols, cmask, d_i)
    store_tile(dg_s, dg_row + H, rmask, cols, cmask, d_f)
    store_tile(dg_s, dg_row + 2 * H, rmask, cols, cmask, d_u)
    store_tile(dg_s, dg_row + 3 * H, rmask, cols, cmask, d_o)
    store_tile(dc_s, rows64 * H, rmask, cols, cmask, tl.where(act2, dc_prev, dc))


_plan.interpreter_direct_calls(globals(), ["_lstm_bwd_pointwise"])


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _lstm_bwd_kernel(
        gout_ptr, ghn_ptr, c0_ptr, w_hh_ptr, w_hr_ptr, len_ptr, gates_ptr, cs_ptr,
        dxp_ptr, dh0_ptr, dhall_ptr, dg_ptr, dc_ptr, sync_ptr,
        s_first, n_steps, T, B, H, P,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, PROJ: tl.constexpr,
        DO_A: tl.constexpr, DO_B: tl.constexpr, NPH: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr,
        BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    nprog = tl.num_programs(1)
    rows, rmask, rows64, L = batch_tile(pid_b, len_ptr, B, T, HAS_LEN, BB)
    for it in range(0, n_steps):
        s = s_first - it                       # T-1 .. 0, then -1: the pass that forms dh0
        active, t = step_schedule(s, L, rmask, REVERSE)
        act_next = ((s + 1) < L) & rmask
        nxt = ((s + 1) % 2).to(tl.int64)      # parity of step s+1 (s+1 >= 0)
        cur = 1 - nxt
        dg_next = dg_ptr + nxt * B * (4 * H)
        dg_s = dg_ptr + cur * B * (4 * H)
        dc_next = dc_ptr + nxt * B * H
        dc_s = dc_ptr + cur * B * H
        out_row = (t * B + rows64) * P
        if PROJ:
            if DO_A:
                for j in range(pid_h, (P + BH - 1) // BH, nprog):
                    cols = j * BH + tl.arange(0, BH)
                    cmask = cols < P
                    carry = recurrent_carry(dg_next, w_hh_ptr, ghn_ptr, 0.0, act_next, rmask,
                                            rows64, cols, cmask, 4 * H, P, DOT_F32, BB, BH, BK)
                    if s >= 0:
                        dh_t = carry + load_tile(gout_ptr, out_row, rmask, cols, cmask)
                        store_tile(dhall_ptr, out_row, rmask, cols, cmask,
                                   tl.where(active[:, None], dh_t, 0.0))
                    else:
                        store_tile(dh0_ptr, rows64 * P, rmask, cols, cmask, carry)
                phase_sync(sync_ptr, it * NPH, SYNC)
            if DO_B:
                if s >= 0:
                    for j in range(pid_h, (H + BH - 1) // BH, nprog):
                        cols = j * BH + tl.arange(0, BH)
                        cmask = cols < H
                        dhh = tl.full([BB, BH], 0.0, tl.float32)
                        for k0 in range(0, P, BK):
                            ks = k0 + tl.arange(0, BK)
                            kmask = ks < P
                            a = load_tile(dhall_ptr, out_row, rmask, ks, kmask)
                            dhh = mma(dhh, a, load_w(w_hr_ptr, ks, kmask, cols, cmask, H, 1),
                                      DOT_F32)
                        _lstm_bwd_pointwise(dhh, s, t, active, rmask, rows64, cols, cmask,
                                            c0_ptr, gates_ptr, cs_ptr, dxp_ptr, dg_s, dc_next,
                                            dc_s, B, H, REVERSE)
                phase_sync(sync_ptr, it * NPH + DO_A, SYNC)
        else:
            for j in range(pid_h, (H + BH - 1) // BH, nprog):
                cols = j * BH + tl.arange(0, BH)
                cmask = cols < H
                carry = recurrent_carry(dg_next, w_hh_ptr, ghn_ptr, 0.0, act_next, rmask, rows64,
                                        cols, cmask, 4 * H, P, DOT_F32, BB, BH, BK)
                if s >= 0:
                    dh_t = carry + load_tile(gout_ptr, out_row, rmask, cols, cmask)
                    _lstm_bwd_pointwise(dh_t, s, t, active, rmask, rows64, cols, cmask,
                                        c0_ptr, gates_ptr, cs_ptr, dxp_ptr, dg_s, dc_next,
                                        dc_s, B, H, REVERSE)
                else:
                    store_tile(dh0_ptr, rows64 * P, rmask, cols, cmask, carry)
            phase_sync(sync_ptr, it, SYNC)


# ------------------------------------------------------------------------------------ launchers
def forward(xp, h0, c0, w_hh, w_hr, lengths, reverse, save):
    T, B, G = xp.shape
    H, P = G // 4, h0.shape[1]
    dt, dev = xp.dtype, xp.device
    acc = _plan.acc_dtype(dt)
    proj = w_hr is not None
    pl = _plan.make_plan(dev, dt, B, H, P, 4, proj)
    out = _plan.empty((T, B, P), dt, dev)
    gates = _plan.workspace((T, B, G) if save else (0,), acc, dev, lengths)
    cs = _plan.workspace((T, B, H) if save else (0,), acc, dev, lengths)
    hbuf = _plan.empty((2, B, P), torch.float32, dev)
    cbuf = _plan.empty((2, B, H), torch.float32, dev)
    hbuf[0].copy_(h0)
    cbuf[0].copy_(c0)
    hh = _plan.empty((B, H) if proj else (1,), torch.float32, dev)
    nb = pl.grid_b(B)
    sync = _plan.sync_counters(pl, nb, dev, hbuf)
    dummy = hbuf
    lens = lengths if lengths is not None else dummy

    bufs = dict(xp=xp, w_hh=w_hh, w_hr=w_hr if proj else dummy, lens=lens, out=out,
                gates=gates if save else dummy, cs=cs if save else dummy, hbuf=hbuf, cbuf=cbuf,
                hh=hh, sync=sync)
    flags = dict(HAS_LEN=lengths is not None, REVERSE=bool(reverse), SAVE=bool(save), PROJ=proj)

    def launch(b, s_first, n_steps, do_cell, do_proj, sync_mode):
        _lstm_fwd_kernel[(nb, pl.nprog_h)](
            b["xp"], b["w_hh"], b["w_hr"], b["lens"], b["out"], b["gates"], b["cs"], b["hbuf"],
            b["cbuf"], b["hh"], b["sync"], s_first, n_steps, T, B, H, P, **flags,
            DO_CELL=do_cell, DO_PROJ=do_proj, NPH=do_cell + do_proj, SYNC=sync_mode,
            DOT_F32=pl.dot_f32, BB=pl.BB, BH=pl.BH, BK=pl.BK, **pl.launch_options())

    def steps(b):
        for s in range(T):
            launch(b, s, 1, 1, 0, 0)
            if proj:
                launch(b, s, 1, 0, 1, 0)

    if B > 0:
        with _plan.device_guard(xp):
            if pl.strategy == "step":
                _graphs.run("lstm_fwd", bufs, ("out", "gates", "cs", "hbuf", "cbuf"),
                            (T, B, H, P, pl, tuple(flags.items())), steps)
            else:
                launch(bufs, 0, T, 1, int(proj), pl.sync)
                _plan.check_sync(pl, sync)
    fin = T % 2
    # copies: a view into the ping-pong buffers would alias them and carry a storage offset
    # that the op's fake impl (a fresh tensor) does not have
    return out, hbuf[fin].to(dt, copy=True), cbuf[fin].to(dt, copy=True), gates, cs


def backward(grad_out, grad_hn, grad_cn, h0, c0, w_hh, w_hr, lengths, reverse, out, gates, cs):
    T, B, G = gates.shape
    H, P = G // 4, h0.shape[1]
    dt, dev = h0.dtype, h0.device
    acc = _plan.acc_dtype(dt)
    proj = w_hr is not None
    pl = _plan.make_plan(dev, dt, B, H, P, 4, proj)
    dxp = _plan.empty((T, B, G), dt, dev)
    dh0 = _plan.empty((B, P), dt, dev)
    dh_all = _plan.empty((T, B, P) if proj else (0,), acc, dev)
    dg = _plan.empty((2, B, G), torch.float32, dev)
    dc = _plan.empty((2, B, H), torch.float32, dev)
    dc[T % 2].copy_(grad_cn)               # the carry entering step T-1
    nb = pl.grid_b(B)
    sync = _plan.sync_counters(pl, nb, dev, dc)
    dummy = dc
    lens = lengths if lengths is not None else dummy

    bufs = dict(grad_out=grad_out, grad_hn=grad_hn, c0=c0, w_hh=w_hh,
                w_hr=w_hr if proj else dummy, lens=lens, gates=gates, cs=cs, dxp=dxp, dh0=dh0,
                dh_all=dh_all if proj else dummy, dg=dg, dc=dc, sync=sync)
    flags = dict(HAS_LEN=lengths is not None, REVERSE=bool(reverse), PROJ=proj)

    def launch(b, s_first, n_steps, do_a, do_b, sync_mode):
        _lstm_bwd_kernel[(nb, pl.nprog_h)](
            b["grad_out"], b["grad_hn"], b["c0"], b["w_hh"], b["w_hr"], b["lens"], b["gates"],
            b["cs"], b["dxp"], b["dh0"], b["dh_all"], b["dg"], b["dc"], b["sync"],
            s_first, n_steps, T, B, H, P, **flags,
            DO_A=do_a, DO_B=do_b, NPH=(do_a + do_b) if proj else 1, SYNC=sync_mode,
            DOT_F32=pl.dot_f32, BB=pl.BB, BH=pl.BH, BK=pl.BK, **pl.launch_options())

    def steps(b):
        for s in range(T - 1, -2, -1):
            launch(b, s, 1, 1, 0, 0)
            if proj and s >= 0:
                launch(b, s, 1, 0, 1, 0)

    if B > 0:
        with _plan.device_guard(h0):
            if pl.strategy == "step":
                _graphs.run("lstm_bwd", bufs, ("dxp", "dh0", "dh_all", "dc"),
                            (T, B, H, P, pl, tuple(flags.items())), steps)
            else:
                launch(bufs, T - 1, T + 1, 1, 1, pl.sync)
                _plan.check_sync(pl, sync)
    return dxp, dh0, dc[0].to(dt, copy=True), dh_all
