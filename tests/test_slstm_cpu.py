"""The fused CPU sLSTM (``backend="cpu"``, rnnkernels/backends/cpu_slstm.py) against the
independent oracle (tests/slstm_oracle.py) and the reference scan (``slstm.scan``, autograd
through ``slstm.step``).

* every case of tests/test_slstm.py (odd sizes, layers, both directions, heads, packed unsorted
  lengths, zero / carried / mixed initial states) on the cpu backend against the oracle, float32
  and float64: outputs, the four final states, the gradients of the input, the four initial
  states and every parameter; the kernels' buffers NaN-poisoned (an element they fail to write
  shows);
* the kernel against the reference scan: float32 / float64, forward and reversed, lengths,
  heads of odd width (H = 36 with 4 heads: d = 9; H = 33 with 1 and 3 heads), n0 = 0 at some
  elements only, a thread team, half types (fp32 state), T = 1, B = 0; torch's gradient rules
  where the forward chooses (a torch.maximum tie, clamp at exactly 0); NaN propagation;
* float64 gradcheck; double backward, forward-mode AD and torch.func through the reference loop;
  opcheck of the custom op; torch.compile (fullgraph) of the module; the routing.
"""
from __future__ import annotations

import pytest
import torch

import rnnkernels
from rnnkernels import backends
from rnnkernels import slstm as reference
from rnnkernels.backends import compiled
from tests import test_slstm as TS
from tests.helpers import DTYPE_NAMES, assert_close, routing_warnings

_WHY_NOT = backends.why_not("cpu", "cpu", torch.float32)
pytestmark = pytest.mark.skipif(_WHY_NOT is not None,
                                reason=f"backend 'cpu' cannot run here: {_WHY_NOT}")
if _WHY_NOT is None:
    from rnnkernels.backends import cpu_slstm


def _make_on(backend):
    def make(I, H, L=1, bidir=False, heads=1, dtype=torch.float64, seed=0, **kw):
        torch.manual_seed(seed)
        return rnnkernels.SLSTM(I, H, L, bidirectional=bidir, num_heads=heads, dtype=dtype,
                                backend=backend, **kw)
    return make


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("case", TS.CASES, ids=[TS.case_id(c) for c in TS.CASES])
def test_layers_match_the_oracle(monkeypatch, case, dtype):
    monkeypatch.setattr(TS, "make", _make_on("cpu"))
    with compiled.option("poison", "1"):
        TS.test_forward_and_every_gradient_match_the_oracle(case, dtype)


def test_mixed_first_steps_and_cells(monkeypatch):
    monkeypatch.setattr(TS, "make", _make_on("cpu"))
    TS.test_the_first_step_rule_is_decided_per_element()


