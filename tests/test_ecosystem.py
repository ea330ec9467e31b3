"""rnnkernels modules inside the rest of PyTorch: serialization, dtype conversion, frozen
parameters, grad modes, retained graphs, odd memory layouts, views and
``torch.func.functional_call`` (compile and export: ``tests/test_compile_export.py``; autocast:
``tests/test_autocast.py``).

The oracle is always torch.nn: each test builds a torch.nn module (or model) and its rnnkernels
twin with identical weights (``load_state_dict`` of torch's state dict, which is itself part of
the drop-in promise) and compares outputs, final states and gradients at fp32 1e-5 / fp64 1e-10
relative (``tests.helpers.assert_close``), or by relative RMS for half precision.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch

import rnnkernels
from tests.ecosystem_helpers import (ALL, F32, F64, H, I, Stack, assert_all_close,
                                     assert_grads_close, fastest_cpu_backend, flat, grads_of,
                                     input_for, is_cell, is_lstm, model_twins, module_params,
                                     rel_rms, twins, weighted_sum)
from tests.helpers import assert_close
from tests.layer_cases import randn


# ----------------------------------------------------------------------- copy and serialization
def _outputs(m, x):
    with torch.no_grad():
        return flat(m(x))


@pytest.mark.parametrize("name", list(ALL))
def test_deepcopy(name):
    ref, ours = twins(name, "reference")
    x = input_for(name)
    clone = copy.deepcopy(ours)
    assert type(clone) is type(ours) and clone.backend == "reference"
    assert_all_close(_outputs(clone, x), _outputs(ref, x), "deepcopy vs torch.nn")
    # An independent copy: changing it leaves the original alone.
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    assert_all_close(_outputs(ours, x), _outputs(ref, x), "original after editing the copy")
    assert not torch.allclose(_outputs(clone, x)[0], _outputs(ref, x)[0])


@pytest.mark.parametrize("name", ["LSTM_proj", "GRU", "RNN_relu", "LSTMCell"])
def test_save_load_module_and_state_dict(name):
    ref, ours = twins(name, "reference")
    x = input_for(name)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is type(ours) and loaded.backend == "reference"
    assert_all_close(_outputs(loaded, x), _outputs(ref, x), "torch.load(module) vs torch.nn")

    # A state_dict loads with weights_only=True, into rnnkernels and into torch.nn alike.
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert sd.keys() == ref.state_dict().keys()
    fresh_ours = type(ours)(**ALL[name][1], backend="reference")
    fresh_ours.load_state_dict(sd)
    fresh_ref = type(ref)(**ALL[name][1])
    fresh_ref.load_state_dict(sd)
    assert_all_close(_outputs(fresh_ours, x), _outputs(ref, x), "state_dict → rnnkernels")
    assert_all_close(_outputs(fresh_ref, x), _outputs(ref, x), "state_dict → torch.nn")


def test_save_load_whole_model():
    ref, ours = model_twins(Stack, "reference")
    x = randn((3, 6, I), F32, 1)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert isinstance(loaded.lstm, rnnkernels.LSTM) and loaded.gru.backend == "reference"
    assert_all_close(_outputs(loaded, x), _outputs(ref, x), "loaded model vs torch.nn")
    g = grads_of(loaded, flat(loaded(x)))
    assert_grads_close(g, grads_of(ref, flat(ref(x))), "loaded model grads")


# ---------------------------------------------------------------------------- dtype conversion
@pytest.mark.parametrize("name,how", [pytest.param(n, "double", id=f"{n}-double") for n in ALL]
                         + [pytest.param("LSTM_proj", "to_float64", id="LSTM_proj-to_float64")])
def test_to_double(name, how):
    ref, ours = twins(name, "reference")
    ref, ours = (m.double() if how == "double" else m.to(F64) for m in (ref, ours))
    assert all(p.dtype == F64 for p in ours.parameters())
    x = input_for(name, F64).requires_grad_()
    o_out, r_out = flat(ours(x)), flat(ref(x))
    assert_all_close(o_out, r_out, f".{how}() outputs")
    assert_grads_close(grads_of(ours, o_out, [x]), grads_of(ref, r_out, [x]), f".{how}() grads")


@pytest.mark.parametrize("name", list(ALL))
def test_half_then_float(name):
    """.half() rounds the weights (and a forward runs in fp16, like torch.nn's on the CPU);
    .float() brings the module back to fp32 with those rounded weights, equal to torch.nn's.
    (The backend users get: the compiled one when built.)"""
    ref, ours = twins(name, fastest_cpu_backend())
    ref.half()
    ours.half()
    assert all(p.dtype == torch.float16 for p in ours.parameters())
    xh = input_for(name, torch.float16)
    with torch.no_grad():
        for a, e in zip(flat(ours(xh)), flat(ref(xh))):
            assert a.dtype == e.dtype == torch.float16
            assert rel_rms(a, e) < 1e-2
    ref.float()
    ours.float()
    x = input_for(name).requires_grad_()
    o_out, r_out = flat(ours(x)), flat(ref(x))
    assert all(t.dtype == F32 for t in o_out)
    assert_all_close(o_out, r_out, "after .half().float()")
    assert_grads_close(grads_of(ours, o_out, [x]), grads_of(ref, r_out, [x]),
                       "grads after .half().float()")


# ------------------------------------------------------------------- autograd modes and graphs
@pytest.mark.parametrize("name,backend", module_params())
def test_frozen_parameters(name, backend):
    """requires_grad_(False) on some parameters: their .grad stays None, the rest are right.
    Frozen: every input weight and hidden bias (GRU: b_hn needs no grad) and the first layer's
    recurrent weight (the op skips dW_hh there but not in the layers above)."""
    ref, ours = twins(name, backend)
    frozen = [n for n, _ in ours.named_parameters() if n.startswith("weight_ih") or
              n.startswith("bias_hh") or n in ("weight_hh_l0", "weight_hh")]
    assert frozen
    for m in (ref, ours):
        for n, p in m.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
    x = input_for(name).requires_grad_()
    for m in (ref, ours):
        weighted_sum(flat(m(x))).backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        if n in frozen:
            assert p.grad is None, f"frozen {n} got a gradient"
        else:
            assert p.grad is not None, f"{n} got no gradient"
            assert_close(p.grad, q.grad, f"grad of {n}")


@pytest.mark.parametrize("name,backend", module_params())
def test_no_grad_and_inference_mode(name, backend):
    ref, ours = twins(name, backend)
    x = input_for(name)
    with_grad = flat(ours(x))
    assert all(t.requires_grad for t in with_grad)
    expected = flat(ref(x))
    with torch.no_grad():
        got = flat(ours(x))
    assert all(not t.requires_grad and t.grad_fn is None for t in got)
    assert_all_close(got, expected, "no_grad")
    with torch.inference_mode():
        got = flat(ours(x))
    assert all(t.is_inference() and not t.requires_grad for t in got)
    assert_all_close(got, expected, "inference_mode")
    assert_all_close(with_grad, expected, "grad mode")


@pytest.mark.parametrize("name,backend", module_params())
def test_retain_graph_backward_twice(name, backend):
    _, ours = twins(name, backend)
    x = input_for(name).requires_grad_()
    loss = weighted_sum(flat(ours(x)))
    loss.backward(retain_graph=True)
    once = {n: p.grad.clone() for n, p in ours.named_parameters()}
    once["input"] = x.grad.clone()
    loss.backward()
    twice = {n: p.grad for n, p in ours.named_parameters()}
    twice["input"] = x.grad
    for n in once:
        assert_close(twice[n], 2 * once[n], f"2x grad of {n}")


# -------------------------------------------------------------------- layouts, views, func API
def _noncontiguous(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``t`` in a non-contiguous layout (a transposed or strided view)."""
    if kind == "transposed":            # stored with the last two dims swapped
        v = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    else:                               # every other element of a wider buffer
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        v = wide[..., ::2]
    assert not v.is_contiguous() and torch.equal(v, t)
    return v


@pytest.mark.parametrize("kind", ["transposed", "strided"])
@pytest.mark.parametrize("name,backend", module_params())
def test_noncontiguous_inputs_and_states(name, backend, kind):
    """x, h0 and c0 as non-contiguous views (and x batch_first as a transposed time-major
    buffer): same outputs and grads as torch.nn with contiguous inputs, grads land on the
    views' bases."""
    ref, ours = twins(name, backend)
    x = input_for(name)
    B = x.shape[-2]
    if is_cell(name):
        lead, hsize = (), H
    else:
        lead = (ref.num_layers * (2 if ref.bidirectional else 1),)
        hsize = ref.proj_size or H
    h0 = randn((*lead, B, hsize), F32, 5)
    c0 = randn((*lead, B, H), F32, 6)
    leaves = [x.clone().requires_grad_(), h0.clone().requires_grad_(),
              c0.clone().requires_grad_()]
    nc_leaves = [t.clone().requires_grad_() for t in leaves]
    views = [_noncontiguous(t, kind) for t in nc_leaves]

    def call(m, xs):
        hx = (xs[1], xs[2]) if is_lstm(name) else xs[1]
        return flat(m(xs[0], hx))

    expected = call(ref, leaves)
    got = call(ours, views)
    assert_all_close(got, expected, f"{kind} inputs")
    uses = leaves if is_lstm(name) else leaves[:2]
    g_ref = torch.autograd.grad(weighted_sum(expected), uses)
    g_ours = torch.autograd.grad(weighted_sum(got), nc_leaves[:len(uses)])
    for k, (a, e) in enumerate(zip(g_ours, g_ref)):
        assert_close(a, e, f"grad of input {k}")


@pytest.mark.parametrize("name,backend", [p for p in module_params() if not is_cell(p.values[0])])
def test_batch_first_on_time_major_buffer(name, backend):
    """A batch_first module fed x.transpose(0, 1) of a time-major tensor (non-contiguous)."""
    ref, ours = twins(name, backend, batch_first=True)
    x_tm = input_for(name)
    xa = x_tm.clone().requires_grad_()
    xb = x_tm.clone().requires_grad_()
    got = flat(ours(xa.transpose(0, 1)))
    expected = flat(ref(xb.transpose(0, 1).contiguous()))
    assert_all_close(got, expected, "batch_first on a transposed view")
    ga = torch.autograd.grad(weighted_sum(got), xa)[0]
    gb = torch.autograd.grad(weighted_sum(expected), xb)[0]
    assert_close(ga, gb, "grad of the time-major buffer")


@pytest.mark.parametrize("name,backend", module_params())
def test_inputs_are_views_with_offset(name, backend):
    """x and h0 as slices of larger tensors (non-zero storage offset): results equal torch.nn's
    and gradients reach exactly the sliced region of the bases."""
    ref, ours = twins(name, backend)
    x = input_for(name)
    base_r = torch.cat([randn((2, *x.shape[1:]), F32, 7), x]).requires_grad_()
    base_o = base_r.detach().clone().requires_grad_()
    vr, vo = base_r[2:], base_o[2:]
    assert vo.storage_offset() > 0
    expected, got = flat(ref(vr)), flat(ours(vo))
    assert_all_close(got, expected, "view input")
    gr = torch.autograd.grad(weighted_sum(expected), base_r)[0]
    go = torch.autograd.grad(weighted_sum(got), base_o)[0]
    assert_close(go, gr, "grad of the base")
    assert not go[:2].any(), "gradient leaked outside the view"


@pytest.mark.parametrize("name,backend", module_params())
def test_functional_call_replacement_parameters(name, backend):
    """torch.func.functional_call with replacement tensors: the outputs use them, their grads
    equal torch.nn's, and the module's own parameters get nothing."""
    ref, ours = twins(name, backend)
    x = input_for(name)
    new = {n: (p.detach() * 0.5 + 0.01).requires_grad_() for n, p in ref.named_parameters()}
    new_ref = {n: t.detach().clone().requires_grad_() for n, t in new.items()}
    got = flat(torch.func.functional_call(ours, new, (x,)))
    expected = flat(torch.func.functional_call(ref, new_ref, (x,)))
    assert_all_close(got, expected, "functional_call outputs")
    plain = flat(ours(x))
    assert not torch.allclose(plain[0], got[0]), "replacement parameters were not used"
    g = torch.autograd.grad(weighted_sum(got), list(new.values()))
    gr = torch.autograd.grad(weighted_sum(expected), list(new_ref.values()))
    for n, a, e in zip(new, g, gr):
        assert_close(a, e, f"grad of replacement {n}")
    assert all(p.grad is None for p in ours.parameters())
    # The module is unchanged after the call.
    assert_all_close(flat(ours(x)), plain, "after functional_call")
