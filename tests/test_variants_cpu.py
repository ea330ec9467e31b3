"""The fused CPU kernels of the recurrent variants (``backend="cpu"``), against the independent
oracle (tests/variants_oracle.py) and the reference backend.

Mirrors tests/test_variants.py, on the ``cpu`` backend: every layer and cell case of it (odd
sizes, layers, both directions, packed unsorted lengths, zoneout in training and eval) compared
with the oracle in float32 and float64, outputs, final states and every gradient (input, h0,
c0, each parameter, weight_ch included); then the kernel itself against
``reference_variants.scan`` over the dtypes (half: fp32 state, compared by relative RMS with the
fp32 reference), heads of odd width, B = 0, T = 1; float64 gradcheck; every autograd mode
(double backward, forward-mode AD, torch.func) through the reference's loop; torch.compile and
opcheck of the custom op; the routing (``auto`` picks cpu; proj_size goes to the reference).
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels
from rnnkernels import backends
from rnnkernels.backends import compiled, cpu_variants, reference_variants
from rnnkernels.cells import CELLS
from rnnkernels.variants import ScanVariant
from tests import test_variants as TV
from tests.helpers import (DTYPE_NAMES, assert_close, assert_forward_modes_match, our_class,
                           routing_warnings)

_WHY_NOT = backends.why_not("cpu", "cpu", torch.float32)
pytestmark = pytest.mark.skipif(_WHY_NOT is not None,
                                reason=f"backend 'cpu' cannot run here: {_WHY_NOT}")


@pytest.fixture
def on_cpu(monkeypatch):
    """test_variants' modules built on the cpu backend (its cases construct them through
    `our_class`, with backend="reference"), with every buffer the extension allocates poisoned
    with NaN (an element the kernels fail to write shows)."""
    def cpu_class(mode):
        cls = our_class(mode)
        return lambda *args, backend=None, **kwargs: cls(*args, backend="cpu", **kwargs)
    monkeypatch.setattr(TV, "our_class", cpu_class)
    with compiled.option("poison", "1"):
        yield


CPU_CASES = [c for c in TV.CASES if "proj_size" not in c[2]]     # projection: see routing


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("case", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_layers_match_the_oracle(on_cpu, case, dtype):
    _, mode, layout, options, packed, training = case
    ours, ref, inputs, names = TV.layer_run(mode, layout, dict(options), dtype, packed, training)
    TV.compare(ours, ref, inputs, names)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("mode,options,training", TV.CELL_CASES,
                         ids=[f"{m}-{'-'.join(o)}-{'train' if t else 'eval'}"
                              for m, o, t in TV.CELL_CASES])
def test_cells_match_the_oracle(on_cpu, mode, options, training, dtype):
    TV.test_cells_match_the_oracle(mode, options, training, dtype)


def test_batch_first_and_unbatched(on_cpu):
    TV.test_batch_first_and_unbatched()


# --------------------------------------------------------- the kernel against the reference
def _scan_case(name, relu, heads, peephole, zoneout, dtype, T=6, B=5, H=12, reverse=False,
               lengths=True, seed=0):
    """Inputs of one scan: (cell, xp, states, w_hh, b_hn, lengths, ScanVariant) in ``dtype``."""
    torch.manual_seed(seed)
    cell = CELLS[name]
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def t(*shape):
        return (torch.randn(*shape, dtype=torch.float64) * 0.5).to(dtype).requires_grad_()
    xp, w = t(T, B, cell.gates * H), t(cell.gates * H, H // heads)
    states = tuple(t(B, H) for _ in cell.states)
    b_hn = t(H) if name == "gru" else None
    keep = tuple(None if not zoneout else
                 (0.3 if zoneout == "eval" else torch.empty(T, B, H, dtype=acc).bernoulli_(0.4))
                 for _ in cell.states)
    lens = torch.tensor([min(n, T) for n in [T, 1, 3, T, 2][:B]] + [T] * max(0, B - 5)) \
        if lengths and B else None
    variant = ScanVariant(t(3, H) if peephole else None, heads, keep)
    return cell, xp, states, w, b_hn, lens, reverse, relu, variant


def _run(impl, case):
    cell, xp, states, w, b_hn, lens, reverse, relu, variant = case
    out, finals = impl.scan(cell, xp, states, w, None, b_hn, lens, reverse, relu, variant)
    inputs = [x for x in (xp, *states, w, b_hn, variant.peephole) if x is not None]
    torch.manual_seed(1)
    results = [out, *finals]
    weights = [torch.randn(r.shape, dtype=torch.float64).to(r.dtype) for r in results]
    loss = sum((wt * r.float()).sum() for wt, r in zip(weights, results))
    return results, torch.autograd.grad(loss, inputs) if loss.requires_grad else []


KERNEL_CASES = [  # (id, cell, relu, heads, peephole, zoneout)
    ("lstm-all", "lstm", False, 3, True, "train"),
    ("lstm-peephole-eval", "lstm", False, 1, True, "eval"),
    ("lstm-heads", "lstm", False, 11, False, None),
    ("gru-all", "gru", False, 3, False, "train"),
    ("gru-eval", "gru", False, 1, False, "eval"),
    ("rnn-tanh-heads", "rnn", False, 3, False, None),
    ("rnn-relu-heads", "rnn", True, 11, False, None),
]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("case", KERNEL_CASES, ids=[c[0] for c in KERNEL_CASES])
def test_kernel_matches_the_reference(case, dtype, reverse):
    args = _scan_case(*case[1:], dtype, reverse=reverse, H=33, B=7)    # heads of d = 11 ...
    with compiled.option("poison", "1"):
        got, got_grads = _run(cpu_variants, args)
    want, want_grads = _run(reference_variants, args)
    for a, e, what in zip(got + list(got_grads), want + list(want_grads),
                          ["out", "h_n", "c_n"][:len(got)] + ["grad"] * len(want_grads)):
        assert_close(a, e, what)


@pytest.mark.parametrize("case", [KERNEL_CASES[0], KERNEL_CASES[3]],
                         ids=[KERNEL_CASES[0][0], KERNEL_CASES[3][0]])
def test_thread_team_matches_the_reference(case):
    """A case large enough for a team of 2 threads (variant_threads): each owns panels of
    several heads of d = 11 units, and in the backward a slice that cuts through heads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = _scan_case(case[1], case[2], 6, *case[4:], torch.float64, reverse=True, H=66, B=40)
        with compiled.option("poison", "1"):
            got, got_grads = _run(cpu_variants, args)
    finally:
        torch.set_num_threads(threads)
    want, want_grads = _run(reference_variants, args)
    for a, e in zip(got + list(got_grads), want + list(want_grads)):
        assert_close(a, e, "team")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("case", KERNEL_CASES[:1] + KERNEL_CASES[3:4],
                         ids=[c[0] for c in KERNEL_CASES[:1] + KERNEL_CASES[3:4]])
