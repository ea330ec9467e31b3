"""Scheduling and tile helpers shared by the scan kernels (no cell math here: see ``cell.py``).

Every kernel starts the same way: ``program_tile`` (its batch rows and its share of the hidden
tiles), then per step ``forward_step`` / ``backward_step`` (which rows are active, their time
index, the step parity) and ``ping_pong`` (the two halves of a [2, B, W] state buffer); then,
per hidden tile, ``tile_cols`` and the products ``gate_products`` / ``tile_product`` /
``recurrent_carry``. Only the cell math and the loads and stores around it differ per cell.

* Schedule (docs/BACKENDS.md): row b is active at step s iff s < L_b; its time index is t = s,
  or L_b-1-s in reverse. Inactive rows get t = s, the one step whose position (s ≥ L_b) must
  receive the exact zeros of ``out``/``dxp``, so every (t, b) position is written exactly once
  per scan.
* Ping-pong: a value one program writes at step s and another reads at step s+1 (the state,
  the carried gradients) lives in two halves chosen by step parity, so a phase never reads what
  the same phase writes.
* ``phase_sync``: the barrier between two dependent phases of a persistent kernel. SYNC=1 is a
  CTA barrier (the program owns its batch rows and every hidden unit); SYNC=2 is a grid barrier
  across the programs that share a batch tile (a monotonically increasing atomic counter;
  correct only while all of them are resident, which the launcher guarantees by never asking for
  more programs than SMs).
* ``load_tile`` / ``store_tile`` / ``load_w``: masked 2-D accesses with int64 offsets, because
  T·B·G·H can pass 2³¹ for long sequences.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import plan as _plan
from .cell import mma


@triton.jit
def program_tile(len_ptr, B, T, HAS_LEN: tl.constexpr, BB: tl.constexpr):
    """This program's batch rows (grid axis 0): mask, int64 rows and lengths L (T when there are
    no lengths; clamped to T so a bad length can never index past the sequence); and its share
    of the hidden tiles (grid axis 1): tiles pid_h, pid_h + nprog, ..."""
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    rmask = rows < B
    if HAS_LEN:
        L = tl.minimum(tl.load(len_ptr + rows, mask=rmask, other=0).to(tl.int64), T)
    else:
        L = tl.full([BB], 0, tl.int64) + T
    return rmask, rows.to(tl.int64), L, tl.program_id(1), tl.num_programs(1)


@triton.jit
def step_schedule(s, L, rmask, REVERSE: tl.constexpr):
    """(active [BB] bool, t [BB] int64) of step s for rows with lengths L (int64)."""
    active = (s < L) & rmask
    if REVERSE:
        t = tl.where(active, L - 1 - s, s)
    else:
        t = L * 0 + s  # s as int64 rows; tl.zeros_like is a slow nested call when interpreted
    return active, t


@triton.jit
def forward_step(s_first, it, L, rmask, REVERSE: tl.constexpr):
    """Iteration ``it`` of a forward launch is step s = s_first + it: s, the active rows (as
    [BB] and [BB, 1] masks), their time index t and the parity of s (the half of a ping-pong
    buffer that holds the state entering step s)."""
    s = s_first + it
    active, t = step_schedule(s, L, rmask, REVERSE)
    return s, active, active[:, None], t, (s % 2).to(tl.int64)


@triton.jit
def backward_step(s_first, it, L, rmask, REVERSE: tl.constexpr):
    """Iteration ``it`` of a backward launch is step s = s_first - it (T-1 .. 0, then -1: the
    pass that only forms dh0): s, the active rows, t as ``forward_step``, then the rows active
    at step s+1 and the parity of s+1 (≥ 0; its half holds the carry entering step s)."""
    s = s_first - it
    active, t = step_schedule(s, L, rmask, REVERSE)
    return s, active, active[:, None], t, ((s + 1) < L) & rmask, ((s + 1) % 2).to(tl.int64)


@triton.jit
def ping_pong(ptr, p, B, W):
    """Halves p and 1-p of a [2, B, W] buffer: (the one read at this step, the one written)."""
    return ptr + p * B * W, ptr + (1 - p) * B * W


@triton.jit
def tile_cols(j, W, BH: tl.constexpr):
    """Units (and their mask) of hidden tile j of a W-wide axis."""
    cols = j * BH + tl.arange(0, BH)
    return cols, cols < W


@triton.jit
def prev_time(t, REVERSE: tl.constexpr):
    """Time index of the previous step of the same sequence (meaningful for s > 0 only)."""
    if REVERSE:
        return t + 1
    else:
        return t - 1


@triton.jit
def grid_arrive(counter):
    """This program's writes of the phase are done: every thread's (CTA barrier), then published
    with one release add on the group's monotonically growing counter."""
    tl.debug_barrier()
    tl.atomic_add(counter, 1, sem="release", scope="gpu")


