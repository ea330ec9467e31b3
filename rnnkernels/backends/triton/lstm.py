"""LSTM scan kernels (with and without projection); ``launch.py`` runs them (``KERNELS``).

The recurrence and its gradient: the docstrings of ``_lstm_fwd_kernel`` and
``_lstm_bwd_kernel``. Phases of one step (``KERNELS``; the launcher runs them one launch each,
or all in one persistent launch with a barrier between them):

* forward, phase CELL (tiles of H): the four gate products for the tile over all P inputs,
  + xp, cell update, length masking, stores of c, workspaces and, without projection, h and
  ``out``. With projection, hh goes to the [B, H] fp32 scratch ``hh`` and phase PROJ (tiles
  of P) computes h = hh·W_hrᵀ, which needs every hh unit of the step.
* backward, phase CARRY (tiles of P): the tile of carry_h = dg_{s+1}·W_hh[:, tile] (dg_{s+1}
  complete from the previous step) and dh_t; without projection (P = H) the pointwise
  derivative of step s for the same units follows in the same phase, writing dg_s. With
  projection dh_t goes to ``dh`` and phase PROJ (tiles of H) computes dhh = dh_t·W_hr, which
  needs every unit of dh_t, and the pointwise part. The last pass (s = -1) only forms dh0.

Every buffer written by one program and read by another in the next phase is double-buffered
by step parity (h, c, dg, dc), so a phase never reads what the same phase writes; no atomics
anywhere except the opt-in grid barrier, so results are bitwise reproducible.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...cells import CELLS
from . import plan as _plan
from .cell import (head_carry, head_gate_products, load_keep, lstm_cell_bwd, lstm_cell_fwd,
                   lstm_cell_state, zoneout, zoneout_bwd)
from .launch import Kernels, Scratch
from .tiles import (backward_step, forward_step, gate_products, load_gates, load_tile, phase_sync,
                    ping_pong, previous_state, program_tile, recurrent_carry, store_gates,
                    store_tile, tile_cols, tile_product)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _lstm_fwd_kernel(
        xp_ptr, w_hh_ptr, w_hr_ptr, lens_ptr, out_ptr, gates_ptr, cs_ptr, h_ptr, c_ptr, hh_ptr,
        w_ch_ptr, keep_h_ptr, keep_c_ptr, sync_ptr,
        s_first, n_steps, T, B, H, P,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, PROJ: tl.constexpr,
        DO_CELL: tl.constexpr, DO_PROJ: tl.constexpr, NPH: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr, G: tl.constexpr, PEEP: tl.constexpr, HD: tl.constexpr,
        ZH: tl.constexpr, ZC: tl.constexpr,
        BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Steps s_first .. s_first+n_steps-1 of the forward scan (row b active iff s < L_b, time
    index t = s or L_b-1-s in reverse)::

        g   = xp_t + h_{t-1}·W_hhᵀ                  (gates i, f, g, o; W_hh [G·H, P], G = 4)
        c_t = σ(g_f)⊙c_{t-1} + σ(g_i)⊙tanh(g_g)
        hh  = σ(g_o)⊙tanh(c_t)
        h_t = hh·W_hrᵀ if PROJ (W_hr [P, H]) else hh

    Inactive rows keep their state; ``out`` is 0 at t ≥ L_b. Saves the activated gates
    (i, f, u, o) and c_t (fp32 workspaces, time order) when SAVE.

    Variants (docs/VARIANTS.md): PEEP adds w_ch⊙c to the i, f, o pre-activations
    (``cell.lstm_cell_fwd``); HD > 0: W_hh is head-wise [G·H, HD] (``cell.head_gate_products``);
    ZH / ZC (0 none, 1 mask, 2 scalar p; ``cell.load_keep``): h_t / c_t = ``cell.zoneout`` of
    the previous and the new value. ``cs`` saves the zoned c_t (the state), from which the
    backward recomputes the candidate.
    """
    rmask, rows64, L, pid_h, nprog = program_tile(lens_ptr, B, T, HAS_LEN, BB)
    for it in range(0, n_steps):
        s, active, act2, t, cur = forward_step(s_first, it, L, rmask, REVERSE)
        h_cur, h_nxt = ping_pong(h_ptr, cur, B, P)
        out_row = (t * B + rows64) * P
        if DO_CELL:
            c_cur, c_nxt = ping_pong(c_ptr, cur, B, H)
            g_row = (t * B + rows64) * (G * H)
            c_row = (t * B + rows64) * H
            for j in range(pid_h, (H + BH - 1) // BH, nprog):
                cols, cmask = tile_cols(j, H, BH)
                if HD > 0:
                    acc_i, acc_f, acc_g, acc_o = head_gate_products(
                        h_cur, rows64 * P, rmask, w_hh_ptr, cols, cmask, j * BH, H, HD, G,
                        DOT_F32, BB, BH, BK)
                else:
                    acc_i, acc_f, acc_g, acc_o = gate_products(
                        h_cur, rows64 * P, rmask, w_hh_ptr, cols, cmask, H, P, G, DOT_F32,
                        BB, BH, BK)
                x_i, x_f, x_g, x_o = load_gates(xp_ptr, g_row, rmask, cols, cmask, H)
                g_i, g_f, g_g, g_o = acc_i + x_i, acc_f + x_f, acc_g + x_g, acc_o + x_o
                c_prev = load_tile(c_cur, rows64 * H, rmask, cols, cmask)
                w_ci, w_cf, w_co = _peepholes(w_ch_ptr, cols, cmask, H, PEEP)
                i, f, u, o, c, hh = lstm_cell_fwd(g_i, g_f, g_g, g_o, c_prev, w_ci, w_cf, w_co,
                                                  PEEP)
                if ZC:
                    c = zoneout(load_keep(keep_c_ptr, c_row, rmask, cols, cmask, ZC), c_prev, c)
                # Finished (or not yet started, in reverse) rows carry their state unchanged
                # into the other parity buffer.
                store_tile(c_nxt, rows64 * H, rmask, cols, cmask, tl.where(act2, c, c_prev))
                if SAVE:
                    store_gates(gates_ptr, g_row, active, cols, cmask, H, i, f, u, o)
                    store_tile(cs_ptr, c_row, active, cols, cmask, c)
                if PROJ:
                    # h needs every hh unit of this step: the PROJ phase, after a barrier.
                    store_tile(hh_ptr, rows64 * H, rmask, cols, cmask, hh)
                else:
                    h_prev = load_tile(h_cur, rows64 * P, rmask, cols, cmask)
                    if ZH:
                        hh = zoneout(load_keep(keep_h_ptr, out_row, rmask, cols, cmask, ZH),
                                     h_prev, hh)
                    store_tile(h_nxt, rows64 * P, rmask, cols, cmask, tl.where(act2, hh, h_prev))
                    # inactive rows have t = s ≥ L_b: exactly the position that must be 0
                    store_tile(out_ptr, out_row, rmask, cols, cmask, tl.where(act2, hh, 0.0))
            phase_sync(sync_ptr, it * NPH, SYNC)
        if DO_PROJ:
            for j in range(pid_h, (P + BH - 1) // BH, nprog):
                cols, cmask = tile_cols(j, P, BH)
                acc = tile_product(hh_ptr, rows64 * H, rmask, w_hr_ptr, cols, cmask, H, 1, H,
                                   DOT_F32, BB, BH, BK)
                h_prev = load_tile(h_cur, rows64 * P, rmask, cols, cmask)
                if ZH:
                    acc = zoneout(load_keep(keep_h_ptr, out_row, rmask, cols, cmask, ZH), h_prev,
                                  acc)
                store_tile(h_nxt, rows64 * P, rmask, cols, cmask, tl.where(act2, acc, h_prev))
                store_tile(out_ptr, out_row, rmask, cols, cmask, tl.where(act2, acc, 0.0))
            phase_sync(sync_ptr, it * NPH + DO_CELL, SYNC)


@triton.jit
def _peepholes(w_ch_ptr, cols, cmask, H, PEEP: tl.constexpr):
    """Rows i, f, o of weight_ch [3, H] for the units cols, as [1, BH] (0.0 without PEEP)."""
    if PEEP:
        w_ci = tl.load(w_ch_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        w_cf = tl.load(w_ch_ptr + H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        w_co = tl.load(w_ch_ptr + 2 * H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        return w_ci, w_cf, w_co
    else:
        return 0.0, 0.0, 0.0


@triton.jit
def _lstm_bwd_pointwise(dhh, s, t, active, act2, rmask, rows64, cols, cmask,
                        c0_ptr, gates_ptr, cs_ptr, dxp_ptr, dg_s, dc_next, dc_s, w_ch_ptr,
                        keep_c_ptr, B, H, REVERSE: tl.constexpr, G: tl.constexpr,
                        PEEP: tl.constexpr, ZC: tl.constexpr):
    """Step s of the reverse scan for one tile of H units, given dhh (the gradient of hh_t).
    ZC: ``cs`` holds the zoned states, so the candidate c̃_t is recomputed from the gates and
    c_{t-1}; the carried dc (of the state c_t) splits into keep⊙dc for c_{t-1} and (1-keep)⊙dc
    for c̃_t."""
    g_row = (t * B + rows64) * (G * H)
    i, f, u, o = load_gates(gates_ptr, g_row, active, cols, cmask, H)
    c_row = (t * B + rows64) * H
    c = load_tile(cs_ptr, c_row, active, cols, cmask)
    c_prev = previous_state(cs_ptr, c0_ptr, s, t, active, rows64, B, H, cols, cmask, REVERSE)
    dc = load_tile(dc_next, rows64 * H, rmask, cols, cmask)
    dc_cand = dc
    if ZC:
        c = lstm_cell_state(i, f, u, c_prev)
        dc_keep, dc_cand = zoneout_bwd(load_keep(keep_c_ptr, c_row, rmask, cols, cmask, ZC), dc)
    w_ci, w_cf, w_co = _peepholes(w_ch_ptr, cols, cmask, H, PEEP)
    d_i, d_f, d_u, d_o, dc_prev = lstm_cell_bwd(dhh, dc_cand, i, f, u, o, c, c_prev, w_ci, w_cf,
                                                w_co, PEEP)
    if ZC:
        dc_prev += dc_keep
    store_gates(dxp_ptr, g_row, rmask, cols, cmask, H, tl.where(act2, d_i, 0.0),
                tl.where(act2, d_f, 0.0), tl.where(act2, d_u, 0.0), tl.where(act2, d_o, 0.0))
    # dg_s rows of inactive sequences are never used (step s-1 masks them with s < L_b).
    store_gates(dg_s, rows64 * (G * H), rmask, cols, cmask, H, d_i, d_f, d_u, d_o)
    store_tile(dc_s, rows64 * H, rmask, cols, cmask, tl.where(act2, dc_prev, dc))


_plan.interpreter_direct_calls(globals(), ["_peepholes", "_lstm_bwd_pointwise"])


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _lstm_bwd_kernel(
        grad_out_ptr, grad_hn_ptr, c0_ptr, w_hh_ptr, w_hr_ptr, lens_ptr, gates_ptr, cs_ptr,
        dxp_ptr, dh0_ptr, dh_ptr, dg_ptr, dc_ptr, w_ch_ptr, keep_h_ptr, keep_c_ptr, loc_ptr,
        sync_ptr,
        s_first, n_steps, T, B, H, P,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, PROJ: tl.constexpr,
        DO_CARRY: tl.constexpr, DO_PROJ: tl.constexpr, NPH: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr, G: tl.constexpr, PEEP: tl.constexpr, HD: tl.constexpr,
        ZH: tl.constexpr, ZC: tl.constexpr,
        BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Steps s_first, s_first-1, ... of the reverse scan (T-1 .. 0, then -1 for dh0), carrying
    dh [B, P] and dc [B, H] in fp32::

        dh_t  = carry_h + grad_out_t          (carry_h = grad_hn until the row's last step)
        dhh   = dh_t·W_hr if PROJ else dh_t
        dc    = carry_c + dhh⊙o⊙(1-tanh²c_t)
        dg    = (di, df, du, do)              (as in ``cell.lstm_cell_bwd``)
        carry_h ← dg·W_hh ;  carry_c ← dc⊙f   (rows active at s only)

    ``dxp`` = dg (0 at t ≥ L_b), dh0/dc0 = the carries after step 0, and with a projection
    ``dh`` = dh_t at every active step (the op forms dW_hr from it).

    Variants: HD > 0 carries through the head-wise W_hh (``cell.head_carry``); ZH splits dh_t
    into keep⊙dh_t, which reaches h_{t-1} directly (scratch ``loc``, by step parity), and
    (1-keep)⊙dh_t, the gradient of the candidate (so ``dh`` then holds the candidate's); PEEP
    and ZC act in ``_lstm_bwd_pointwise``.
    """
    rmask, rows64, L, pid_h, nprog = program_tile(lens_ptr, B, T, HAS_LEN, BB)
    for it in range(0, n_steps):
        s, active, act2, t, act_next, nxt = backward_step(s_first, it, L, rmask, REVERSE)
        dg_next, dg_s = ping_pong(dg_ptr, nxt, B, G * H)
        dc_next, dc_s = ping_pong(dc_ptr, nxt, B, H)
        out_row = (t * B + rows64) * P
        if DO_CARRY:
            loc_next, loc_s = ping_pong(loc_ptr, nxt, B, P)
            for j in range(pid_h, (P + BH - 1) // BH, nprog):
                cols, cmask = tile_cols(j, P, BH)
                local = 0.0
                if ZH:
                    local = load_tile(loc_next, rows64 * P, act_next, cols, cmask)
                if HD > 0:
                    carry = head_carry(dg_next, w_hh_ptr, grad_hn_ptr, local, act_next, rmask,
                                       rows64, cols, cmask, j * BH, H, HD, G, DOT_F32, BB, BH, BK)
                else:
                    carry = recurrent_carry(dg_next, w_hh_ptr, grad_hn_ptr, local, act_next,
                                            rmask, rows64, cols, cmask, G * H, P, DOT_F32,
                                            BB, BH, BK)
                if s >= 0:
                    dh_t = carry + load_tile(grad_out_ptr, out_row, rmask, cols, cmask)
                    if ZH:
                        loc, dh_t = zoneout_bwd(load_keep(keep_h_ptr, out_row, rmask, cols,
                                                          cmask, ZH), dh_t)
                        store_tile(loc_s, rows64 * P, rmask, cols, cmask, loc)
                    if PROJ:
                        # dhh needs every unit of dh_t: the PROJ phase, after a barrier.
                        store_tile(dh_ptr, out_row, rmask, cols, cmask,
                                   tl.where(act2, dh_t, 0.0))
                    else:
                        _lstm_bwd_pointwise(dh_t, s, t, active, act2, rmask, rows64, cols, cmask,
                                            c0_ptr, gates_ptr, cs_ptr, dxp_ptr, dg_s, dc_next,
                                            dc_s, w_ch_ptr, keep_c_ptr, B, H, REVERSE, G, PEEP,
                                            ZC)
                else:
                    store_tile(dh0_ptr, rows64 * P, rmask, cols, cmask, carry)
            phase_sync(sync_ptr, it * NPH, SYNC)
        if DO_PROJ:
            if s >= 0:
                for j in range(pid_h, (H + BH - 1) // BH, nprog):
                    cols, cmask = tile_cols(j, H, BH)
                    dhh = tile_product(dh_ptr, out_row, rmask, w_hr_ptr, cols, cmask, P, H, 1,
                                       DOT_F32, BB, BH, BK)
                    _lstm_bwd_pointwise(dhh, s, t, active, act2, rmask, rows64, cols, cmask,
                                        c0_ptr, gates_ptr, cs_ptr, dxp_ptr, dg_s, dc_next, dc_s,
                                        w_ch_ptr, keep_c_ptr, B, H, REVERSE, G, PEEP, ZC)
            phase_sync(sync_ptr, it * NPH + DO_CARRY, SYNC)


# With a projection a step has two phases: h = hh·W_hrᵀ needs every hh unit of the step (and,
# backward, dhh = dh_t·W_hr every unit of dh_t); the PROJ phases and ``hh`` exist only then.
KERNELS = Kernels(CELLS["lstm"], _lstm_fwd_kernel, _lstm_bwd_kernel,
                  forward_phases=("CELL", "PROJ"), backward_phases=("CARRY", "PROJ"),
                  forward_scratch=(Scratch("hh", proj_only=True),),
                  backward_scratch=(Scratch("loc", copies=2, only_if="ZH", width="P"),))
