"""The ``resident`` strategy for the LSTM with a projection (``proj_size``): h_t = hh_t·W_hrᵀ,
W_hh [4H, P], W_hr [P, H]. The kernels and helpers of ``resident.py`` (read its docstring
first), with two phases and two grid barriers a step, because h_t needs every unit's hh_t and,
backward, dhh every column of dh_t.

Ownership. Program c owns the units c·U .. c·U+U-1 of H with their four gates (W_hh reordered
[unit][gate], K = P), exactly as without a projection: c and dc stay in its registers. For
the other phase it owns the columns c·UP .. c·UP+UP-1 of P (programs past P/UP idle there):
forward its rows of W_hr [UP, H], backward the carry dh of those columns.

Forward, step s::

    CELL  load xp_t (own units); wait for h_{s-1} (all P columns)
          acc = h_{s-1}·W_ownᵀ; the cell; c in registers; hh_t (own units) → ``hh`` [B, H]
          arrive
    PROJ  wait for every unit's hh_t
          h_t (own columns) = hh_t [BB, H] · W_hr[own columns]ᵀ   (block resident or streamed)
          → h (ping-pong), out; arrive

Backward, step s (T-1 .. 0, then the pass s = -1 that runs A only)::

    A  wait for the partials of step s+1
       dh_t (own columns) = Σ_programs partial_{s+1} (the carry; grad_hn until the row's last
       step) + grad_out_t → ``dh`` [T, B, P] (the op forms dW_hr from it) and ``dhs`` [B, P]
       (this step's, for B); arrive.  s = -1: dh0 = the carry
    B  wait for every column of dh_t
       dhh (own units) = dh_t · W_hr[:, own units]: a [U·4, P] block with W_hr's column of each
       unit in its gate slot 0 and zero rows elsewhere, so the product has the gate product's
       shape (≥ 16 rows for tl.dot) and ``_split_gates`` takes dhh out of slot 0
       the cell's gradient (dc in registers); dxp; partial_s = dg · W_own [BB, P]; arrive

Under ``TRITON_INTERPRET=1`` each phase of each step is one launch (SYNC=0; DO_CELL / DO_PROJ,
DO_A / DO_B select the phase) and the registers (c; dh, dc) go through buffers between them.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import plan as _plan
from .resident import (_block, _gate_product, _join_gates, _lstm_units_bwd, _lstm_units_fwd,
                       _own_slice, _split_gates, _store_partial, _sum_partials)
from .tiles import (grid_arrive, grid_wait, load_gates, load_tile, ping_pong, step_schedule,
                    store_gates, store_tile)


@triton.jit
def _own_columns(P, UP: tl.constexpr):
    """The program's columns of P, their mask, and whether it has any (programs past P/UP
    idle in the column phase)."""
    pid_c = tl.program_id(1)
    cols = pid_c * UP + tl.arange(0, UP)
    return cols, cols < P, pid_c < tl.cdiv(P, UP)


_plan.interpreter_direct_calls(globals(), ["_own_columns"])


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _resident_proj_fwd_kernel(
        xp_ptr, w_ptr, wr_ptr, lens_ptr, out_ptr, gates_ptr, cs_ptr, h_ptr, c_ptr, hh_ptr,
        sync_ptr, s_first, n_steps, T, B, H, P,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, SYNC: tl.constexpr,
        DO_CELL: tl.constexpr, DO_PROJ: tl.constexpr, DOT_F32: tl.constexpr,
        BB: tl.constexpr, U: tl.constexpr, UP: tl.constexpr, KC: tl.constexpr,
        KP: tl.constexpr, KCR: tl.constexpr, KPR: tl.constexpr):
    """Forward steps s_first .. s_first+n_steps-1 (the module docstring; the recurrence and the
    workspaces of ``lstm._lstm_fwd_kernel``). w: W_hh reordered [programs, 4U, P]; wr: W_hr
    padded [P/UP, UP, H]; hh [B, H] the CELL phase's output."""
    rmask, rows64, L, nprog, units, umask, ks, kmask, w_t = _own_slice(
        w_ptr, lens_ptr, B, T, H, P, HAS_LEN, True, BB, U, 4 * U, KC, KP)
    cols, cmask, has_cols = _own_columns(P, UP)
    # W_hr padded [P/UP, UP, H]: an idle program loads the last block (unused)
    wr_t, ksr, kmaskr = _block(wr_ptr, tl.minimum(tl.program_id(1), tl.cdiv(P, UP) - 1), H,
                               True, UP, KCR, KPR)
    counter = sync_ptr + tl.program_id(0)
    flag = sync_ptr + tl.num_programs(0)
    first = (s_first % 2).to(tl.int64)
    h_own = load_tile(h_ptr + first * B * P, rows64 * P, rmask, cols, cmask)
    c_own = tl.zeros([BB, U], tl.float32)
    if DO_CELL:
        c_own = load_tile(c_ptr + first * B * H, rows64 * H, rmask, units, umask)
    for it in range(0, n_steps):
        s = s_first + it
        active, t = step_schedule(s, L, rmask, REVERSE)
        act2 = active[:, None]
        h_cur, h_nxt = ping_pong(h_ptr, (s % 2).to(tl.int64), B, P)
        if DO_CELL:
            g_row = (t * B + rows64) * (4 * H)
            x0, x1, x2, x3 = load_gates(xp_ptr, g_row, rmask, units, umask, H)
            if SYNC == 2:
                if it > 0:
                    grid_wait(counter, 2 * it * nprog, flag)
            acc = _gate_product(h_cur, rows64, rmask, w_t, ks, kmask, B, P, DOT_F32, BB, 4 * U,
                                KC, KP)
            c_own, hh = _lstm_units_fwd(acc, x0, x1, x2, x3, c_own, act2, active, units, umask,
                                        g_row, (t * B + rows64) * H, gates_ptr, cs_ptr, H, SAVE,
                                        BB, U)
            store_tile(hh_ptr, rows64 * H, rmask, units, umask, hh)
            if SYNC == 2:
                grid_arrive(counter)
        if DO_PROJ:
            if SYNC == 2:
                grid_wait(counter, (2 * it + 1) * nprog, flag)
            if has_cols:
                h_new = _gate_product(hh_ptr, rows64, rmask, wr_t, ksr, kmaskr, B, H, DOT_F32,
                                      BB, UP, KCR, KPR)
                h_own = tl.where(act2, h_new, h_own)
                store_tile(h_nxt, rows64 * P, rmask, cols, cmask, h_own)
                store_tile(out_ptr, (t * B + rows64) * P, rmask, cols, cmask,
                           tl.where(act2, h_new, 0.0))
            if SYNC == 2:
                grid_arrive(counter)
    if DO_CELL:   # c left the registers only here: the half the next step (launch) reads
        last = ((s_first + n_steps) % 2).to(tl.int64)
        store_tile(c_ptr + last * B * H, rows64 * H, rmask, units, umask, c_own)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _resident_proj_bwd_kernel(
        grad_out_ptr, c0_ptr, w_ptr, wr_ptr, lens_ptr, gates_ptr, cs_ptr, dxp_ptr, dh0_ptr,
        dh_ptr, dhs_ptr, dhc_ptr, dc_ptr, part_ptr, sync_ptr, s_first, n_steps, T, B, H, P,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SYNC: tl.constexpr, DO_A: tl.constexpr,
        DO_B: tl.constexpr, DOT_F32: tl.constexpr, BB: tl.constexpr, U: tl.constexpr,
        UP: tl.constexpr, KC: tl.constexpr, KP: tl.constexpr, RB: tl.constexpr):
    """Backward steps s_first, s_first-1, ... down to -1 (the module docstring; the gradient of
    ``lstm._lstm_bwd_kernel``). w: W_hh reordered [programs, 4U, P]; wr: W_hr's columns
    [programs, 4U, P] (slot 0 of each unit); carries dhc [B, P] (own columns) and dc [B, H]
    (own units) between launches; ``part`` [2, programs, B, P] the partials by step parity."""
    rmask, rows64, L, nprog, units, umask, ks, kmask, w = _own_slice(
        w_ptr, lens_ptr, B, T, H, P, HAS_LEN, False, BB, U, 4 * U, KC, KP)
    # (the same K axis as W_own's: ks, kmask)
    wr_t, ks_r, kmask_r = _block(wr_ptr, tl.program_id(1), P, True, 4 * U, KC, KP)
    cols, cmask, has_cols = _own_columns(P, UP)
    pid_c = tl.program_id(1).to(tl.int64)
    counter = sync_ptr + tl.program_id(0)
    flag = sync_ptr + tl.num_programs(0)
    dh_own = load_tile(dhc_ptr, rows64 * P, rmask, cols, cmask)
    dc_own = load_tile(dc_ptr, rows64 * H, rmask, units, umask)
    for it in range(0, n_steps):
        s = s_first - it
        active, t = step_schedule(s, L, rmask, REVERSE)
        act2 = active[:, None]
        if DO_A:
            if s < T - 1:
                if SYNC == 2:
                    if it > 0:
                        grid_wait(counter, 2 * it * nprog, flag)
                act_next = ((s + 1) < L) & rmask
                par = ((s + 1) % 2).to(tl.int64)
                rec = _sum_partials(part_ptr + par * nprog * B * P, nprog, rows64, act_next, cols,
                                    cmask, B, P, BB, UP, RB)
                dh_own = tl.where(act_next[:, None], rec, dh_own)
            if s >= 0:
                out_row = (t * B + rows64) * P
                dh_t = dh_own + load_tile(grad_out_ptr, out_row, rmask, cols, cmask)
                store_tile(dh_ptr, out_row, rmask, cols, cmask, tl.where(act2, dh_t, 0.0))
                store_tile(dhs_ptr, rows64 * P, rmask, cols, cmask, dh_t)
            else:
                store_tile(dh0_ptr, rows64 * P, rmask, cols, cmask, dh_own)
            if SYNC == 2:
                grid_arrive(counter)
        if DO_B:
            if s >= 0:
                if SYNC == 2:
                    grid_wait(counter, (2 * it + 1) * nprog, flag)
                acc = _gate_product(dhs_ptr, rows64, rmask, wr_t, ks, kmask, B, P, DOT_F32, BB,
                                    4 * U, KC, KP)
                dhh, pad1, pad2, pad3 = _split_gates(acc, BB, U, 4)   # slot 0: dhh
                g_row = (t * B + rows64) * (4 * H)
                d0, d1, d2, d3, dc_own = _lstm_units_bwd(dhh, dc_own, s, t, active, act2, rows64,
                                                         units, umask, g_row,
                                                         (t * B + rows64) * H, gates_ptr, cs_ptr,
                                                         c0_ptr, B, H, REVERSE)
                store_gates(dxp_ptr, g_row, rmask, units, umask, H, tl.where(act2, d0, 0.0),
                            tl.where(act2, d1, 0.0), tl.where(act2, d2, 0.0),
                            tl.where(act2, d3, 0.0))
                dg = tl.where(act2, _join_gates(d0, d1, d2, d3, BB, U, 4), 0.0)
                par = (s % 2).to(tl.int64)
                _store_partial(part_ptr + (par * nprog + pid_c) * B * P, dg, w, rows64, rmask,
                               ks, kmask, B, P, DOT_F32, BB, 4 * U, KC, KP)
                if SYNC == 2:
                    grid_arrive(counter)
    if DO_A:
        store_tile(dhc_ptr, rows64 * P, rmask, cols, cmask, dh_own)
    if DO_B:
        store_tile(dc_ptr, rows64 * H, rmask, units, umask, dc_own)