# --------------------------------------------------------- the kernel against the reference
def _scan_case(dtype, T=6, B=5, H=12, heads=3, lengths=True, init="mixed", seed=0, scale=1.0):
    """(xp, states, w_hh, lengths, num_heads) in ``dtype``, leaves requiring grad."""
    torch.manual_seed(seed)

    def t(*shape):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    xp, w = t(T, B, 4 * H), (torch.randn(4 * H, H // heads, dtype=torch.float64) * 0.3).to(dtype)
    states = tuple(s.to(dtype).requires_grad_()
                   for s in TS.initial_states((B, H), torch.float64, init, seed=seed + 1))
    lens = torch.tensor([min(n, T) for n in [T, 1, 3, T, 2][:B]] + [T] * max(0, B - 5)) \
        if lengths and B else None
    return xp, states, w.requires_grad_(), lens, heads


def _run(scan, case, reverse):
    xp, states, w, lens, heads = case
    out, finals = scan(xp, states, w, lens, reverse, heads)
    inputs = [xp, *states, w]
    results = [out, *finals]
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(r.shape, dtype=torch.float64, generator=g).to(r.dtype)
               for r in results]
    loss = sum((wt * r.float()).sum() for wt, r in zip(weights, results))
    return results, list(torch.autograd.grad(loss, inputs))


NAMES = ["out", "h_n", "c_n", "n_n", "m_n", "grad xp", "grad h0", "grad c0", "grad n0",
         "grad m0", "grad w_hh"]


def _compare(case, reverse, what=""):
    with compiled.option("poison", "1"):
        got = _run(cpu_slstm.scan, case, reverse)
    want = _run(reference.scan, case, reverse)
    for a, e, name in zip(got[0] + got[1], want[0] + want[1], NAMES):
        assert a.dtype == e.dtype
        assert_close(a, e, f"{what}{name}")


SIZES = [(36, 4), (33, 1), (33, 3), (12, 12)]     # (H, heads): d = 9, 33, 11, 1


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("H,heads", SIZES, ids=[f"H{h}-heads{k}" for h, k in SIZES])
def test_kernel_matches_the_reference(H, heads, dtype, reverse):
    for init in ("mixed", "zero", "carried"):
        _compare(_scan_case(dtype, T=7, B=6, H=H, heads=heads, init=init), reverse, init + " ")
    _compare(_scan_case(dtype, T=7, B=6, H=H, heads=heads, scale=6.0), reverse, "large ")


def test_thread_team_matches_the_reference():
    """Large enough for a team of 2 threads: each owns panels of several heads, and in the
    backward a slice of units that cuts through heads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for reverse in (False, True):
            _compare(_scan_case(torch.float64, T=5, B=40, H=72, heads=4), reverse)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DTYPE_NAMES.get)
def test_half_types_match_the_fp32_reference(dtype):
    got = _run(cpu_slstm.scan, _scan_case(dtype, H=36, heads=4), True)
    want = _run(reference.scan, _scan_case(torch.float32, H=36, heads=4), True)
    for a, e in zip(got[0] + got[1], want[0] + want[1]):
        assert a.dtype == dtype
        err = (a.float() - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-6)
        assert err < 3e-2, float(err)


@pytest.mark.parametrize("T,B", [(1, 3), (4, 0)], ids=["T1", "B0"])
def test_edge_sizes(T, B):
    _compare(_scan_case(torch.float32, T=T, B=B, lengths=B > 0), False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
def test_torch_gradient_rules_at_ties(dtype):
    """Where the forward chooses, torch's rules: log σ(800) = 0 exactly, so a = m_{t-1}; with
    ĩ = m_{t-1} at some units torch.maximum ties (half/half), both clamps see exactly 0 (the
    gradient passes); n0 = 0 at others (torch.where: the max gets nothing)."""
    B, H = 3, 8
    xp, states, w, _, _ = _scan_case(dtype, T=1, B=B, H=H, heads=2, init="carried")
    h0, c0, n0, m0 = (s.detach() for s in states)
    h0 = torch.zeros_like(h0)                               # pre-activations = xp exactly
    xp = xp.detach().clone()
    xp[0, :, H:2 * H] = 800.0                               # f̃: log σ = 0
    xp[0, :, :H // 2] = m0[:, :H // 2]                      # ĩ = m0: a tie
    n0 = n0.clone()
    n0[0, H // 2:] = 0.0                                    # the first-step rule there
    case = (xp.requires_grad_(), tuple(s.clone().requires_grad_() for s in (h0, c0, n0, m0)),
            w, None, 2)
    got = _run(cpu_slstm.scan, case, False)
    want = _run(reference.scan, case, False)
    for a, e, name in zip(got[0] + got[1], want[0] + want[1], NAMES):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6, msg=name)


def test_nan_propagates_as_in_the_reference():
    xp, states, w, lens, heads = _scan_case(torch.float32, T=4, B=3, H=12, heads=3,
                                            lengths=False, init="carried")
    xp = xp.detach().clone()
    xp[1, 0, 5] = float("nan")                      # ĩ of one unit at one step
    xp[2, 1, 12 + 3] = float("nan")                 # f̃ of another
    case = (xp.requires_grad_(), states, w, lens, heads)
    got = _run(cpu_slstm.scan, case, False)
    want = _run(reference.scan, case, False)
    for a, e, name in zip(got[0] + got[1], want[0] + want[1], NAMES):
        assert torch.equal(a.isnan(), e.isnan()), name
        torch.testing.assert_close(a, e, equal_nan=True, msg=name)


# -------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck_float64(reverse):
    xp, states, w, lens, heads = _scan_case(torch.float64, T=3, B=3, H=6, heads=2,
                                            init="carried")   # n0 > 0: no branch to cross
    fn = lambda xp, *rest: cpu_slstm.scan(xp, rest[:4], rest[4], lens, reverse, heads)  # noqa
    flat = lambda *a: (lambda r: (r[0], *r[1]))(fn(*a))                               # noqa
    assert torch.autograd.gradcheck(flat, (xp, *states, w))


# ------------------------------------------------------------------------ other autograd modes
def _module(backend):
    torch.manual_seed(0)
    return rnnkernels.SLSTM(3, 4, num_heads=2, backend=backend).double()


def _gradient_of_gradients(m):
    """d/d(x, W_hh) of |∂L/∂(x, W_ih)|², L = |out|² + Σ m_n: a backward under create_graph."""
    x = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4),
                    requires_grad=True)
    out, (_, _, _, m_n) = m(x)
    first = torch.autograd.grad(out.pow(2).sum() + m_n.sum(), [x, m.weight_ih_l0],
                                create_graph=True)
    return torch.autograd.grad(sum(g.pow(2).sum() for g in first), [x, m.weight_hh_l0])


def test_double_backward_runs_the_reference_loop():
    got, want = (_gradient_of_gradients(_module(b)) for b in ("cpu", "reference"))
    for a, e in zip(got, want):
        assert_close(a, e, "grad of grad")
    xp, states, w, lens, heads = _scan_case(torch.float64, T=2, B=2, H=4, heads=2,
                                            init="carried")
    fn = lambda xp, w: cpu_slstm.scan(xp, states, w, lens, True, heads)[0]  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (xp, w))


def test_forward_ad_and_torch_func_run_the_reference_loop():
    import torch.autograd.forward_ad as fwAD
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    tangent = torch.randn_like(x)

    def dual(m):
        with fwAD.dual_level():
            return [fwAD.unpack_dual(t).tangent for t in m(fwAD.make_dual(x, tangent))[1]]
    transforms = {
        "jvp": lambda m: torch.func.jvp(lambda v: m(v)[0], (x,), (tangent,)),
        "torch.func.grad": lambda m: [torch.func.grad(lambda v: m(v)[1][3].sum())(x)],
        "vmap": lambda m: [torch.func.vmap(lambda v: m(v)[0], in_dims=1, out_dims=1)(x)],
        "forward-mode AD of the states": dual,
    }
    modules = [_module(b) for b in ("cpu", "reference")]
    for name, transform in transforms.items():
        for a, e in zip(*(transform(m) for m in modules)):
            assert_close(a, e, name)


@pytest.mark.parametrize("save", [True, False], ids=["save", "inference"])
def test_opcheck(save):
    xp, states, w, lens, heads = _scan_case(torch.float32, T=3, B=3, H=12, heads=3)
    args = [xp, states[0], torch.stack(states[1:]).detach().requires_grad_(), w]
    if not save:                                 # inference: nothing to differentiate
        args = [a.detach() for a in args]
    args = (*args, heads, lens, True, save)
    torch.library.opcheck(torch.ops.rnnkernels.slstm_scan_cpu.default, args)


def test_torch_compile_fullgraph_of_the_module():
    module = rnnkernels.SLSTM(3, 8, 2, num_heads=2, bidirectional=True, backend="cpu")
    x = torch.randn(5, 2, 3, requires_grad=True)
    compiled_module = torch.compile(module, fullgraph=True, backend="aot_eager")
    got, want = compiled_module(x), module(x)
    assert_close(got[0], want[0], "compiled out")
    for a, e in zip(got[1], want[1]):
        assert_close(a, e, "compiled states")
    loss = lambda r: r[0].sum() + sum(s.sum() for s in r[1])  # noqa: E731
    params = [x, *module.parameters()]
    for a, e in zip(torch.autograd.grad(loss(got), params),
                    torch.autograd.grad(loss(want), params)):
        assert_close(a, e, "compiled grad")


# --------------------------------------------------------------------------------- routing
def test_routing(monkeypatch):
    x = torch.randn(4, 2, 5)
    with routing_warnings() as said:
        rnnkernels.SLSTM(5, 6, num_heads=2)(x)
        rnnkernels.SLSTMCell(5, 6)(x[0])
    assert said == []                                      # auto: the fused cpu, silently
    assert reference.resolve("auto", "cpu", torch.float32) == "cpu"
    assert reference.resolve("cpu", "cpu", torch.bfloat16) == "cpu"
    for name in ("cuda", "torch"):           # (named triton runs: tests/test_slstm_triton.py)
        with pytest.raises(RuntimeError, match=f"backend '{name}'.*cannot run sLSTM"):
            rnnkernels.SLSTM(5, 6, backend=name)(x)
    why_not = backends.why_not
    monkeypatch.setattr(backends, "why_not",
                        lambda n, d, t: "not built" if n == "cpu" else why_not(n, d, t))
    with routing_warnings() as said:
        assert reference.resolve("auto", "cpu", torch.float32) == "reference"
    assert said == ["rnnkernels: backend='auto' runs sLSTM on the 'reference' backend (plain "
                    "PyTorch, not fused): no fused kernel for sLSTM can run here (cpu, "
                    "torch.float32)"]
    with pytest.raises(RuntimeError, match="cpu: not built"):
        reference.resolve("cpu", "cpu", torch.float32)
