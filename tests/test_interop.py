"""Interop with what needs torch.nn's own classes (issue 15, item 6): ``rnnkernels.revert``
(convert's inverse), TorchScript, ONNX export, and whole-model checkpoints under torch.load's
default ``weights_only=True``. The oracle is torch.nn: a model built from torch.nn's classes,
deep-copied before any conversion.
"""
from __future__ import annotations

import copy
import importlib
import json
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import rnnkernels
from tests.ecosystem_helpers import (ALL, F32, I, assert_all_close, assert_grads_close, flat,
                                     grads_of, input_for, is_cell, twins)
from tests.helpers import assert_close, cpu_backends
from tests.layer_cases import randn

# torch's deprecations of the very APIs under test (TorchScript, the TorchScript-based exporter)
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based"),
              pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")]

F64 = torch.float64
BACKENDS = [b for b in cpu_backends(F64) if b != "triton"]
TORCH_RNN_CLASSES = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
OUR_CLASSES = (rnnkernels.LSTM, rnnkernels.GRU, rnnkernels.RNN, rnnkernels.LSTMCell,
               rnnkernels.GRUCell, rnnkernels.RNNCell)


class Nested(nn.Module):
    """Recurrent modules at every kind of place: an attribute, a Sequential, a ModuleList (one
    cell twice), a ModuleDict, and one LSTM under two names (``lstm`` and ``seq[1]``)."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.seq = nn.Sequential(nn.Linear(I, I), self.lstm)
        cell = nn.GRUCell(12, 12)
        self.cells = nn.ModuleList([cell, nn.Tanh(), cell])
        self.more = nn.ModuleDict({"rnn": nn.RNN(12, 3, nonlinearity="relu"),
                                   "lstm_cell": nn.LSTMCell(3, 3)})

    def forward(self, x):                                   # x [B, T, I]
        y, _ = self.seq(x)
        h = self.cells[2](self.cells[1](self.cells[0](y[:, -1])))
        r, _ = self.more["rnn"](h.unsqueeze(0).expand(2, -1, -1).contiguous())
        h2, c2 = self.more["lstm_cell"](r[-1])
        return torch.cat([h2, c2, self.lstm(x)[0][:, 0, :3]], dim=-1)


def _run(model, x):
    out = model(x)
    return out, grads_of(model, flat(out), extra=(x,))


# ----------------------------------------------------------------------------------- revert
@pytest.mark.parametrize("backend", BACKENDS)
def test_convert_revert_convert_round_trip(backend):
    torch.manual_seed(0)
    model = Nested().double()
    model.more.eval()                                  # mixed training flags must survive
    oracle = copy.deepcopy(model)
    x = randn((3, 5, I), F64, 1).requires_grad_()
    want, want_grads = _run(oracle, x)
    params = dict(model.named_parameters())
    modes = {n: m.training for n, m in model.named_modules()}

    rnnkernels.convert(model, backend=backend)
    calls = []
    model.more["rnn"].register_forward_hook(lambda *args: calls.append(1))   # set on ours
    assert rnnkernels.revert(model) is model
    assert not [n for n, m in model.named_modules() if isinstance(m, OUR_CLASSES)]
    assert type(model.lstm) is nn.LSTM and type(model.cells[0]) is nn.GRUCell
    assert model.lstm is model.seq[1] and model.cells[0] is model.cells[2]   # still shared
    assert not hasattr(model.lstm, "backend")
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters()), "Parameters were copied"
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert model.state_dict().keys() == oracle.state_dict().keys()
    got, got_grads = _run(model, x)                    # torch.nn again: bit for bit
    assert torch.equal(got, want)
    assert all(torch.equal(got_grads[k], want_grads[k]) for k in want_grads)
    assert calls, "a forward hook registered on the rnnkernels module was lost by revert"

    rnnkernels.convert(model, backend=backend)
    assert type(model.lstm) is rnnkernels.LSTM and model.lstm.backend == backend
    got, got_grads = _run(model, x)
    assert_close(got, want, "after convert -> revert -> convert")
    assert_grads_close(got_grads, want_grads, "after convert -> revert -> convert")


@pytest.mark.parametrize("name", list(ALL))
def test_revert_a_bare_module(name):
    ref, ours = twins(name, BACKENDS[-1], F64)
    ours.eval()
    back = rnnkernels.revert(ours)
    assert type(back) is type(ref) and not back.training
    assert repr(back) == repr(ref) and not hasattr(back, "backend")
    for (n, p), (n2, p2) in zip(ours.named_parameters(), back.named_parameters()):
        assert n == n2 and p is p2, f"{n}: not the same Parameter object"
    sd, ref_sd = back.state_dict(), ref.state_dict()
    assert list(sd) == list(ref_sd) and sd._metadata == ref_sd._metadata
    assert all(torch.equal(sd[k], ref_sd[k]) for k in ref_sd)
    x = input_for(name, F64)
    assert_all_close(flat(back(x)), flat(ref(x)), "reverted")
    assert rnnkernels.revert(back) is back                     # torch.nn stays as it is


def test_revert_leaves_user_subclasses_alone():
    class Doubled(rnnkernels.GRU):
        def forward(self, x, hx=None):
            out, h = super().forward(x, hx)
            return out * 2, h

    model = nn.Sequential(Doubled(3, 4), nn.LSTM(4, 4))
    keep = list(model)
    assert rnnkernels.revert(model) is model and list(model) == keep


class _Scale(nn.Module):
    def forward(self, w):
        return 0.5 * w


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN_relu", "LSTMCell", "GRUCell"])
def test_parametrizations_survive_convert_and_revert(name):
    """torch.nn.utils.parametrize gives a module a class of its own; convert and revert swap the
    class under it, keeping the parametrizations (and their ``original`` Parameters)."""
    ref, _ = twins(name, "auto", F64)
    weight = "weight_hh" if is_cell(name) else "weight_hh_l0"
    parametrize.register_parametrization(ref, weight, _Scale())
    model = copy.deepcopy(ref)
    original = getattr(model.parametrizations, weight).original
    x = input_for(name, F64)
    want = flat(ref(x))

    ours = rnnkernels.convert(model, backend=BACKENDS[-1])
    assert isinstance(ours, OUR_CLASSES) and parametrize.is_parametrized(ours, weight)
    assert type(ours).__name__ == type(ref).__name__
    assert getattr(ours.parametrizations, weight).original is original
    assert_all_close(flat(ours(x)), want, "converted, parametrized")

    back = rnnkernels.revert(ours)
    assert isinstance(back, TORCH_RNN_CLASSES) and not isinstance(back, OUR_CLASSES)
    assert type(back).__name__ == type(ref).__name__ and parametrize.is_parametrized(back, weight)
    assert getattr(back.parametrizations, weight).original is original
    assert list(back.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(flat(back(x)), want))
    parametrize.remove_parametrizations(back, weight)            # torch's own API still works
    assert type(back) in TORCH_RNN_CLASSES


# ------------------------------------------------------------------------------ TorchScript
class _Holder(nn.Module):
    """TorchScript resolves the torch.nn layers' overloaded forward at the call site: a scripted
    bare torch.nn.LSTM has no ``forward`` of its own, only one called from scripted code."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("name", list(ALL))