def test_half_types_match_the_fp32_reference(case, dtype):
    got, got_grads = _run(cpu_variants, _scan_case(*case[1:], dtype, reverse=True))
    want, want_grads = _run(reference_variants, _scan_case(*case[1:], torch.float32,
                                                           reverse=True))
    for a, e in zip(got + list(got_grads), want + list(want_grads)):
        assert a.dtype == dtype
        err = (a.float() - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-6)
        assert err < 2e-2, float(err)


@pytest.mark.parametrize("T,B", [(1, 3), (4, 0)], ids=["T1", "B0"])
def test_edge_sizes(T, B):
    args = _scan_case("lstm", False, 3, True, "train", torch.float32, T=T, B=B, lengths=B > 0)
    got, got_grads = _run(cpu_variants, args)
    want, want_grads = _run(reference_variants, args)
    for a, e in zip(got + list(got_grads), want + list(want_grads)):
        assert_close(a, e, "edge")


# -------------------------------------------------------------------------------- gradcheck
CPU_GRAD_CASES = [c for c in TV.GRAD_CASES if "proj_size" not in c[2]]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode,options,layout", CPU_GRAD_CASES,
                         ids=[f"{m}-{'-'.join(o)}" for m, o, _ in CPU_GRAD_CASES])
def test_gradcheck_float64(on_cpu, mode, options, layout, packed):
    TV.test_gradcheck_float64(mode, options, layout, packed)


# ------------------------------------------------------------------------ other autograd modes
def _lstm(backend):
    torch.manual_seed(0)
    return rnnkernels.LSTM(3, 4, peephole=True, num_heads=2, zoneout=(0.3, 0.5),
                           backend=backend).double().eval()


