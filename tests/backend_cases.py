"""Function-level cases of the compiled backends against the reference backend.

Shared by tests/test_cpu_backend.py and tests/test_cuda_backend.py (a helper module, not a test
file): one ``Case`` holds the inputs of one scan in the layout of docs/BACKENDS.md; ``check_case``
runs a backend's forward and backward on it and compares every output with the reference
backend's, including the exact zeros past each sequence's end.
"""
from __future__ import annotations

import math

import torch

from rnnkernels.backends import reference as ref
from rnnkernels.cells import CELLS as CELL_SPECS

# cell id -> (kind, options)
CELLS = {
    "LSTM": ("lstm", {}),
    "LSTM-proj": ("lstm", {"proj": True}),
    "GRU": ("gru", {"bias": True}),
    "GRU-nobias": ("gru", {"bias": False}),
    "RNN-tanh": ("rnn", {"relu": False}),
    "RNN-relu": ("rnn", {"relu": True}),
}

# id, T, B, H, lengths ("all" | "unsorted"), reverse
SHAPES = [
    ("T63-B3-H33", 63, 3, 33, "all", False),
    ("T63-B3-H33-len-rev", 63, 3, 33, "unsorted", True),
    ("T1-B2-H16", 1, 2, 16, "all", False),
    ("T5-B4-H1-len", 5, 4, 1, "unsorted", False),
    ("T9-B5-H8-rev", 9, 5, 8, "all", True),
    ("T7-B20-H24-len-rev", 7, 20, 24, "unsorted", True),
]

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


class Case:
    """Inputs of one scan (forward and backward) in the contract's layout."""

    def __init__(self, cell, T, B, H, lengths, reverse, dtype, device, seed=0):
        self.kind, opts = CELLS[cell]
        self.relu = opts.get("relu", False)
        self.T, self.B, self.H = T, B, H
        self.P = max(1, (2 * H) // 3) if opts.get("proj") else H
        self.reverse = reverse
        G = CELL_SPECS[self.kind].gates * H
        gen = torch.Generator().manual_seed(seed)

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(
                device=device, dtype=dtype)

        k = 1.0 / math.sqrt(self.P)
        self.xp = rnd(T, B, G)
        self.h0 = rnd(B, self.P, scale=0.5)
        self.c0 = rnd(B, H, scale=0.5)
        self.w_hh = rnd(G, self.P, scale=k)
        self.w_hr = rnd(self.P, H, scale=1.0 / math.sqrt(H)) if opts.get("proj") else None
        self.b_hn = rnd(H, scale=0.3) if opts.get("bias") else None
        if lengths == "unsorted" and B > 1:
            L = torch.randint(1, T + 1, (B,), generator=gen)
            L[B // 2] = T           # one full-length sequence ...
            L[-1] = 1               # ... one of length 1, not in sorted order
            if B > 2:
                L[0] = max(1, T // 2)
            self.lengths = L.to(device)
        else:
            self.lengths = None
        self.gout = rnd(T, B, self.P)
        self.ghn = rnd(B, self.P)
        self.gcn = rnd(B, H)

    def active(self):
        """[T, B, 1] bool: True at positions t < L_b."""
        t = torch.arange(self.T, device=self.xp.device)[:, None]
        L = self.lengths if self.lengths is not None else torch.full(
            (self.B,), self.T, device=self.xp.device)
        return (t < L[None, :]).unsqueeze(-1)

    def forward(self, backend, save=True):
        if self.kind == "lstm":
            return backend.lstm_forward(self.xp, self.h0, self.c0, self.w_hh, self.w_hr,
                                        self.lengths, self.reverse, save)
        if self.kind == "gru":
            return backend.gru_forward(self.xp, self.h0, self.w_hh, self.b_hn, self.lengths,
                                       self.reverse, save)
        return backend.rnn_forward(self.xp, self.h0, self.w_hh, self.lengths, self.reverse,
                                   self.relu, save)

    def backward(self, backend, fwd):
        if self.kind == "lstm":
            out, _, _, gates, cs = fwd
            return backend.lstm_backward(self.gout, self.ghn, self.gcn, self.h0, self.c0,
                                         self.w_hh, self.w_hr, self.lengths, self.reverse, out,
                                         gates, cs)
        if self.kind == "gru":
            out, _, gates, hn_lin = fwd
            return backend.gru_backward(self.gout, self.ghn, self.h0, self.w_hh, self.b_hn,
                                        self.lengths, self.reverse, out, gates, hn_lin)
        out = fwd[0]
        return backend.rnn_backward(self.gout, self.ghn, self.h0, self.w_hh, self.lengths,
                                    self.reverse, self.relu, out)


def error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Normwise error: max |got - want| / max |want| (fp32/fp64), or the relative RMS for
    half types, where single elements legitimately differ by one rounding."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    g, w = got.double().cpu(), want.double().cpu()
    if not torch.isfinite(g).all():
        return math.inf
    if got.dtype in (torch.float16, torch.bfloat16):
        return float((g - w).norm() / w.norm().clamp_min(1e-12))
    return float((g - w).abs().max() / w.abs().max().clamp_min(1e-6))


def check_case(case: Case, backend, dtype) -> None:
    """Forward + backward of ``backend`` against the reference backend on the same inputs."""
    tol = TOL[dtype]
    mine = case.forward(backend, save=True)
    want = case.forward(ref, save=True)
    act = case.active()
    spec = CELL_SPECS[case.kind]
    workspaces = [name for name, _ in spec.workspaces]
    names = ["out"] + [f"{state}_n" for state in spec.states] + workspaces
    for name, a, b in zip(names, mine, want):
        if name in workspaces:   # workspaces: specified at active positions only
            assert a.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            a, b = torch.where(act, a, 0.0), torch.where(act, b, 0.0)
        e = error(a, b)
        assert e <= tol, f"forward {name}: error {e:.3g} > {tol}"
    out = mine[0]
    assert (out[~act.expand_as(out)] == 0).all(), "out is not exactly 0 past the sequence ends"

    dmine = case.backward(backend, mine)
    dwant = case.backward(ref, want)
    bnames = ["dxp"] + [f"d{state}0" for state in spec.states] + (["dh"] if spec.projection
                                                                   else [])
    for name, a, b in zip(bnames, dmine, dwant):
        if name == "dh" and case.w_hr is None:
            assert a.numel() == 0
            continue
        e = error(a, b)
        # the backward's dh0 of an LSTM sums 4 gate gradients through W_hh: allow 2 ulp more
        assert e <= tol * (2 if dtype == torch.float32 else 1), \
            f"backward {name}: error {e:.3g} > {tol}"
    dxp = dmine[0]
    assert (dxp[~act.expand_as(dxp)] == 0).all(), "dxp is not exactly 0 past the sequence ends"
