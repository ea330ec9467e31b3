"""The ``resident`` strategy (issue 12): grid-persistent scans whose programs load their slice of
W_hh once, before the time loop, and keep it on chip for the whole sequence.

Ownership. Program (g, c) owns the batch rows g·BB .. g·BB+BB-1 and the hidden units
c·U .. c·U+U-1 with *every gate* of those units: ``reorder`` lays W_hh's rows out as
[unit][gate] (the gate count padded to G4, a power of two, with zero rows), so the program's
N = U·G4 rows are one contiguous [N, H] block. It is loaded into registers before the loop
(``aot.py`` reports the registers and spills of every build; the launcher picks U and the warps so
that the block is at most 64 registers a thread). The cell update of a unit needs no other
program's data, so c and the carried gradients stay in registers too.

Forward, step s (one grid barrier per step)::

    load xp_t of the own units                  (before the wait: not behind the barrier)
    wait until the group's programs wrote h_{s-1}
    acc [BB, N] = h_{s-1} [BB, H] · W_ownᵀ       (tl.dot; BB < 16: one GEMV per row, no padding)
    gates of the U units from acc; the cell; c in registers
    write h_s (own units, both its consumers read it from L2), out, the workspaces; arrive

Backward, step s (carries dh, dc of the own units in registers; one barrier per step)::

    wait until the group wrote its partials of step s+1
    dh_t = Σ_programs partial_{s+1}[own units] (+ the GRU's local dh⊙z) + grad_out_t
    dg (the own rows' gate gradients, ``cell.py``'s formulas); dxp_t = dg
    partial_s [BB, H] = dg [BB, N] · W_own: this program's share of dh_{t-1}; arrive

so the K = G·H reduction of dg·W_hh is spread over the programs (each multiplies only its own N
rows) and summed by the owners of the units after the barrier: there is no 4H-long serial loop.
The s = -1 pass only sums the partials of step 0 into dh0. dW_hh and dx stay one GEMM each after
the scan (the op's, as for every strategy).

The barrier (``tiles.grid_arrive`` / ``grid_wait``, the one of ``persistent-grid`` too) is a
monotonically growing int32 counter per batch group: arrive = CTA barrier, then one release
atomic add; wait = spin on an acquire *load* (inline PTX ``ld.acquire.gpu``, not an atomic
read-modify-write, so the spinning programs do not contend for the line the others are adding
to), with a timeout flag so a barrier that cannot complete makes the launcher raise. Launched
cooperatively (``plan.Plan.launch_options``), never with more programs than SMs.

Under ``TRITON_INTERPRET=1`` (programs run one after another) the same kernels run one step per
launch (SYNC=0: the launch boundary is the barrier) and carry their registers (c, dh, dc) through
global buffers between launches, so CI proves exactly this code on the CPU.

The LSTM with a projection: ``resident_proj.py`` (two phases and barriers a step, these
helpers). Not covered (the launcher uses the other strategies there): the recurrent variants.
``auto`` picks ``resident`` only where the GPU's measured plan names it (``bench/gpu.sh`` runs
``bench.plan``, which times it beside auto's strategy); force it with ``strategy("resident")``
or RNNKERNELS_TRITON_STRATEGY.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import plan as _plan
from .cell import gru_cell_bwd, gru_cell_fwd, lstm_cell_bwd, lstm_cell_fwd, mma, rnn_cell_bwd, \
    rnn_cell_fwd
from .tiles import (forward_step, grid_arrive, grid_wait, load_gates, load_tile, ping_pong,
                    previous_state, program_tile, step_schedule, store_gates, store_tile)

# ------------------------------------------------------------------------------ gate layout
@triton.jit
def _split_gates(acc, BB: tl.constexpr, U: tl.constexpr, G4: tl.constexpr):
    """[BB, U·G4] (row u·G4 + g) → the G4 gates as [BB, U] each (G4 = 1: acc itself)."""
    if G4 == 1:
        return acc, acc, acc, acc
    else:
        x0, x1 = tl.split(tl.reshape(acc, [BB, U, 2, 2]))   # g = 2i + j: x_j[..., i]
        g0, g2 = tl.split(x0)
        g1, g3 = tl.split(x1)
        return g0, g1, g2, g3


@triton.jit
def _join_gates(g0, g1, g2, g3, BB: tl.constexpr, U: tl.constexpr, G4: tl.constexpr):
    """The inverse of ``_split_gates``."""
    if G4 == 1:
        return g0
    else:
        return tl.reshape(tl.join(tl.join(g0, g2), tl.join(g1, g3)), [BB, U * G4])


# ------------------------------------------------------------------------------- products
@triton.jit
def _chunk_product(acc, h_cur, rows64, rmask, ks, kmask, w_t, B, K, DOT_F32: tl.constexpr,
                   BB: tl.constexpr):
    """acc [BB, N] + h[:, ks] · w_t, w_t [len(ks), N] (W_ownᵀ's rows ks). BB < 16 (tl.dot's
    minimum): one GEMV per row, so a batch of 1 does not pay for 16."""
    if BB >= 16:
        return mma(acc, load_tile(h_cur, rows64 * K, rmask, ks, kmask), w_t, DOT_F32)
    else:
        rid = tl.arange(0, BB)
        w32 = w_t.to(tl.float32)
        for r in tl.static_range(BB):
            row = tl.program_id(0) * BB + r
            h_r = tl.load(h_cur + row.to(tl.int64) * K + ks, mask=kmask & (ks * 0 + row < B),
                          other=0.0)
            acc_r = tl.sum(w32 * h_r.to(tl.float32)[:, None], axis=0)
            acc = tl.where(rid[:, None] == r, acc + acc_r[None, :], acc)
        return acc


@triton.jit
def _chunk_partial(part, dg, w, rows64, rmask, ks, kmask, B, K, DOT_F32: tl.constexpr,
                   BB: tl.constexpr, KC: tl.constexpr):
    """part[rows, ks] = dg [BB, N] · w, w [N, len(ks)] (W_own's columns ks)."""
    if BB >= 16:
        prod = mma(tl.zeros([BB, KC], tl.float32), dg, w, DOT_F32)
        store_tile(part, rows64 * K, rmask, ks, kmask, prod)
    else:
        rid = tl.arange(0, BB)
        w32 = w.to(tl.float32)
        for r in tl.static_range(BB):
            row = tl.program_id(0) * BB + r
            dg_r = tl.sum(tl.where(rid[:, None] == r, dg, 0.0), axis=0)
            tl.store(part + row.to(tl.int64) * K + ks, tl.sum(w32 * dg_r[:, None], axis=0),
                     mask=kmask & (ks * 0 + row < B))


@triton.jit
def _w_chunk(w, k0, K, TRANSPOSED: tl.constexpr, N: tl.constexpr, KC: tl.constexpr):
    """Columns k0 .. k0+KC of the program's W_own [N, K] (TRANSPOSED: as [KC, N]) from global
    memory, kept in the cache across steps (evict_last): the streamed form, for blocks too big
    for the registers."""
    ks = k0 + tl.arange(0, KC)
    kmask = ks < K
    n = tl.arange(0, N)
    if TRANSPOSED:
        return tl.load(w + n[None, :] * K + ks[:, None], mask=kmask[:, None], other=0.0,
                       eviction_policy="evict_last"), ks, kmask
    else:
        return tl.load(w + n[:, None] * K + ks[None, :], mask=kmask[None, :], other=0.0,
                       eviction_policy="evict_last"), ks, kmask


@triton.jit
def _gate_product(h_cur, rows64, rmask, w, ks, kmask, B, K, DOT_F32: tl.constexpr,
                  BB: tl.constexpr, N: tl.constexpr, KC: tl.constexpr, KP: tl.constexpr):
    """[BB, N] = h [BB, K] · W_ownᵀ: w is the resident W_ownᵀ [KP, N] (KC == KP) or, streamed,
    the block's address, read KC columns at a time."""
    acc = tl.zeros([BB, N], tl.float32)
    if KC == KP:
        acc = _chunk_product(acc, h_cur, rows64, rmask, ks, kmask, w, B, K, DOT_F32, BB)
    else:
        for k0 in range(0, K, KC):
            w_t, kc, km = _w_chunk(w, k0, K, True, N, KC)
            acc = _chunk_product(acc, h_cur, rows64, rmask, kc, km, w_t, B, K, DOT_F32, BB)
    return acc


@triton.jit
def _store_partial(part, dg, w, rows64, rmask, ks, kmask, B, K, DOT_F32: tl.constexpr,
                   BB: tl.constexpr, N: tl.constexpr, KC: tl.constexpr, KP: tl.constexpr):
    """part[rows] = dg [BB, N] · W_own [N, K]: this program's share of dh_{t-1} (all units);
    w resident [N, KP] or streamed, as in ``_gate_product``."""
    if KC == KP:
        _chunk_partial(part, dg, w, rows64, rmask, ks, kmask, B, K, DOT_F32, BB, KP)
    else:
        for k0 in range(0, K, KC):
            w_c, kc, km = _w_chunk(w, k0, K, False, N, KC)
            _chunk_partial(part, dg, w_c, rows64, rmask, kc, km, B, K, DOT_F32, BB, KC)


@triton.jit
def _sum_partials(part, nprog, rows64, mask, units, umask, B, W, BB: tl.constexpr,
                  U: tl.constexpr, RB: tl.constexpr):
    """Σ over the group's programs of their partials at the own units, RB programs a load."""
    acc = tl.zeros([BB, U], tl.float32)
    off = rows64[:, None] * W + units[None, :]
    m2 = mask[:, None] & umask[None, :]
    for p0 in range(0, nprog, RB):
        ps = p0 + tl.arange(0, RB)
        offs = (ps.to(tl.int64) * B * W)[:, None, None] + off[None, :, :]
        vals = tl.load(part + offs, mask=(ps < nprog)[:, None, None] & m2[None, :, :], other=0.0)
        acc += tl.sum(vals, axis=0)
    return acc


@triton.jit
def _block(w_ptr, pid, K, TRANSPOSED: tl.constexpr, N: tl.constexpr, KC: tl.constexpr,
           KP: tl.constexpr):
    """Program ``pid``'s block of a weight laid out [programs, N, K], and the K axis (padded
    to KP): loaded once, [KP, N] (TRANSPOSED: the operand of ``_gate_product``) or [N, KP]
    (of ``_store_partial``), when KC == KP; else its address (streamed KC columns at a time,
    ``_w_chunk``)."""
    ks = tl.arange(0, KP)
    kmask = ks < K
    n = tl.arange(0, N)
    w = w_ptr + pid.to(tl.int64) * N * K
    if KC == KP:
        if TRANSPOSED:
            w = tl.load(w + n[None, :] * K + ks[:, None], mask=kmask[:, None], other=0.0)
        else:
            w = tl.load(w + n[:, None] * K + ks[None, :], mask=kmask[None, :], other=0.0)
    return w, ks, kmask


@triton.jit
def _own_slice(w_ptr, lens_ptr, B, T, H, K, HAS_LEN: tl.constexpr, TRANSPOSED: tl.constexpr,
               BB: tl.constexpr, U: tl.constexpr, N: tl.constexpr, KC: tl.constexpr,
               KP: tl.constexpr):
    """The program's rows (``tiles.program_tile``), its units of H, and its block of the
    reordered W_hh [programs, N, K] (``_block``; K = H, or P with a projection)."""
    rmask, rows64, L, pid_c, nprog = program_tile(lens_ptr, B, T, HAS_LEN, BB)
    units = pid_c * U + tl.arange(0, U)
    w, ks, kmask = _block(w_ptr, pid_c, K, TRANSPOSED, N, KC, KP)
    return rmask, rows64, L, nprog, units, units < H, ks, kmask, w


@triton.jit
def _lstm_units_fwd(acc, x0, x1, x2, x3, c_own, act2, active, units, umask, g_row, c_row,
                    gates_ptr, cs_ptr, H, SAVE: tl.constexpr, BB: tl.constexpr,
                    U: tl.constexpr):
    """The LSTM cell of the own units from their gate products acc [BB, 4U] and xp_t: c (kept
    for the inactive rows), hh; saves the gates and c_t when SAVE."""
    a0, a1, a2, a3 = _split_gates(acc, BB, U, 4)
    i, f, u, o, c, hh = lstm_cell_fwd(x0 + a0, x1 + a1, x2 + a2, x3 + a3, c_own, 0.0, 0.0, 0.0,
                                      False)
    if SAVE:
        store_gates(gates_ptr, g_row, active, units, umask, H, i, f, u, o)
        store_tile(cs_ptr, c_row, active, units, umask, c)
    return tl.where(act2, c, c_own), hh


@triton.jit
def _lstm_units_bwd(dhh, dc_own, s, t, active, act2, rows64, units, umask, g_row, c_row,
                    gates_ptr, cs_ptr, c0_ptr, B, H, REVERSE: tl.constexpr):
    """The LSTM cell's gradient at the own units from dhh (of hh_t) and the carried dc: the
    four gate gradients and the new carry (kept for the inactive rows)."""
    i, f, u, o = load_gates(gates_ptr, g_row, active, units, umask, H)
    c = load_tile(cs_ptr, c_row, active, units, umask)
    c_prev = previous_state(cs_ptr, c0_ptr, s, t, active, rows64, B, H, units, umask, REVERSE)
    d0, d1, d2, d3, dc_prev = lstm_cell_bwd(dhh, dc_own, i, f, u, o, c, c_prev, 0.0, 0.0, 0.0,
                                            False)
    return d0, d1, d2, d3, tl.where(act2, dc_prev, dc_own)


_plan.interpreter_direct_calls(globals(), [
    "_split_gates", "_join_gates", "_chunk_product", "_chunk_partial", "_w_chunk",
    "_gate_product", "_store_partial", "_sum_partials", "_block", "_own_slice",
    "_lstm_units_fwd", "_lstm_units_bwd"])


# ------------------------------------------------------------------------------------ kernels
@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _resident_fwd_kernel(
        xp_ptr, w_ptr, b_hn_ptr, lens_ptr, out_ptr, gates_ptr, ws_ptr, h_ptr, c_ptr, sync_ptr,
        s_first, n_steps, T, B, H,
        CELL: tl.constexpr, RELU: tl.constexpr, HAS_BHN: tl.constexpr, HAS_LEN: tl.constexpr,
        REVERSE: tl.constexpr, SAVE: tl.constexpr, SYNC: tl.constexpr, DOT_F32: tl.constexpr,
        G: tl.constexpr, G4: tl.constexpr, BB: tl.constexpr, U: tl.constexpr,
        KC: tl.constexpr, KP: tl.constexpr):
    """Forward steps s_first .. s_first+n_steps-1 (the module docstring). CELL 0 LSTM, 1 GRU,
    2 RNN (RELU); the recurrence and the workspaces are the plain kernels' (``lstm.py``,
    ``gru.py``, ``rnn.py``): LSTM saves the gates and c_t (``ws``), GRU the gates and
    hn_lin = h·W_hnᵀ + b_hn (``ws``), RNN nothing."""
    rmask, rows64, L, nprog, units, umask, ks, kmask, w_t = _own_slice(
        w_ptr, lens_ptr, B, T, H, H, HAS_LEN, True, BB, U, U * G4, KC, KP)
    counter = sync_ptr + tl.program_id(0)
    first = (s_first % 2).to(tl.int64)
    h_own = load_tile(h_ptr + first * B * H, rows64 * H, rmask, units, umask)
    c_own = h_own
    if CELL == 0:
        c_own = load_tile(c_ptr + first * B * H, rows64 * H, rmask, units, umask)
    b_hn = 0.0
    if HAS_BHN:
        b_hn = tl.load(b_hn_ptr + units, mask=umask, other=0.0).to(tl.float32)[None, :]
    for it in range(0, n_steps):
        s, active, act2, t, cur = forward_step(s_first, it, L, rmask, REVERSE)
        h_cur, h_nxt = ping_pong(h_ptr, cur, B, H)
        g_row = (t * B + rows64) * (G * H)
        x0 = load_tile(xp_ptr, g_row, rmask, units, umask)
        x1 = x0
        x2 = x0
        x3 = x0
        if G > 1:
            x1 = load_tile(xp_ptr, g_row + H, rmask, units, umask)
            x2 = load_tile(xp_ptr, g_row + 2 * H, rmask, units, umask)
        if G > 3:
            x3 = load_tile(xp_ptr, g_row + 3 * H, rmask, units, umask)
        if SYNC == 2:
            if it > 0:
                grid_wait(counter, it * nprog, sync_ptr + tl.num_programs(0))
        acc = _gate_product(h_cur, rows64, rmask, w_t, ks, kmask, B, H, DOT_F32, BB, U * G4, KC,
                            KP)
        a0, a1, a2, a3 = _split_gates(acc, BB, U, G4)
        u_row = (t * B + rows64) * H
        if CELL == 0:
            c_own, h_new = _lstm_units_fwd(acc, x0, x1, x2, x3, c_own, act2, active, units,
                                           umask, g_row, u_row, gates_ptr, ws_ptr, H, SAVE, BB,
                                           U)
        elif CELL == 1:
            hn_lin = a2 + b_hn
            r, z, n, h_new = gru_cell_fwd(x0, x1, x2, a0, a1, hn_lin, h_own)
            if SAVE:
                store_tile(gates_ptr, g_row, active, units, umask, r)
                store_tile(gates_ptr, g_row + H, active, units, umask, z)
                store_tile(gates_ptr, g_row + 2 * H, active, units, umask, n)
                store_tile(ws_ptr, u_row, active, units, umask, hn_lin)
        else:
            h_new = rnn_cell_fwd(x0 + a0, RELU)
        h_own = tl.where(act2, h_new, h_own)
        store_tile(h_nxt, rows64 * H, rmask, units, umask, h_own)
        store_tile(out_ptr, u_row, rmask, units, umask, tl.where(act2, h_new, 0.0))
        if SYNC == 2:
            grid_arrive(counter)
    if CELL == 0:   # c left the registers only here: the half the next step (launch) reads
        last = ((s_first + n_steps) % 2).to(tl.int64)
        store_tile(c_ptr + last * B * H, rows64 * H, rmask, units, umask, c_own)


@triton.jit(do_not_specialize=["s_first", "n_steps", "T"])
def _resident_bwd_kernel(
        grad_out_ptr, h0_ptr, c0_ptr, w_ptr, lens_ptr, out_ptr, gates_ptr, ws_ptr, dxp_ptr,
        dh0_ptr, dh_ptr, dc_ptr, loc_ptr, part_ptr, sync_ptr,
        s_first, n_steps, T, B, H,
        CELL: tl.constexpr, RELU: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
        SYNC: tl.constexpr, DOT_F32: tl.constexpr, G: tl.constexpr, G4: tl.constexpr,
        BB: tl.constexpr, U: tl.constexpr, KC: tl.constexpr, KP: tl.constexpr,
        RB: tl.constexpr):
    """Backward steps s_first, s_first-1, ... down to -1 (the module docstring). Carries of the
    own units: dh (∂L/∂h entering the step; grad_hn until the row's last step), dc (LSTM),
    loc (GRU: dh⊙z, the part of ∂L/∂h_{t-1} that bypasses W_hh), kept in registers and in the
    buffers ``dh``, ``dc``, ``loc`` between launches. ``part`` [2, programs, B, H]: each
    program's dg·W_own by step parity."""
    rmask, rows64, L, nprog, units, umask, ks, kmask, w = _own_slice(
        w_ptr, lens_ptr, B, T, H, H, HAS_LEN, False, BB, U, U * G4, KC, KP)
    counter = sync_ptr + tl.program_id(0)
    pid_c = tl.program_id(1).to(tl.int64)
    dh_own = load_tile(dh_ptr, rows64 * H, rmask, units, umask)
    dc_own = dh_own
    loc_own = tl.zeros([BB, U], tl.float32)
    if CELL == 0:
        dc_own = load_tile(dc_ptr, rows64 * H, rmask, units, umask)
    if CELL == 1:
        loc_own = load_tile(loc_ptr, rows64 * H, rmask, units, umask)
    for it in range(0, n_steps):
        s = s_first - it
        active, t = step_schedule(s, L, rmask, REVERSE)
        act2 = active[:, None]
        act_next = ((s + 1) < L) & rmask
        if s < T - 1:
            if SYNC == 2:
                if it > 0:
                    grid_wait(counter, it * nprog, sync_ptr + tl.num_programs(0))
            par = ((s + 1) % 2).to(tl.int64)
            rec = _sum_partials(part_ptr + par * nprog * B * H, nprog, rows64, act_next, units,
                                umask, B, H, BB, U, RB)
            dh_own = tl.where(act_next[:, None], rec + loc_own, dh_own)
        if s >= 0:
            u_row = (t * B + rows64) * H
            g_row = (t * B + rows64) * (G * H)
            dh_t = dh_own + load_tile(grad_out_ptr, u_row, rmask, units, umask)
            if CELL == 0:
                d0, d1, d2, d3, dc_own = _lstm_units_bwd(dh_t, dc_own, s, t, active, act2,
                                                         rows64, units, umask, g_row, u_row,
                                                         gates_ptr, ws_ptr, c0_ptr, B, H,
                                                         REVERSE)
                r0, r1, r2, r3 = d0, d1, d2, d3
            elif CELL == 1:
                r = load_tile(gates_ptr, g_row, active, units, umask)
                z = load_tile(gates_ptr, g_row + H, active, units, umask)
                n = load_tile(gates_ptr, g_row + 2 * H, active, units, umask)
                hn_lin = load_tile(ws_ptr, u_row, active, units, umask)
                h_prev = previous_state(out_ptr, h0_ptr, s, t, active, rows64, B, H, units,
                                        umask, REVERSE)
                d0, d1, d2, r2, loc_own = gru_cell_bwd(dh_t, r, z, n, hn_lin, h_prev)
                d3 = tl.zeros([BB, U], tl.float32)   # the padding gate: exact zeros, never NaN
                r0, r1, r3 = d0, d1, d3
            else:
                h = load_tile(out_ptr, u_row, active, units, umask)
                d0 = rnn_cell_bwd(dh_t, h, RELU)
                d1, d2, d3 = d0, d0, d0
                r0, r1, r2, r3 = d0, d0, d0, d0
            store_tile(dxp_ptr, g_row, rmask, units, umask, tl.where(act2, d0, 0.0))
            if G > 1:
                store_tile(dxp_ptr, g_row + H, rmask, units, umask, tl.where(act2, d1, 0.0))
                store_tile(dxp_ptr, g_row + 2 * H, rmask, units, umask, tl.where(act2, d2, 0.0))
            if G > 3:
                store_tile(dxp_ptr, g_row + 3 * H, rmask, units, umask, tl.where(act2, d3, 0.0))
            dg = tl.where(act2, _join_gates(r0, r1, r2, r3, BB, U, G4), 0.0)
            par = (s % 2).to(tl.int64)
            _store_partial(part_ptr + (par * nprog + pid_c) * B * H, dg, w, rows64, rmask, ks,
                           kmask, B, H, DOT_F32, BB, U * G4, KC, KP)
            if SYNC == 2:
                grid_arrive(counter)
        else:
            store_tile(dh0_ptr, rows64 * H, rmask, units, umask, dh_own)
    store_tile(dh_ptr, rows64 * H, rmask, units, umask, dh_own)
    if CELL == 0:
        store_tile(dc_ptr, rows64 * H, rmask, units, umask, dc_own)
    if CELL == 1:
        store_tile(loc_ptr, rows64 * H, rmask, units, umask, loc_own)
