"""The sLSTM's scan kernels (xLSTM), forward and backward: one program a head.

The math is ``cell.slstm_cell_fwd`` / ``cell.slstm_cell_bwd`` (the backward's derivation, through
the stabilizer m, is the latter's docstring); the op, its autograd and the entry ``scan`` are
``slstm.py``; the launcher is ``launch.py`` (``Kernels.head_programs``).

Why one program per head: W_hh is block diagonal in ``num_heads`` blocks [d, d] per gate, so the
heads never exchange anything. Each program (a batch tile × one head) loads its head's four
blocks once, keeps them and the states h, c, n, m in registers, and runs every step of the
sequence in one launch, with no barrier and no state round trip through memory (grid axis 1 is
the heads). Strategy ``step`` launches each step instead; the states then pass from launch to
launch through the launcher's ping-pong buffers. A head's width d is padded to DP, a power of two
≥ 16 (``tl.dot``'s minimum); padded units carry finite values and their weights are 0. Meant for
xLSTM's head widths (d up to 64-128: FlashRNN's head-wise shapes); with one head and a large H
the resident blocks outgrow the registers (it compiles and runs, spilling).

The forward saves the pre-activations (``gates`` [T,B,4H]) and the states after each step
(``states`` [T,B,3H]: c | n | m); the reverse scan recomputes the rest of a step from them and
the previous step's states. State and arithmetic in the ping-pong buffers' dtype: float32, or
float64 for a float64 scan (the interpreter's).
"""
from __future__ import annotations

import dataclasses

import triton
import triton.language as tl

from ...cells import SLSTM
from . import plan as _plan
from .cell import mma, slstm_cell_bwd, slstm_cell_fwd
from .launch import Kernels
from .tiles import (backward_step, forward_step, ping_pong, prev_time, program_tile,
                    store_gates, store_tile)


@triton.jit
def _load(ptr, row_off, rmask, cols, cmask, like_ptr):
    """Tile ptr[row_off[r] + cols[c]] (0 where masked) in the element type of ``like_ptr``
    (the state's: fp32, or fp64 for a float64 scan)."""
    offs = row_off[:, None] + cols[None, :]
    x = tl.load(ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0)
    return x.to(like_ptr.dtype.element_ty)


