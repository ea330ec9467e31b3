"""Layer cases of the module-level tests (see ``tests/helpers.py``): the size profiles,
``LayerCase`` and its compact text form (``parse_spec``), deterministic inputs (``make_inputs``)
and one forward + backward through a layer or a cell (``run_layer``, ``run_cell``) of the loss
``loss_of``, which touches the outputs AND the final states with fixed random weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from tests.helpers import DTYPE_NAMES, MODES, is_lstm

# --------------------------------------------------------------------------------------- cases
# Size profiles of the layer cases: (T, B, I, H, proj_size when the case has a projection).
SIZES = {
    "S": (5, 3, 7, 6, 3),
    "H1": (4, 3, 2, 1, 0),      # H=1: no projection possible (proj_size < hidden_size)
    "H33": (3, 2, 5, 33, 4),
    "T1": (1, 4, 3, 5, 2),
    "T7": (7, 4, 4, 3, 2),
    "B1": (6, 1, 3, 4, 2),
}


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """One LSTM/GRU/RNN configuration (see ``parse_spec`` for the compact text form)."""
    mode: str
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidir: bool = False
    batch_first: bool = False
    bias: bool = True
    proj: int = 0
    packed: str = ""            # "", "sorted" or "unsorted" (enforce_sorted=False)
    unbatched: bool = False
    h0: bool = False
    dtype: torch.dtype = torch.float32
    dropout: float = 0.0
    lengths: tuple[int, ...] | None = None  # explicit lengths for packed cases

    @property
    def id(self) -> str:
        parts = [self.mode, f"T{self.T}"]
        if not self.unbatched:
            parts.append(f"B{self.B}")
        parts += [f"I{self.I}", f"H{self.H}", f"L{self.layers}"]
        if self.bidir:
            parts.append("bidir")
        if self.batch_first:
            parts.append("bf")
        if not self.bias:
            parts.append("nobias")
        if self.proj:
            parts.append(f"proj{self.proj}")
        if self.packed:
            parts.append(f"packed{self.packed}")
        if self.lengths is not None:
            parts.append("len" + "_".join(map(str, self.lengths)))
        if self.unbatched:
            parts.append("unbatched")
        if self.h0:
            parts.append("h0")
        if self.dropout:
            parts.append(f"drop{self.dropout:g}")
        parts.append(DTYPE_NAMES[self.dtype])
        return "-".join(parts)

    @property
    def dirs(self) -> int:
        return 2 if self.bidir else 1

    @property
    def out_size(self) -> int:
        return self.proj if self.proj else self.H

    def ctor(self) -> dict[str, Any]:
        kw = dict(input_size=self.I, hidden_size=self.H, num_layers=self.layers, bias=self.bias,
                  batch_first=self.batch_first, bidirectional=self.bidir, dropout=self.dropout)
        if self.proj:
            kw["proj_size"] = self.proj
        return kw

    def seq_lengths(self) -> list[int]:
        """Per-sequence lengths of a packed case: include T and 1 (when B >= 2); unsorted cases
        are not in descending order, so enforce_sorted=False has something to permute."""
        if self.lengths is not None:
            assert len(self.lengths) == self.B
            return list(self.lengths)
        T, B = self.T, self.B
        if B == 1:
            return [T]
        mids = [max(1, min(T, (T * (k + 1)) // (B - 1) - k)) for k in range(B - 2)]
        lengths = sorted([T, 1] + mids, reverse=True)
        if self.packed == "unsorted":
            # odd positions first: not monotonic for B >= 3, ascending for B == 2
            lengths = lengths[1::2] + lengths[0::2]
        return lengths


def parse_spec(spec: str) -> LayerCase:
    """Parse ``"LSTM L2 bidir bf nobias proj unsorted unbatched h0 H33 fp32"`` into a LayerCase.

    Tokens: mode, ``L<n>`` layers, flags (bidir, bf, nobias, proj, sorted|unsorted, unbatched,
    h0), a size profile name of ``SIZES`` and a dtype (fp32|fp64)."""
    tokens = spec.split()
    mode = tokens[0]
    assert mode in MODES and "Cell" not in mode, spec
    kw: dict[str, Any] = {}
    size = None
    for tok in tokens[1:]:
        if tok.startswith("L") and tok[1:].isdigit():
            kw["layers"] = int(tok[1:])
        elif tok == "bidir":
            kw["bidir"] = True
        elif tok == "bf":
            kw["batch_first"] = True
        elif tok == "nobias":
            kw["bias"] = False
        elif tok == "proj":
            kw["proj"] = True
        elif tok in ("sorted", "unsorted"):
            kw["packed"] = tok
        elif tok == "unbatched":
            kw["unbatched"] = True
        elif tok == "h0":
            kw["h0"] = True
        elif tok in SIZES:
            size = tok
        elif tok in ("fp32", "fp64"):
            kw["dtype"] = torch.float32 if tok == "fp32" else torch.float64
        else:
            raise ValueError(f"bad token {tok!r} in case spec {spec!r}")
    assert size is not None, spec
    T, B, I, H, P = SIZES[size]
    if kw.pop("proj", False):
        assert mode == "LSTM" and P > 0, spec
        kw["proj"] = P
    return LayerCase(mode, T, B, I, H, **kw)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, seed: int) -> torch.Tensor:
    """Deterministic normal values, drawn in float64 and cast, so fp32 and fp64 cases see the
    same numbers (and the global RNG, which dropout uses, is not consumed)."""
    return torch.randn(tuple(shape), generator=_gen(seed), dtype=torch.float64).to(dtype)


@dataclasses.dataclass
class LayerInputs:
    x: torch.Tensor                     # padded input, [T,B,I] / [B,T,I] / [T,I]
    h0: torch.Tensor | None
    c0: torch.Tensor | None
    lengths: list[int] | None


def make_inputs(case: LayerCase, seed: int = 1) -> LayerInputs:
    T, B, I = case.T, case.B, case.I
    if case.unbatched:
        xshape = (T, I)
    else:
        xshape = (B, T, I) if case.batch_first else (T, B, I)
    x = randn(xshape, case.dtype, seed)
    h0 = c0 = None
    if case.h0:
        nb = () if case.unbatched else (B,)
        h0 = randn((case.layers * case.dirs, *nb, case.out_size), case.dtype, seed + 1)
        if is_lstm(case.mode):
            c0 = randn((case.layers * case.dirs, *nb, case.H), case.dtype, seed + 2)
    lengths = case.seq_lengths() if case.packed else None
    return LayerInputs(x, h0, c0, lengths)


@dataclasses.dataclass
class Run:
    """What one forward + backward produced."""
    out: Any                            # Tensor or PackedSequence
    states: dict[str, torch.Tensor]     # "h_n", "c_n"
    grads: dict[str, torch.Tensor | None]  # "input", "h0", "c0", parameter names


def _loss_term(t: torch.Tensor, seed: int) -> torch.Tensor:
    # A random weighting (not a plain sum): each element's gradient is distinct, so a swapped,
    # mirrored or dropped element of any tensor changes the loss gradient.
    return (t * randn(t.shape, t.dtype, seed).to(t.device)).sum()


def loss_of(out, states: dict[str, torch.Tensor]) -> torch.Tensor:
    data = out.data if isinstance(out, PackedSequence) else out
    loss = _loss_term(data, 101)
    for k, (name, s) in enumerate(sorted(states.items())):
        loss = loss + _loss_term(s, 202 + k)
    return loss


def run_layer(module: nn.Module, case: LayerCase, inputs: LayerInputs, grad: bool = True) -> Run:
    """Forward (and backward of ``loss_of``) through an LSTM/GRU/RNN module."""
    x = inputs.x.clone().requires_grad_(grad)
    h0 = None if inputs.h0 is None else inputs.h0.clone().requires_grad_(grad)
    c0 = None if inputs.c0 is None else inputs.c0.clone().requires_grad_(grad)
    feed = x
    if case.packed:
        feed = pack_padded_sequence(x, torch.tensor(inputs.lengths), batch_first=case.batch_first,
                                    enforce_sorted=case.packed == "sorted")
    if h0 is None:
        out, state = module(feed)
    elif is_lstm(case.mode):
        out, state = module(feed, (h0, c0))
    else:
        out, state = module(feed, h0)
    states = {"h_n": state[0], "c_n": state[1]} if is_lstm(case.mode) else {"h_n": state}
    grads = _grads(loss_of(out, states), module, x, h0, c0) if grad else {}
    return Run(out, states, grads)


def _grads(loss: torch.Tensor, module: nn.Module, x, h0, c0) -> dict[str, torch.Tensor | None]:
    """The gradients of ``loss`` by name: the input, h0/c0 where given, every parameter."""
    leaves = {"input": x}
    if h0 is not None:
        leaves["h0"] = h0
    if c0 is not None:
        leaves["c0"] = c0
    leaves.update(dict(module.named_parameters()))
    got = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return dict(zip(leaves.keys(), got))


def run_cell(module: nn.Module, mode: str, x: torch.Tensor, h0, c0, grad: bool = True) -> Run:
    """Forward (and backward of ``loss_of``) through a cell; ``h0``/``c0`` None means no hx."""
    x = x.clone().requires_grad_(grad)
    h0 = None if h0 is None else h0.clone().requires_grad_(grad)
    c0 = None if c0 is None else c0.clone().requires_grad_(grad)
    if is_lstm(mode):
        h, c = module(x) if h0 is None else module(x, (h0, c0))
        states = {"h_n": h, "c_n": c}
    else:
        states = {"h_n": module(x) if h0 is None else module(x, h0)}
    grads: dict[str, torch.Tensor | None] = {}
    if grad:
        loss = sum(_loss_term(s, 303 + k) for k, (_, s) in enumerate(sorted(states.items())))
        grads = _grads(loss, module, x, h0, c0)
    return Run(None, states, grads)
