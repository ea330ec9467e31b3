"""Elman RNN (tanh / relu) scan kernels; ``launch.py`` runs them (``KERNELS``).

The recurrence and its gradient: the docstrings of ``_rnn_fwd_kernel`` and ``_rnn_bwd_kernel``.
One phase per step in both directions (tiles of H): forward = the tile of h_{t-1}·W_hhᵀ + xp +
act; backward = the tile of dpre_{s+1}·W_hh, then dpre_s for the same units (dpre
double-buffered by step parity in ``dg``; the last pass, s = -1, only forms dh0).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...cells import CELLS
from .cell import head_carry, head_gate_products, rnn_cell_bwd, rnn_cell_fwd
from .launch import Kernels
from .tiles import (backward_step, forward_step, load_tile, phase_sync, ping_pong, program_tile,
                    recurrent_carry, store_tile, tile_cols, tile_product)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _rnn_fwd_kernel(
        xp_ptr, w_hh_ptr, lens_ptr, out_ptr, h_ptr, sync_ptr,
        s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr, HD: tl.constexpr,
        BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Steps s_first .. s_first+n_steps-1 of the forward scan (row b active iff s < L_b, time
    index t = s or L_b-1-s in reverse)::

        h_t = act(xp_t + h_{t-1}·W_hhᵀ)      act = relu if RELU else tanh, W_hh [H, H] (G = 1)

    Inactive rows keep their state; ``out`` is 0 at t ≥ L_b. Nothing is saved: the derivative
    comes from ``out`` itself. HD > 0: W_hh is head-wise [H, HD] (``cell.head_gate_products``).
    """
    rmask, rows64, L, pid_h, nprog = program_tile(lens_ptr, B, T, HAS_LEN, BB)
    for it in range(0, n_steps):
        s, active, act2, t, cur = forward_step(s_first, it, L, rmask, REVERSE)
        h_cur, h_nxt = ping_pong(h_ptr, cur, B, H)
        o_row = (t * B + rows64) * H
        for j in range(pid_h, (H + BH - 1) // BH, nprog):
            cols, cmask = tile_cols(j, H, BH)
            if HD > 0:
                acc, _, _, _ = head_gate_products(h_cur, rows64 * H, rmask, w_hh_ptr, cols, cmask,
                                                  j * BH, H, HD, 1, DOT_F32, BB, BH, BK)
            else:
                acc = tile_product(h_cur, rows64 * H, rmask, w_hh_ptr, cols, cmask, H, 1, H,
                                   DOT_F32, BB, BH, BK)
            h = rnn_cell_fwd(acc + load_tile(xp_ptr, o_row, rmask, cols, cmask), RELU)
            h_prev = load_tile(h_cur, rows64 * H, rmask, cols, cmask)
            store_tile(h_nxt, rows64 * H, rmask, cols, cmask, tl.where(act2, h, h_prev))
            store_tile(out_ptr, o_row, rmask, cols, cmask, tl.where(act2, h, 0.0))
        phase_sync(sync_ptr, it, SYNC)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _rnn_bwd_kernel(
        grad_out_ptr, grad_hn_ptr, w_hh_ptr, lens_ptr, out_ptr, dxp_ptr, dh0_ptr, dg_ptr,
        sync_ptr,
        s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr, HD: tl.constexpr,
        BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Steps s_first, s_first-1, ... of the reverse scan (T-1 .. 0, then -1 for dh0), carrying
    dh [B, H] in fp32::

        dh_t = carry + grad_out_t              (carry = grad_hn until the row's last step)
        dpre = dh_t⊙(1-h_t²) (tanh) or dh_t⊙[h_t > 0] (relu)
        carry ← dpre·W_hh                      (rows active at s only)

    ``dxp`` = dpre (0 at t ≥ L_b); dh0 = the carry after step 0. HD > 0: the carry goes
    through the head-wise W_hh (``cell.head_carry``).
    """
    rmask, rows64, L, pid_h, nprog = program_tile(lens_ptr, B, T, HAS_LEN, BB)
    for it in range(0, n_steps):
        s, active, act2, t, act_next, nxt = backward_step(s_first, it, L, rmask, REVERSE)
        dg_next, dg_s = ping_pong(dg_ptr, nxt, B, H)
        o_row = (t * B + rows64) * H
        for j in range(pid_h, (H + BH - 1) // BH, nprog):
            cols, cmask = tile_cols(j, H, BH)
            if HD > 0:
                carry = head_carry(dg_next, w_hh_ptr, grad_hn_ptr, 0.0, act_next, rmask, rows64,
                                   cols, cmask, j * BH, H, HD, 1, DOT_F32, BB, BH, BK)
            else:
                carry = recurrent_carry(dg_next, w_hh_ptr, grad_hn_ptr, 0.0, act_next, rmask,
                                        rows64, cols, cmask, H, H, DOT_F32, BB, BH, BK)
            if s >= 0:
                dh_t = carry + load_tile(grad_out_ptr, o_row, rmask, cols, cmask)
                h = load_tile(out_ptr, o_row, active, cols, cmask)
                dpre = rnn_cell_bwd(dh_t, h, RELU)
                store_tile(dxp_ptr, o_row, rmask, cols, cmask, tl.where(act2, dpre, 0.0))
                store_tile(dg_s, rows64 * H, rmask, cols, cmask, dpre)
            else:
                store_tile(dh0_ptr, rows64 * H, rmask, cols, cmask, carry)
        phase_sync(sync_ptr, it, SYNC)


KERNELS = Kernels(CELLS["rnn"], _rnn_fwd_kernel, _rnn_bwd_kernel)
