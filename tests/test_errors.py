"""Every error path of the drop-in modules raises what torch.nn raises for the same bad input.

The expectation is obtained by calling torch.nn with the same arguments in the test (never
hard-coded), so a torch upgrade that changes an exception updates the expectation with it.
Where torch validates on purpose (its own argument checks), the message must be torch's exactly;
where torch's error is incidental (a GEMM complaining about dtypes, a tuple without ``.dim``) the
type must still match and rnnkernels' message must name the problem (keywords).

Backend names: an unknown one is a ValueError (kwarg, env ``RNNKERNELS_BACKEND`` and
``convert``); an explicit backend that cannot run the call is a RuntimeError naming it.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
from tests.helpers import (MODES, assert_close, assert_same_error, cpu_backends, make_twins,
                           torch_class)

BACKENDS = [b for b in cpu_backends() if b != "triton"] or cpu_backends()
F32, F64 = torch.float32, torch.float64


def z(*shape, dtype=F32):
    return torch.zeros(shape, dtype=dtype)


def r(*shape, dtype=F32):
    return torch.randn(shape, dtype=dtype)


def packed(T=5, B=2, I=3, dtype=F32, lengths=(5, 3), sorted_=True):
    return pack_padded_sequence(r(T, B, I, dtype=dtype), torch.tensor(lengths),
                                enforce_sorted=sorted_)


# (id, mode, ctor kwargs, args builder, exact message?, keywords for our message)
# Layers: I=3, H=4, 2 layers unless stated; batched input [T=5, B=2, I=3].
LAYER_ERRORS = [
    ("LSTM-wrong-input-size", "LSTM", {}, lambda: (r(5, 2, 4),), True, ()),
    ("GRU-wrong-input-size", "GRU", {}, lambda: (r(5, 2, 4),), True, ()),
    ("RNN-wrong-input-size-unbatched", "RNN_TANH", {}, lambda: (r(5, 2),), True, ()),
    ("LSTM-h0-wrong-batch", "LSTM", {}, lambda: (r(5, 2, 3), (z(2, 3, 4), z(2, 2, 4))), True, ()),
    ("LSTM-h0-wrong-size", "LSTM", {}, lambda: (r(5, 2, 3), (z(2, 2, 5), z(2, 2, 4))), True, ()),
    ("LSTM-h0-wrong-layers", "LSTM", {}, lambda: (r(5, 2, 3), (z(1, 2, 4), z(2, 2, 4))), True,
     ()),
    ("LSTM-c0-wrong-size", "LSTM", {}, lambda: (r(5, 2, 3), (z(2, 2, 4), z(2, 2, 5))), True, ()),
    ("LSTM-c0-wrong-batch", "LSTM", {}, lambda: (r(5, 2, 3), (z(2, 2, 4), z(2, 1, 4))), True, ()),
    ("LSTMproj-h0-has-hidden-size", "LSTM", {"proj_size": 2},
     lambda: (r(5, 2, 3), (z(2, 2, 4), z(2, 2, 4))), True, ()),
    ("LSTMproj-c0-has-proj-size", "LSTM", {"proj_size": 2},
     lambda: (r(5, 2, 3), (z(2, 2, 2), z(2, 2, 2))), True, ()),
    ("LSTM-bidir-h0-one-direction", "LSTM", {"bidirectional": True},
     lambda: (r(5, 2, 3), (z(2, 2, 4), z(2, 2, 4))), True, ()),
    ("GRU-h0-wrong-batch", "GRU", {}, lambda: (r(5, 2, 3), z(2, 3, 4)), True, ()),
    ("GRU-h0-wrong-layers", "GRU", {}, lambda: (r(5, 2, 3), z(3, 2, 4)), True, ()),
    ("RNN-h0-wrong-size", "RNN_RELU", {}, lambda: (r(5, 2, 3), z(2, 2, 3)), True, ()),
    ("GRU-bf-h0-wrong-batch", "GRU", {"batch_first": True},
     lambda: (r(2, 5, 3), z(2, 5, 4)), True, ()),
    ("LSTM-4d-input", "LSTM", {}, lambda: (r(5, 2, 3, 1),), True, ()),
    ("GRU-1d-input", "GRU", {}, lambda: (r(3),), True, ()),
    ("RNN-4d-input", "RNN_TANH", {}, lambda: (r(1, 5, 2, 3),), True, ()),
    ("LSTM-batched-input-2d-hx", "LSTM", {}, lambda: (r(5, 2, 3), (z(2, 4), z(2, 4))), True, ()),
    ("LSTM-unbatched-input-3d-hx", "LSTM", {}, lambda: (r(5, 3), (z(2, 1, 4), z(2, 1, 4))), True,
     ()),
    ("GRU-batched-input-2d-hx", "GRU", {}, lambda: (r(5, 2, 3), z(2, 4)), True, ()),
    ("GRU-unbatched-input-3d-hx", "GRU", {}, lambda: (r(5, 3), z(2, 1, 4)), True, ()),
    ("LSTM-unbatched-h0-wrong-size", "LSTM", {}, lambda: (r(5, 3), (z(2, 5), z(2, 4))), True, ()),
    ("LSTM-input-fp64-weights-fp32", "LSTM", {}, lambda: (r(5, 2, 3, dtype=F64),), True, ()),
    ("GRU-input-fp64-weights-fp32", "GRU", {}, lambda: (r(5, 2, 3, dtype=F64),), True, ()),
    ("RNN-input-int64", "RNN_TANH", {}, lambda: (torch.ones(5, 2, 3, dtype=torch.long),), True,
     ()),
    ("GRU-packed-input-fp64-weights-fp32", "GRU", {}, lambda: (packed(dtype=F64),), True, ()),
    ("LSTM-T0", "LSTM", {}, lambda: (r(0, 2, 3),), True, ()),
    ("GRU-T0-bf", "GRU", {"batch_first": True}, lambda: (r(2, 0, 3),), True, ()),
    # torch's error here is incidental: a GEMM of mismatched dtypes (or oneDNN's dtype table)
    ("LSTM-h0-fp64", "LSTM", {}, lambda: (r(5, 2, 3), (z(2, 2, 4, dtype=F64), z(2, 2, 4))),
     False, ("dtype",)),
    ("LSTMproj-h0-fp64", "LSTM", {"proj_size": 2},
     lambda: (r(5, 2, 3), (z(2, 2, 2, dtype=F64), z(2, 2, 4))), False, ("dtype",)),
    ("GRU-h0-fp64", "GRU", {}, lambda: (r(5, 2, 3), z(2, 2, 4, dtype=F64)), False, ("dtype",)),
    ("RNN-h0-fp64", "RNN_TANH", {}, lambda: (r(5, 2, 3), z(2, 2, 4, dtype=F64)), False,
     ("dtype",)),
    # wrong container type for hx; torch's exceptions, whatever they are, are the contract
    ("LSTM-hx-tensor-not-tuple", "LSTM", {}, lambda: (r(5, 2, 3), z(2, 2, 4)), False, ("hx",)),
    ("LSTM-hx-3-tuple", "LSTM", {}, lambda: (r(5, 2, 3), (z(2, 2, 4),) * 3), False, ("two",)),
    ("GRU-hx-tuple-not-tensor", "GRU", {}, lambda: (r(5, 2, 3), (z(2, 2, 4),)), False,
     ("tuple",)),
    # packed input: torch's messages are incidental, the types are not
    ("GRU-packed-h0-wrong-batch", "GRU", {}, lambda: (packed(), z(2, 3, 4)), True, ()),
    ("LSTM-packed-h0-wrong-batch", "LSTM", {}, lambda: (packed(), (z(2, 3, 4), z(2, 3, 4))),
     False, ("size",)),
    ("LSTM-packed-wrong-input-size", "LSTM", {}, lambda: (packed(I=4),), False, ("input",)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, mode, ctor, build, exact, keywords",
                         LAYER_ERRORS, ids=[e[0] for e in LAYER_ERRORS])
def test_layer_error_matches_torch(name, mode, ctor, build, exact, keywords, backend):
    kw = dict(input_size=3, hidden_size=4, num_layers=2, **ctor)
    ref, ours = make_twins(mode, backend, F32, **kw)
    args = build()
    assert_same_error(lambda: ref(*args), lambda: ours(*args), exact=exact, keywords=keywords)


# Cells: I=3, H=4, batch 2.
CELL_ERRORS = [
    ("LSTMCell-3d-input", "LSTMCell", lambda: (r(5, 2, 3),), True, ()),
    ("GRUCell-3d-input", "GRUCell", lambda: (r(5, 2, 3),), True, ()),
    ("RNNCell-0d-input", "RNNCell_TANH", lambda: (torch.tensor(1.0),), True, ()),
    ("LSTMCell-wrong-input-size", "LSTMCell", lambda: (r(2, 4),), True, ()),
    ("GRUCell-wrong-input-size", "GRUCell", lambda: (r(2, 4),), True, ()),
    ("RNNCell-wrong-input-size-unbatched", "RNNCell_RELU", lambda: (r(5),), True, ()),
    ("LSTMCell-h-wrong-batch", "LSTMCell", lambda: (r(2, 3), (z(3, 4), z(3, 4))), True, ()),
    ("GRUCell-h-wrong-batch", "GRUCell", lambda: (r(2, 3), z(3, 4)), True, ()),
    ("RNNCell-h-wrong-size", "RNNCell_TANH", lambda: (r(2, 3), z(2, 5)), True, ()),
    ("LSTMCell-c-wrong-size", "LSTMCell", lambda: (r(2, 3), (z(2, 4), z(2, 5))), True, ()),
    ("GRUCell-1d-input-2d-h", "GRUCell", lambda: (r(3), z(1, 4)), True, ()),
    ("GRUCell-2d-input-1d-h", "GRUCell", lambda: (r(2, 3), z(4)), True, ()),
    ("LSTMCell-1d-input-2d-hc", "LSTMCell", lambda: (r(3), (z(1, 4), z(1, 4))), True, ()),
    # torch: a GEMM of mismatched dtypes
    ("LSTMCell-input-fp64", "LSTMCell", lambda: (r(2, 3, dtype=F64),), False, ("dtype",)),
    ("GRUCell-input-fp64", "GRUCell", lambda: (r(2, 3, dtype=F64),), False, ("dtype",)),
    ("RNNCell-h-fp64", "RNNCell_TANH", lambda: (r(2, 3), z(2, 4, dtype=F64)), False, ("dtype",)),
    ("LSTMCell-h-fp64", "LSTMCell", lambda: (r(2, 3), (z(2, 4, dtype=F64), z(2, 4))), False,
     ("dtype",)),
    # torch's argument parser / cell checks
    ("LSTMCell-hx-tensor-not-tuple", "LSTMCell", lambda: (r(2, 3), z(2, 4)), False, ("tuple",)),
    ("LSTMCell-hx-1-tuple", "LSTMCell", lambda: (r(2, 3), (z(2, 4),)), False, ("two",)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, mode, build, exact, keywords", CELL_ERRORS,
                         ids=[e[0] for e in CELL_ERRORS])
def test_cell_error_matches_torch(name, mode, build, exact, keywords, backend):
    ref, ours = make_twins(mode, backend, F32, input_size=3, hidden_size=4)
    args = build()
    assert_same_error(lambda: ref(*args), lambda: ours(*args), exact=exact, keywords=keywords)


# ------------------------------------------------------------------------- constructor errors
CTOR_ERRORS = [
    ("proj-not-smaller", "LSTM", dict(input_size=3, hidden_size=4, proj_size=4)),
    ("proj-negative", "LSTM", dict(input_size=3, hidden_size=4, proj_size=-1)),
    ("proj-on-GRU", "GRU", dict(input_size=3, hidden_size=4, proj_size=2)),
    ("dropout-above-1", "LSTM", dict(input_size=3, hidden_size=4, dropout=1.5)),
    ("hidden-0", "GRU", dict(input_size=3, hidden_size=0)),
    ("layers-0", "RNN_TANH", dict(input_size=3, hidden_size=4, num_layers=0)),
    ("bad-nonlinearity", "RNN_TANH", dict(input_size=3, hidden_size=4, nonlinearity="gelu")),
]


@pytest.mark.parametrize("name, mode, kwargs", CTOR_ERRORS, ids=[e[0] for e in CTOR_ERRORS])
def test_constructor_error_matches_torch(name, mode, kwargs):
    cls_name, extra = MODES[mode]
    kwargs = {**extra, **kwargs}
    assert_same_error(lambda: torch_class(mode)(**kwargs),
                      lambda: getattr(rnnkernels, cls_name)(**kwargs, backend="reference"))


def test_cell_bad_nonlinearity_matches_torch():
    # RNNCell validates its nonlinearity at forward time in torch, not in the constructor.
    def build_and_call(cls, **kw):
        return lambda: cls(3, 4, nonlinearity="gelu", **kw)(r(2, 3))
    assert_same_error(build_and_call(torch.nn.RNNCell),
                      build_and_call(rnnkernels.RNNCell, backend="reference"), exact=False)


def test_dropout_warning_matches_torch():
    """torch warns that dropout on a 1-layer RNN does nothing; the drop-in warns alike."""
    with pytest.warns(UserWarning) as torch_w:
        torch.nn.GRU(3, 4, num_layers=1, dropout=0.5)
    with pytest.warns(UserWarning) as our_w:
        rnnkernels.GRU(3, 4, num_layers=1, dropout=0.5, backend="reference")
    assert [str(w.message) for w in our_w] == [str(w.message) for w in torch_w]


# ------------------------------------------------------------------------------ backend names
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_unknown_backend_kwarg_is_value_error(cls):
    with pytest.raises(ValueError, match="no_such_backend"):
        getattr(rnnkernels, cls)(3, 4, backend="no_such_backend")


@pytest.mark.parametrize("cls", ["LSTM", "GRUCell"])
def test_unknown_backend_env_is_value_error(cls, monkeypatch):
    monkeypatch.setenv("RNNKERNELS_BACKEND", "no_such_backend")
    with pytest.raises(ValueError, match="no_such_backend"):
        m = getattr(rnnkernels, cls)(3, 4)
        x = r(5, 2, 3) if cls == "LSTM" else r(2, 3)
        m(x)


def test_unknown_backend_in_convert_is_value_error():
    model = torch.nn.Sequential(torch.nn.GRU(3, 4))
    with pytest.raises(ValueError, match="no_such_backend"):
        rnnkernels.convert(model, backend="no_such_backend")
    assert type(model[0]) is torch.nn.GRU, "a failed convert must leave the model untouched"


def _unrunnable_backend_on_cpu():
    """A backend name that exists but cannot run CPU float32 tensors here ("cuda" always;
    "triton" too when its interpreter is off)."""
    for name in ("cuda", "triton", "cpu"):
        if name not in rnnkernels.available_backends("cpu", F32):
            return name
    pytest.skip("every backend can run on the CPU here")


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_explicit_backend_that_cannot_run_is_runtime_error(cls):
    name = _unrunnable_backend_on_cpu()
    x = r(5, 2, 3) if not cls.endswith("Cell") else r(2, 3)
    with pytest.raises(RuntimeError, match=name):
        getattr(rnnkernels, cls)(3, 4, backend=name)(x)


def test_env_backend_that_cannot_run_is_runtime_error(monkeypatch):
    name = _unrunnable_backend_on_cpu()
    monkeypatch.setenv("RNNKERNELS_BACKEND", name)
    with pytest.raises(RuntimeError, match=name):
        rnnkernels.LSTM(3, 4)(r(5, 2, 3))


def test_env_backend_does_not_override_explicit_kwarg(monkeypatch):
    """The env variable replaces "auto" only: an explicit backend kwarg still wins."""
    name = _unrunnable_backend_on_cpu()
    monkeypatch.setenv("RNNKERNELS_BACKEND", name)
    ref, ours = make_twins("GRU", "reference", F32, input_size=3, hidden_size=4)
    x = r(5, 2, 3)
    assert_close(ours(x)[0], ref(x)[0], "output")


# ----------------------------------------------------------------------- edge cases, not errors
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_empty_batch_like_torch(mode, backend):
    """B=0 is accepted by torch.nn (empty outputs); the drop-in must not fail on it."""
    ref, ours = make_twins(mode, backend, F32, input_size=3, hidden_size=4, num_layers=2,
                           bidirectional=True)
    x = r(5, 0, 3)
    want, got = ref(x), ours(x)
    assert got[0].shape == want[0].shape
    states_w = want[1] if mode == "LSTM" else (want[1],)
    states_g = got[1] if mode == "LSTM" else (got[1],)
    for g, w in zip(states_g, states_w):
        assert g.shape == w.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["LSTM", "GRUCell"])
def test_device_mismatch_matches_torch(mode):
    ref, ours = make_twins(mode, "auto", F32, input_size=3, hidden_size=4)
    x = r(5, 2, 3).cuda() if mode == "LSTM" else r(2, 3).cuda()
    assert_same_error(lambda: ref(x), lambda: ours(x), exact=False)
