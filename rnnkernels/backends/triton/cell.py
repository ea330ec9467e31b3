"""Gate math of the three cells as ``@triton.jit`` helpers: the one place each formula lives.

Every forward and backward kernel of this package (``lstm.py``, ``gru.py``, ``rnn.py``,
``slstm_kernels.py``) calls these helpers on fp32 register tiles (fp64 in a float64 sLSTM under
the interpreter); none spells a cell formula itself. The C++/CUDA twin is
``csrc/include/rnnkernels/cell_math.h`` (same function names); the oracle
``rnnkernels/backends/reference.py`` is written independently so that it can catch a mistake both
share.

Forward (torch's definitions, gate order LSTM i,f,g,o and GRU r,z,n):

* LSTM: i=σ(g_i) f=σ(g_f) u=tanh(g_g) o=σ(g_o); c = f⊙c₋ + i⊙u; hh = o⊙tanh(c)
* GRU:  r=σ(a_r+b_r) z=σ(a_z+b_z) n=tanh(a_n + r⊙b_n); h = (1-z)⊙n + z⊙h₋
  (a = the input projection xp_t, b = h₋·W_hhᵀ with b_hn already added to b_n)
* RNN:  h = tanh(pre) or relu(pre)

Backward, from the *activated* values the forward saved (σ' = σ(1-σ), tanh' = 1-tanh²):

* LSTM: dc = dc₊ + dhh⊙o⊙(1-tanh²c); di = dc⊙u⊙i(1-i); df = dc⊙c₋⊙f(1-f);
  du = dc⊙i⊙(1-u²); do = dhh⊙tanh(c)⊙o(1-o); dc₋ (local part) = dc⊙f
* GRU:  dn = dh⊙(1-z)⊙(1-n²) (gradient of a_n + r⊙b_n); dz = dh⊙(h₋-n)⊙z(1-z);
  dr = dn⊙b_n⊙r(1-r); the recurrent GEMM sees dn⊙r for the n block;
  dh₋ (local part) = dh⊙z
* RNN:  dpre = dh⊙(1-h²) (tanh) or dh⊙[h>0] (relu: 0 only where h <= 0, so NaN passes)
* sLSTM (xLSTM; ``rnnkernels/slstm.py``): ``slstm_cell_fwd`` / ``slstm_cell_bwd``, the state
  (c, n, m) and its gradient through the stabilizer m, as autograd takes it through ``slstm.step``

Variants (docs/VARIANTS.md), options of the same helpers:

* peephole (LSTM, PEEP): g_i += w_ci⊙c₋, g_f += w_cf⊙c₋, g_o += w_co⊙c; backward
  dc += do⊙w_co (before di, df, du), dc₋ (local) += di⊙w_ci + df⊙w_cf;
* zoneout: s = keep⊙s₋ + (1-keep)⊙s̃ (``zoneout``); backward keep⊙ds reaches s₋ directly and
  (1-keep)⊙ds is the candidate's gradient (``zoneout_bwd``);
* head-wise W_hh [G·H, d]: ``head_gate_products`` / ``head_carry`` read only the heads of a tile.

``mma`` is the one place that decides how a recurrent tile product is computed (see its
docstring): fp32 with ``input_precision="ieee"`` so float32 results match cuDNN/ATen with TF32 off,
and half types on the tensor cores with fp32 accumulation.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import plan as _plan


@triton.jit
def sigmoid(x):
    # exp(-x) overflows to inf for x << 0 and 1/(1+inf) = 0 is the right limit, so no branch.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # tanh(x) = sign(x)·(1-e)/(1+e) with e = exp(-2|x|) ∈ (0, 1]: never overflows, and is odd
    # exactly. Absolute error ~1 ulp of 1 near 0, like the cuDNN/ATen fast paths.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def mma(acc, a, b, DOT_F32: tl.constexpr):
    """acc + a @ b for register tiles a [M, K] (fp32 state) and b [K, N] (weights).

    DOT_F32 (``plan.dot_f32``): 1 = both operands in fp32, ``input_precision="ieee"`` (no TF32),
    used for float32 and, under ``TRITON_INTERPRET=1``, for bfloat16, because the interpreter's
    bf16 ``tl.dot`` returns garbage (triton 3.9; the GPU bf16 path is covered by a CUDA-only
    test); 2 = fp32 operands as TF32 on the tensor cores, where torch's float32 matmul precision
    allows TF32; 0 = ``a`` rounded to the weights' half type and the product on the tensor cores,
    accumulating in fp32 (as cuDNN does for half RNNs).
    """
    if DOT_F32 == 2:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="tf32")
    elif DOT_F32 == 1:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a.to(b.dtype), b, acc)


# ----------------------------------------------------------------------------------------- LSTM
@triton.jit
def lstm_cell_state(i, f, u, c_prev):
    """c = f⊙c₋ + i⊙u (also what the backward recomputes when zoneout saved the zoned state)."""
    return f * c_prev + i * u


@triton.jit
def lstm_cell_fwd(g_i, g_f, g_g, g_o, c_prev, w_ci, w_cf, w_co, PEEP: tl.constexpr):
    """Pre-activations and c₋ → activated gates (i, f, u, o), c and hh = o⊙tanh(c).

    PEEP (peephole LSTM): i and f also see w_ci⊙c₋, w_cf⊙c₋ and o sees w_co⊙c (the new c);
    without it the w_c* are not read."""
    if PEEP:
        g_i = g_i + w_ci * c_prev
        g_f = g_f + w_cf * c_prev
    i = sigmoid(g_i)
    f = sigmoid(g_f)
    u = tanh(g_g)
    c = lstm_cell_state(i, f, u, c_prev)
    if PEEP:
        g_o = g_o + w_co * c
    o = sigmoid(g_o)
    hh = o * tanh(c)
    return i, f, u, o, c, hh


@triton.jit
def lstm_cell_bwd(dhh, dc_next, i, f, u, o, c, c_prev, w_ci, w_cf, w_co, PEEP: tl.constexpr):
    """Gradients of the four pre-activations and the local carry dc₋ = dc⊙f.

    dhh: gradient of hh_t (before the projection); dc_next: the carried gradient of c_t.
    PEEP: c also reaches hh through o (dc += do⊙w_co) and c₋ reaches i and f
    (dc₋ += di⊙w_ci + df⊙w_cf); dweight_ch is the op's reduction of (di, df)⊙c₋ and do⊙c.
    """
    tc = tanh(c)
    d_o = dhh * tc * o * (1.0 - o)
    dc = dc_next + dhh * o * (1.0 - tc * tc)
    if PEEP:
        dc = dc + d_o * w_co
    d_i = dc * u * i * (1.0 - i)
    d_f = dc * c_prev * f * (1.0 - f)
    d_u = dc * i * (1.0 - u * u)
    dc_prev = dc * f
    if PEEP:
        dc_prev = dc_prev + d_i * w_ci + d_f * w_cf
    return d_i, d_f, d_u, d_o, dc_prev


# ---------------------------------------------------------------------------------------- sLSTM
@triton.jit
def log_sigmoid(x):
    """log σ(x) = min(x, 0) - log(1 + exp(-|x|)): the exp never overflows; NaN passes."""
    return tl.where(x < 0, x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def clamp_max0(x):
    """torch's clamp(x, max=0): NaN passes (NaN > 0 is false)."""
    return tl.where(x > 0, 0.0, x)


