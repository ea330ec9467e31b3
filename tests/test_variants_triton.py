"""The Triton kernels of the recurrent variants (peephole, head-wise recurrence, zoneout).

Scan level: ``backends/triton/variants.scan`` against ``backends/reference_variants.scan``
(plain PyTorch, differentiated by autograd: the oracle of the hand-written reverse scan): out,
final states, and the gradients of xp, h0, c0, W_hh, W_hr, b_hn and weight_ch, every option and
combinations, lengths (unsorted, reverse), T = 1, odd sizes, both strategies, 16-wide tiles (so
H = 24 / 21 splits into tiles that cross head boundaries and heads of odd width), fp16/bf16;
every buffer the backend allocates is NaN-poisoned (``triton_cases``). Module level: the cases
of ``tests/test_variants.py`` against the independent oracle ``tests/variants_oracle.py``, with
``backend="triton"``; the cells; opcheck and torch.compile of the op; double backward and
forward-mode AD (they run the reference's loop) and routing. Under ``TRITON_INTERPRET=1``
without a GPU: sizes stay small (T ≤ 7, H ≤ 24).

Ids: ``{cell}-T{T}-B{B}-H{H}[-heads k][-peep][-zh…][-zc…][-proj][-rev][-lengths]-{dtype}-{strategy}``.
"""
from __future__ import annotations

import pytest
import torch

import rnnkernels
from rnnkernels import variants as V
from rnnkernels.backends import reference_variants as RV
from rnnkernels.cells import CELLS
from tests import test_variants as module_cases
from tests.helpers import assert_forward_modes_match
from tests.triton_cases import _REASON, DEVICE, _active, _compare, tb
from tests.triton_cases import _tf32_off_and_poison  # noqa: F401 - autouse fixture, used here

pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"triton backend: {_REASON}")
TV = pytest.importorskip("rnnkernels.backends.triton.variants")
_DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_CELL = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}


class Case:
    def __init__(self, cell, T, B, H, *, heads=1, peep=False, zh=None, zc=None, proj=0,
                 rev=False, lengths=None, dtype="fp32", strategy="persistent", tiles16=False,
                 bhn=True):
        self.cell, self.T, self.B, self.H, self.heads = cell, T, B, H, heads
        self.peep, self.zh, self.zc, self.proj, self.rev = peep, zh, zc, proj, rev
        self.lengths, self.dtype, self.strategy = lengths, dtype, strategy
        self.tiles16, self.bhn = tiles16, bhn

    @property
    def id(self):
        parts = [self.cell, f"T{self.T}", f"B{self.B}", f"H{self.H}"]
        parts += [f"heads{self.heads}"] if self.heads > 1 else []
        parts += ["peep"] if self.peep else []
        parts += [f"zh{self.zh}"] if self.zh is not None else []
        parts += [f"zc{self.zc}"] if self.zc is not None else []
        parts += [f"proj{self.proj}"] if self.proj else []
        parts += ["nobhn"] if self.cell == "GRU" and not self.bhn else []
        parts += ["rev"] if self.rev else []
        parts += ["lengths"] if self.lengths else []
        parts += [self.dtype, self.strategy] + (["tiles16"] if self.tiles16 else [])
        return "-".join(parts)


CASES = [
    Case("LSTM", 7, 3, 24, peep=True, lengths=[7, 1, 4]),
    Case("LSTM", 7, 3, 24, heads=3, peep=True, zh="mask", zc="mask", lengths=[2, 7, 1],
         rev=True, strategy="step", tiles16=True),
    Case("LSTM", 5, 2, 21, heads=3, zh=0.3, zc=0.6, rev=True, tiles16=True),
    Case("LSTM", 6, 3, 12, proj=5, peep=True, zh="mask", zc="mask", lengths=[3, 6, 1],
         strategy="step"),
    Case("LSTM", 4, 2, 24, proj=17, zh=0.25, rev=True, tiles16=True),
    Case("LSTM", 4, 2, 16, proj=24, zh="mask", peep=True, lengths=[2, 4]),   # P > H (not nn)
    Case("LSTM", 1, 3, 12, heads=2, peep=True, zh="mask", zc=0.5),
    Case("LSTM", 6, 2, 24, zc="mask", heads=2, tiles16=True, strategy="step"),
    Case("GRU", 7, 3, 24, heads=2, zh="mask", lengths=[4, 7, 1], rev=True, strategy="step",
         tiles16=True),
    Case("GRU", 6, 2, 20, zh=0.25, bhn=False, lengths=[6, 3]),
    Case("GRU", 1, 3, 12, heads=4, zh="mask"),
    Case("RNN_TANH", 7, 3, 24, heads=3, lengths=[7, 2, 5], strategy="step", tiles16=True),
    Case("RNN_RELU", 5, 2, 21, heads=3, rev=True, tiles16=True),
    Case("LSTM", 6, 3, 24, heads=2, peep=True, zh="mask", zc="mask", lengths=[6, 2, 5],
         dtype="fp16"),
    Case("GRU", 5, 2, 24, heads=3, zh="mask", rev=True, dtype="bf16", strategy="step"),
    Case("RNN_TANH", 5, 2, 16, heads=2, dtype="fp16", strategy="step"),
]


