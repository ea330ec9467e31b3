"""GRU scan kernels; ``launch.py`` runs them (``KERNELS``).

The recurrence and its gradient: the docstrings of ``_gru_fwd_kernel`` and ``_gru_bwd_kernel``.
One phase per step in both directions (tiles of H): forward = three gate products over all H
inputs + the cell update; backward = the tile of ``[dr, dz, dn⊙r]_{s+1}·W_hh`` + the local
part dh⊙z saved by the same program, then the pointwise derivative of step s. The GEMM operand
dg and the local part (scratch ``loc``) are double-buffered by step parity; the last backward
pass (s = -1) only forms dh0. No atomics: bitwise reproducible.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...cells import CELLS
from .cell import (gru_cell_bwd, gru_cell_fwd, head_carry, head_gate_products, load_keep,
                   zoneout, zoneout_bwd)
from .launch import Kernels, Scratch
from .tiles import (backward_step, forward_step, gate_products, load_tile, phase_sync, ping_pong,
                    previous_state, program_tile, recurrent_carry, store_tile, tile_cols)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _gru_fwd_kernel(
        xp_ptr, w_hh_ptr, b_hn_ptr, lens_ptr, out_ptr, gates_ptr, hn_lin_ptr, h_ptr, keep_h_ptr,
        sync_ptr,
        s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, HAS_BHN: tl.constexpr, REVERSE: tl.constexpr,
        SAVE: tl.constexpr, SYNC: tl.constexpr, DOT_F32: tl.constexpr, G: tl.constexpr,
        HD: tl.constexpr, ZH: tl.constexpr,
        BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Steps s_first .. s_first+n_steps-1 of the forward scan (row b active iff s < L_b, time
    index t = s or L_b-1-s in reverse)::

        a = xp_t (r, z, n parts; xp holds b_ih and b_hh's r, z parts)
        b = h_{t-1}·W_hhᵀ, b_n += b_hn            (W_hh [G·H, H], G = 3; b_hn may be absent)
        r = σ(a_r + b_r)   z = σ(a_z + b_z)   n = tanh(a_n + r⊙b_n)
        h_t = (1-z)⊙n + z⊙h_{t-1}

    Inactive rows keep their state; ``out`` is 0 at t ≥ L_b. Saves the activated gates
    (r, z, n) and ``hn_lin`` = b_n (the value r multiplies) as fp32 workspaces when SAVE.
    Variants: HD > 0, W_hh head-wise [G·H, HD]; ZH, h_t = ``cell.zoneout`` of h_{t-1} and the
    new value (``out`` and the state are the zoned h).
    """
    rmask, rows64, L, pid_h, nprog = program_tile(lens_ptr, B, T, HAS_LEN, BB)
    for it in range(0, n_steps):
        s, active, act2, t, cur = forward_step(s_first, it, L, rmask, REVERSE)
        h_cur, h_nxt = ping_pong(h_ptr, cur, B, H)
        g_row = (t * B + rows64) * (G * H)
        o_row = (t * B + rows64) * H
        for j in range(pid_h, (H + BH - 1) // BH, nprog):
            cols, cmask = tile_cols(j, H, BH)
            if HD > 0:
                acc_r, acc_z, acc_n, _ = head_gate_products(h_cur, rows64 * H, rmask, w_hh_ptr,
                                                            cols, cmask, j * BH, H, HD, G,
                                                            DOT_F32, BB, BH, BK)
            else:
                acc_r, acc_z, acc_n, _ = gate_products(h_cur, rows64 * H, rmask, w_hh_ptr, cols,
                                                       cmask, H, H, G, DOT_F32, BB, BH, BK)
            if HAS_BHN:
                acc_n += tl.load(b_hn_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            h_prev = load_tile(h_cur, rows64 * H, rmask, cols, cmask)
            r, z, n, h = gru_cell_fwd(load_tile(xp_ptr, g_row, rmask, cols, cmask),
                                      load_tile(xp_ptr, g_row + H, rmask, cols, cmask),
                                      load_tile(xp_ptr, g_row + 2 * H, rmask, cols, cmask),
                                      acc_r, acc_z, acc_n, h_prev)
            if ZH:
                h = zoneout(load_keep(keep_h_ptr, o_row, rmask, cols, cmask, ZH), h_prev, h)
            store_tile(h_nxt, rows64 * H, rmask, cols, cmask, tl.where(act2, h, h_prev))
            store_tile(out_ptr, o_row, rmask, cols, cmask, tl.where(act2, h, 0.0))
            if SAVE:
                store_tile(gates_ptr, g_row, active, cols, cmask, r)
                store_tile(gates_ptr, g_row + H, active, cols, cmask, z)
                store_tile(gates_ptr, g_row + 2 * H, active, cols, cmask, n)
                store_tile(hn_lin_ptr, o_row, active, cols, cmask, acc_n)
        phase_sync(sync_ptr, it, SYNC)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _gru_bwd_kernel(
        grad_out_ptr, grad_hn_ptr, h0_ptr, w_hh_ptr, lens_ptr, out_ptr, gates_ptr, hn_lin_ptr,
        dxp_ptr, dh0_ptr, dg_ptr, loc_ptr, keep_h_ptr, sync_ptr,
        s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SYNC: tl.constexpr, DOT_F32: tl.constexpr,
        G: tl.constexpr, HD: tl.constexpr, ZH: tl.constexpr,
        BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Steps s_first, s_first-1, ... of the reverse scan (T-1 .. 0, then -1 for dh0), carrying
    dh [B, H] in fp32::

        dh_t = carry + grad_out_t              (carry = grad_hn until the row's last step)
        dn = dh_t⊙(1-z)⊙(1-n²)   dz = dh_t⊙(h_{t-1}-n)⊙z(1-z)   dr = dn⊙b_n⊙r(1-r)
        carry ← [dr, dz, dn⊙r]·W_hh + dh_t⊙z   (rows active at s only)

    ``dxp`` = (dr, dz, dn), 0 at t ≥ L_b; dh0 = the carry after step 0. h_{t-1} is read back
    from ``out`` (h0 at s = 0), as the contract's saved tensors allow.
    Variants: HD > 0 carries through the head-wise W_hh (``cell.head_carry``); ZH: the cell
    sees (1-keep)⊙dh_t and keep⊙dh_t joins the local part that reaches h_{t-1}.
    """
    rmask, rows64, L, pid_h, nprog = program_tile(lens_ptr, B, T, HAS_LEN, BB)
    for it in range(0, n_steps):
        s, active, act2, t, act_next, nxt = backward_step(s_first, it, L, rmask, REVERSE)
        dg_next, dg_s = ping_pong(dg_ptr, nxt, B, G * H)
        loc_next, loc_s = ping_pong(loc_ptr, nxt, B, H)
        g_row = (t * B + rows64) * (G * H)
        o_row = (t * B + rows64) * H
        dg_row = rows64 * (G * H)
        for j in range(pid_h, (H + BH - 1) // BH, nprog):
            cols, cmask = tile_cols(j, H, BH)
            # The local part was written by this same program for the same tile last step.
            local = load_tile(loc_next, rows64 * H, act_next, cols, cmask)
            if HD > 0:
                carry = head_carry(dg_next, w_hh_ptr, grad_hn_ptr, local, act_next, rmask,
                                   rows64, cols, cmask, j * BH, H, HD, G, DOT_F32, BB, BH, BK)
            else:
                carry = recurrent_carry(dg_next, w_hh_ptr, grad_hn_ptr, local, act_next, rmask,
                                        rows64, cols, cmask, G * H, H, DOT_F32, BB, BH, BK)
            if s >= 0:
                dh_t = carry + load_tile(grad_out_ptr, o_row, rmask, cols, cmask)
                kept = 0.0
                if ZH:
                    kept, dh_t = zoneout_bwd(load_keep(keep_h_ptr, o_row, rmask, cols, cmask,
                                                       ZH), dh_t)
                r = load_tile(gates_ptr, g_row, active, cols, cmask)
                z = load_tile(gates_ptr, g_row + H, active, cols, cmask)
                n = load_tile(gates_ptr, g_row + 2 * H, active, cols, cmask)
                b_n = load_tile(hn_lin_ptr, o_row, active, cols, cmask)
                h_prev = previous_state(out_ptr, h0_ptr, s, t, active, rows64, B, H, cols, cmask,
                                        REVERSE)
                d_r, d_z, d_n, d_nr, loc = gru_cell_bwd(dh_t, r, z, n, b_n, h_prev)
                if ZH:
                    loc += kept
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


KERNELS = Kernels(CELLS["gru"], _gru_fwd_kernel, _gru_bwd_kernel,
                  backward_scratch=(Scratch("loc", copies=2),))
