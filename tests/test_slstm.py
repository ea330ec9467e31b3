"""rnnkernels.SLSTM / SLSTMCell (xLSTM's sLSTM) against an independent oracle and against xlstm.

* ``tests/slstm_oracle.py`` (the paper's equations, one sequence and one step at a time): outputs,
  final states and the gradients of the input, the four initial states and every parameter, in
  float32 and float64, odd sizes, layers, both directions, heads, packed unsorted lengths;
* the xlstm package's own vanilla sLSTM cell (``xlstm.blocks.slstm.cell``, backend "vanilla",
  pip ``xlstm==2.0.5``), on the same weights mapped to its layout: the same forward and
  gradients. Skipped only where xlstm is absent and ``CI`` is unset (the Makefile installs it);
* the stabilizer is a pure rescaling (the unstabilized cell in float64) and keeps huge
  pre-activations finite; float64 gradcheck (reverse and forward mode) and gradgradcheck; the
  cell is one step of the layer.
The modules' API (input forms, parameters, errors, routing): tests/test_slstm_api.py.
"""
from __future__ import annotations

import copy
import importlib
import os
import warnings

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels
from tests import slstm_oracle as oracle
from tests.helpers import DTYPE_NAMES, assert_close

STATES = ("h", "c", "n", "m")


def make(I, H, L=1, bidir=False, heads=1, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return rnnkernels.SLSTM(I, H, L, bidirectional=bidir, num_heads=heads, dtype=dtype,
                            backend="reference", **kw)


def initial_states(shape, dtype, kind: str, seed=1):
    """h0, c0, n0, m0 of ``shape``: "zero" (all zeros), "carried" (n0 > 0: a state from an
    earlier sequence) or "mixed" (n0 zero at some units and batch entries, not others)."""
    g = torch.Generator().manual_seed(seed)
    h, c, m = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
    n = torch.rand(shape, generator=g, dtype=dtype) + 0.5
    if kind == "zero":
        return [torch.zeros(shape, dtype=dtype) for _ in range(4)]
    if kind == "mixed":
        zero = torch.rand(shape, generator=g) < 0.5
        n, c = n.masked_fill(zero, 0.0), c.masked_fill(zero, 0.0)
    return [h, c.abs().clamp(max=1) * n * c.sign(), n, m]        # |c| ≤ n, as a real state


# (T, B, I, H, layers, bidirectional, heads, packed, initial states)
CASES = [
    (1, 1, 3, 4, 1, False, 1, False, "zero"),
    (7, 3, 5, 9, 1, False, 1, False, "carried"),
    (9, 4, 6, 12, 2, True, 3, True, "mixed"),
    (6, 5, 4, 10, 3, False, 5, True, "carried"),
    (13, 2, 7, 33, 1, True, 3, False, "zero"),
]


def case_id(c):
    T, B, I, H, L, bidir, heads, packed, init = c
    return (f"SLSTM-T{T}-B{B}-I{I}-H{H}-L{L}{'-bidir' if bidir else ''}-heads{heads}"
            f"{'-packed' if packed else ''}-{init}")


def loss_weights(shapes, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_forward_and_every_gradient_match_the_oracle(case, dtype):
    T, B, I, H, L, bidir, heads, packed, init = case
    D = 2 if bidir else 1
    module = make(I, H, L, bidir, heads, dtype)
    params = dict(module.named_parameters())
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(3))
    lengths[0] = T
    if not packed:
        lengths[:] = T
    x = torch.randn(T, B, I, dtype=dtype)
    x = torch.where(torch.arange(T)[:, None, None] < lengths[None, :, None], x, 0.0)
    hx = initial_states((L * D, B, H), dtype, init)
    leaves = [x, *hx, *params.values()]
    for t in leaves:
        t.requires_grad_(True)

    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    out, finals = module(inp, tuple(hx))
    if packed:
        out = pad_packed_sequence(out, total_length=T)[0]
    ref_out, ref_finals = oracle.run(params, x, lengths.tolist(), hx, num_layers=L,
                                     bidirectional=bidir, num_heads=heads)
    assert_close(out, ref_out, "output")
    for name, ours, ref in zip(STATES, finals, ref_finals):
        assert_close(ours, ref, f"{name}_n")

    weights = loss_weights([out.shape] + [f.shape for f in finals], dtype)
    grads = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, [out, *finals])),
                                leaves)
    ref_grads = torch.autograd.grad(
        sum((w * t).sum() for w, t in zip(weights, [ref_out, *ref_finals])), leaves)
    names = ["input", *(f"{s}0" for s in STATES), *params]
    for name, ours, ref in zip(names, grads, ref_grads):
        assert_close(ours, ref, f"grad {name}")