def _inputs(case: Case, seed: int = 0):
    """(tensors by name, lengths, ScanVariant, cotangents of out and the final states)."""
    g = torch.Generator().manual_seed(seed)
    cell = CELLS[_CELL[case.cell]]
    T, B, H, G = case.T, case.B, case.H, cell.gates
    P = case.proj or H

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    k = H // case.heads
    x = {"xp": rnd(T, B, G * H), "h0": rnd(B, P, scale=0.5),
         "w_hh": rnd(G * H, P if case.heads == 1 else k, scale=k ** -0.5)}
    if cell.name == "lstm":
        x["c0"] = rnd(B, H, scale=0.5)
        x["w_hr"] = rnd(P, H, scale=H ** -0.5) if case.proj else None
        x["w_ch"] = rnd(3, H, scale=0.5) if case.peep else None
    if cell.name == "gru":
        x["b_hn"] = rnd(H, scale=0.3) if case.bhn else None

    def keep(z, size):
        if z == "mask":
            return torch.bernoulli(torch.full((T, B, size), 0.4), generator=g).to(DEVICE)
        return z

    keeps = (keep(case.zh, P),) + ((keep(case.zc, H),) if cell.name == "lstm" else ())
    lengths = None if case.lengths is None else torch.tensor(case.lengths, device=DEVICE)
    cot = [rnd(T, B, P), rnd(B, P)] + ([rnd(B, H)] if cell.name == "lstm" else [])
    return x, lengths, keeps, cot


def _run(impl, case, x, lengths, keeps, cot):
    """(out, final states, gradients of every tensor input) of one scan."""
    cell = CELLS[_CELL[case.cell]]
    x = {n: None if t is None else t.detach().requires_grad_() for n, t in x.items()}
    states = (x["h0"], x["c0"]) if cell.name == "lstm" else (x["h0"],)
    variant = V.ScanVariant(x.get("w_ch"), case.heads, keeps)
    out, finals = impl.scan(cell, x["xp"], states, x["w_hh"], x.get("w_hr"), x.get("b_hn"),
                            lengths, case.rev, case.cell == "RNN_RELU", variant)
    names = [n for n, t in x.items() if t is not None]
    loss = sum((o.float() * c.float()).sum() for o, c in zip((out, *finals), cot))
    grads = torch.autograd.grad(loss, [x[n] for n in names])
    return [out, *finals], dict(zip(names, grads))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scan_matches_the_reference(case):
    x, lengths, keeps, cot = _inputs(case)
    dt = _DT[case.dtype]
    cast = {n: None if t is None else t.to(dt) for n, t in x.items()}
    tiles = {"block_b": 16, "block_h": 16, "block_k": 16} if case.tiles16 else {}
    with tb.strategy(case.strategy), tb.tuning(**tiles):
        outs, grads = _run(TV, case, cast, lengths, keeps, [c.to(dt) for c in cot])
    # The oracle runs in float32 on the same (rounded) inputs.
    ref = {n: None if t is None else t.float() for n, t in cast.items()}
    want_outs, want_grads = _run(RV, case, ref, lengths, keeps, [c.to(dt).float() for c in cot])
    for name, got, want in zip(["out", "h_n", "c_n"], outs, want_outs):
        assert got.dtype == dt and got.shape == want.shape, name
        _compare(name, got, want, case)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        assert grads[name].dtype == dt and grads[name].shape == want_grads[name].shape, name
        _compare(f"grad {name}", grads[name], want_grads[name], case)
    act = _active(case)
    assert (outs[0][~act.expand_as(outs[0])] == 0).all(), "out must be exactly 0 at t >= L_b"
    dxp = grads["xp"]
    assert (dxp[~act.expand_as(dxp)] == 0).all(), "dxp must be exactly 0 at t >= L_b"


# ----------------------------------------------------------------------------- module level
_MODULE_CASES = [c for c in module_cases.CASES
                 if c[0] in ("peephole-L2-bidir-packed", "peephole-proj", "heads3-H12-L2-bidir",
                             "heads2-L2-bidir-packed", "heads3-bidir-packed",
                             "zoneout-pair-L2-bidir-train", "zoneout-eval",
                             "zoneout-L2-bidir-packed-train", "all-L2-bidir-packed-train",
                             "peephole-zoneout-proj-train", "heads3-zoneout-H12-train")]


@pytest.mark.triton_subset
@pytest.mark.parametrize("case", _MODULE_CASES, ids=[c[0] for c in _MODULE_CASES])
def test_modules_match_the_oracle(case, monkeypatch):
    """tests/test_variants.py's layer cases (layers, directions, packed unsorted lengths,
    projections, zoneout in training and eval) with backend="triton", float32."""
    build = module_cases.build

    def on_triton(*args, **kwargs):
        module = build(*args, **kwargs)
        module.backend = "triton"
        return module

    monkeypatch.setattr(module_cases, "build", on_triton)
    _, mode, layout, options, packed, training = case
    ours, ref, inputs, names = module_cases.layer_run(mode, layout, dict(options), torch.float32,
                                                      packed, training)
    module_cases.compare(ours, ref, inputs, names)