@triton.jit
def _block(w_ptr, g, hd, H, D, DP: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Gate g's [d, d] block of head hd, padded to [DP, DP] with zeros: W[u, v] =
    w_ptr[(g·H + hd·D + u)·D + v], the weight from unit v to unit u of the head (rnnkernels'
    head-wise layout); TRANSPOSED: indexed [v, u], the operand of h·Wᵀ."""
    r = tl.arange(0, DP)
    if TRANSPOSED:
        u = r[None, :]
        v = r[:, None]
    else:
        u = r[:, None]
        v = r[None, :]
    offs = (g * H + hd * D + u).to(tl.int64) * D + v
    return tl.load(w_ptr + offs, mask=(u < D) & (v < D), other=0.0)


@triton.jit
def _blocks(w_ptr, hd, H, D, DP: tl.constexpr, TRANSPOSED: tl.constexpr):
    """The four gates' blocks (i, f, z, o) of head hd, as ``_block``."""
    return (_block(w_ptr, 0, hd, H, D, DP, TRANSPOSED), _block(w_ptr, 1, hd, H, D, DP, TRANSPOSED),
            _block(w_ptr, 2, hd, H, D, DP, TRANSPOSED), _block(w_ptr, 3, hd, H, D, DP, TRANSPOSED))


@triton.jit
def _previous(states_ptr, init_ptr, s, t, active, rows64, B, H, k, cols, cmask, like_ptr,
              REVERSE: tl.constexpr):
    """State k (0 c, 1 n, 2 m) before step s: the saved state of the previous step ([T,B,3H],
    time order), or the initial state at s = 0."""
    first = (t * 0 + s) == 0
    later = (t * 0 + s) > 0
    tp = prev_time(t, REVERSE)
    saved = _load(states_ptr + k * H, (tp * B + rows64) * (3 * H), active & later, cols, cmask,
                  like_ptr)
    init = _load(init_ptr, rows64 * H, active & first, cols, cmask, like_ptr)
    return tl.where(first[:, None], init, saved)


_plan.interpreter_direct_calls(globals(), ["_load", "_block", "_blocks", "_previous"])


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _slstm_fwd_kernel(
        xp_ptr, w_hh_ptr, lens_ptr, out_ptr, gates_ptr, states_ptr, h_ptr, c_ptr, n_ptr, m_ptr,
        sync_ptr, s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr, NH: tl.constexpr, DP: tl.constexpr, BB: tl.constexpr):
    """Steps s_first .. s_first+n_steps-1 of the forward scan for this program's batch rows and
    heads (row b active iff s < L_b, time index t = s or L_b-1-s in reverse)::

        ĩ, f̃, z̃, õ = xp_t + h_{t-1}·W_hhᵀ          (head-wise: the head's own blocks only)
        h_t, c_t, n_t, m_t = cell.slstm_cell_fwd(ĩ, f̃, z̃, õ, c_{t-1}, n_{t-1}, m_{t-1})

    The states live in registers; they enter from half s_first % 2 of the ping-pong buffers and
    leave into half (s_first + n_steps) % 2. Inactive rows keep their states; ``out`` is 0 at
    t ≥ L_b. SAVE: the pre-activations → ``gates``, (c_t, n_t, m_t) → ``states`` (time order).
    """
    rmask, rows64, L, pid_h, nprog = program_tile(lens_ptr, B, T, HAS_LEN, BB)
    D = H // NH
    for hd in range(pid_h, NH, nprog):
        u = tl.arange(0, DP)
        umask = u < D
        cols = hd * D + u
        w_i, w_f, w_z, w_o = _blocks(w_hh_ptr, hd, H, D, DP, True)
        p_in = s_first % 2
        h = _load(ping_pong(h_ptr, p_in, B, H)[0], rows64 * H, rmask, cols, umask, h_ptr)
        c = _load(ping_pong(c_ptr, p_in, B, H)[0], rows64 * H, rmask, cols, umask, h_ptr)
        n = _load(ping_pong(n_ptr, p_in, B, H)[0], rows64 * H, rmask, cols, umask, h_ptr)
        m = _load(ping_pong(m_ptr, p_in, B, H)[0], rows64 * H, rmask, cols, umask, h_ptr)
        zero = tl.full([BB, DP], 0.0, h_ptr.dtype.element_ty)  # not h·0: h may be NaN
        for it in range(0, n_steps):
            s, active, act2, t, _ = forward_step(s_first, it, L, rmask, REVERSE)
            g_row = (t * B + rows64) * (4 * H)
            g_i = mma(zero, h, w_i, DOT_F32) + _load(xp_ptr, g_row, rmask, cols, umask, h_ptr)
            g_f = mma(zero, h, w_f, DOT_F32) + _load(xp_ptr, g_row + H, rmask, cols, umask,
                                                     h_ptr)
            g_z = mma(zero, h, w_z, DOT_F32) + _load(xp_ptr, g_row + 2 * H, rmask, cols, umask,
                                                     h_ptr)
            g_o = mma(zero, h, w_o, DOT_F32) + _load(xp_ptr, g_row + 3 * H, rmask, cols, umask,
                                                     h_ptr)
            h_new, c_new, n_new, m_new = slstm_cell_fwd(g_i, g_f, g_z, g_o, c, n, m)
            if SAVE:
                store_gates(gates_ptr, g_row, active, cols, umask, H, g_i, g_f, g_z, g_o)
                s_row = (t * B + rows64) * (3 * H)
                store_tile(states_ptr, s_row, active, cols, umask, c_new)
                store_tile(states_ptr, s_row + H, active, cols, umask, n_new)
                store_tile(states_ptr, s_row + 2 * H, active, cols, umask, m_new)
            # inactive rows have t = s ≥ L_b: exactly the position that must be 0
            store_tile(out_ptr, (t * B + rows64) * H, rmask, cols, umask,
                       tl.where(act2, h_new, 0.0))
            h = tl.where(act2, h_new, h)
            c = tl.where(act2, c_new, c)
            n = tl.where(act2, n_new, n)
            m = tl.where(act2, m_new, m)
        p_out = (s_first + n_steps) % 2
        store_tile(ping_pong(h_ptr, p_out, B, H)[0], rows64 * H, rmask, cols, umask, h)
        store_tile(ping_pong(c_ptr, p_out, B, H)[0], rows64 * H, rmask, cols, umask, c)
        store_tile(ping_pong(n_ptr, p_out, B, H)[0], rows64 * H, rmask, cols, umask, n)
        store_tile(ping_pong(m_ptr, p_out, B, H)[0], rows64 * H, rmask, cols, umask, m)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _slstm_bwd_kernel(
        grad_out_ptr, grad_hn_ptr, c0_ptr, n0_ptr, m0_ptr, w_hh_ptr, lens_ptr, gates_ptr,
        states_ptr, dxp_ptr, dh0_ptr, dg_ptr, dc_ptr, dn_ptr, dm_ptr, sync_ptr,
        s_first, n_steps, T, B, H,
        HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SYNC: tl.constexpr,
        DOT_F32: tl.constexpr, NH: tl.constexpr, DP: tl.constexpr, BB: tl.constexpr):
    """Steps s_first, s_first-1, ... of the reverse scan (T-1 .. 0, then -1, which only forms
    dh0), carrying dg (the pre-activations' gradient of step s+1) and dc, dn, dm::

        dh_t = dg_{s+1}·W_hh + grad_out_t      (dg_{s+1}·W_hh = grad_hn until the row's last step)
        dĩ, df̃, dz̃, dõ, dc, dn, dm ← cell.slstm_cell_bwd(dh_t, dc, dn, dm, step t's values)

    for active rows (inactive ones pass the carries unchanged and get dxp = 0). The carries
    enter from half (s_first+1) % 2 of their ping-pong buffers (the launcher put grad_cn,
    grad_nn, grad_mn in half T % 2) and leave into half max(s_last, 0) % 2, s_last the last step
    of this launch: half 0 after step 0, where the launcher reads dc0, dn0, dm0.
    """
    rmask, rows64, L, pid_h, nprog = program_tile(lens_ptr, B, T, HAS_LEN, BB)
    D = H // NH
    G4 = 4 * H
    for hd in range(pid_h, NH, nprog):
        u = tl.arange(0, DP)
        umask = u < D
        cols = hd * D + u
        w_i, w_f, w_z, w_o = _blocks(w_hh_ptr, hd, H, D, DP, False)
        p_in = (s_first + 1) % 2
        first_next = ((s_first + 1) < L) & rmask  # rows of dg_{s_first+1} that were written
        dg_in = ping_pong(dg_ptr, p_in, B, G4)[0]
        dg_i = _load(dg_in, rows64 * G4, first_next, cols, umask, dc_ptr)
        dg_f = _load(dg_in + H, rows64 * G4, first_next, cols, umask, dc_ptr)
        dg_z = _load(dg_in + 2 * H, rows64 * G4, first_next, cols, umask, dc_ptr)
        dg_o = _load(dg_in + 3 * H, rows64 * G4, first_next, cols, umask, dc_ptr)
        dc = _load(ping_pong(dc_ptr, p_in, B, H)[0], rows64 * H, rmask, cols, umask, dc_ptr)
        dn = _load(ping_pong(dn_ptr, p_in, B, H)[0], rows64 * H, rmask, cols, umask, dc_ptr)
        dm = _load(ping_pong(dm_ptr, p_in, B, H)[0], rows64 * H, rmask, cols, umask, dc_ptr)
        grad_hn = _load(grad_hn_ptr, rows64 * H, rmask, cols, umask, dc_ptr)
        zero = tl.full([BB, DP], 0.0, dc_ptr.dtype.element_ty)
        for it in range(0, n_steps):
            s, active, act2, t, act_next, _ = backward_step(s_first, it, L, rmask, REVERSE)
            carry = mma(mma(mma(mma(zero, dg_i, w_i, DOT_F32), dg_f, w_f, DOT_F32), dg_z, w_z,
                            DOT_F32), dg_o, w_o, DOT_F32)
            dh = tl.where(act_next[:, None], carry, grad_hn)
            if s >= 0:
                dh += _load(grad_out_ptr, (t * B + rows64) * H, rmask, cols, umask, dc_ptr)
                g_row = (t * B + rows64) * G4
                s_row = (t * B + rows64) * (3 * H)
                # lanes off (inactive rows, padded units) divide by n_t = 1 there, not 0/0, and
                # their dg must not reach the next product (NaN·0 is NaN)
                real = act2 & umask[None, :]
                d_i, d_f, d_z, d_o, dc_p, dn_p, dm_p = slstm_cell_bwd(
                    dh, dc, dn, dm,
                    _load(gates_ptr, g_row, active, cols, umask, dc_ptr),
                    _load(gates_ptr, g_row + H, active, cols, umask, dc_ptr),
                    _load(gates_ptr, g_row + 2 * H, active, cols, umask, dc_ptr),
                    _load(gates_ptr, g_row + 3 * H, active, cols, umask, dc_ptr),
                    _previous(states_ptr, c0_ptr, s, t, active, rows64, B, H, 0, cols, umask,
                              dc_ptr, REVERSE),
                    _previous(states_ptr, n0_ptr, s, t, active, rows64, B, H, 1, cols, umask,
                              dc_ptr, REVERSE),
                    _previous(states_ptr, m0_ptr, s, t, active, rows64, B, H, 2, cols, umask,
                              dc_ptr, REVERSE),
                    _load(states_ptr, s_row, active, cols, umask, dc_ptr),
                    tl.where(real, _load(states_ptr, s_row + H, active, cols, umask, dc_ptr),
                             1.0),
                    _load(states_ptr, s_row + 2 * H, active, cols, umask, dc_ptr))
                dg_i = tl.where(real, d_i, 0.0)
                dg_f = tl.where(real, d_f, 0.0)
                dg_z = tl.where(real, d_z, 0.0)
                dg_o = tl.where(real, d_o, 0.0)
                store_gates(dxp_ptr, g_row, rmask, cols, umask, H, dg_i, dg_f, dg_z, dg_o)
                dc = tl.where(act2, dc_p, dc)
                dn = tl.where(act2, dn_p, dn)
                dm = tl.where(act2, dm_p, dm)
            else:
                store_tile(dh0_ptr, rows64 * H, rmask, cols, umask, dh)
        p_out = tl.maximum(s_first - n_steps + 1, 0) % 2
        dg_out = ping_pong(dg_ptr, p_out, B, G4)[0]
        store_tile(dg_out, rows64 * G4, rmask, cols, umask, dg_i)
        store_tile(dg_out + H, rows64 * G4, rmask, cols, umask, dg_f)
        store_tile(dg_out + 2 * H, rows64 * G4, rmask, cols, umask, dg_z)
        store_tile(dg_out + 3 * H, rows64 * G4, rmask, cols, umask, dg_o)
        store_tile(ping_pong(dc_ptr, p_out, B, H)[0], rows64 * H, rmask, cols, umask, dc)
        store_tile(ping_pong(dn_ptr, p_out, B, H)[0], rows64 * H, rmask, cols, umask, dn)
        store_tile(ping_pong(dm_ptr, p_out, B, H)[0], rows64 * H, rmask, cols, umask, dm)


# The cell with the workspaces of these kernels (rnnkernels.cells.SLSTM lists none: the
# reference scan saves nothing itself).
CELL = dataclasses.replace(SLSTM, workspaces=(("gates", 4), ("states", 3)))
KERNELS = Kernels(CELL, _slstm_fwd_kernel, _slstm_bwd_kernel, head_programs=True)
