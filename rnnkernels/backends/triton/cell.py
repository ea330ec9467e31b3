"""Gate math of the three cells as ``@triton.jit`` helpers: the one place each formula lives.

Every forward and backward kernel of this package (``lstm.py``, ``gru.py``, ``rnn.py``) calls
these helpers on fp32 register tiles; none spells a cell formula itself. The C++/CUDA twin is
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

    DOT_F32: both operands in fp32, ``input_precision="ieee"`` (no TF32), used for float32 and,
    under ``TRITON_INTERPRET=1``, for bfloat16, because the interpreter's bf16 ``tl.dot`` returns
    garbage (triton 3.9); the GPU bf16 path is covered by a CUDA-only test. Otherwise ``a`` is
    rounded to the weights' half type and the product runs on the tensor cores, accumulating in
    fp32 (as cuDNN does for half RNNs).
    """
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a.to(b.dtype), b, acc)


# ----------------------------------------------------------------------------------------- LSTM
@triton.jit
def lstm_cell_fwd(g_i, g_f, g_g, g_o, c_prev):
    """Pre-activations and c₋ → activated gates (i, f, u, o), c and hh = o⊙tanh(c)."""
    i = sigmoid(g_i)
    f = sigmoid(g_f)
    u = tanh(g_g)
    o = sigmoid(g_o)
    c = f * c_prev + i * u
    hh = o * tanh(c)
    return i, f, u, o, c, hh


@triton.jit
def lstm_cell_bwd(dhh, dc_next, i, f, u, o, c, c_prev):
    """Gradients of the four pre-activations and the local carry dc₋ = dc⊙f.

    dhh: gradient of hh_t (before the projection); dc_next: the carried gradient of c_t.
    """
    tc = tanh(c)
    dc = dc_next + dhh * o * (1.0 - tc * tc)
    d_i = dc * u * i * (1.0 - i)
    d_f = dc * c_prev * f * (1.0 - f)
    d_u = dc * i * (1.0 - u * u)
    d_o = dhh * tc * o * (1.0 - o)
    return d_i, d_f, d_u, d_o, dc * f


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


_plan.interpreter_direct_calls(globals(), ["sigmoid", "tanh", "mma", "lstm_cell_fwd",
                                           "lstm_cell_bwd", "gru_cell_fwd", "gru_cell_bwd",
                                           "rnn_cell_fwd", "rnn_cell_bwd"])
