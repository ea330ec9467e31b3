"""Every autograd mode torch.nn supports, against torch.nn on the same weights (float64, CPU).

The scans' own autograd formula is a first-order reverse scan. Calls made under forward-mode AD
or a torch.func transform go, under ``backend="auto"``, to torch's own RNN (said once); a named
scan backend raises a clear error there instead of returning a zero tangent. Double backward
works through the scans (they run the reference's differentiable backward under
``create_graph=True``: tests/test_double_backward.py). (Cells on the CPU run torch's own cell
under auto: there every mode is torch's.)
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import rnnkernels
from tests.helpers import assert_close

F64 = torch.float64
LAYERS = ["LSTM", "GRU", "RNN"]
CELLS = ["LSTMCell", "GRUCell", "RNNCell"]

pytestmark = pytest.mark.filterwarnings("ignore:rnnkernels. backend='auto' hands")


def twins(cls: str, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(3, 4, **kw).double()
    ours = getattr(rnnkernels, cls)(3, 4, **kw).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def first(m):
    """The module as a function of its input, returning its main output."""
    def f(x):
        y = m(x)
        return y[0] if isinstance(y, tuple) else y
    return f


def inputs(cls: str):
    g = torch.Generator().manual_seed(1)
    shape = (2, 3) if cls in CELLS else (5, 2, 3)
    return torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g, dtype=F64)


def same_outcome(fn_ref, fn_ours):
    """Both give the same values, or both raise the same exception type (torch's own limits,
    e.g. vmap has no batching rule for aten::lstm)."""
    try:
        want = fn_ref()
    except Exception as exc:  # noqa: BLE001 - compare with whatever torch raises
        with pytest.raises(type(exc)):
            fn_ours()
        return
    got = fn_ours()
    for g, w in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert_close(g, w, "functorch")


@pytest.mark.parametrize("cls", LAYERS + CELLS)
def test_jvp_and_jacfwd(cls):
    ref, ours = twins(cls)
    x, v = inputs(cls)
    _, t_ref = torch.func.jvp(first(ref), (x,), (v,))
    _, t_ours = torch.func.jvp(first(ours), (x,), (v,))
    assert t_ref.abs().max() > 0
    assert_close(t_ours, t_ref, "jvp tangent")
    assert_close(torch.func.jacfwd(first(ours))(x), torch.func.jacfwd(first(ref))(x), "jacfwd")


@pytest.mark.parametrize("cls", LAYERS + CELLS)
def test_forward_ad_dual_tensors(cls):
    ref, ours = twins(cls)
    x, v = inputs(cls)
    tangents = []
    for m in (ref, ours):
        with fwAD.dual_level():
            y = first(m)(fwAD.make_dual(x, v))
            tangents.append(fwAD.unpack_dual(y).tangent)
    assert tangents[1] is not None
    assert_close(tangents[1], tangents[0], "forward-AD tangent")


@pytest.mark.parametrize("cls", LAYERS + CELLS)
def test_func_grad_jacrev_vjp_vmap(cls):
    ref, ours = twins(cls)
    x, v = inputs(cls)
    same_outcome(lambda: torch.func.grad(lambda a: first(ref)(a).pow(2).sum())(x),
                 lambda: torch.func.grad(lambda a: first(ours)(a).pow(2).sum())(x))
    same_outcome(lambda: torch.func.jacrev(first(ref))(x),
                 lambda: torch.func.jacrev(first(ours))(x))
    same_outcome(lambda: torch.func.vjp(first(ref), x)[1](first(ref)(x)),
                 lambda: torch.func.vjp(first(ours), x)[1](first(ours)(x)))
    batch = torch.stack([x, v])
    same_outcome(lambda: torch.func.vmap(first(ref))(batch),
                 lambda: torch.func.vmap(first(ours))(batch))


def test_functional_call_grad_over_parameters():
    """The common torch.func use: gradients w.r.t. the parameters through functional_call."""
    ref, ours = twins("LSTM", num_layers=2)
    x, _ = inputs("LSTM")
    grads = []
    for m in (ref, ours):
        params = dict(m.named_parameters())
        loss = lambda p: torch.func.functional_call(m, p, (x,))[0].pow(2).sum()  # noqa: E731
        grads.append(torch.func.grad(loss)(params))
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], name)


def test_auto_says_once_and_named_backend_raises():
    _, ours = twins("GRU")
    x, v = inputs("GRU")
    rnnkernels.backends._warned.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.func.jvp(first(ours), (x,), (v,))
        torch.func.jvp(first(ours), (x,), (v,))
    said = [w for w in seen if "hands calls made under" in str(w.message)]
    assert len(said) == 1 and "torch.func" in str(said[0].message)
    ours.backend = "reference"
    with pytest.raises(RuntimeError, match="backend 'reference' cannot run under a torch.func"):
        torch.func.jvp(first(ours), (x,), (v,))


def test_backend_torch_is_torch_nn():
    ref, ours = twins("LSTM", num_layers=2, bidirectional=True)
    ours.backend = "torch"
    x, _ = inputs("LSTM")
    out_ref, (h_ref, c_ref) = ref(x)
    out, (h, c) = ours(x)
    assert torch.equal(out, out_ref) and torch.equal(h, h_ref) and torch.equal(c, c_ref)


@pytest.mark.parametrize("cls", LAYERS + CELLS)
def test_create_graph_and_double_backward(cls):
    """First-order grads under create_graph=True, and their own gradient, equal torch.nn's for
    every module under auto (tests/test_double_backward.py covers each backend)."""
    ref, ours = twins(cls)
    x, _ = inputs(cls)
    grads, seconds = [], []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(first(m)(xx).pow(2).sum(), xx, create_graph=True)
        g.sum().backward()
        grads.append(g)
        seconds.append(xx.grad)
    assert_close(grads[1], grads[0], "first-order grad under create_graph=True")
    assert_close(seconds[1], seconds[0], "double backward")
