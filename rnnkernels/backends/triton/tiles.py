"""Scheduling and tile helpers shared by the scan kernels (no cell math here: see ``cell.py``).

* ``step_schedule``: which batch rows are active at step s and their time index
  (docs/BACKENDS.md: active iff s < L_b; t = s, or L_b-1-s in reverse). Inactive rows get
  t = s, the one step whose position (s ≥ L_b) must receive the exact zeros of ``out``/``dxp``,
  so every (t, b) position is written exactly once per scan.
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
def batch_tile(pid_b, len_ptr, B, T, HAS_LEN: tl.constexpr, BB: tl.constexpr):
    """The batch rows of program ``pid_b``: rows, their mask, int64 rows and lengths L (T when
    there are no lengths; clamped to T so a bad length can never index past the sequence)."""
    rows = pid_b * BB + tl.arange(0, BB)
    rmask = rows < B
    if HAS_LEN:
        L = tl.minimum(tl.load(len_ptr + rows, mask=rmask, other=0).to(tl.int64), T)
    else:
        L = tl.full([BB], 0, tl.int64) + T
    return rows, rmask, rows.to(tl.int64), L


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
def prev_time(t, REVERSE: tl.constexpr):
    """Time index of the previous step of the same sequence (meaningful for s > 0 only)."""
    if REVERSE:
        return t + 1
    else:
        return t - 1


@triton.jit
def phase_sync(sync_ptr, n_sync, SYNC: tl.constexpr):
    """Barrier number ``n_sync`` (0, 1, 2, ... in program order) between dependent phases.

    SYNC=0: nothing (one launch per phase: the launch boundary is the barrier).
    SYNC=1: ``__syncthreads``, which also makes this CTA's global writes visible to itself.
    SYNC=2: grid barrier of the programs that share this batch tile (grid axis 1), on the int32
    counter ``sync_ptr[program_id(0)]``. Arrive with a release atomic after a CTA barrier (so the
    writes of every thread are ordered before it), spin with acquire reads until all have arrived
    at this barrier (count (n_sync+1)·nprog: the counter is never reset, so there is no reset
    race), then a CTA barrier so no thread runs ahead of the spinning one. A spin that outlasts
    ``2**22`` polls (seconds; a phase takes micro- to milliseconds) means the programs are not
    co-resident: it sets the flag ``sync_ptr[num_programs(0)]`` and goes on, so the launcher
    raises instead of the GPU hanging.
    """
    if SYNC == 1:
        tl.debug_barrier()
    if SYNC == 2:
        counter = sync_ptr + tl.program_id(0)
        target = (n_sync + 1) * tl.num_programs(1)
        tl.debug_barrier()
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        polls = 0
        while (seen < target) & (polls < 4194304):
            seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
            polls += 1
        if seen < target:
            tl.atomic_xchg(sync_ptr + tl.num_programs(0), 1)
        tl.debug_barrier()


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
def recurrent_carry(dg_next, w_ptr, ghn_ptr, local, act_next, rmask, rows64, cols, cmask, GH, P,
                    DOT_F32: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Gradient of h entering step s, for the units ``cols`` (of P):

    dg_{s+1}·W_hh[:, cols] + local (GRU: dh_{s+1}⊙z_{s+1}; else 0) for rows active at step s+1,
    grad_hn for the others (the sequence has not started yet in the reverse scan). dg_next is
    [B, GH] fp32 and complete (written by the previous step); W_hh is [GH, P].
    Rows of dg_next of sequences inactive at s+1 (all of them at s = T-1, when the buffer was
    never written) are not even read, so no stale value enters the arithmetic.
    """
    acc = tl.full([BB, BH], 0.0, tl.float32)
    for k0 in range(0, GH, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < GH
        a = load_tile(dg_next, rows64 * GH, act_next, ks, kmask)
        acc = mma(acc, a, load_w(w_ptr, ks, kmask, cols, cmask, P, 1), DOT_F32)
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


_plan.interpreter_direct_calls(globals(), ["step_schedule", "prev_time", "phase_sync",
                                           "load_tile", "store_tile", "load_w", "recurrent_carry",
                                           "previous_state"])
