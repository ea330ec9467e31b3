"""The drop-in promise beyond the numbers: state_dict both ways, repr, isinstance,
flatten_parameters, dtype moves, parameter replacement, copying/pickling, and ``convert``.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import rnnkernels
from tests.helpers import (MODES, assert_close, compare_runs, cpu_backends, make_twins, our_class,
                           torch_class)
from tests.layer_cases import LayerCase, make_inputs, randn, run_layer

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN")  # torch.nn (the oracle) warns

F32, F64 = torch.float32, torch.float64
BACKENDS = [b for b in cpu_backends(F64) if b != "triton"]

# (mode, ctor) of the modules whose state is checked
CONFIGS = [
    ("LSTM", dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=2)),
    ("LSTM", dict(input_size=3, hidden_size=4, bias=False, batch_first=True)),
    ("GRU", dict(input_size=3, hidden_size=4, num_layers=3, bidirectional=True, bias=False)),
    ("RNN_RELU", dict(input_size=3, hidden_size=4, num_layers=2)),
    ("RNN_TANH", dict(input_size=2, hidden_size=1, bidirectional=True)),
    ("LSTMCell", dict(input_size=3, hidden_size=4)),
    ("GRUCell", dict(input_size=3, hidden_size=4, bias=False)),
    ("RNNCell_RELU", dict(input_size=3, hidden_size=4)),
]
CONFIG_IDS = [f"{m}-" + "-".join(f"{k}{v}" for k, v in c.items()) for m, c in CONFIGS]


def _ctor(mode, ctor):
    return {**MODES[mode][1], **ctor}


def _layer_case(mode, ctor, dtype=F64) -> LayerCase:
    return LayerCase(mode, T=4, B=3, I=ctor["input_size"], H=ctor["hidden_size"],
                     layers=ctor.get("num_layers", 1), bidir=ctor.get("bidirectional", False),
                     batch_first=ctor.get("batch_first", False), bias=ctor.get("bias", True),
                     proj=ctor.get("proj_size", 0), h0=True, dtype=dtype)


def _forward(mod, mode, ctor, dtype=F64):
    """A deterministic forward of a layer or a cell, returning a flat tuple of tensors."""
    if "Cell" in mode:
        x = randn((3, ctor["input_size"]), dtype, 5)
        out = mod(x)
        return out if isinstance(out, tuple) else (out,)
    case = _layer_case(mode, ctor, dtype)
    run = run_layer(mod, case, make_inputs(case, seed=5), grad=False)
    return (run.out, *run.states.values())


def _assert_same_outputs(a, b, what):
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        assert_close(x, y, f"{what}[{k}]")


# ------------------------------------------------------------------------------- state_dict
@pytest.mark.parametrize("mode, ctor", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trip_both_ways(mode, ctor):
    kw = _ctor(mode, ctor)
    torch.manual_seed(0)
    ref = torch_class(mode)(**kw).double()
    torch.manual_seed(1)
    ours = our_class(mode)(**kw, backend="reference").double()
    ref_sd = ref.state_dict()
    # identical keys, order, shapes and dtypes before any load
    assert list(ours.state_dict().keys()) == list(ref_sd.keys())
    for k, v in ours.state_dict().items():
        assert v.shape == ref_sd[k].shape and v.dtype == ref_sd[k].dtype, k

    # torch -> rnnkernels, strict
    result = ours.load_state_dict(ref_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref_sd[k]), k
    _assert_same_outputs(_forward(ours, mode, ctor), _forward(ref, mode, ctor), "torch->ours")

    # rnnkernels -> torch, strict (after changing our weights so the load is observable)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(0.5).add_(0.01)
    torch.manual_seed(2)
    fresh = torch_class(mode)(**kw).double()
    result = fresh.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _assert_same_outputs(_forward(ours, mode, ctor), _forward(fresh, mode, ctor), "ours->torch")


@pytest.mark.parametrize("mode, ctor", CONFIGS[:2] + CONFIGS[5:6],
                         ids=CONFIG_IDS[:2] + CONFIG_IDS[5:6])
def test_save_load_whole_module_and_deepcopy(mode, ctor):
    kw = _ctor(mode, ctor)
    ref, ours = make_twins(mode, "reference", F64, seed=4, **kw)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    clone = copy.deepcopy(ours)
    want = _forward(ref, mode, ctor)
    for other, what in ((loaded, "torch.load"), (clone, "deepcopy")):
        assert type(other) is type(ours) and other.backend == "reference", what
        _assert_same_outputs(_forward(other, mode, ctor), want, what)
    # a deep copy owns its parameters
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    _assert_same_outputs(_forward(ours, mode, ctor), want, "original after editing the copy")


# ------------------------------------------------------------------------------- repr / types
@pytest.mark.parametrize("mode, ctor", CONFIGS, ids=CONFIG_IDS)
def test_repr_and_isinstance(mode, ctor):
    kw = _ctor(mode, ctor)
    ref = torch_class(mode)(**kw)
    auto = our_class(mode)(**kw)
    explicit = our_class(mode)(**kw, backend="reference")
    assert isinstance(auto, torch_class(mode))
    assert type(auto).__name__ == type(ref).__name__
    # default backend: byte-identical to torch's repr
    assert repr(auto) == repr(ref)
    # a non-default backend is shown, last, in extra_repr
    assert repr(explicit) == repr(ref)[:-1] + ", backend='reference')"


def test_repr_of_converted_model_unchanged():
    model = nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 5, num_layers=2, dropout=0.1),
                          nn.ModuleList([nn.GRUCell(5, 6)]))
    before = repr(model)
    rnnkernels.convert(model)
    assert repr(model) == before


# -------------------------------------------------------------------- flatten / dtype / params
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode, ctor", CONFIGS[:5], ids=CONFIG_IDS[:5])
def test_flatten_parameters_is_harmless(mode, ctor, backend):
    ref, ours = make_twins(mode, backend, F64, seed=6, **_ctor(mode, ctor))
    params_before = [p for p in ours.parameters()]
    case = _layer_case(mode, ctor)
    inputs = make_inputs(case, seed=8)
    first = run_layer(ours, case, inputs)
    ours.flatten_parameters()
    ours.flatten_parameters()
    assert all(a is b for a, b in zip(ours.parameters(), params_before))
    compare_runs(run_layer(ours, case, inputs), first, "after flatten_parameters")
    compare_runs(first, run_layer(ref, case, inputs), "vs torch")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode, ctor", [CONFIGS[0], CONFIGS[2], CONFIGS[5]],
                         ids=[CONFIG_IDS[0], CONFIG_IDS[2], CONFIG_IDS[5]])
def test_dtype_move_after_construction(mode, ctor, backend):
    """Built in fp32, moved with .double() (and back with .float()): the forward follows."""
    kw = _ctor(mode, ctor)
    torch.manual_seed(3)
    ref = torch_class(mode)(**kw)
    ours = our_class(mode)(**kw, backend=backend)
    ours.load_state_dict(ref.state_dict())
    ref.double()
    ours.double()
    assert all(p.dtype == F64 for p in ours.parameters())
    _assert_same_outputs(_forward(ours, mode, ctor, F64), _forward(ref, mode, ctor, F64),
                         ".double()")
    ref.float()
    ours.float()
    _assert_same_outputs(_forward(ours, mode, ctor, F32), _forward(ref, mode, ctor, F32),
                         ".float()")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRUCell"])
def test_weight_edits_are_seen(mode, backend):
    """In-place edits (nn.init) and Parameter replacement by assignment both reach the forward."""
    ctor = dict(input_size=3, hidden_size=4)
    if mode != "GRUCell":
        ctor["num_layers"] = 2
    ref, ours = make_twins(mode, backend, F64, seed=10, **ctor)
    names = [n for n, _ in ref.named_parameters()]
    with torch.no_grad():
        nn.init.orthogonal_(getattr(ref, names[1]), generator=torch.Generator().manual_seed(0))
        getattr(ours, names[1]).copy_(getattr(ref, names[1]))
    _assert_same_outputs(_forward(ours, mode, ctor), _forward(ref, mode, ctor), "in-place edit")
    new = randn(getattr(ref, names[-1]).shape, F64, 99)
    setattr(ref, names[-1], nn.Parameter(new.clone()))
    setattr(ours, names[-1], nn.Parameter(new.clone()))
    _assert_same_outputs(_forward(ours, mode, ctor), _forward(ref, mode, ctor), "replaced param")


# --------------------------------------------------------------------------------- convert
class Encoder(nn.Module):
    """A custom module holding an LSTM with projection and a GRUCell."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
        self.cell = nn.GRUCell(6, 5)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.cell(out[:, -1], h[-1].repeat(1, 2)[:, :5].contiguous())


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.seq = nn.Sequential(Encoder(), nn.Tanh())
        self.stack = nn.ModuleList([nn.GRU(5, 5), nn.RNN(5, 4, num_layers=2,
                                                        nonlinearity="relu")])
        self.cells = nn.ModuleDict({"rnn": nn.RNNCell(4, 3), "lstm": nn.LSTMCell(3, 3)})

    def forward(self, x):                               # x [B, T, 3]
        e = self.seq(self.embed(x))                     # [B, 5]
        g, _ = self.stack[0](e.unsqueeze(0).expand(3, -1, -1).contiguous())
        r, _ = self.stack[1](g)
        h = self.cells["rnn"](r[-1])
        h2, c2 = self.cells["lstm"](h)
        return torch.cat([h2, c2], dim=-1)


