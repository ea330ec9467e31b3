"""The Triton sLSTM scan (``rnnkernels/backends/triton/slstm.py``, one program a head).

Scan level: ``triton/slstm.scan`` against the reference ``rnnkernels.slstm.scan`` (plain
PyTorch differentiated by autograd: the oracle of the hand-written reverse scan, the gradient
through the stabilizer m included): out, the four final states and the gradients of xp, h0, c0,
n0, m0 and W_hh; heads (H=36 with 4, H=33 with 3: padded head widths), one dense head, unsorted
lengths, reverse, T=1, B=0, zero, carried and mixed initial states (n0 = 0 on some entries
only), both launch strategies, float32/float64 and fp16/bf16 (by relative RMS against float32);
ties of the stabilizer's max (gradient split half/half) and NaN propagation. Every buffer the
backend allocates is NaN-poisoned (``triton_cases``). Module level: ``tests/test_slstm.py``'s
cases against the independent oracle ``tests/slstm_oracle.py`` with ``backend="triton"``. Then
float64 gradcheck, double backward and forward-mode AD / torch.func (the reference loop runs
them), opcheck, torch.compile of the op, routing. Under ``TRITON_INTERPRET=1`` without a GPU
the sizes stay tiny.

Ids: ``T{T}-B{B}-H{H}-heads{k}[-rev][-lengths]-{init}-{dtype}-{strategy}``.
"""
from __future__ import annotations

import pytest
import torch

import rnnkernels
from rnnkernels import slstm as RS
from tests import test_slstm as module_cases
from tests.helpers import assert_forward_modes_match
from tests.triton_cases import _HALF_TOL, _REASON, DEVICE, _rel_rms, tb
from tests.triton_cases import _tf32_off_and_poison  # noqa: F401 - autouse fixture, used here

pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"triton backend: {_REASON}")
TS = pytest.importorskip("rnnkernels.backends.triton.slstm")
# float64, and the modules of tests/test_slstm.py (CPU tensors), run on triton only there
interpreter_only = pytest.mark.skipif(not tb._plan.INTERPRET,
                                      reason="needs TRITON_INTERPRET=1 (float64, CPU tensors)")
_DT = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16,
       "bf16": torch.bfloat16}
_NAMES = ("out", "h_n", "c_n", "n_n", "m_n")
_LEAVES = ("xp", "h0", "c0", "n0", "m0", "w_hh")


class Case:
    def __init__(self, T, B, H, heads, *, lengths=None, rev=False, init="mixed", dtype="fp32",
                 strategy="persistent"):
        self.T, self.B, self.H, self.heads, self.lengths = T, B, H, heads, lengths
        self.rev, self.init, self.dtype, self.strategy = rev, init, dtype, strategy

    @property
    def id(self):
        parts = [f"T{self.T}", f"B{self.B}", f"H{self.H}", f"heads{self.heads}"]
        parts += (["rev"] if self.rev else []) + (["lengths"] if self.lengths else [])
        return "-".join(parts + [self.init, self.dtype, self.strategy])


CASES = [
    Case(6, 3, 36, 4, lengths=[6, 1, 4]),
    Case(5, 3, 33, 3, lengths=[2, 5, 3], rev=True, init="carried", strategy="step"),
    Case(1, 2, 12, 2),
    Case(4, 2, 16, 1, rev=True, init="zero"),
    Case(5, 3, 24, 3, lengths=[5, 2, 4], rev=True, dtype="fp64", strategy="step"),
    Case(4, 2, 36, 4, init="carried", dtype="fp64"),
    Case(5, 3, 24, 2, lengths=[3, 5, 1], init="carried", dtype="fp16"),
    Case(4, 2, 24, 3, rev=True, dtype="bf16", strategy="step"),
]


