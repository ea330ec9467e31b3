"""The C++ kernel of the layer-norm LSTM and GRU (``layer_norm=True`` on ``backend="cpu"``,
``rnnkernels/backends/cpu_layer_norm.py``, ``csrc/cpu/ln_impl.h``), against the independent
oracle (tests/variants_oracle_ln.py) and the reference backend.

Layers (two layers, both directions, packed unsorted lengths, no bias, odd sizes, zoneout in
training and eval) against the oracle in float32 and float64: outputs, final states and every gradient (input, h0, c0, each
parameter, the norms' gains and biases included); the scan itself against
``reference_variants.scan`` (both directions, lengths, H = 33, a thread team, T = 1, B = 0,
half types against the float32 reference by relative RMS), with every buffer the extension
allocates NaN-poisoned; float64 gradcheck; the other autograd modes through the reference's
loop (double backward, forward-mode AD, torch.func); torch.compile and opcheck of the op; and
the routing: auto runs layer norm alone or with zoneout on cpu, with another option on the
reference.
"""
from __future__ import annotations

import pytest
import torch

import rnnkernels
from rnnkernels import backends
from rnnkernels.backends import compiled, cpu_layer_norm, cpu_variants, reference_variants
from rnnkernels.cells import CELLS
from rnnkernels.variants import LAYER_NORM_EPS, LayerNormScan, ScanVariant
from tests import test_variants as TV
from tests import test_variants_ln as TLN
from tests.helpers import DTYPE_NAMES, assert_close, assert_forward_modes_match, routing_warnings
from tests.test_cpu_backend import _isa_available
from tests.test_variants_cpu import on_cpu  # noqa: F401  (fixtures)
from tests.test_variants_ln import ln_oracle  # noqa: F401

_WHY_NOT = backends.why_not("cpu", "cpu", torch.float32)
pytestmark = pytest.mark.skipif(_WHY_NOT is not None,
                                reason=f"backend 'cpu' cannot run here: {_WHY_NOT}")
LN = dict(layer_norm=True)

