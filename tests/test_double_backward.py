"""Gradients of gradients through the scans, on every backend, against torch.nn's CPU RNNs
(which are twice differentiable) on the same weights.

Under ``create_graph=True`` the scan ops run the reference's reverse scan, written in
differentiable PyTorch ops of the saved workspaces and taking gradients on them
(``ops/_common.py: differentiable_backward``); these tests prove the resulting second derivatives
of every input, initial state and parameter, and that plain first-order training never takes
that path.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
from rnnkernels.backends import reference
from tests.helpers import assert_close, backend_params

F64 = torch.float64

# (class, constructor options): every cell's scan, the projection and relu included.
LAYER_CASES = [
    ("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}), ("RNN", {}),
    ("RNN", {"nonlinearity": "relu"}),
]
LAYER_IDS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]


def twins(cls: str, dtype: torch.dtype, backend: str, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(3, 5, **kw).to(dtype)
    ours = getattr(rnnkernels, cls)(3, 5, backend=backend, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def initial_states(m, batch: int, dtype: torch.dtype):
    """h0 (and c0) of the right shapes, requiring grad: their second derivatives are tested."""
    g = torch.Generator().manual_seed(2)
    dirs = 2 if m.bidirectional else 1
    hsize = getattr(m, "proj_size", 0) or m.hidden_size
    h0 = torch.randn(m.num_layers * dirs, batch, hsize, generator=g, dtype=dtype)
    if isinstance(m, torch.nn.LSTM):
        c0 = torch.randn(m.num_layers * dirs, batch, m.hidden_size, generator=g, dtype=dtype)
        return [h0, c0]
    return [h0]


def second_order(m, x, states, packed_lengths=None):
    """Gradients of ||dL/dx||² + ||dL/dh0||² (L = Σ out² + Σ h_n²) w.r.t. x, the initial
    states and every parameter: a gradient penalty, the common double-backward use."""
    x = x.clone().requires_grad_()
    states = [s.clone().requires_grad_() for s in states]
    hx = tuple(states) if len(states) == 2 else states[0]
    inp = x if packed_lengths is None else pack_padded_sequence(x, packed_lengths,
                                                                enforce_sorted=False)
    out, h_n = m(inp, hx)
    out = out if packed_lengths is None else out.data
    h_n = h_n[0] if isinstance(h_n, tuple) else h_n
    loss = out.pow(2).sum() + h_n.pow(2).sum()
    firsts = torch.autograd.grad(loss, [x] + states, create_graph=True)
    penalty = sum(g.pow(2).sum() for g in firsts)
    leaves = [x] + states + list(m.parameters())
    return firsts, torch.autograd.grad(penalty, leaves)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cls,kw", LAYER_CASES, ids=LAYER_IDS)
@pytest.mark.parametrize("backend", backend_params(F64))
def test_layers_double_backward_equals_torch(backend, cls, kw, bidirectional):
    ref, ours = twins(cls, F64, backend, num_layers=2, bidirectional=bidirectional, **kw)
    x = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    states = initial_states(ref, 4, F64)
    first_ref, second_ref = second_order(ref, x, states)
    first_ours, second_ours = second_order(ours, x, states)
    for a, b in zip(first_ours, first_ref):
        assert_close(a, b, "first-order gradient under create_graph=True")
    assert all(g.abs().max() > 0 for g in second_ref[:2])
    for i, (a, b) in enumerate(zip(second_ours, second_ref)):
        assert_close(a, b, f"second-order gradient of leaf {i}")


@pytest.mark.parametrize("cls,kw", LAYER_CASES, ids=LAYER_IDS)
@pytest.mark.parametrize("backend", backend_params(torch.float32, triton=True))
def test_layers_double_backward_float32(backend, cls, kw):
    """Every backend, Triton (interpreted) included, in float32 on packed unsorted lengths."""
    ref, ours = twins(cls, torch.float32, backend, bidirectional=True, **kw)
    x = torch.randn(5, 3, 3, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([3, 5, 2])
    states = initial_states(ref, 3, torch.float32)
    _, second_ref = second_order(ref, x, states, lengths)
    _, second_ours = second_order(ours, x, states, lengths)
    for i, (a, b) in enumerate(zip(second_ours, second_ref)):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=f"leaf {i}")


@pytest.mark.parametrize("cls,kw", LAYER_CASES, ids=LAYER_IDS)
@pytest.mark.parametrize("backend", backend_params(F64))
def test_gradgradcheck_packed(backend, cls, kw):
    """float64 gradgradcheck of the module as a function of input and initial states, packed
    with unsorted lengths (the frozen state past a sequence's end is differentiated too)."""
    _, m = twins(cls, F64, backend, bidirectional=True, **kw)
    lengths = torch.tensor([2, 4, 1])
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 3, generator=g, dtype=F64, requires_grad=True)
    states = [s.requires_grad_() for s in initial_states(m, 3, F64)]

    def f(x, *states):
        hx = tuple(states) if len(states) == 2 else states[0]
        out, h_n = m(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        return (out.data,) + (h_n if isinstance(h_n, tuple) else (h_n,))

    assert torch.autograd.gradgradcheck(f, (x, *states))


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("backend", backend_params(F64))
def test_cells_on_a_named_backend(backend, cls):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(3, 5).double()
    ours = getattr(rnnkernels, cls)(3, 5, backend=backend).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, dtype=F64)
    seconds = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        y = m(xx)
        y = y[0] if isinstance(y, tuple) else y
        (g,) = torch.autograd.grad(y.pow(2).sum(), xx, create_graph=True)
        seconds.append(torch.autograd.grad(g.pow(2).sum(), [xx] + list(m.parameters())))
    for a, b in zip(seconds[1], seconds[0]):
        assert_close(a, b, "cell double backward")


def test_first_order_training_never_runs_the_reference_backward(monkeypatch):
    """The differentiable reference backward is for gradients of gradients only."""
    calls = []
    for name in ("lstm_backward", "gru_backward", "rnn_backward"):
        real = getattr(reference, name)
        monkeypatch.setattr(reference, name,
                            lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    for cls in ("LSTM", "GRU", "RNN"):
        _, m = twins(cls, torch.float32, "cpu")
        x = torch.randn(4, 2, 3, requires_grad=True)
        m(x)[0].sum().backward()
    assert calls == []


def test_backward_op_itself_says_it_is_not_differentiable():
    ops = torch.ops.rnnkernels
    T, B, H = 2, 1, 2
    w = torch.randn(H, H, requires_grad=True)
    out = torch.randn(T, B, H)
    grad = torch.randn(T, B, H, requires_grad=True)
    dxp, _ = ops.rnn_scan_backward(grad, torch.zeros(B, H), torch.zeros(B, H), w, None, False,
                                   False, "reference", out)
    with pytest.raises(RuntimeError, match="not itself differentiable"):
        dxp.sum().backward()
