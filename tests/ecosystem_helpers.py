"""Shared utilities of the ecosystem tests (``tests/test_ecosystem.py``,
``tests/test_compile_export.py``, ``tests/test_autocast.py``): the module types of the drop-in
promise, twins with identical weights, a loss that touches every output, comparisons, and the
stacked model ``Stack``.

The oracle is always torch.nn: each test builds a torch.nn module (or model) and its rnnkernels
twin with identical weights (``load_state_dict`` of torch's state dict, which is itself part of
the drop-in promise) and compares outputs, final states and gradients at fp32 1e-5 / fp64 1e-10
relative (``tests.helpers.assert_close``), or by relative RMS for half precision.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkernels
from tests.helpers import assert_close, backend_params, cpu_backends
from tests.layer_cases import randn

F32, F64 = torch.float32, torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The module types of the drop-in promise: name → (class name, ctor kwargs). Sizes are odd and
# proj_size differs from hidden_size so a mixed-up dimension changes a shape.
I, H, P = 5, 7, 3
LAYERS = {
    "LSTM": ("LSTM", dict(input_size=I, hidden_size=H, num_layers=2)),
    "LSTM_proj": ("LSTM", dict(input_size=I, hidden_size=H, proj_size=P, bidirectional=True)),
    "GRU": ("GRU", dict(input_size=I, hidden_size=H, num_layers=2, bidirectional=True)),
    "RNN_tanh": ("RNN", dict(input_size=I, hidden_size=H, nonlinearity="tanh")),
    "RNN_relu": ("RNN", dict(input_size=I, hidden_size=H, num_layers=2, nonlinearity="relu")),
}
CELLS = {
    "LSTMCell": ("LSTMCell", dict(input_size=I, hidden_size=H)),
    "GRUCell": ("GRUCell", dict(input_size=I, hidden_size=H)),
    "RNNCell_tanh": ("RNNCell", dict(input_size=I, hidden_size=H, nonlinearity="tanh")),
    "RNNCell_relu": ("RNNCell", dict(input_size=I, hidden_size=H, nonlinearity="relu")),
}
ALL = {**LAYERS, **CELLS}


def fastest_cpu_backend() -> str:
    """The backend a user gets on the CPU: the compiled extension if built, else the reference."""
    names = [n for n in cpu_backends(F32) if n != "triton"]
    return "cpu" if "cpu" in names else names[-1]


def twins(name: str, backend: str, dtype=F32, seed: int = 0, **extra):
    """(torch.nn module, rnnkernels module) with identical weights via load_state_dict."""
    cls, kw = ALL[name]
    kw = {**kw, **extra}
    torch.manual_seed(seed)
    ref = getattr(nn, cls)(**kw).to(dtype)
    ours = getattr(rnnkernels, cls)(**kw, backend=backend).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def is_cell(name: str) -> bool:
    return "Cell" in name


def is_lstm(name: str) -> bool:
    return name.startswith("LSTM")


def input_for(name: str, dtype=F32, T: int = 6, B: int = 3, seed: int = 1) -> torch.Tensor:
    return randn((B, I) if is_cell(name) else (T, B, I), dtype, seed)


def flat(result) -> list[torch.Tensor]:
    """Every tensor a module returned, in order: out, h_n[, c_n] (cells: h[, c])."""
    if isinstance(result, torch.Tensor):
        return [result]
    tensors = []
    for r in result:
        tensors += flat(r)
    return tensors


def weighted_sum(tensors, seed: int = 100) -> torch.Tensor:
    """A loss touching every output with fixed random weights, so no gradient can cancel."""
    return sum((t * randn(t.shape, t.dtype, seed + k).to(t.device)).sum()
               for k, t in enumerate(tensors))


def grads_of(module: nn.Module, outs, extra=()) -> dict:
    named = dict(module.named_parameters())
    named.update({f"input{k}": t for k, t in enumerate(extra)})
    got = torch.autograd.grad(weighted_sum(outs), list(named.values()), allow_unused=True)
    return dict(zip(named, got))


def assert_all_close(actual: list, expected: list, what: str) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} tensors vs {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, f"{what}[{k}]")


def assert_grads_close(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for name, e in expected.items():
        a = actual[name]
        if e is None:
            assert a is None, f"{what}: grad of {name} should be None"
        else:
            assert a is not None, f"{what}: grad of {name} is None"
            assert_close(a, e, f"{what}: grad of {name}")


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-12))


def module_params():
    """(module name, CPU backend) pairs over every layer and cell type."""
    return [pytest.param(n, b, id=f"{n}-{b}") for n in ALL for b in
            (p.values[0] for p in backend_params(F32))]


# ----------------------------------------------------- models (compile/export, serialization)
class Stack(nn.Module):
    """LSTM with projection → bidirectional GRU → relu RNN → Linear, batch_first."""

    def __init__(self, lib, **kw):
        super().__init__()
        self.lstm = lib.LSTM(I, H, proj_size=P, batch_first=True, **kw)
        self.gru = lib.GRU(P, H, bidirectional=True, batch_first=True, **kw)
        self.rnn = lib.RNN(2 * H, H, nonlinearity="relu", batch_first=True, **kw)
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        y, hg = self.gru(y)
        y, hr = self.rnn(y)
        return self.head(y), h, c, hg, hr


def model_twins(cls, backend: str, dtype=F32, seed: int = 0):
    torch.manual_seed(seed)
    ref = cls(nn).to(dtype)
    ours = cls(rnnkernels, backend=backend).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours
