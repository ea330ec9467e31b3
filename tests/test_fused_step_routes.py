"""Which calls run the fused C++ step (rnnkernels/routes.py), and that they equal torch.nn there.

On the CPU under ``auto`` (or ``cpu``) a cell call and a layer called with one time step run
``routes.fused_step``: one C++ call per layer and direction. The kernel itself is tested in
tests/test_cell_step.py; here the routing and everything around it (unbatched input, hx None,
layers, directions, projection, dropout between layers, initial states, every gradient and the
second derivatives) against torch.nn on the same weights.
"""
from __future__ import annotations

import pytest
import torch

import rnnkernels
from rnnkernels import routes
from rnnkernels.backends import cell_step
from tests.helpers import assert_close, assert_same_error

pytestmark = pytest.mark.skipif(not cell_step.AVAILABLE,
                                reason=f"no fused cell step here: {cell_step.ERROR}")

F64 = torch.float64
CELL_CASES = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}),
              ("RNNCell", {"nonlinearity": "relu"}), ("LSTMCell", {"bias": False})]
LAYER_CASES = [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}), ("RNN", {}),
               ("RNN", {"nonlinearity": "relu", "bias": False})]


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = routes.fused_step

    def counting(*args, **kwargs):
        calls.append(args[0].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(routes, "fused_step", counting)
    monkeypatch.setattr(rnnkernels.functional, "fused_step", counting)
    return calls


def twins(cls, kw, backend="auto", dtype=F64, **more):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(5, 6, **kw, **more).to(dtype)
    ours = getattr(rnnkernels, cls)(5, 6, backend=backend, **kw, **more).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def run(m, x, hx):
    """Outputs, then the gradients of the input, the states and every parameter."""
    x = x.clone().requires_grad_()
    hx = None if hx is None else [h.clone().requires_grad_() for h in hx]
    arg = None if hx is None else tuple(hx) if len(hx) == 2 else hx[0]
    y = m(x, arg)
    outs = list(y) if isinstance(y, tuple) else [y]
    outs = [o for t in outs for o in (t if isinstance(t, tuple) else (t,))]
    g = torch.Generator().manual_seed(5)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    leaves = [x] + (hx or []) + list(m.parameters())
    return outs + list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("cls,kw", CELL_CASES, ids=lambda v: str(v))
def test_cells_under_auto_run_the_fused_step(spy, cls, kw, with_hx, batched):
    ref, ours = twins(cls, kw)
    shape = (3,) if batched else ()
    x = torch.randn(*shape, 5, dtype=F64)
    hx = [torch.randn(*shape, 6, dtype=F64) for _ in range(2 if "LSTM" in cls else 1)] \
        if with_hx else None
    got, want = run(ours, x, hx), run(ref, x, hx)
    assert spy, "the fused step did not run"
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, f"{cls} output/gradient {i}")


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)], ids=["1L", "2L_bi"])
@pytest.mark.parametrize("cls,kw", LAYER_CASES, ids=lambda v: str(v))
def test_one_step_layers_run_the_fused_step(spy, cls, kw, layers, bidirectional):
    ref, ours = twins(cls, kw, num_layers=layers, bidirectional=bidirectional)
    x = torch.randn(1, 3, 5, dtype=F64)
    d = 2 if bidirectional else 1
    p = kw.get("proj_size", 0) or 6
    hx = [torch.randn(layers * d, 3, p, dtype=F64)]
    if cls == "LSTM":
        hx.append(torch.randn(layers * d, 3, 6, dtype=F64))
    got, want = run(ours, x, hx), run(ref, x, hx)
    assert len(spy) == layers * d
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, f"{cls} output/gradient {i}")


def test_one_step_layer_with_dropout_matches_torch_in_eval_and_draws_in_training(spy):
    ref, ours = twins("LSTM", {}, num_layers=3, dropout=0.5)
    x = torch.randn(1, 4, 5, dtype=F64)
    ref.eval(), ours.eval()
    for a, b in zip(run(ours, x, None), run(ref, x, None)):
        assert_close(a, b, "eval")
    ours.train()
    torch.manual_seed(1)
    out1 = ours(x)[0]
    torch.manual_seed(1)
    out2 = ours(x)[0]
    assert torch.equal(out1, out2)
    assert not torch.allclose(out1, ours.eval()(x)[0])


@pytest.mark.parametrize("cls", ["LSTMCell", "GRU"])
def test_double_backward_through_the_step(spy, cls):
    ref, ours = twins(cls, {})
    x = torch.randn(1, 3, 5, dtype=F64) if cls == "GRU" else torch.randn(3, 5, dtype=F64)
    seconds = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        y = m(xx)[0]
        (g,) = torch.autograd.grad(y.pow(2).sum(), xx, create_graph=True)
        seconds.append(torch.autograd.grad(g.pow(2).sum(), [xx] + list(m.parameters())))
    assert spy
    for a, b in zip(*seconds):
        assert_close(a, b, "second derivative")


def test_routes_elsewhere_when_the_step_cannot_run(spy, monkeypatch):
    """A named scan backend, CPU autocast, compiling, packed input and T > 1 never take it."""
    _, cell = twins("GRUCell", {}, dtype=torch.float32)
    _, layer = twins("GRU", {}, dtype=torch.float32)
    x = torch.randn(3, 5)
    cell.backend = "reference"
    cell(x)
    cell.backend = "auto"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert routes.cell_route("auto", x, [x]) == "torch"
        cell(x)
    layer(torch.randn(2, 3, 5))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(1, 3, 5), [1, 1, 1])
    layer(packed)
    assert routes.cell_route("cpu", torch.zeros(2, dtype=torch.int64), []) == "scan"
    assert routes.fused_step_usable("auto", x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not routes.fused_step_usable("auto", x)
    assert spy == []


BAD_CALLS = {   # name: (input, states of hidden size H); torch's error for each
    "input_size": (lambda: torch.randn(3, 4), lambda H: [torch.randn(3, H)] * 2),
    "batch": (lambda: torch.randn(3, 5), lambda H: [torch.randn(2, H)] * 2),
    "hidden": (lambda: torch.randn(3, 5), lambda H: [torch.randn(3, H + 1)] * 2),
    "hx_1d": (lambda: torch.randn(3, 5), lambda H: [torch.randn(H)] * 2),
    "hx_3d": (lambda: torch.randn(3, 5), lambda H: [torch.randn(1, 3, H)] * 2),
    "dtype": (lambda: torch.randn(3, 5), lambda H: [torch.randn(3, H, dtype=F64)] * 2),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS))
@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_fast_path_errors_are_torchs(cls, bad):
    """The fused step skips the Python checks on a well-formed call; a malformed one still gets
    torch's exception type, and torch's message wherever torch's cell checks it itself (a dtype
    mismatch is only caught by torch's GEMM, with a GEMM's message)."""
    ref, ours = twins(cls, {}, dtype=torch.float32)
    make_x, make_states = BAD_CALLS[bad]
    x, states = make_x(), make_states(6)
    hx = tuple(states) if cls == "LSTMCell" else states[0]
    assert_same_error(lambda: ref(x, hx), lambda: ours(x, hx), exact=bad != "dtype")