@triton.jit
def slstm_cell_fwd(g_i, g_f, g_z, g_o, c, n, m):
    """Pre-activations ĩ, f̃, z̃, õ and the states (c, n, m) → (h, c, n, m) of the step, exactly
    ``rnnkernels.slstm.step`` (its docstring has the equations): the first-step rule per element
    (m = ĩ where n == 0), the clips as exp(min(·, 0)), torch.maximum's NaN propagation."""
    lf = m + log_sigmoid(g_f)
    m_new = tl.where(n == 0, g_i, tl.maximum(g_i, lf, propagate_nan=tl.PropagateNan.ALL))
    i = tl.exp(clamp_max0(g_i - m_new))
    f = tl.exp(clamp_max0(lf - m_new))
    c_new = f * c + i * tanh(g_z)
    n_new = f * n + i
    return sigmoid(g_o) * c_new / n_new, c_new, n_new, m_new


@triton.jit
def slstm_cell_bwd(dh, dc_next, dn_next, dm_next, g_i, g_f, g_z, g_o, c, n, m, c_new, n_new,
                   m_new):
    """Gradients of the pre-activations and the previous states, exactly autograd's through
    ``slstm.step`` (dh, dc_next, dn_next, dm_next: of the step's h, c, n, m)::

        lf = m + log σ(f̃);  a_i = ĩ - m_t, a_f = lf - m_t;  i = e^min(a_i,0), f = e^min(a_f,0)
        h = (σ(õ)·c_t)/n_t:  dõ = dh/n_t·c_t·σ'(õ);  dc = dc_next + dh/n_t·σ(õ);
                             dn = dn_next - dh·σ(õ)c_t/n_t²
        dz̃ = dc·i·(1-tanh²z̃);  di = dc·tanh z̃ + dn;  df = dc·c₋ + dn·n₋
        ga_i = di·i·[a_i ≤ 0],  ga_f = df·f·[a_f ≤ 0]   (exp, then clamp(max=0): its gradient
                                                         passes at exactly 0, not at NaN)
        dm_t = dm_next - ga_i - ga_f                   (m_t enters a_i and a_f with sign -1)
        m_t = where(n₋ == 0, ĩ, max(ĩ, lf)): where gives the unselected branch 0; torch.maximum
              splits dm_t half/half where ĩ == lf, else all to the larger (both where NaN)
        dĩ = ga_i + (dm_t if n₋ == 0 else dm_t·[ĩ ≥ lf]·(½ if equal))
        dlf = ga_f + (0 if n₋ == 0 else dm_t·[lf ≥ ĩ]·(½ if equal))
        df̃ = dlf·σ(-f̃) (d log σ);  dc₋ = dc·f,  dn₋ = dn·f,  dm₋ = dlf
    """
    lf = m + log_sigmoid(g_f)
    a_i = g_i - m_new
    a_f = lf - m_new
    i = tl.exp(clamp_max0(a_i))
    f = tl.exp(clamp_max0(a_f))
    tz = tanh(g_z)
    o = sigmoid(g_o)
    dq = dh / n_new
    d_o = dq * c_new * o * (1.0 - o)
    dc = dc_next + dq * o
    dn = dn_next - dh * (o * c_new) / (n_new * n_new)
    d_z = dc * i * (1.0 - tz * tz)
    ga_i = tl.where(a_i <= 0, (dc * tz + dn) * i, 0.0)
    ga_f = tl.where(a_f <= 0, (dc * c + dn * n) * f, 0.0)
    dm = dm_next - ga_i - ga_f
    fresh = n == 0
    tie = g_i == lf
    to_i = tl.where(tie, dm * 0.5, tl.where(g_i < lf, 0.0, dm))
    to_f = tl.where(tie, dm * 0.5, tl.where(g_i > lf, 0.0, dm))
    d_i = ga_i + tl.where(fresh, dm, to_i)
    dlf = ga_f + tl.where(fresh, 0.0, to_f)
    return d_i, dlf * sigmoid(-g_f), d_z, d_o, dc * f, dn * f, dlf