RNN_TYPES = (nn.RNNBase, nn.RNNCellBase)


@pytest.mark.parametrize("backend", BACKENDS)
def test_convert_nested_model(backend):
    torch.manual_seed(0)
    model = Model().double()
    model.seq.eval()                          # mixed training modes must survive
    model.cells["lstm"].eval()
    original = copy.deepcopy(model)
    x = randn((2, 4, 3), F64, 1).requires_grad_()
    want = original(x)
    want_grads = torch.autograd.grad(want.square().sum(), [x, *original.parameters()])

    params_before = dict(model.named_parameters())
    modes_before = {n: m.training for n, m in model.named_modules()}
    hook_calls = []
    model.stack[0].register_forward_hook(lambda *args: hook_calls.append(1))

    returned = rnnkernels.convert(model, backend=backend)

    assert returned is model
    rnn_modules = {n: m for n, m in model.named_modules() if isinstance(m, RNN_TYPES)}
    assert len(rnn_modules) == 6
    ours = (rnnkernels.LSTM, rnnkernels.GRU, rnnkernels.RNN, rnnkernels.LSTMCell,
            rnnkernels.GRUCell, rnnkernels.RNNCell)
    for name, m in rnn_modules.items():
        assert type(m) in ours, f"{name} was not converted: {type(m)}"
        assert m.backend == backend
    # the very same Parameter objects (an optimiser built before convert keeps working)
    assert list(dict(model.named_parameters())) == list(params_before)
    for name, p in model.named_parameters():
        assert p is params_before[name], name
        assert p.dtype == F64 and p.device.type == "cpu"
    assert {n: m.training for n, m in model.named_modules()} == modes_before
    assert isinstance(model.seq[0].lstm, nn.LSTM) and model.seq[0].lstm.proj_size == 3

    got = model(x)
    assert hook_calls, "a forward hook registered before convert no longer fires"
    assert_close(got, want, "model output")
    got_grads = torch.autograd.grad(got.square().sum(), [x, *model.parameters()])
    names = ["input"] + [n for n, _ in model.named_parameters()]
    for name, g, w in zip(names, got_grads, want_grads):
        assert_close(g, w, f"grad of {name}")

    # converting again changes nothing
    assert rnnkernels.convert(model, backend=backend) is model
    assert_close(model(x), want, "after a second convert")