def test_double_backward_runs_the_reference_loop():
    """gradgradcheck through the cpu module (its backward under create_graph=True recomputes
    the reference forward), and the gradient of a gradient equals the reference's."""
    module = _lstm("cpu").train()
    names = ["weight_hh_l0", "weight_ch_l0"]
    fixed = {n: p.detach() for n, p in module.named_parameters() if n not in names}
    call = TV._functional(module, [*fixed, *names], packed=False)
    inputs = [torch.randn(3, 1, 3, dtype=torch.float64), torch.randn(1, 1, 4, dtype=torch.float64),
              torch.randn(1, 1, 4, dtype=torch.float64)]
    inputs += [getattr(module, n).detach().clone() for n in names]
    inputs = [t.requires_grad_(True) for t in inputs]
    fn = lambda x, h0, c0, *ws: call(x, h0, c0, *fixed.values(), *ws)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, tuple(inputs))
    results = []
    for backend in ("cpu", "reference"):
        m = _lstm(backend)
        x = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4),
                        requires_grad=True)
        g, = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(g.pow(2).sum(), [x, m.weight_ch_l0]))
    for a, e in zip(*results):
        assert_close(a, e, "grad of grad")


def test_forward_ad_and_torch_func_run_the_reference_loop():
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert_forward_modes_match(_lstm("cpu"), _lstm("reference"), x, assert_close)


def test_torch_compile_fullgraph():
    """The scan compiles whole (the custom op's fake impl), forward and backward. (A module
    with variants does not compile yet: resolving its backend imports modules, which Dynamo
    refuses to trace.)"""
    args = _scan_case("lstm", False, 3, True, "train", torch.float32)
    cell, xp, states, w, b_hn, lens, reverse, relu, variant = args

    def fn(xp, h0, c0, w, peep):
        out, (h, c) = cpu_variants.scan(cell, xp, (h0, c0), w, None, None, lens, True, False,
                                        ScanVariant(peep, 3, variant.keep))
        return out.sum() + h.sum() + c.sum()
    inputs = (xp, *states, w, variant.peephole)
    compiled_fn = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got, want = compiled_fn(*inputs), fn(*inputs)
    assert_close(got, want, "compiled")
    for a, e in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        assert_close(a, e, "compiled grad")


@pytest.mark.parametrize("case", KERNEL_CASES, ids=[c[0] for c in KERNEL_CASES])
def test_opcheck(case):
    cell, xp, states, w, b_hn, lens, reverse, relu, variant = _scan_case(
        *case[1:], torch.float32, T=3, B=3, H=33, reverse=True)
    code = {"lstm": 0, "gru": 1}.get(cell.name, 3 if relu else 2)
    args = (code, xp, states[0], states[1] if code == 0 else None, w, b_hn, variant.peephole,
            *cpu_variants.zoneout_args(variant.keep), variant.num_heads, lens, True, True)
    torch.library.opcheck(torch.ops.rnnkernels.variant_scan_cpu.default, args)


# --------------------------------------------------------------------------------- routing
def test_auto_picks_cpu_and_projection_goes_to_the_reference():
    x = torch.randn(4, 2, 5)
    with routing_warnings() as said:
        rnnkernels.GRU(5, 6, num_heads=2, zoneout=0.1)(x)
        rnnkernels.LSTM(5, 6, peephole=True, proj_size=3)(x)
    assert said == ["rnnkernels: backend='auto' runs peephole with proj_size > 0 on the "
                    "'reference' backend (plain PyTorch, not fused): no fused kernel for "
                    "peephole with proj_size > 0 yet"]
    with pytest.raises(RuntimeError, match="backend 'cpu' cannot run peephole with proj_size"):
        rnnkernels.LSTM(5, 6, peephole=True, proj_size=3, backend="cpu")(x)


def test_packed_module_equals_the_reference_module():
    """A whole module (two layers, both directions, packed unsorted lengths, every variant) on
    cpu and on the reference, same parameters and zoneout masks."""
    x = torch.randn(6, 4, 5)
    lengths = [3, 6, 1, 4]
    results = []
    for backend in ("cpu", "reference"):
        torch.manual_seed(0)
        m = rnnkernels.LSTM(5, 8, 2, bidirectional=True, peephole=True, num_heads=4,
                            zoneout=(0.2, 0.3), backend=backend)
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
        torch.manual_seed(5)
        out, (h, c) = m(inp)
        out = pad_packed_sequence(out)[0]
        grads = torch.autograd.grad(out.sum() + h.sum() + c.sum(), list(m.parameters()))
        results.append([out, h, c, *grads])
    for a, e in zip(*results):
        assert_close(a, e, "module")