# ------------------------------------------------------------------------------------------ GRU
@triton.jit
def gru_cell_fwd(a_r, a_z, a_n, b_r, b_z, b_n, h_prev):
    """a = xp_t parts, b = h₋·W_hhᵀ parts (b_n including b_hn) → r, z, n and the new h."""
    r = sigmoid(a_r + b_r)
    z = sigmoid(a_z + b_z)
    n = tanh(a_n + r * b_n)
    h = (1.0 - z) * n + z * h_prev
    return r, z, n, h


@triton.jit
def gru_cell_bwd(dh, r, z, n, b_n, h_prev):
    """dh of h_t → (dr, dz, dn) of the pre-activations (dn: of a_n, i.e. also of a_n + r⊙b_n),
    dn⊙r (what the recurrent GEMM and db_hn see for the n block) and the local carry dh⊙z."""
    d_n = dh * (1.0 - z) * (1.0 - n * n)
    d_z = dh * (h_prev - n) * z * (1.0 - z)
    d_r = d_n * b_n * r * (1.0 - r)
    return d_r, d_z, d_n, d_n * r, dh * z


# ------------------------------------------------------------------------------------------ RNN
@triton.jit
def rnn_cell_fwd(pre, RELU: tl.constexpr):
    if RELU:
        # torch's relu propagates NaN (a diverged model must not look healthy): NaN < 0 is
        # false, so NaN passes; max(NaN, 0) may not.
        return tl.where(pre < 0.0, 0.0, pre)
    else:
        return tanh(pre)


@triton.jit
def rnn_cell_bwd(dh, h, RELU: tl.constexpr):
    """Gradient of the pre-activation from the output h (relu' = [h > 0], tanh' = 1-h²).

    relu': torch's threshold_backward zeroes where h <= 0, so at h = NaN the gradient passes."""
    if RELU:
        return tl.where(h <= 0.0, 0.0, dh)
    else:
        return dh * (1.0 - h * h)


# ------------------------------------------------------------------------------------- zoneout
@triton.jit
def zoneout(keep, previous, candidate):
    """A state's new value under zoneout: keep⊙previous + (1-keep)⊙candidate (keep: the 0/1
    mask in training, the probability p in eval)."""
    return keep * previous + (1.0 - keep) * candidate


@triton.jit
def zoneout_bwd(keep, d):
    """Gradient d of the zoned state → (its share for the previous state, for the candidate)."""
    return keep * d, (1.0 - keep) * d


@triton.jit
def load_keep(ptr, row_off, rmask, cols, cmask, Z: tl.constexpr):
    """The zoneout keep of a tile: Z=1 the mask ptr[row_off + cols] ([T, B, size], time order),
    Z=2 the scalar p at ptr[0] (eval)."""
    if Z == 1:
        offs = row_off[:, None] + cols[None, :]
        return tl.load(ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0)
    else:
        return tl.load(ptr).to(tl.float32)