def test_torchscript_compiles_torch_nn_in_our_place(name):
    ref, ours = twins(name, BACKENDS[-1])
    params = list(ours.parameters())
    x = input_for(name).requires_grad_()
    want = flat(ref(x))
    want_grads = grads_of(ref, want, extra=(x,))

    bare, bare_ref = torch.jit.script(ours), torch.jit.script(ref)
    assert bare._c._method_names() == bare_ref._c._method_names()
    assert dict(bare.named_parameters()).keys() == dict(bare_ref.named_parameters()).keys()
    assert type(ours) in OUR_CLASSES, "scripting a bare module must not change it"
    if is_cell(name):                    # a layer's overloaded forward runs only when called
        assert_all_close(flat(bare(x)), want, "bare scripted cell")

    holder = _Holder(ours)
    scripted = torch.jit.script(holder)
    got = flat(scripted(x))
    assert_all_close(got, want, "scripted")
    assert_grads_close(grads_of(scripted.inner, got, extra=(x,)), want_grads, "scripted")
    # torch writes what __prepare_scriptable__ returned back into the parent (docs/INTEROP.md):
    # the eager holder now holds the torch.nn twin, with the very same Parameters
    assert type(holder.inner) is type(ref) and list(holder.inner.parameters()) == params
    assert all(a is b for a, b in zip(holder.inner.parameters(), params))