# test_variants_ln's layer cases that cpu runs (with peephole, heads or a projection layer norm
# runs on the reference), and zoneout in training
CASES = [c for c in TLN.CASES if not ({"peephole", "num_heads"} & set(c[3]))
         and "proj_size" not in c[2]] + [
    ("zoneout-L2-bidir-packed-train", "LSTM", TLN.L2B, dict(zoneout=(0.3, 0.4)), True, True),
    ("zoneout-h-eval", "LSTM", {}, dict(zoneout=(0.3, 0.0), hidden=7), False, False),
    ("zoneout-L2-bidir-train", "GRU", TLN.L2B, dict(zoneout=0.3), False, True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}-{c[0]}" for c in CASES])
def test_layers_match_the_oracle(on_cpu, ln_oracle, case, dtype):  # noqa: F811
    _, mode, layout, options, packed, training = case
    ours, ref, inputs, names = TV.layer_run(mode, layout, {**options, **LN}, dtype, packed,
                                            training)
    TV.compare(ours, ref, inputs, names)


def test_batch_first_and_cells(on_cpu, ln_oracle):  # noqa: F811
    ours, ref, inputs, names = TV.layer_run("GRU", TLN.L2B, dict(LN), torch.float64, True, False,
                                            batch_first=True)
    TV.compare(ours, ref, inputs, names)
    for mode in ("LSTMCell", "GRUCell"):
        TLN.test_cells_match_the_oracle(mode, {}, False, torch.float64, None)


# --------------------------------------------------------- the kernel against the reference
def _scan_case(name, dtype, T=6, B=7, H=33, lengths=True, bias=True, zoneout=None, seed=0):
    """(cell, xp, states, w_hh, lengths, variant) of one layer-norm scan in ``dtype``, the
    gains and biases away from 1 and 0; zoneout None, "train" (masks) or "eval"."""
    torch.manual_seed(seed)
    cell = CELLS[name]
    GH = cell.gates * H

    def t(*shape, mean=0.0):
        return (torch.randn(*shape, dtype=torch.float64) * 0.5 + mean).to(dtype).requires_grad_()
    xp, w = t(T, B, GH), t(GH, H)
    states = tuple(t(B, H) for _ in cell.states)
    norm = LayerNormScan(t(GH, mean=1), t(GH, mean=1),
                         (t(H, mean=1), t(H)) if name == "lstm" else None,
                         t(GH) if bias else None, t(H) if name == "gru" and bias else None)
    lens = torch.tensor([min(n, T) for n in [T, 1, 3, T, 2, 4, T][:B]] + [T] * max(0, B - 7)) \
        if lengths and B else None
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    keep = tuple(None if not zoneout else
                 (0.3 if zoneout == "eval" else torch.empty(T, B, H, dtype=acc).bernoulli_(0.4))
                 for _ in cell.states)
    return cell, xp, states, w, lens, ScanVariant(None, 1, keep, norm)


def _run(impl, case, reverse):
    cell, xp, states, w, lens, variant = case
    out, finals = impl.scan(cell, xp, states, w, None, None, lens, reverse, False, variant)
    norm = variant.layer_norm
    inputs = [x for x in (xp, *states, w, norm.ih, norm.hh, norm.bias, norm.b_hn,
                          *(norm.c or ())) if x is not None]
    torch.manual_seed(1)
    results = [out, *finals]
    weights = [torch.randn(r.shape, dtype=torch.float64).to(r.dtype) for r in results]
    loss = sum((wt * r.float()).sum() for wt, r in zip(weights, results))
    return results, list(torch.autograd.grad(loss, inputs)) if loss.requires_grad else []


def _compare(got, want, close=assert_close):
    names = ["out", "h_n", "c_n"][:len(got[0])] + [f"grad {i}" for i in range(len(want[1]))]
    for a, e, what in zip(got[0] + got[1], want[0] + want[1], names):
        close(a, e, what)


@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("name,bias,zoneout", [
    ("lstm", True, None), ("lstm", False, "train"), ("lstm", True, "eval"), ("gru", True, None),
    ("gru", False, "eval"), ("gru", True, "train")],
    ids=["lstm", "lstm-nobias-zoneout-train", "lstm-zoneout-eval", "gru",
         "gru-nobias-zoneout-eval", "gru-zoneout-train"])
def test_kernel_matches_the_reference(name, bias, zoneout, dtype, reverse, path):
    """Both ways of the recurrent product (ln_impl.h): the scans' own panels (``fused``, what
    small batches take) and the library GEMM (``gemm``)."""
    case = _scan_case(name, dtype, bias=bias, zoneout=zoneout)
    with compiled.option("poison", "1"), compiled.option("cpu_path", path):
        got = _run(cpu_layer_norm, case, reverse)
    _compare(got, _run(reference_variants, case, reverse), TLN._close)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_every_instruction_set_build_matches_the_reference(name, isa):
    """Each build of the row kernels (isa_build.h: vectors of 8 or 16 floats, so H = 33 leaves
    a ragged end in each) where this CPU runs it."""
    if not _isa_available(isa):
        pytest.skip(f"this CPU cannot run the {isa} build")
    case = _scan_case(name, torch.float32, zoneout="train")
    with compiled.option("poison", "1"), compiled.option("cpu_isa", isa):
        got = _run(cpu_layer_norm, case, True)
    _compare(got, _run(reference_variants, case, True), TLN._close)


@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_thread_team_matches_the_reference(name, path):
    """Enough rows per step for the row kernels' OpenMP loop to run on a team of 2, and (fused)
    the panels and W_hh's columns split between the two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        case = _scan_case(name, torch.float64, B=40, H=66, zoneout="train")
        with compiled.option("poison", "1"), compiled.option("cpu_path", path):
            got = _run(cpu_layer_norm, case, True)
    finally:
        torch.set_num_threads(threads)
    _compare(got, _run(reference_variants, case, True))


@pytest.mark.parametrize("T,B", [(1, 3), (4, 0)], ids=["T1", "B0"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_edge_sizes(name, T, B):
    case = _scan_case(name, torch.float64, T=T, B=B, lengths=B > 0)
    _compare(_run(cpu_layer_norm, case, False), _run(reference_variants, case, False))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_half_types_match_the_fp32_reference(name, dtype):
    """Half inputs run in float32 (the accumulation dtype) and come back in their dtype."""
    got = _run(cpu_layer_norm, _scan_case(name, dtype), True)
    want = _run(reference_variants, _scan_case(name, torch.float32), True)
    for a, e in zip(got[0] + got[1], want[0] + want[1]):
        assert a.dtype == dtype
        err = (a.float() - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-6)
        assert err < 2e-2, float(err)


def test_named_cpu_refuses_what_it_cannot_run():
    cell, xp, states, w, lens, variant = _scan_case("lstm", torch.float64)
    heads = ScanVariant(None, 3, variant.keep, variant.layer_norm)
    with pytest.raises(RuntimeError, match="backend 'cpu' runs layer norm alone or with zoneout"):
        cpu_layer_norm.scan(cell, xp, states, w, None, None, lens, False, False, heads)


# -------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode,layout", [
    ("LSTM", dict(bidirectional=True, zoneout=(0.3, 0.5))),
    ("LSTM", dict(num_layers=2, bias=False)),
    ("GRU", dict(bidirectional=True)), ("GRU", dict(num_layers=2, bias=False, zoneout=0.3))],
    ids=["LSTM-bidir-zoneout", "LSTM-L2-nobias", "GRU-bidir", "GRU-L2-nobias-zoneout"])
def test_gradcheck_float64(mode, layout, packed):
    torch.manual_seed(0)
    module = TLN._perturbed(getattr(rnnkernels, mode)(3, 4, **layout, **LN,
                                                      backend="cpu").double())
    names = [n for n, _ in module.named_parameters()]
    count = module.num_layers * (2 if module.bidirectional else 1)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(count, 2, 4, dtype=torch.float64, requires_grad=True)
              for _ in range(2))
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    assert torch.autograd.gradcheck(TV._functional(module, names, packed), (x, h0, c0, *params),
                                    fast_mode=True)


# ------------------------------------------------------------------------ other autograd modes
def _module(mode, backend):
    torch.manual_seed(0)
    zoneout = (0.3, 0.5) if mode == "LSTM" else 0.3
    return TLN._perturbed(getattr(rnnkernels, mode)(3, 4, zoneout=zoneout, **LN,
                                                    backend=backend).double())


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_double_backward_runs_the_reference_loop(mode):
    """gradgradcheck through the cpu module (its backward under create_graph=True recomputes
    the reference forward), and a gradient of a gradient equals the reference's."""
    module = _module(mode, "cpu")
    names = [n for n, _ in module.named_parameters()]
    call = TV._functional(module, names, packed=False)
    inputs = [torch.randn(3, 1, 3, dtype=torch.float64), torch.randn(1, 1, 4, dtype=torch.float64),
              torch.randn(1, 1, 4, dtype=torch.float64)]
    inputs += [p.detach().clone() for p in module.parameters()]
    assert torch.autograd.gradgradcheck(call, tuple(t.requires_grad_(True) for t in inputs),
                                        fast_mode=True)
    results = []
    for backend in ("cpu", "reference"):
        m = _module(mode, backend)
        x = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4),
                        requires_grad=True)
        torch.manual_seed(4)                   # the same zoneout masks on both backends
        g, = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(g.pow(2).sum(), [x, *m.parameters()]))
    for a, e in zip(*results):
        assert_close(a, e, "grad of grad")


