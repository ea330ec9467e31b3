"""The fused CPU cell steps (rnnkernels.backends.cell_step: one C++ call, one autograd node)
against torch.nn's cells on the same weights, and against plain PyTorch written from the cell
equations: outputs and the gradients of the input, the states and every weight and bias, odd sizes,
every CPU dtype (half types: no further from an fp32 reference than torch's own half cells), with
and without bias; float64 gradcheck; NaN/Inf placed in every input propagating as in torch.nn;
partial requires_grad; double backward (torch's composite cell, recomputed); the clear errors of
forward-mode AD and torch.func; B = 0.
Extension buffers are NaN-poisoned while ours run, so an unwritten element fails."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from rnnkernels.backends import cell_step, compiled
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not cell_step.AVAILABLE, reason="no compiled extension")

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
KINDS = {"LSTM": (torch.nn.LSTMCell, {}), "GRU": (torch.nn.GRUCell, {}),
         "RNN_TANH": (torch.nn.RNNCell, {"nonlinearity": "tanh"}),
         "RNN_RELU": (torch.nn.RNNCell, {"nonlinearity": "relu"})}
I = 5
# half types: relative RMS error against fp32 no more than HALF_SLACK × torch's half cell's, or
# under the floor (one rounding's worth)
HALF_SLACK, HALF_FLOOR = 1.5, {F16: 5e-4, BF16: 4e-3}


def make(kind, B, H, dtype=F32, bias=True, seed=0):
    """A torch.nn cell, and inputs (x, states) with requires_grad, all in ``dtype``."""
    cls, kw = KINDS[kind]
    torch.manual_seed(seed)
    module = cls(I, H, bias=bias, **kw).to(dtype)
    x = torch.randn(B, I).to(dtype)
    states = [torch.randn(B, H).to(dtype) for _ in range(2 if kind == "LSTM" else 1)]
    return module, x, states


def params(module):
    return [module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh] if module.bias \
        else [module.weight_ih, module.weight_hh, None, None]


def ours(kind, x, states, p):
    if kind == "LSTM":
        return list(cell_step.lstm_cell(x, *states, *p))
    if kind == "GRU":
        return [cell_step.gru_cell(x, *states, *p)]
    return [cell_step.rnn_cell(x, *states, *p, relu=kind == "RNN_RELU")]


def torch_nn(module, kind):
    """torch.nn's cell ``module`` as a step(x, states, p), run on the parameters p."""
    def step(x, states, p):
        names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        y = torch.func.functional_call(module, {n: t for n, t in zip(names, p) if t is not None},
                                       (x, tuple(states) if kind == "LSTM" else states[0]))
        return list(y) if kind == "LSTM" else [y]
    return step


def equations(kind, x, states, p):
    """The cells from their definitions (torch.nn's documentation), in plain PyTorch."""
    w_ih, w_hh, b_ih, b_hh = p
    gi, gh = x @ w_ih.T, states[0] @ w_hh.T
    if b_ih is not None:
        gi, gh = gi + b_ih, gh + b_hh
    if kind == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, 1)
        c = torch.sigmoid(f) * states[1] + torch.sigmoid(i) * torch.tanh(g)
        return [torch.sigmoid(o) * torch.tanh(c), c]
    if kind == "GRU":
        (ir, iz, in_), (hr, hz, hn) = gi.chunk(3, 1), gh.chunk(3, 1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return [(1 - z) * n + z * states[0]]
    return [torch.relu(gi + gh) if kind == "RNN_RELU" else torch.tanh(gi + gh)]


def run(step, x, states, p, dtype=None, seed=3):
    """step(x, states, p)'s outputs, then the gradients of x, the states and every parameter of
    a loss with fixed random weights on every output (None for what does not require grad). The
    leaves are fresh copies in ``dtype`` (default: their own)."""
    leaf = [None if t is None else t.detach().to(dtype or t.dtype).requires_grad_(t.requires_grad)
            for t in [x, *states, *p]]
    x_, states_, p_ = leaf[0], leaf[1:1 + len(states)], leaf[1 + len(states):]
    outs = step(x_, states_, p_)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)
    want = [t for t in leaf if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(loss, want)) if want else iter(())
    return outs + [next(grads) if t is not None and t.requires_grad else None for t in leaf]