def test_the_first_step_rule_is_decided_per_element():
    """From n0 = 0 a unit starts at m_1 = ĩ (so i_1 = 1, n_1 = 1); a unit with n0 > 0 in the
    same batch takes the max rule: the mixed batch equals its entries run alone."""
    module = make(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    fresh = initial_states((1, 1, 4), torch.float64, "zero")
    carried = initial_states((1, 1, 4), torch.float64, "carried")
    both = [torch.cat(pair, dim=1) for pair in zip(fresh, carried)]
    out, finals = module(x, tuple(both))
    out0, finals0 = module(x[:, :1], tuple(fresh))
    out1, finals1 = module(x[:, 1:], tuple(carried))
    torch.testing.assert_close(out, torch.cat([out0, out1], dim=1))
    for f, f0, f1 in zip(finals, finals0, finals1):
        torch.testing.assert_close(f, torch.cat([f0, f1], dim=1))
    _, (_, _, n1, m1) = module(x[:1, :1], tuple(fresh))
    pre = x[0, 0] @ module.weight_ih_l0.t() + module.bias_ih_l0 + module.bias_hh_l0
    torch.testing.assert_close(m1[0, 0], pre[:4])                   # m_1 = ĩ
    torch.testing.assert_close(n1, torch.ones_like(n1))


@pytest.mark.parametrize("heads", [1, 3])
def test_the_stabilizer_only_rescales(heads):
    """c_t·exp(m_t) and n_t·exp(m_t) are the unstabilized cell's C_t and N_t, and h_t is its
    o ⊙ C_t / N_t: the stabilizer changes no result, only the scale the states are kept in."""
    T, B, I, H = 8, 3, 4, 6
    module = make(I, H, heads=heads)
    params = dict(module.named_parameters())
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0, n0, m0 = initial_states((1, B, H), torch.float64, "carried")
    hs, Cs, Ns = oracle.unstabilized(params, x, h0[0], c0[0] * m0[0].exp(), n0[0] * m0[0].exp(),
                                     heads)
    out, _ = module(x, (h0, c0, n0, m0))
    for t in range(T):
        _, (h, c, n, m) = module(x[:t + 1], (h0, c0, n0, m0))
        torch.testing.assert_close(out[t], hs[t])
        torch.testing.assert_close(c[0] * m[0].exp(), Cs[t])
        torch.testing.assert_close(n[0] * m[0].exp(), Ns[t])
    with torch.no_grad():
        out0, (_, _, n, _) = module(x)                  # zero states: C0 = N0 = 0
    assert (n >= 1).all()
    torch.testing.assert_close(out0[-1], oracle.unstabilized(
        params, x, *(torch.zeros(B, H, dtype=torch.float64),) * 3, heads)[0][-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_NAMES.get)
def test_huge_pre_activations_stay_finite(dtype):
    """Pre-activations of ±1e4 (exp would overflow any dtype): h stays in [-1, 1], every state
    and gradient finite."""
    module = make(5, 8, 2, True, 2, dtype=dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p).sign() * 300)
    x = (torch.randn(9, 3, 5) * 10).to(dtype).requires_grad_()
    out, finals = module(x)
    assert out.dtype == dtype and all(f.dtype == dtype for f in finals)
    assert torch.isfinite(out).all() and out.abs().max() <= 1
    assert all(torch.isfinite(f).all() for f in finals)
    assert float(finals[3].detach().abs().max()) > 1e3             # it was huge
    grads = torch.autograd.grad(out.float().sum() + finals[0].float().sum(),
                                [x, *module.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)


def test_half_inputs_match_float32():
    module = make(6, 10, 2, True, 2, dtype=torch.float32)
    x = torch.randn(7, 3, 6)
    ref, ref_finals = module(x)
    half = copy.deepcopy(module).to(torch.bfloat16)
    out, finals = half(x.to(torch.bfloat16))
    for ours, want in zip([out, *finals], [ref, *ref_finals]):
        assert ours.dtype == torch.bfloat16
        rms = (ours.float() - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()
        assert rms < 2e-2, float(rms)


# ----------------------------------------------------------------------------- xlstm itself
def xlstm_cell_module():
    try:
        with warnings.catch_warnings():        # its import decorates with torch.jit.script
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("xlstm.blocks.slstm.cell")
    except ImportError:
        if os.environ.get("CI"):
            raise                      # requirements-dev.txt installs it: CI must run this
        pytest.skip("xlstm is not installed (pip install --no-deps xlstm==2.0.5)")


def to_xlstm(module: rnnkernels.SLSTM, heads: int, dtype: torch.dtype):
    """xlstm's vanilla sLSTMCell holding ``module``'s recurrent weight and (summed) bias, in its
    internal layout: R [heads, 4d, d] (per head, gate-major rows, as ours), b [4H] gate-major.
    Its input is the projection x·W_ihᵀ [T, B, 4H] in gate order i, f, z, o, as ours."""
    xc = xlstm_cell_module()
    H = module.hidden_size
    d = H // heads
    config = xc.sLSTMCellConfig(hidden_size=H, num_heads=heads, backend="vanilla",
                                dtype="float32", input_shape="SBGNH", output_shape="SBH")
    cell = xc.sLSTMCell(config).to(dtype)
    assert type(cell).__name__ == "sLSTMCell_vanilla"
    with torch.no_grad():
        cell._recurrent_kernel_.copy_(module.weight_hh_l0.view(4, heads, d, d).transpose(0, 1)
                                      .reshape(heads, 4 * d, d))
        cell._bias_.copy_(module.bias_ih_l0 + module.bias_hh_l0)
    return cell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("heads,init", [(1, "zero"), (1, "carried"), (4, "zero"),
                                        (2, "carried")])
def test_matches_xlstm_vanilla_slstm(heads, init, dtype):
    T, B, I, H = 11, 3, 5, 12
    module = make(I, H, heads=heads, dtype=dtype)
    cell = to_xlstm(module, heads, dtype)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    hx = [s.requires_grad_() for s in initial_states((1, B, H), dtype, init)]
    out, finals = module(x, tuple(hx))
    wx = torch.nn.functional.linear(x, module.weight_ih_l0)    # xlstm's input: the projection
    their_out, their_state = cell(wx, torch.cat(hx))
    assert_close(out, their_out, "output")
    for name, ours, theirs in zip(STATES, finals, their_state):
        assert_close(ours[0], theirs, f"{name}_n")

    weights = loss_weights([out.shape] + [f.shape for f in finals], dtype)
    ours = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, [out, *finals])),
                               [x, *hx, module.weight_ih_l0, module.weight_hh_l0,
                                module.bias_ih_l0])
    theirs = torch.autograd.grad(
        sum((w * t).sum() for w, t in zip(weights, [their_out, *their_state[:, None]])),
        [x, *hx, module.weight_ih_l0, cell._recurrent_kernel_, cell._bias_])
    d = H // heads
    theirs = list(theirs)
    theirs[6] = theirs[6].view(heads, 4, d, d).transpose(0, 1).reshape(4 * H, d)   # our layout
    for name, a, b in zip(["input", "h0", "c0", "n0", "m0", "weight_ih", "weight_hh", "bias"],
                          ours, theirs):
        assert_close(a, b, f"grad {name}")