def test_forward_ad_and_torch_func_run_the_reference_loop():
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for mode in ("LSTM", "GRU"):
        ours, ref = (_module(mode, b).eval() for b in ("cpu", "reference"))   # zoneout: p
        assert_forward_modes_match(ours, ref, x, assert_close)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_torch_compile_fullgraph(name):
    cell, xp, states, w, lens, variant = _scan_case(name, torch.float32)
    norm = variant.layer_norm

    def fn(xp, states, w, ih, hh, c, bias, b_hn):
        v = ScanVariant(None, 1, variant.keep, LayerNormScan(ih, hh, c, bias, b_hn))
        out, finals = cpu_layer_norm.scan(cell, xp, states, w, None, None, lens, True, False, v)
        return out.sum() + sum(s.sum() for s in finals)
    args = (xp, states, w, norm.ih, norm.hh, norm.c, norm.bias, norm.b_hn)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
    want = fn(*args)
    assert_close(got, want, "compiled")
    inputs = [xp, *states, w, norm.ih, norm.hh, norm.bias, *(norm.c or (norm.b_hn,))]
    for a, e in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        TLN._close(a, e, "compiled grad")


@pytest.mark.parametrize("name,zoneout", [("lstm", "train"), ("gru", "eval")])
def test_opcheck(name, zoneout):
    cell, xp, states, w, lens, variant = _scan_case(name, torch.float32, T=3, B=3,
                                                    zoneout=zoneout)
    n = variant.layer_norm
    lstm = name == "lstm"
    args = (0 if lstm else 1, xp, states[0], states[1] if lstm else None, w, n.ih, n.bias, n.hh,
            n.b_hn, *(n.c if lstm else (None, None)), *cpu_variants.zoneout_args(variant.keep),
            LAYER_NORM_EPS, lens, True, True)
    torch.library.opcheck(torch.ops.rnnkernels.ln_scan_cpu.default, args)


# --------------------------------------------------------------------------------- routing
def test_auto_runs_layer_norm_alone_on_cpu_and_combinations_on_the_reference():
    x = torch.randn(4, 2, 5)
    with routing_warnings() as said:
        torch.manual_seed(0)
        auto = rnnkernels.GRU(5, 6, **LN)
        torch.manual_seed(0)
        cpu = rnnkernels.GRU(5, 6, **LN, backend="cpu")
        assert torch.equal(auto(x)[0], cpu(x)[0])
        rnnkernels.LSTM(5, 6, **LN)(x)
        rnnkernels.LSTM(5, 6, zoneout=(0.2, 0.3), **LN)(x)
        rnnkernels.LSTM(5, 6, peephole=True, **LN)(x)
    assert said == ["rnnkernels: backend='auto' runs peephole, layer norm on the 'reference' "
                    "backend (plain PyTorch, not fused): no fused kernel for peephole, layer "
                    "norm yet"]
    for module in (rnnkernels.GRU(5, 6, num_heads=2, **LN, backend="cpu"),
                   rnnkernels.LSTM(5, 6, peephole=True, zoneout=0.1, **LN, backend="cpu")):
        with pytest.raises(RuntimeError, match="backend 'cpu' cannot run .*layer norm: no fused"):
            module(x)
    with pytest.raises(RuntimeError, match="backend 'cpu' cannot run layer norm with proj_size"):
        rnnkernels.LSTM(5, 6, proj_size=3, **LN, backend="cpu")(x)
