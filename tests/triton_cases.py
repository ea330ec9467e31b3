"""Shared pieces of the Triton scan tests (``tests/test_triton_kernels.py`` and
``tests/test_triton_plan.py``): the cases, their inputs, one run of a backend, the comparison
with the reference backend (the oracle) and ``_check``, which does all of that for one case.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set here before triton is imported;
if something imported triton earlier without it, the module skips with the reason). Each case
runs the Triton forward and backward (the backward on the Triton forward's own workspaces) and
the reference forward and backward, then compares every output: float32 tightly, fp16/bf16 by
relative RMS against the float32 reference. Every buffer the backend allocates is NaN-poisoned
(``launch.empty`` is patched), so an element the kernels forget to write fails the comparison; the
exact zeros the contract requires at t ≥ L_b are checked separately. Both launch strategies are
forced, with the default tiles and with 16-wide tiles that split H=33 into three tiles and the
reductions into several K chunks; and the ``resident`` strategy (one GEMV per row below 16 rows,
tl.dot in batch groups of 16 above).

Ids: ``{cell}-T{T}-B{B}-H{H}[-proj][-rev][-lengths]-{dtype}-{strategy}[-tiles16]``.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import rnnkernels.backends.triton as tb  # noqa: E402
from rnnkernels.backends import reference as ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_REASON = tb.supports(DEVICE, torch.float32)


def cuda_only(fn):
    return pytest.mark.cuda(pytest.mark.skipif(
        not torch.cuda.is_available() or _REASON is not None,
        reason="needs a CUDA GPU with triton")(fn))


_DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# rel RMS bounds of half results vs the float32 reference. The interpreter measured at most
# 6e-4 (fp16) and 7e-3 (bf16) on these cases; the GPU's bf16 dot also rounds h to bf16.
_HALF_TOL = {"fp16": 3e-3, "bf16": 3e-2}


@pytest.fixture(autouse=True)
def _tf32_off_and_poison(monkeypatch):
    """Float32 references without TF32, and NaN in every buffer the backend allocates."""
    if torch.cuda.is_available():
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    from rnnkernels.backends.triton import launch
    monkeypatch.setattr(launch, "empty", poisoned)


# ------------------------------------------------------------------------------------ the cases
class Case:
    def __init__(self, cell, T, B, H, *, proj=0, rev=False, lengths=None, dtype="fp32",
                 strategy="persistent", tiles16=False, bhn=True):
        self.cell, self.T, self.B, self.H, self.proj = cell, T, B, H, proj
        self.rev, self.lengths, self.dtype, self.strategy = rev, lengths, dtype, strategy
        self.tiles16, self.bhn = tiles16, bhn
        assert lengths is None or (len(lengths) == B and max(lengths) <= T and min(lengths) >= 1)

    @property
    def id(self):
        parts = [self.cell, f"T{self.T}", f"B{self.B}", f"H{self.H}"]
        if self.proj:
            parts.append(f"proj{self.proj}")
        if self.cell == "GRU" and not self.bhn:
            parts.append("nobhn")
        if self.rev:
            parts.append("rev")
        if self.lengths is not None:
            parts.append("lengths")
        parts += [self.dtype, self.strategy]
        if self.tiles16:
            parts.append("tiles16")
        return "-".join(parts)


def _cases():
    cells = [("LSTM", {}), ("LSTM", {"proj": 17}), ("GRU", {}), ("GRU", {"bhn": False}),
             ("RNN_TANH", {}), ("RNN_RELU", {})]
    out = []
    for cell, kw in cells:
        for strat in ("step", "persistent"):
            out.append(Case(cell, 7, 3, 33, lengths=[7, 1, 4], strategy=strat, **kw))
            out.append(Case(cell, 7, 3, 33, lengths=[2, 7, 1], rev=True, strategy=strat,
                            tiles16=True, **kw))
            out.append(Case(cell, 1, 3, 33, strategy=strat, **kw))
        out.append(Case(cell, 5, 2, 33, rev=True, strategy="persistent", **kw))
        out.append(Case(cell, 6, 3, 33, lengths=[6, 2, 5], rev=True, dtype="fp16",
                        strategy="persistent", **kw))
        out.append(Case(cell, 6, 3, 33, lengths=[3, 6, 1], dtype="bf16", strategy="step", **kw))
        # resident (its own kernels; with a projection two phases a step, resident_proj.py):
        # B = 3 one GEMV per row, tiles16 one tl.dot of 16 rows and 16 units a program
        out.append(Case(cell, 7, 3, 33, lengths=[7, 1, 4], strategy="resident", **kw))
        out.append(Case(cell, 7, 3, 33, lengths=[2, 7, 1], rev=True, strategy="resident",
                        tiles16=True, **kw))
        out.append(Case(cell, 1, 3, 33, strategy="resident", **kw))
        out.append(Case(cell, 5, 17, 20, lengths=[5, 1, 3, 2] * 4 + [4], rev=True,
                        dtype="fp16", strategy="resident", **kw))
    # one row, several batch tiles, a projection wider than H, and one long sequence
    out.append(Case("GRU", 3, 1, 16, lengths=[2], rev=True, strategy="persistent"))
    out.append(Case("GRU", 4, 19, 20, lengths=[4, 1, 3, 2] * 4 + [4, 2, 1], strategy="step",
                    tiles16=True))
    out.append(Case("LSTM", 4, 18, 16, proj=40, lengths=[1, 4, 2] * 6, rev=True,
                    strategy="persistent", tiles16=True))
    out.append(Case("LSTM", 63, 5, 33, proj=17, lengths=[63, 1, 40, 63, 17], rev=True,
                    strategy="persistent"))
    # resident with a projection wider than H, and one narrower than tl.dot's 16 columns
    out.append(Case("LSTM", 4, 18, 16, proj=40, lengths=[1, 4, 2] * 6, rev=True,
                    strategy="resident"))
    out.append(Case("LSTM", 6, 17, 20, proj=9, lengths=[6, 1, 3, 2] * 4 + [4],
                    strategy="resident"))
    return out


CASES = _cases()


# ---------------------------------------------------------------------------------- harness
def _inputs(case: Case, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T, B, H = case.T, case.B, case.H
    G = {"LSTM": 4, "GRU": 3}.get(case.cell, 1)
    P = case.proj or H

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    x = {"xp": rnd(T, B, G * H), "h0": rnd(B, P, scale=0.5), "w_hh": rnd(G * H, P, scale=P ** -0.5)}
    if case.cell == "LSTM":
        x["c0"] = rnd(B, H, scale=0.5)
        x["w_hr"] = rnd(P, H, scale=H ** -0.5) if case.proj else None
    if case.cell == "GRU":
        x["b_hn"] = rnd(H, scale=0.3) if case.bhn else None
    lengths = None
    if case.lengths is not None:
        lengths = torch.tensor(case.lengths, dtype=torch.int64, device=DEVICE)
    grads = {"grad_out": rnd(T, B, P), "grad_hn": rnd(B, P)}
    if case.cell == "LSTM":
        grads["grad_cn"] = rnd(B, H)
    return x, lengths, grads


def _cast(d, dtype):
    return {k: (v.to(dtype) if v is not None else None) for k, v in d.items()}


def _run(backend, case, x, lengths, grads, save=True):
    """Forward then backward of one backend; returns (forward tuple, backward tuple)."""
    rev = case.rev
    if case.cell == "LSTM":
        fwd = backend.lstm_forward(x["xp"], x["h0"], x["c0"], x["w_hh"], x["w_hr"], lengths, rev,
                                   save)
        if not save:
            return fwd, None
        out, _, _, gates, cs = fwd
        bwd = backend.lstm_backward(grads["grad_out"], grads["grad_hn"], grads["grad_cn"],
                                    x["h0"], x["c0"], x["w_hh"], x["w_hr"], lengths, rev, out,
                                    gates, cs)
    elif case.cell == "GRU":
        fwd = backend.gru_forward(x["xp"], x["h0"], x["w_hh"], x["b_hn"], lengths, rev, save)
        if not save:
            return fwd, None
        out, _, gates, hn_lin = fwd
        bwd = backend.gru_backward(grads["grad_out"], grads["grad_hn"], x["h0"], x["w_hh"],
                                   x["b_hn"], lengths, rev, out, gates, hn_lin)
    else:
        relu = case.cell == "RNN_RELU"
        fwd = backend.rnn_forward(x["xp"], x["h0"], x["w_hh"], lengths, rev, relu, save)
        if not save:
            return fwd, None
        bwd = backend.rnn_backward(grads["grad_out"], grads["grad_hn"], x["h0"], x["w_hh"],
                                   lengths, rev, relu, fwd[0])
    return fwd, bwd


def _run_triton(case, x, lengths, grads, save=True):
    tiles = {"block_b": 16, "block_h": 16, "block_k": 16} if case.tiles16 else {}
    with tb.strategy(case.strategy), tb.tuning(**tiles):
        return _run(tb, case, x, lengths, grads, save)


def _active(case):
    """[T, B, 1] bool: positions t < L_b."""
    L = torch.tensor(case.lengths or [case.T] * case.B, device=DEVICE)
    return (torch.arange(case.T, device=DEVICE)[:, None] < L[None, :]).unsqueeze(-1)


def _rel_rms(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _compare(name, got, want, case, active=None):
    """got (backend dtype) vs want (float32 reference); ``active`` restricts to t < L_b."""
    if active is not None:
        mask = active.expand_as(got)
        got, want = got[mask], want[mask]
    assert not torch.isnan(got).any(), f"{name}: NaN (an element was never written)"
    if case.dtype == "fp32":
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-5, atol=2e-5, msg=name)
    else:
        err = _rel_rms(got, want)
        assert err < _HALF_TOL[case.dtype], f"{name}: rel RMS {err:.3g} vs fp32 reference"


def _check(case, seed=0):
    x, lengths, grads = _inputs(case, seed)
    dt = _DT[case.dtype]
    fwd, bwd = _run_triton(case, _cast(x, dt), lengths, _cast(grads, dt))
    # The oracle runs in float32 on the same (rounded) inputs.
    xr = _cast(_cast(x, dt), torch.float32)
    gr = _cast(_cast(grads, dt), torch.float32)
    rfwd, rbwd = _run(ref, case, xr, lengths, gr)
    act = _active(case)

    names = {"LSTM": ["out", "h_n", "c_n", "gates", "cs"], "GRU": ["out", "h_n", "gates", "hn_lin"],
             }.get(case.cell, ["out", "h_n"])
    for name, got, want in zip(names, fwd, rfwd):
        ws = name in ("gates", "cs", "hn_lin")
        assert got.dtype == (torch.float32 if ws else dt), name
        assert got.shape == want.shape, name
        _compare(name, got, want, case, act if ws else None)  # workspaces: only t < L_b defined
    assert (fwd[0][~act.expand_as(fwd[0])] == 0).all(), "out must be exactly 0 at t >= L_b"

    bnames = ["dxp", "dh0", "dc0", "dh"] if case.cell == "LSTM" else ["dxp", "dh0"]
    for name, got, want in zip(bnames, bwd, rbwd):
        if name == "dh" and not case.proj:
            assert got.numel() == 0, "dh must be empty without a projection"
            continue
        assert got.dtype == (torch.float32 if name == "dh" else dt), name
        assert got.shape == want.shape, name
        _compare(name, got, want, case)
    assert (bwd[0][~act.expand_as(bwd[0])] == 0).all(), "dxp must be exactly 0 at t >= L_b"
    if case.proj:
        assert (bwd[3][~act.expand_as(bwd[3])] == 0).all(), "dh must be exactly 0 at t >= L_b"