def test_trace_of_reverted_model_matches_torch_nn():
    ref, ours = twins("GRU", BACKENDS[-1])
    x = input_for("GRU")
    traced = torch.jit.trace(rnnkernels.revert(ours), (x,))
    assert any(n.kind() == "aten::gru" for n in traced.graph.nodes())
    x2 = input_for("GRU", T=9, seed=2)
    assert_all_close(flat(traced(x2)), flat(ref(x2)), "traced")


# The direct routes: the scans step aside while torch.jit.trace or torch.onnx.export records
# the model (functional._unsupported_autograd_mode; see docs/INTEROP.md).


@pytest.mark.parametrize("name", ["LSTM", "RNN_relu"])
def test_trace_of_our_module_records_torch_nn_ops(name):
    ref, ours = twins(name, "auto")
    x = input_for(name)
    traced = torch.jit.trace(ours, (x,))
    assert not any(n.kind().startswith("rnnkernels::") for n in traced.graph.nodes())
    x2 = input_for(name, B=5, seed=2)
    assert_all_close(flat(traced(x2)), flat(ref(x2)), "traced")


def test_trace_with_a_named_scan_backend_raises():
    """A backend named explicitly never falls back silently (convention 5)."""
    _, ours = twins("GRU", BACKENDS[-1])
    with pytest.raises(RuntimeError, match=f"backend '{BACKENDS[-1]}' cannot run under "
                                           "torch.jit.trace"):
        torch.jit.trace(ours, (input_for("GRU"),))