def _inputs(case: Case, seed: int = 0) -> tuple[dict, torch.Tensor | None, list]:
    """(xp, h0, c0, n0, m0, w_hh by name, lengths, cotangents of out and the final states),
    float64 (cast by the caller). Initial states as ``test_slstm.initial_states``: |c0| ≤ n0,
    and with "mixed" n0 = c0 = 0 on about half of the entries."""
    g = torch.Generator().manual_seed(seed)
    T, B, H, d = case.T, case.B, case.H, case.H // case.heads

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    h0, c0, n0, m0 = module_cases.initial_states((B, H), torch.float64, case.init, seed + 1)
    x = dict(xp=rnd(T, B, 4 * H), h0=h0, c0=c0, n0=n0, m0=m0, w_hh=rnd(4 * H, d, scale=d ** -0.5))
    lengths = None if case.lengths is None else torch.tensor(case.lengths)
    cot = [rnd(T, B, H)] + [rnd(B, H) for _ in range(4)]
    return x, lengths, cot


def _run(impl, x: dict, lengths, rev: bool, heads: int, cot) -> tuple[list, dict]:
    """(out and the final states, the gradients of every input) of one scan."""
    x = {n: t.detach().to(DEVICE).requires_grad_() for n, t in x.items()}
    lengths = None if lengths is None else lengths.to(DEVICE)
    out, finals = impl.scan(x["xp"], tuple(x[n] for n in _LEAVES[1:5]), x["w_hh"], lengths, rev,
                            heads)
    results = [out, *finals]
    loss = sum((r.double() * c.to(DEVICE)).sum() for r, c in zip(results, cot))
    return results, dict(zip(_LEAVES, torch.autograd.grad(loss, list(x.values()))))


def _close(name: str, got: torch.Tensor, want: torch.Tensor, dtype: str) -> None:
    assert got.shape == want.shape, name
    assert not torch.isnan(got).any(), f"{name}: NaN (an element was never written)"
    if dtype in ("fp16", "bf16"):
        err = _rel_rms(got, want)
        assert err < _HALF_TOL[dtype], f"{name}: rel RMS {err:.3g} vs the float32 reference"
    else:
        tol = dict(rtol=1e-5, atol=2e-5) if dtype == "fp32" else dict(rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got, want.to(got.dtype), **tol, msg=name)


@pytest.mark.parametrize("case", [pytest.param(c, marks=[interpreter_only] * (c.dtype == "fp64"))
                                  for c in CASES], ids=[c.id for c in CASES])
def test_scan_matches_the_reference(case):
    x, lengths, cot = _inputs(case)
    dt = _DT[case.dtype]
    cast = {n: t.to(dt) for n, t in x.items()}
    with tb.strategy(case.strategy):
        outs, grads = _run(TS, cast, lengths, case.rev, case.heads, cot)
    # half inputs: the oracle runs in float32 on the same (rounded) inputs
    ref_dt = torch.float32 if case.dtype in ("fp16", "bf16") else dt
    want, want_grads = _run(RS, {n: t.to(ref_dt) for n, t in cast.items()}, lengths, case.rev,
                            case.heads, cot)
    for name, got, ref in zip(_NAMES, outs, want):
        assert got.dtype == dt, name
        _close(name, got, ref, case.dtype)
    for name in _LEAVES:
        assert grads[name].dtype == dt, name
        _close(f"grad {name}", grads[name], want_grads[name], case.dtype)
    L = torch.tensor(case.lengths or [case.T] * case.B, device=DEVICE)
    inactive = (torch.arange(case.T, device=DEVICE)[:, None] >= L[None, :])
    assert (outs[0][inactive] == 0).all(), "out must be exactly 0 at t >= L_b"
    assert (grads["xp"][inactive] == 0).all(), "dxp must be exactly 0 at t >= L_b"


def test_empty_batch():
    case = Case(3, 0, 12, 2)
    x, lengths, cot = _inputs(case)
    outs, grads = _run(TS, {n: t.float() for n, t in x.items()}, lengths, False, 2, cot)
    assert [tuple(o.shape) for o in outs] == [(3, 0, 12)] + [(0, 12)] * 4
    assert grads["xp"].shape == (3, 0, 48) and (grads["w_hh"] == 0).all()