@pytest.mark.parametrize("cls,kw", [("LSTMCell", dict(peephole=True, zoneout=(0.2, 0.5))),
                                    ("GRUCell", dict(num_heads=2, zoneout=0.3)),
                                    ("RNNCell", dict(num_heads=3, nonlinearity="relu"))])
def test_cells_match_the_reference_backend(cls, kw):
    """The cells (one step of the scan) in training: same masks, same results and gradients."""
    results = []
    for backend in ("triton", "reference"):
        torch.manual_seed(0)
        cell = getattr(rnnkernels, cls)(5, 6, **kw, backend=backend).train()
        x = torch.randn(3, 5, requires_grad=True)
        torch.manual_seed(1)
        out = cell(x)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
        results.append([*outs, *torch.autograd.grad(loss, [x, *cell.parameters()])])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


# ------------------------------------------------------------------------ op, autograd modes
def _op_args(cell: str, grad: bool):
    torch.manual_seed(0)
    T, B, H, heads = 3, 2, 8, 2
    G = CELLS[cell].gates

    def rnd(*shape):
        return torch.randn(*shape, device=DEVICE).requires_grad_(grad)

    lstm = cell == "lstm"
    return (rnd(T, B, G * H), rnd(B, H), rnd(B, H) if lstm else None, rnd(G * H, H // heads),
            None, rnd(H) if cell == "gru" else None, rnd(3, H) if lstm else None,
            torch.bernoulli(torch.full((T, B, H), 0.5)) if cell != "rnn" else None,
            torch.tensor(0.3) if lstm else None, torch.tensor([3, 1]), cell, True,
            False, heads, True)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_opcheck(cell):
    torch.library.opcheck(torch.ops.rnnkernels.triton_variant_scan, _op_args(cell, True))


def test_torch_compile_fullgraph():
    """The op traces whole (fake impl, autograd): forward and gradients as in eager mode.
    (Module level: the variant modules' backend resolution is not traceable yet.)"""
    case = Case("LSTM", 4, 2, 16, heads=2, peep=True, zh="mask", zc=0.3, lengths=[4, 2])
    x, lengths, keeps, cot = _inputs(case)

    def fn(xp, h0, c0, w_hh, w_ch):
        variant = V.ScanVariant(w_ch, 2, keeps)
        out, (h_n, c_n) = TV.scan(CELLS["lstm"], xp, (h0, c0), w_hh, None, None, lengths,
                                  False, False, variant)
        return out, h_n, c_n

    args = [x[n].detach().requires_grad_() for n in ("xp", "h0", "c0", "w_hh", "w_ch")]
    want = fn(*args)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
    grads = [torch.autograd.grad(sum((o * c).sum() for o, c in zip(res, cot)), args)
             for res in (want, got)]
    for a, b in zip([*got, *grads[1]], [*want, *grads[0]]):
        torch.testing.assert_close(a, b)


def _twins(kind, **kw):
    torch.manual_seed(0)
    ours = getattr(rnnkernels, kind)(3, 8, **kw, backend="triton")
    ref = getattr(rnnkernels, kind)(3, 8, **kw, backend="reference")
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def test_double_backward_runs_the_reference_loop():
    """create_graph=True: the gradient is itself differentiable, and its gradient is the
    reference's (never a zero or stale second derivative)."""
    ours, ref = _twins("LSTM", peephole=True, num_heads=2, zoneout=(0.2, 0.4))
    x = torch.randn(4, 2, 3)
    results = []
    for m in (ours, ref):
        m.eval()
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m(xi)[0].pow(2).sum(), xi, create_graph=True)
        params = list(m.parameters())
        results.append([gx, *torch.autograd.grad(gx.pow(2).sum(), [xi, *params])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert results[0][1].abs().sum() > 0


def test_forward_ad_and_torch_func_run_the_reference_loop():
    ours, ref = _twins("GRU", num_heads=2, zoneout=0.25)
    ours.eval(), ref.eval()
    assert_forward_modes_match(ours, ref, torch.randn(5, 2, 3),
                               lambda got, want, what: torch.testing.assert_close(got, want, msg=what))


def test_routing():
    """Listed after the CPU kernels and before the reference; never auto-picked on the CPU
    (an interpreter there), named it runs every option of the three cells."""
    names = list(V.KERNELS)
    assert names.index("triton") < names.index("reference")
    assert set(V.KERNELS["triton"][1]) == {"peephole", "num_heads", "zoneout"}
    spec = V.parse(CELLS["lstm"], 8, 0, dict(peephole=True, zoneout=0.1))
    assert V.resolve("triton", spec, "cpu", torch.float32) == "triton"
    assert V.resolve("auto", spec, "cpu", torch.float32) != "triton"
