"""The coefficients of csrc/cpu/simd.h's float tanh: tanh(x) ≈ x·P(x²)/Q(x²) on [0, C].

P has degree NP and Q degree NQ in y = x², both with constant term 1 (so tanh(x) = x exactly for
tiny x). The fit minimises the maximum relative error, linearised as |x·P - tanh(x)·Q| /
(tanh(x)·Q_prev), by least squares with Lawson's reweighting (weights × |error|, iterated), in
the scaled variable y / C² so the normal equations stay well conditioned. It prints the
coefficients (lowest degree first) and the maximum relative error in exact arithmetic and in
float32 Horner evaluation without FMA (the generic build's; with FMA it is lower).

    python3 csrc/tests/fit_tanh.py 6 3 9     # NP NQ C: what simd.h uses (numpy only)
"""
import sys

import numpy as np

NP, NQ, C = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
x = np.unique(np.concatenate([np.linspace(1e-4, C, 20000),
                              C * np.sin(np.linspace(0, np.pi / 2, 20000)) ** 2 + 1e-6]))
t = np.tanh(x)
S = C * C
ys = x * x / S
A = np.hstack([np.stack([x * ys ** k for k in range(1, NP + 1)], 1),
               np.stack([-t * ys ** k for k in range(1, NQ + 1)], 1)])
rhs = t - x                      # x·(1 + ...) - t·(1 + ...) = 0 → A·u = t - x
w, q_prev = np.ones_like(x), np.ones_like(x)
best_err, best_u = np.inf, None
for _ in range(400):
    scale = np.sqrt(w) / (t * q_prev)
    u = np.linalg.lstsq(A * scale[:, None], rhs * scale, rcond=None)[0]
    P = 1 + sum(u[k - 1] * ys ** k for k in range(1, NP + 1))
    Q = 1 + sum(u[NP + k - 1] * ys ** k for k in range(1, NQ + 1))
    err = x * P / Q / t - 1
    if np.abs(err).max() < best_err:
        best_err, best_u = np.abs(err).max(), u.copy()
    w = w * np.abs(err)
    w /= w.sum()
    q_prev = Q
a = np.concatenate([[1], best_u[:NP]]) / S ** np.arange(NP + 1)
b = np.concatenate([[1], best_u[NP:]]) / S ** np.arange(NQ + 1)
print(f"exact-arithmetic max relative error {best_err:.3g}")
print("P:", [float(v) for v in a])
print("Q:", [float(v) for v in b])
f = np.float32
xf = np.linspace(0, C, 4_000_001, dtype=f)[1:]
yf = xf * xf
p = np.full_like(xf, f(a[-1]))
for k in a[-2::-1]:
    p = (p * yf + f(k)).astype(f)
q = np.full_like(xf, f(b[-1]))
for k in b[-2::-1]:
    q = (q * yf + f(k)).astype(f)
r = (xf * p / q).astype(f)
e = np.abs(r.astype(np.float64) / np.tanh(xf.astype(np.float64)) - 1)
print(f"float32 (no FMA) max relative error {e.max():.3g} at x = {xf[e.argmax()]:g}")