def test_xlstm_vanilla_decides_the_first_step_for_the_whole_batch_and_we_per_element():
    """The one documented difference: in a batch mixing a fresh (zero) state with a carried
    one, xlstm's vanilla code takes the max rule for the fresh entry too (its m_1 is not ĩ),
    where ours starts it at m_1 = ĩ as if it ran alone. h is the same either way (the
    stabilizer only rescales c and n) while nothing underflows."""
    module = make(3, 4)
    cell = to_xlstm(module, 1, torch.float64)
    x = torch.randn(1, 2, 3, dtype=torch.float64)
    fresh = initial_states((1, 1, 4), torch.float64, "zero")
    carried = initial_states((1, 1, 4), torch.float64, "carried")
    hx = [torch.cat(pair, dim=1) for pair in zip(fresh, carried)]
    out, (_, _, _, m) = module(x, tuple(hx))
    their_out, their_state = cell(torch.nn.functional.linear(x, module.weight_ih_l0),
                                  torch.cat(hx))
    pre = x[0, 0] @ module.weight_ih_l0.t() + module.bias_ih_l0 + module.bias_hh_l0
    torch.testing.assert_close(m[0, 0], pre[:4])
    assert not torch.allclose(their_state[3, 0], pre[:4])
    torch.testing.assert_close(m[0, 1], their_state[3, 1])
    torch.testing.assert_close(out, their_out)