def poisoned():
    return compiled.option("poison", "1")


def with_grad(x, states, p):
    return x.requires_grad_(), [s.requires_grad_() for s in states], p


def rel_rms(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=["fp32", "fp64", "bf16", "fp16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("B,H", [(1, 7), (3, 7), (1, 64), (3, 64)], ids=lambda v: str(v))
@pytest.mark.parametrize("kind", list(KINDS))
def test_matches_torch_nn(kind, B, H, bias, dtype):
    module, x, states = make(kind, B, H, dtype, bias)
    x, states, p = with_grad(x, states, params(module))
    with poisoned():
        got = run(lambda *a: ours(kind, *a), x, states, p)
    want = run(torch_nn(module, kind), x, states, p)
    names = ["out"] * (len(got) - len(p) - 1 - len(states)) + ["dx"] + \
        [f"d{s}" for s in ("h", "c")[:len(states)]] + ["dw_ih", "dw_hh", "db_ih", "db_hh"]
    if dtype in (F32, F64):
        for name, a, b in zip(names, got, want):
            assert (a is None) == (b is None), name
            if b is not None:
                assert_close(a, b, f"{kind} {name}")
        return
    # half types: against torch.nn in fp32 on the same (rounded) values, and torch's half error
    ref = run(torch_nn(copy.deepcopy(module).float(), kind), x, states, p, dtype=F32)
    for name, a, b, r in zip(names, got, want, ref):
        if r is None:
            continue
        assert a.dtype == dtype, name
        err, torch_err = rel_rms(a, r), rel_rms(b, r)
        assert err <= max(HALF_SLACK * torch_err, HALF_FLOOR[dtype]), \
            f"{kind} {name}: rel RMS {err:.2e} vs fp32, torch's half cell {torch_err:.2e}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_large_step_on_two_threads(kind):
    """A step large enough for the pointwise pass to split over threads (B·G·H ≥ 4096)."""
    module, x, states = make(kind, 70, 64)
    x, states, p = with_grad(x, states, params(module))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with poisoned():
            got = run(lambda *a: ours(kind, *a), x, states, p)
    finally:
        torch.set_num_threads(threads)
    want = run(torch_nn(module, kind), x, states, p)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, f"{kind} tensor {k}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_matches_equations(kind, bias):
    module, x, states = make(kind, 3, 7, F64, bias, seed=1)
    x, states, p = with_grad(x, states, params(module))
    got = run(lambda *a: ours(kind, *a), x, states, p)
    want = run(lambda *a: equations(kind, *a), x, states, p)
    for k, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), k
        if b is not None:
            assert_close(a, b, f"{kind} tensor {k}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck_float64(kind, bias):
    module, x, states = make(kind, 2, 3, F64, bias, seed=2)
    p = [t.detach() for t in params(module) if t is not None]
    leaves = [t.clone().requires_grad_() for t in (x, *states, *p)]
    n = 1 + len(states)

    def step(*t):
        w = list(t[n:]) + [None, None] * (not bias)
        return tuple(ours(kind, t[0], list(t[1:n]), w))

    assert torch.autograd.gradcheck(step, leaves)


PLACES = ["input", "hx", "cx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")],
                         ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("kind,place", [(k, p) for k in KINDS for p in PLACES
                                        if p != "cx" or k == "LSTM"])
def test_non_finite_propagates_like_torch(kind, place, value):
    module, x, states = make(kind, 2, 4, seed=4)
    states = [s * 0.5 for s in states]
    if place == "input":
        x[1, 2] = value
    elif place in ("hx", "cx"):
        states[PLACES.index(place) - 1][0, 3] = value
    else:
        with torch.no_grad():
            w = getattr(module, place).view(-1)
            w[3] = value
    x, states, p = with_grad(x, states, params(module))
    with poisoned():
        got = run(lambda *a: ours(kind, *a), x, states, p)
    want = run(torch_nn(module, kind), x, states, p)
    for k, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, equal_nan=True,
                                   msg=lambda m: f"tensor {k} ({kind}, {place}): {m}")