@triton.jit
def _load_acquire(counter):
    """counter[0] read with an acquire load (inline PTX: triton has no acquire load), so the
    spin does not contend, as an atomic read-modify-write would, for the line others add to."""
    return tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [counter],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def grid_wait(counter, target, flag):
    """Spin until ``counter`` reaches ``target`` (after which the writes the arrivals released
    are visible), then a CTA barrier so no thread runs ahead of the spinning one. A spin past
    2**22 polls (seconds; a phase takes micro- to milliseconds) means the programs are not
    co-resident: set ``flag`` and go on, so the launcher raises instead of the GPU hanging."""
    seen = _load_acquire(counter)
    polls = 0
    while (seen < target) & (polls < 4194304):
        seen = _load_acquire(counter)
        polls += 1
    if seen < target:
        tl.atomic_xchg(flag, 1)
    tl.debug_barrier()


@triton.jit
def phase_sync(sync_ptr, n_sync, SYNC: tl.constexpr):
    """Barrier number ``n_sync`` (0, 1, 2, ... in program order) between dependent phases.

    SYNC=0: nothing (one launch per phase: the launch boundary is the barrier).
    SYNC=1: ``__syncthreads``, which also makes this CTA's global writes visible to itself.
    SYNC=2: grid barrier of the programs that share this batch tile (grid axis 1), on the int32
    counter ``sync_ptr[program_id(0)]`` (``grid_arrive`` / ``grid_wait``): all have arrived at
    this barrier when it reads (n_sync+1)·nprog (the counter is never reset, so there is no reset
    race); the timeout flag is ``sync_ptr[num_programs(0)]``.
    """
    if SYNC == 1:
        tl.debug_barrier()
    if SYNC == 2:
        counter = sync_ptr + tl.program_id(0)
        grid_arrive(counter)
        grid_wait(counter, (n_sync + 1) * tl.num_programs(1), sync_ptr + tl.num_programs(0))


@triton.jit
def load_gates(ptr, g_row, rmask, cols, cmask, H):
    """The four gate blocks of a [.., 4H] row (the LSTM's and sLSTM's i, f, g/z, o), fp32:
    ``load_tile`` at g_row + q·H, q = 0..3."""
    return (load_tile(ptr, g_row, rmask, cols, cmask),
            load_tile(ptr, g_row + H, rmask, cols, cmask),
            load_tile(ptr, g_row + 2 * H, rmask, cols, cmask),
            load_tile(ptr, g_row + 3 * H, rmask, cols, cmask))


@triton.jit
def store_gates(ptr, g_row, rmask, cols, cmask, H, g0, g1, g2, g3):
    """``load_gates``' inverse: g_q at g_row + q·H."""
    store_tile(ptr, g_row, rmask, cols, cmask, g0)
    store_tile(ptr, g_row + H, rmask, cols, cmask, g1)
    store_tile(ptr, g_row + 2 * H, rmask, cols, cmask, g2)
    store_tile(ptr, g_row + 3 * H, rmask, cols, cmask, g3)