# ----------------------------------------------------------------------- autograd, gradcheck
@pytest.mark.parametrize("layers,bidir,packed", [(2, True, True), (1, False, False)],
                         ids=["L2-bidir-packed", "L1"])
def test_gradcheck_float64_reverse_and_forward_mode_and_double_backward(layers, bidir, packed):
    """At n0 = 0 the first-step rule makes the cell non-differentiable in n0 (a finite
    difference crosses the switch), so the states are carried ones (n0 > 0) here; the zero
    states' first step is checked with hx=None, where n0 is no input."""
    module = make(2, 2, layers, bidir, 2)
    names = [n for n, _ in module.named_parameters()]
    lengths = torch.tensor([3, 2] if packed else [3, 3])
    D = 2 if bidir else 1

    x = torch.randn(3, 2, 2, dtype=torch.float64)
    template = pack_padded_sequence(x, lengths, enforce_sorted=False)
    if packed:      # torch's packing has no forward-mode AD: the packed data is the input
        x = template.data

    def f(x, *rest):
        params, states = rest[:len(names)], rest[len(names):]
        inp = template._replace(data=x) if packed else x
        out, finals = functional_call(module, dict(zip(names, params)),
                                      (inp, tuple(states) if states else None))
        return (out.data if packed else out, *finals)

    x.requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    hx = [s.requires_grad_() for s in initial_states((layers * D, 2, 2), torch.float64,
                                                      "carried")]
    inputs = (x, *params, *hx) if layers > 1 else (x, *params)
    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True, fast_mode=True)
    if layers == 1:
        assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


def test_cell_gradcheck_and_vmap():
    torch.manual_seed(0)
    cell = rnnkernels.SLSTMCell(3, 4, num_heads=2, dtype=torch.float64, backend="reference")
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    hx = [s[0].requires_grad_() for s in initial_states((1, 2, 4), torch.float64, "carried")]
    assert torch.autograd.gradcheck(lambda x, *s: cell(x, s), (x, *hx), check_forward_ad=True)
    per_entry = torch.func.vmap(lambda x, *s: cell(x, s))(x.detach(), *(s.detach() for s in hx))
    batched = cell(x.detach(), tuple(s.detach() for s in hx))
    for a, b in zip(per_entry, batched):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- the cell, forms
@pytest.mark.parametrize("heads", [1, 2])
def test_cell_is_one_step_of_the_layer_and_matches_the_oracle(heads):
    layer = make(5, 6, heads=heads)
    cell = rnnkernels.SLSTMCell(5, 6, num_heads=heads, dtype=torch.float64, backend="reference")
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x = torch.randn(4, 5, dtype=torch.float64)
    hx = initial_states((1, 4, 6), torch.float64, "mixed")
    _, finals = layer(x[None], tuple(hx))
    new = cell(x, tuple(h[0] for h in hx))
    _, ref = oracle.run(dict(cell.named_parameters()), x[None], [1] * 4, hx, num_heads=heads,
                        cell=True)
    for name, a, b, c in zip(STATES, new, finals, ref):
        assert_close(a, b[0], f"{name}' vs the layer")
        assert_close(a, c[0], f"{name}' vs the oracle")
    assert_close(cell(x)[0], layer(x[None])[0][0], "h' from zero states")
    unbatched = cell(x[1], tuple(h[0, 1] for h in hx))
    for a, b in zip(unbatched, new):
        assert_close(a, b[1], "unbatched")