@interpreter_only
def test_ties_of_the_stabilizer_split_its_gradient():
    """ĩ == m_{t-1} + log σ(f̃) exactly (h0 = 0, ĩ = m0 = 1, f̃ = 100: log σ(100) rounds to 0
    next to 1): torch.maximum gives each side half of dm_t, and i_t = f_t = exp(0), where
    clamp(max=0) passes the gradient; the kernel must agree with autograd there."""
    case = Case(3, 2, 12, 2, init="carried", dtype="fp64")
    x, _, cot = _inputs(case)
    x["h0"].zero_()
    x["m0"][:, :5] = 1.0
    x["xp"][0, :, :5] = 1.0                      # ĩ of units 0..4 at the first step
    x["xp"][0, :, 12:17] = 100.0                 # their f̃
    outs, grads = _run(TS, x, None, False, 2, cot)
    want, want_grads = _run(RS, x, None, False, 2, cot)
    for name, got, ref in zip(_NAMES, outs, want):
        _close(name, got, ref, "fp64")
    for name in _LEAVES:
        _close(f"grad {name}", grads[name], want_grads[name], "fp64")
    lf = x["m0"] + torch.nn.functional.logsigmoid(x["xp"][0, :, 12:24])
    assert (lf[:, :5] == x["xp"][0, :, :5]).all(), "the test's premise: an exact tie"


def test_nan_propagates_as_in_the_reference():
    """A NaN pre-activation: the same NaN outputs, states and gradients as the reference (its
    head only, from its step on; never hidden by a max or a clip)."""
    case = Case(4, 3, 24, 3, lengths=[4, 2, 3], init="carried")
    x, lengths, cot = _inputs(case)
    x = {n: t.float() for n, t in x.items()}
    x["xp"][1, 0, 5] = float("nan")              # ĩ of unit 5 (head 0) of sequence 0 at t = 1
    x["xp"][0, 2, 24 + 17] = float("nan")        # f̃ of unit 17 (head 2) of sequence 2 at t = 0
    outs, grads = _run(TS, x, lengths, False, 3, cot)
    want, want_grads = _run(RS, x, lengths, False, 3, cot)
    # beyond a sequence's end dxp is 0 by the contract; the reference's loop computes those
    # steps too and discards them with a where, whose zero gradient times NaN leaves NaN there
    inactive = (torch.arange(4)[:, None] >= lengths[None, :]).to(DEVICE)
    assert (grads["xp"][inactive] == 0).all()
    want_grads["xp"][inactive] = 0.0
    for name, got, ref in [*zip(_NAMES, outs, want),
                           *((f"grad {n}", grads[n], want_grads[n]) for n in _LEAVES)]:
        assert torch.equal(got.isnan(), ref.isnan()), name
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=2e-5, equal_nan=True, msg=name)
    out = outs[0]
    assert out[1, 0, 5].isnan() and out[2:, 0, :8].isnan().all()       # then its whole head
    assert not out[:, 0, 8:].isnan().any() and not out[:, 1].isnan().any()


# ----------------------------------------------------------------------------- module level
@interpreter_only
@pytest.mark.triton_subset
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", module_cases.CASES,
                         ids=[module_cases.case_id(c) for c in module_cases.CASES])
def test_modules_match_the_oracle(case, dtype, monkeypatch):
    """tests/test_slstm.py's cases (layers, both directions, heads, packed unsorted lengths,
    zero/carried/mixed states) with backend="triton": outputs, final states and the gradients
    of the input, the four initial states and every parameter against the oracle."""
    make = module_cases.make
    monkeypatch.setattr(module_cases, "make",
                        lambda *a, **kw: _on_triton(make(*a, **kw)))
    module_cases.test_forward_and_every_gradient_match_the_oracle(case, dtype)


def _on_triton(module):
    module.backend = "triton"
    return module


@interpreter_only
def test_the_first_step_rule_is_decided_per_element(monkeypatch):
    make = module_cases.make
    monkeypatch.setattr(module_cases, "make", lambda *a, **kw: _on_triton(make(*a, **kw)))
    module_cases.test_the_first_step_rule_is_decided_per_element()