# ------------------------------------------------------------------------------------- ONNX
class _Exportable(nn.Module):
    """Every recurrent type ONNX takes from torch.nn (an LSTM with proj_size it does not)."""

    def __init__(self, lib):
        super().__init__()
        self.lstm = lib.LSTM(I, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = lib.GRU(12, 5)
        self.rnn = lib.RNN(5, 4, nonlinearity="relu")
        self.cell = lib.LSTMCell(4, 3)

    def forward(self, x):                                   # x [B, T, I]
        y, _ = self.lstm(x)
        y, _ = self.gru(y.transpose(0, 1))
        y, h = self.rnn(y)
        return self.cell(y[-1], None)[0] + h[0, :, :3]


def _export(model, x, dynamo: bool, path):
    """torch.onnx.export, then the file's outputs for ``x`` (onnxruntime where installed, else
    only onnx.checker, returning None)."""
    onnx = pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo-based exporter needs onnxscript")
        torch.onnx.export(model, (x,), dynamo=True).save(str(path))
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _exportable_twins():
    torch.manual_seed(0)
    ref = _Exportable(nn).eval()
    ours = _Exportable(rnnkernels).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_onnx_export_through_revert(dynamo, tmp_path):
    ref, ours = _exportable_twins()
    x = input_for("LSTM", B=3).transpose(0, 1).contiguous()
    got = _export(rnnkernels.revert(ours), x, dynamo, tmp_path / "model.onnx")
    if got is not None:
        assert_close(got, ref(x).detach(), "onnxruntime vs torch.nn")


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_onnx_export_of_our_modules(dynamo, tmp_path):
    ref, ours = _exportable_twins()
    x = input_for("LSTM", B=3).transpose(0, 1).contiguous()
    got = _export(ours, x, dynamo, tmp_path / "model.onnx")
    assert type(ours.lstm) is rnnkernels.LSTM, "the export must not change the model"
    if got is not None:
        assert_close(got, ref(x).detach(), "onnxruntime vs torch.nn")


# ------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("name", list(ALL))
def test_whole_module_loads_under_weights_only(name, tmp_path):
    """torch.load's default (weights_only=True) loads our modules with no allow-list of the
    user's: rnnkernels lists its classes on import. (torch.nn's own classes are not listed by
    torch, so the same torch.nn module needs the user's allow-list: we are not worse.)"""
    ref, ours = twins(name, "reference")
    torch.save(ours, path := tmp_path / "ours.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    loaded = torch.load(path)
    assert type(loaded) is type(ours) and loaded.backend == "reference"
    x = input_for(name)
    assert_all_close(flat(loaded(x)), flat(ref(x)), "loaded")


@pytest.mark.parametrize("make", [
    lambda lib: nn.Sequential(nn.Linear(I, I), lib.GRU(I, 4, batch_first=True)), _Exportable,
], ids=["Sequential", "custom-model"])
def test_weights_only_needs_no_more_than_torch_nn(make, tmp_path):
    """A model holding ours needs exactly the allow-list the same torch.nn model needs, less
    torch.nn's recurrent classes; with that list it loads, without it both fail alike."""
    torch.manual_seed(0)
    ref = make(nn)
    ours = make(rnnkernels)
    ours.load_state_dict(ref.state_dict())
    theirs_path, ours_path = tmp_path / "torch.pt", tmp_path / "ours.pt"
    torch.save(ref, theirs_path)
    torch.save(ours, ours_path)
    theirs_unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(theirs_path)
    ours_unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(ours_path)
    rnn_names = {f"{c.__module__}.{c.__qualname__}" for c in TORCH_RNN_CLASSES}
    assert sorted(ours_unsafe) == sorted(set(theirs_unsafe) - rnn_names)
    assert ours_unsafe, "the test needs a model torch.nn's defaults do not cover"

    errors = []
    for path in (theirs_path, ours_path):
        with pytest.raises(pickle.UnpicklingError) as info:
            torch.load(path)
        errors.append(str(info.value))
    assert errors[1] == errors[0]                 # the same first global refused, same advice
    with torch.serialization.safe_globals([_resolve(n) for n in ours_unsafe]):
        loaded = torch.load(ours_path)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in ours.modules()]
    x = randn((3, 5, I), F32, 2)
    assert_all_close(flat(loaded(x)), flat(ref(x)), "loaded")


def _resolve(qualified: str):
    module, _, attr = qualified.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _fresh_python(code: str, *paths) -> None:
    """Run ``code`` in a new interpreter (argv[1:] = paths); fail with its stderr."""
    done = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_weights_only_load_in_a_fresh_interpreter(tmp_path):
    """The allow-list is made by ``import rnnkernels`` itself (no convert, no module built),
    without importing Dynamo or triton."""
    ref, ours = twins("LSTM", "reference")
    x = input_for("LSTM")
    torch.save({"x": x, "want": ref(x)[0]}, tmp_path / "io.pt")
    torch.save(ours, tmp_path / "ours.pt")
    _fresh_python(
        "import sys, torch, rnnkernels\n"
        "assert 'torch._dynamo' not in sys.modules and 'triton' not in sys.modules\n"
        "m, io = torch.load(sys.argv[1]), torch.load(sys.argv[2])\n"
        "assert type(m) is rnnkernels.LSTM and m.backend == 'reference'\n"
        "torch.testing.assert_close(m(io['x'])[0], io['want'])\n",
        tmp_path / "ours.pt", tmp_path / "io.pt")


def test_reverted_checkpoint_loads_without_rnnkernels(tmp_path):
    """For a machine without rnnkernels: a whole reverted model (weights_only=False, as torch.nn
    models need), or the state_dict, whose keys are torch.nn's (revert changes none)."""
    pairs = {name: twins(name, "reference", seed=k) for k, name in enumerate(ALL)}
    ours = nn.ModuleDict({name: m for name, (_, m) in pairs.items()})
    inputs = {name: input_for(name) for name in ALL}
    with torch.no_grad():
        want = {name: ref(inputs[name]) for name, (ref, _) in pairs.items()}
    torch.save({"x": inputs, "want": want}, tmp_path / "io.pt")
    assert rnnkernels.revert(copy.deepcopy(ours)).state_dict().keys() == ours.state_dict().keys()
    torch.save(ours.state_dict(), tmp_path / "state.pt")
    torch.save(rnnkernels.revert(copy.deepcopy(ours)), tmp_path / "whole.pt")
    assert all(type(m) in OUR_CLASSES for m in ours.values()), "revert of a copy changed ours"
    _fresh_python(
        "import json, sys, torch\n"
        "sys.modules['rnnkernels'] = None                 # no rnnkernels on this machine\n"
        "whole = torch.load(sys.argv[1], weights_only=False)\n"
        "fresh = torch.nn.ModuleDict({n: getattr(torch.nn, c)(**kw)\n"
        "                             for n, (c, kw) in json.loads(sys.argv[4]).items()})\n"
        "fresh.load_state_dict(torch.load(sys.argv[2]))  # strict, weights_only\n"
        "io = torch.load(sys.argv[3])\n"
        "for model in (whole, fresh):\n"
        "    for name, m in model.items():\n"
        "        assert type(m).__module__ == 'torch.nn.modules.rnn', type(m)\n"
        "        torch.testing.assert_close(m(io['x'][name]), io['want'][name])\n",
        tmp_path / "whole.pt", tmp_path / "state.pt", tmp_path / "io.pt", json.dumps(ALL))