@triton.jit
def load_tile(ptr, row_off, rmask, cols, cmask):
    """fp32 tile ptr[row_off[r] + cols[c]] (0 where masked)."""
    offs = row_off[:, None] + cols[None, :]
    return tl.load(ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def store_tile(ptr, row_off, rmask, cols, cmask, value):
    offs = row_off[:, None] + cols[None, :]
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def load_w(ptr, ks, kmask, cols, cmask, stride_k, stride_n):
    """Weight tile [BK, BN] = ptr[ks·stride_k + cols·stride_n] in the weights' own dtype."""
    offs = ks.to(tl.int64)[:, None] * stride_k + cols.to(tl.int64)[None, :] * stride_n
    return tl.load(ptr + offs, mask=kmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def tile_product(a_ptr, a_row, amask, w_ptr, cols, cmask, K, stride_k, stride_n,
                 DOT_F32: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """a·W for the units ``cols``: a [B, K] at rows ``a_row`` (rows off ``amask`` read as 0),
    W[k, n] = w_ptr[k·stride_k + n·stride_n]; fp32, summed over K in chunks of BK."""
    acc = tl.full([BB, BH], 0.0, tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        a = load_tile(a_ptr, a_row, amask, ks, kmask)
        acc = mma(acc, a, load_w(w_ptr, ks, kmask, cols, cmask, stride_k, stride_n), DOT_F32)
    return acc


@triton.jit
def gate_products(x_ptr, x_row, rmask, w_ptr, cols, cmask, H, K, G: tl.constexpr,
                  DOT_F32: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """x·W_gᵀ for the units ``cols`` of every gate g < G (G ≤ 4; the others come back as 0):
    x [B, K] at rows ``x_row``, W [G·H, K] (gate g in rows g·H..). One pass over K, so a chunk
    of x is loaded once for all the gates."""
    n_i = cols.to(tl.int64)
    acc_0 = tl.full([BB, BH], 0.0, tl.float32)
    acc_1 = tl.full([BB, BH], 0.0, tl.float32)
    acc_2 = tl.full([BB, BH], 0.0, tl.float32)
    acc_3 = tl.full([BB, BH], 0.0, tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        xk = load_tile(x_ptr, x_row, rmask, ks, kmask)
        acc_0 = mma(acc_0, xk, load_w(w_ptr, ks, kmask, n_i, cmask, 1, K), DOT_F32)
        if G > 1:
            acc_1 = mma(acc_1, xk, load_w(w_ptr, ks, kmask, n_i + H, cmask, 1, K), DOT_F32)
        if G > 2:
            acc_2 = mma(acc_2, xk, load_w(w_ptr, ks, kmask, n_i + 2 * H, cmask, 1, K), DOT_F32)
        if G > 3:
            acc_3 = mma(acc_3, xk, load_w(w_ptr, ks, kmask, n_i + 3 * H, cmask, 1, K), DOT_F32)
    return acc_0, acc_1, acc_2, acc_3


@triton.jit
def recurrent_carry(dg_next, w_ptr, ghn_ptr, local, act_next, rmask, rows64, cols, cmask, GH, P,
                    DOT_F32: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Gradient of h entering step s, for the units ``cols`` (of P):

    dg_{s+1}·W_hh[:, cols] + local (GRU: dh_{s+1}⊙z_{s+1}; else 0) for rows active at step s+1,
    grad_hn for the others (the sequence has not started yet in the reverse scan). dg_next is
    [B, GH] fp32 and complete (written by the previous step); W_hh is [GH, P].
    Rows of dg_next of sequences inactive at s+1 (all of them at s = T-1, when the buffer was
    never written) are not even read, so no stale value enters the arithmetic.
    """
    acc = tile_product(dg_next, rows64 * GH, act_next, w_ptr, cols, cmask, GH, P, 1,
                       DOT_F32, BB, BH, BK)
    ghn = load_tile(ghn_ptr, rows64 * P, rmask, cols, cmask)
    return tl.where(act_next[:, None], acc + local, ghn)


@triton.jit
def previous_state(seq_ptr, init_ptr, s, t, active, rows64, B, W, cols, cmask,
                   REVERSE: tl.constexpr):
    """State before step s for active rows: seq[t_prev] ([T, B, W], time order) or init at s=0."""
    first = (t * 0 + s) == 0
    later = (t * 0 + s) > 0
    tp = prev_time(t, REVERSE)
    from_seq = load_tile(seq_ptr, (tp * B + rows64) * W, active & later, cols, cmask)
    from_init = load_tile(init_ptr, rows64 * W, active & first, cols, cmask)
    return tl.where(first[:, None], from_init, from_seq)


_plan.interpreter_direct_calls(globals(), [
    "program_tile", "step_schedule", "forward_step", "backward_step", "ping_pong", "tile_cols",
    "prev_time", "grid_arrive", "grid_wait", "phase_sync", "load_tile", "store_tile", "load_gates",
    "store_gates", "load_w", "tile_product",
    "gate_products", "recurrent_carry", "previous_state"])