@pytest.mark.parametrize("mode, ctor", CONFIGS, ids=CONFIG_IDS)
def test_convert_bare_module(mode, ctor):
    """A model that IS a recurrent module: convert returns its twin with the same weights."""
    kw = _ctor(mode, ctor)
    torch.manual_seed(0)
    ref = torch_class(mode)(**kw).double().eval()
    keep = copy.deepcopy(ref)
    conv = rnnkernels.convert(ref, backend="reference")
    assert type(conv) is our_class(mode)
    assert not conv.training
    for (n1, p1), (n2, p2) in zip(conv.named_parameters(), keep.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    _assert_same_outputs(_forward(conv, mode, ctor), _forward(keep, mode, ctor), "converted")


def test_convert_leaves_user_subclasses_alone():
    class MyGRU(nn.GRU):
        def forward(self, x, hx=None):
            out, h = super().forward(x, hx)
            return out * 2, h

    model = nn.Sequential(MyGRU(3, 4))
    rnnkernels.convert(model)
    assert type(model[0]) is MyGRU


def test_convert_keeps_a_shared_module_shared():
    """One LSTM held under two names and by two parents, one RNNCell twice in a ModuleList:
    each becomes ONE twin that every reference points to (so eval() reaches it everywhere)."""
    lstm, cell = nn.LSTM(3, 4, num_layers=2, dropout=0.5), nn.RNNCell(3, 3)
    inner = nn.Sequential(lstm)
    model = nn.Module()
    model.encoder, model.again, model.inner = lstm, lstm, inner
    model.cells = nn.ModuleList([cell, nn.Linear(3, 3), cell])
    rnnkernels.convert(model, backend="reference")
    assert type(model.encoder) is rnnkernels.LSTM
    assert model.encoder is model.again is model.inner[0]
    assert type(model.cells[0]) is rnnkernels.RNNCell and model.cells[0] is model.cells[2]
    assert model.encoder.weight_ih_l0 is lstm.weight_ih_l0        # the very Parameter objects
    model.eval()
    assert not model.again.training and not model.inner[0].training
    assert len(list(model.parameters())) == 8 + 4 + 2       # LSTM, RNNCell, Linear: no copies


def test_rnn_mode_is_fixed_at_construction():
    """torch.nn.RNN dispatches on the mode set at construction; reassigning nonlinearity later
    changes nothing there, so it changes nothing here either."""
    torch.manual_seed(0)
    ref = nn.RNN(3, 4, nonlinearity="relu")
    ours = rnnkernels.RNN(3, 4, nonlinearity="relu", backend="reference")
    ours.load_state_dict(ref.state_dict())
    ref.nonlinearity = ours.nonlinearity = "tanh"
    x = torch.randn(5, 2, 3)
    assert_close(ours(x)[0], ref(x)[0], "after reassigning nonlinearity")