@pytest.mark.parametrize("which", ["weights", "inputs", "hx_only"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_partial_requires_grad(kind, which):
    """Only some inputs require grad: their gradients match torch's, the others stay None."""
    module, x, states = make(kind, 3, 7, seed=5)
    p = params(module)
    if which == "weights":       # hx (and x, cx) do not require grad, the weights do
        pass
    elif which == "inputs":      # frozen weights, the inputs require grad
        x, states, _ = with_grad(x, states, p)
        p = [w.detach() for w in p]
    else:
        states[0].requires_grad_()
        p = [w.detach() for w in p]
    got = run(lambda *a: ours(kind, *a), x, states, p)
    want = run(torch_nn(module, kind), x, states, p)
    for k, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), f"tensor {k}: {a is None} vs torch {b is None}"
        if b is not None:
            assert_close(a, b, f"{kind} tensor {k}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_no_grad_makes_no_node(kind):
    module, x, states = make(kind, 2, 7)
    p = params(module)
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            outs = ours(kind, x, states, p)
            want = torch_nn(module, kind)(x, states, params(module))
        for a, b in zip(outs, want):
            assert a.grad_fn is None and not a.requires_grad
            assert_close(a, b, kind)
    outs = ours(kind, x, states, [w.detach() for w in p])  # grad mode, nothing requires grad
    assert all(o.grad_fn is None for o in outs)


@pytest.mark.parametrize("kind", list(KINDS))
def test_one_node_named_like_torch(kind):
    module, x, states = make(kind, 2, 7)
    outs = ours(kind, x, states, params(module))
    assert len({o.grad_fn for o in outs}) == 1
    assert outs[0].grad_fn.name() == {"LSTM": "LSTMCellBackward", "GRU": "GRUCellBackward",
                                      "RNN_TANH": "RNNTanhCellBackward",
                                      "RNN_RELU": "RNNReLUCellBackward"}[kind]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_double_backward_equals_torch_nn(kind, bias):
    """create_graph=True recomputes the step with torch's composite cell and differentiates it:
    second derivatives of input, states and every parameter equal torch.nn's (float64)."""
    module, x, states = make(kind, 3, 7, F64, bias)
    seconds = []
    for step in (lambda *a: ours(kind, *a), torch_nn(module, kind)):
        x_, states_, p_ = with_grad(x.detach().clone(), [s.detach().clone() for s in states],
                                    [w.detach().clone().requires_grad_() if w is not None
                                     else None for w in params(module)])
        outs = step(x_, states_, p_)
        leaves = [x_, *states_, *[w for w in p_ if w is not None]]
        firsts = torch.autograd.grad(sum((o * o).sum() for o in outs), leaves, create_graph=True)
        seconds.append(torch.autograd.grad(sum((g * g).sum() for g in firsts), leaves))
    for a, b in zip(*seconds):
        assert_close(a, b, f"{kind} second derivative")
    module, x, states = make(kind, 2, 7)
    x, states, p = with_grad(x, states, params(module))
    assert torch.autograd.gradgradcheck(
        lambda *t: ours(kind, t[0], list(t[1:1 + len(states)]), list(t[1 + len(states):])),
        (x.double(), *[s.double() for s in states], *[w.double() for w in p if w is not None]))


@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_ad_and_vmap_raise(kind):
    module, x, states = make(kind, 2, 7)
    p = [w.detach() for w in params(module)]
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode), fwAD.dual_level():
            dual = fwAD.make_dual(x, torch.ones_like(x))
            with pytest.raises(RuntimeError, match="forward-mode AD"):
                ours(kind, dual, states, p)
    with pytest.raises(RuntimeError, match="functorch"):
        torch.vmap(lambda xb: ours(kind, xb[None], [s[:1] for s in states], p)[0])(x)


@pytest.mark.parametrize("kind", list(KINDS))
def test_saved_tensors_are_checked_and_freed(kind):
    """As torch's nodes: an in-place change of a saved input, or a second backward through
    freed buffers, raises."""
    module, x, states = make(kind, 2, 7)
    x, states, p = with_grad(x, states, params(module))
    out = ours(kind, x, states, p)[0]
    out.sum().backward()
    with pytest.raises(RuntimeError, match="second time|freed"):
        out.sum().backward()
    h = states[0].detach().clone().requires_grad_()
    hx = h * 1.0  # a non-leaf, so that it can be changed in place
    module.weight_hh.requires_grad_(True)
    out = ours(kind, x, [hx, *states[1:]], p)[0]
    with torch.no_grad():
        hx.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("kind", list(KINDS))
def test_empty_batch(kind):
    module, x, states = make(kind, 0, 7)
    x, states, p = with_grad(x, states, params(module))
    got = run(lambda *a: ours(kind, *a), x, states, p)
    want = run(torch_nn(module, kind), x, states, p)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, k
        assert_close(a, b, f"{kind} tensor {k}")


def test_strided_states_and_generic_isa():
    """Non-contiguous hx / cx (a slice, a transpose), and the kernels' generic build."""
    module, x, _ = make("LSTM", 3, 7, F64)
    h = torch.randn(7, 3, dtype=F64).t()
    c = torch.randn(3, 14, dtype=F64)[:, ::2]
    want = torch_nn(module, "LSTM")(x, [h, c], params(module))
    for isa in ("generic", compiled.get_option("cpu_isa")):
        with compiled.option("cpu_isa", isa):
            got = ours("LSTM", x, [h, c], params(module))
        for a, b in zip(got, want):
            assert_close(a, b, f"LSTM ({isa})")


@pytest.mark.parametrize("dtype", [F32, F64], ids=["fp32", "fp64"])
def test_lstm_projection_as_a_one_step_layer(dtype):
    """lstm_cell with w_hr is one step of torch.nn.LSTM(proj_size=P)."""
    torch.manual_seed(6)
    layer = torch.nn.LSTM(I, 7, proj_size=3).to(dtype)
    x = torch.randn(1, 2, I, dtype=dtype)
    h0, c0 = torch.randn(1, 2, 3, dtype=dtype), torch.randn(1, 2, 7, dtype=dtype)
    w = [layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0,
         layer.weight_hr_l0]
    x, h0, c0 = (t.requires_grad_() for t in (x, h0, c0))

    def step_ours(x_, s_, p_):
        return list(cell_step.lstm_cell(x_[0], s_[0][0], s_[1][0], *p_))

    def step_torch(x_, s_, p_):
        names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0"]
        _, (h, c) = torch.func.functional_call(layer, dict(zip(names, p_)), (x_, tuple(s_)))
        return [h[0], c[0]]

    got = run(step_ours, x, [h0, c0], w)
    want = run(step_torch, x, [h0, c0], w)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, f"projection tensor {k}")


def test_bad_arguments_raise():
    module, x, (h,) = make("GRU", 2, 7)
    p = params(module)
    with pytest.raises(TypeError, match="hx must be a Tensor"):
        cell_step.gru_cell(x, [1.0], *p)
    with pytest.raises(RuntimeError, match="dtype"):
        cell_step.gru_cell(x.double(), h, *p)
    with pytest.raises(RuntimeError, match="hx has shape"):
        cell_step.gru_cell(x, h[:, :3], *p)
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        cell_step.rnn_cell(x.int(), h.int(), *[t.int() for t in p], relu=False)