# ------------------------------------------------------------------------ autograd, op, routing
def _tiny(seed=0, dtype=torch.float64):
    """Inputs of a tiny float64 scan (T=3, B=2, H=4, two heads; n0 > 0: gradcheck's steps must
    not cross the n0 == 0 branch)."""
    x, lengths, _ = _inputs(Case(3, 2, 4, 2, lengths=[3, 2], init="carried"), seed)
    return [x[n].to(DEVICE, dtype).requires_grad_() for n in _LEAVES], lengths.to(DEVICE)


@interpreter_only
def test_gradcheck_float64():
    leaves, lengths = _tiny()
    for rev in (False, True):
        def fn(xp, h0, c0, n0, m0, w_hh):
            out, finals = TS.scan(xp, (h0, c0, n0, m0), w_hh, lengths, rev, 2)
            return (out, *finals)
        assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


@interpreter_only
def test_double_backward_runs_the_reference_loop():
    """create_graph=True: the gradient is differentiable and its gradients are the reference's
    (gradgradcheck through the scan, and against backend="reference")."""
    leaves, lengths = _tiny()

    def fn(impl):
        def f(xp, h0, c0, n0, m0, w_hh):
            out, finals = impl.scan(xp, (h0, c0, n0, m0), w_hh, lengths, True, 2)
            return (out, *finals)
        return f

    assert torch.autograd.gradgradcheck(fn(TS), leaves, fast_mode=True)
    results = []
    for impl in (TS, RS):
        outs = fn(impl)(*leaves)
        g = torch.autograd.grad(sum(o.pow(2).sum() for o in outs), leaves, create_graph=True)
        results.append([*g, *torch.autograd.grad(sum(t.pow(2).sum() for t in g), leaves)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    assert results[0][-1].abs().sum() > 0


@interpreter_only
def test_forward_ad_and_torch_func_run_the_reference_loop():
    torch.manual_seed(0)
    ours = rnnkernels.SLSTM(3, 8, num_heads=2, backend="triton")
    ref = rnnkernels.SLSTM(3, 8, num_heads=2, backend="reference")
    ref.load_state_dict(ours.state_dict())
    assert_forward_modes_match(ours, ref, torch.randn(4, 2, 3),
                               lambda got, want, what: torch.testing.assert_close(got, want, msg=what))


def test_opcheck():
    leaves, lengths = _tiny(dtype=torch.float32)
    torch.library.opcheck(torch.ops.rnnkernels.triton_slstm_scan,
                          (*leaves, lengths, True, 2, True))


@interpreter_only
def test_torch_compile_fullgraph():
    """The module with backend="triton" traces whole (the op's fake impl and autograd; the
    backend is resolved before tracing): outputs and gradients as in eager mode."""
    torch.manual_seed(0)
    module = rnnkernels.SLSTM(3, 8, 2, num_heads=2, bidirectional=True, backend="triton")
    x = torch.randn(4, 2, 3, requires_grad=True)
    want = module(x)
    got = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    leaves = [x, *module.parameters()]
    grads = [torch.autograd.grad(res[0].sum() + sum(f.sum() for f in res[1]), leaves)
             for res in (want, got)]
    for a, b in zip([got[0], *got[1], *grads[1]], [want[0], *want[1], *grads[0]]):
        torch.testing.assert_close(a, b)


@interpreter_only
def test_routing():
    """Named, triton runs here (the interpreter, float64 included); ``auto`` takes it on a
    CUDA device only (never the interpreter on the CPU: there the fused cpu scan, where the
    extension is built); the module runs it."""
    assert RS.resolve("triton", "cpu", torch.float32) == "triton"
    assert RS.resolve("triton", "cpu", torch.float64) == "triton"
    from rnnkernels.backends import compiled
    assert RS.resolve("auto", "cpu", torch.float32) == ("cpu" if compiled.AVAILABLE else "reference")
    assert TS.supports("cpu", torch.int32) is not None
    module = rnnkernels.SLSTMCell(3, 4, num_heads=2, backend="triton")
    calls = []
    real = TS.triton_slstm_scan

    def spy(*args):
        calls.append(1)
        return real(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TS, "triton_slstm_scan", spy)
        module(torch.randn(2, 3))
    assert calls == [1]