# ------------------------------------------------------------------------- head-wise products
@triton.jit
def head_w(w_ptr, out_row, out_unit, in_unit, mask, D):
    """Entries of the dense block-diagonal W_hh that a head-wise W [G·H, D] stands for: row
    out_row (g·H + out_unit), column in_unit; 0 where in_unit is not in out_unit's head (row
    g·H + j·D + u of W holds unit j·D+u's weights from the D units of head j)."""
    same = (out_unit // D) == (in_unit // D)
    offs = out_row.to(tl.int64) * D + (in_unit % D)
    return tl.load(w_ptr + offs, mask=mask & same, other=0.0)


@triton.jit
def head_span(n0, H, D, BH: tl.constexpr):
    """The inputs [lo, hi) a tile of units n0..n0+BH-1 reads: the D units of each of its heads."""
    return (n0 // D) * D, tl.minimum(((n0 + BH - 1) // D + 1) * D, H)


@triton.jit
def head_gate_products(x_ptr, x_row, rmask, w_ptr, cols, cmask, n0, H, D, G: tl.constexpr,
                       DOT_F32: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
                       BK: tl.constexpr):
    """As ``tiles.gate_products`` (x [B, H] at rows x_row; units cols = n0 + 0..BH-1 of each
    gate g < G ≤ 4) for a head-wise W [G·H, D]: the reduction runs over the tile's heads only."""
    lo, hi = head_span(n0, H, D, BH)
    acc_0 = tl.full([BB, BH], 0.0, tl.float32)
    acc_1 = tl.full([BB, BH], 0.0, tl.float32)
    acc_2 = tl.full([BB, BH], 0.0, tl.float32)
    acc_3 = tl.full([BB, BH], 0.0, tl.float32)
    n = cols[None, :]
    for k0 in range(lo, hi, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < hi
        xk = tl.load(x_ptr + x_row[:, None] + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                     other=0.0).to(tl.float32)
        k = ks[:, None]
        m = kmask[:, None] & cmask[None, :]
        acc_0 = mma(acc_0, xk, head_w(w_ptr, n, n, k, m, D), DOT_F32)
        if G > 1:
            acc_1 = mma(acc_1, xk, head_w(w_ptr, n + H, n, k, m, D), DOT_F32)
        if G > 2:
            acc_2 = mma(acc_2, xk, head_w(w_ptr, n + 2 * H, n, k, m, D), DOT_F32)
        if G > 3:
            acc_3 = mma(acc_3, xk, head_w(w_ptr, n + 3 * H, n, k, m, D), DOT_F32)
    return acc_0, acc_1, acc_2, acc_3


@triton.jit
def head_carry(dg_next, w_ptr, ghn_ptr, local, act_next, rmask, rows64, cols, cmask, n0, H, D,
               G: tl.constexpr, DOT_F32: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
               BK: tl.constexpr):
    """As ``tiles.recurrent_carry`` for a head-wise W [G·H, D]: the units cols (of H) receive
    dg_{s+1}[:, g·H + u]·W[g·H + u, ·] from the units u of their own heads only."""
    lo, hi = head_span(n0, H, D, BH)
    acc = tl.full([BB, BH], 0.0, tl.float32)
    v = cols[None, :]
    for g in range(0, G):
        for k0 in range(lo, hi, BK):
            us = k0 + tl.arange(0, BK)
            umask = us < hi
            a = tl.load(dg_next + (rows64 * (G * H) + g * H)[:, None] + us[None, :],
                        mask=act_next[:, None] & umask[None, :], other=0.0).to(tl.float32)
            w = head_w(w_ptr, g * H + us[:, None], us[:, None], v,
                       umask[:, None] & cmask[None, :], D)
            acc = mma(acc, a, w, DOT_F32)
    ghn = tl.load(ghn_ptr + (rows64 * H)[:, None] + v, mask=rmask[:, None] & cmask[None, :],
                  other=0.0).to(tl.float32)
    return tl.where(act_next[:, None], acc + local, ghn)


_plan.interpreter_direct_calls(globals(), [
    "sigmoid", "tanh", "mma", "lstm_cell_state", "lstm_cell_fwd", "lstm_cell_bwd",
    "log_sigmoid", "clamp_max0", "slstm_cell_fwd", "slstm_cell_bwd",
    "gru_cell_fwd", "gru_cell_bwd", "rnn_cell_fwd", "rnn_cell_bwd", "zoneout", "zoneout_bwd",
    "load_keep", "head_w", "head_span", "head_gate_products", "head_carry"])
