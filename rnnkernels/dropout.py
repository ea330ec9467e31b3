"""Locked (variational) dropout and weight drop: the regularisers of AWD-LSTM (issue 16).

Gal & Ghahramani (2016) drop the same units at every step of a sequence; Merity et al. (2017,
AWD-LSTM) apply such *locked* masks to an RNN stack's input, between its layers and to its
output, and DropConnect to the recurrent weights W_hh (*weight drop*). Here:

* the keyword-only options of ``rnnkernels.LSTM`` / ``GRU`` / ``RNN`` (``OPTIONS``, checked by
  ``parse``): ``locked_dropout=True`` makes the inter-layer ``dropout=p`` draw ONE mask per
  sequence, [B, D·P], used at every step (torch.nn draws one per element); ``input_dropout=p``
  and ``output_dropout=p`` apply a locked mask to the stack's input [B, I] and to the last
  layer's output [B, D·P]. Training only, scaled by 1/(1-p) as ``torch.nn.functional.dropout``.
  They act between the scans, not inside the recurrence, so every backend runs them, the fused
  plain scans included (``variants.VariantSpec.recurrent`` is empty for a module with only
  these options, and its scans are the plain ones); ``torch_layers`` runs them around torch's
  own RNN (``backend="torch"``, and the autograd modes only torch's kernels differentiate);
* ``weight_drop(module, p)``: DropConnect on W_hh as a ``torch.nn.utils.parametrize``
  parametrization, for torch.nn's modules and ours.

Masks (``mask``): ``torch.empty(B, n).bernoulli_(1 - p)`` then divided by 1 - p, in the
dtype and on the device of the tensor they multiply, from torch's default generator there, so
``torch.manual_seed`` reproduces them. Order within a forward (docs/VARIANTS.md): zoneout's
masks (``variants.Call.per_scan``), the input mask, the inter-layer masks in layer order, the
output mask. Batch entry b of a ``PackedSequence`` is its position in the length-sorted batch.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils import parametrize

from .cells import CellSpec
from .routes import torch_stack

__all__ = ["weight_drop", "DropConnect"]

# The layers' keyword-only options (not the cells': a cell call is one step, so a mask "per
# sequence" is an ordinary dropout mask there) and their defaults.
OPTIONS = {"locked_dropout": False, "input_dropout": 0.0, "output_dropout": 0.0}


def probability(p, what: str = "dropout") -> float:
    """``p`` checked as torch.nn's dropout checks it: a real number (``TypeError``) in [0, 1]
    (``ValueError``, torch.nn.Dropout's message)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{what} should be a float, got: {type(p).__name__}")
    if not 0 <= p <= 1:
        raise ValueError(f"{what} probability has to be between 0 and 1, but got {p}")
    return float(p)


def parse(options: dict) -> dict:
    """The checked locked-dropout options among ``options`` (a module's keywords), all three
    keys filled in with their defaults."""
    locked = options.get("locked_dropout", False)
    if not isinstance(locked, bool):
        raise TypeError(f"locked_dropout should be of type bool, got: {type(locked).__name__}")
    return {"locked_dropout": locked,
            "input_dropout": probability(options.get("input_dropout", 0.0), "input_dropout"),
            "output_dropout": probability(options.get("output_dropout", 0.0), "output_dropout")}


# ------------------------------------------------------------------------------------- masks
def mask(like: Tensor, batch: int, size: int, p: float) -> Tensor:
    """A locked keep-mask [batch, size] scaled by 1/(1-p) (zeros at p = 1, as dropout gives)."""
    m = like.new_empty((batch, size)).bernoulli_(1 - p)
    return m.div_(1 - p) if p < 1 else m


def locked(x: Tensor, p: float, training: bool = True) -> Tensor:
    """x [T, B, n] (time-major; zero beyond each length when padded) times one mask [B, n]
    shared by every step; x itself when not training or p == 0 (then nothing is drawn)."""
    if not training or p == 0:
        return x
    return x * mask(x, x.shape[1], x.shape[2], p)


def torch_layers(cell: CellSpec, input: Tensor, hx: list[Tensor], params: list[Tensor],
                 has_biases: bool, num_layers: int, dropout: float, train: bool,
                 bidirectional: bool, batch_first: bool, batch_sizes: Tensor | None, relu: bool,
                 spec) -> tuple[Tensor, ...]:
    """A call whose only variants are these options, on torch's own RNN (``routes.torch_stack``)
    in the caller's layout: the locked masks around it and, with ``locked_dropout``, between its
    layers (one torch call per layer); the draws in the same order as on the scans."""
    if batch_sizes is not None:                      # packed rows → their batch entry
        T, B = batch_sizes.numel(), int(batch_sizes[0])
        active = torch.arange(B)[None, :] < batch_sizes.cpu()[:, None]
        row_entry = torch.arange(B).expand(T, B)[active].to(input.device)
    else:
        B = input.shape[0 if batch_first else 1]

    def drop(t: Tensor, p: float) -> Tensor:
        if not train or p == 0:
            return t
        m = mask(t, B, t.shape[-1], p)
        return t * (m[row_entry] if batch_sizes is not None else m[:, None] if batch_first else m)

    x = drop(input, spec.input_dropout)
    if not (spec.locked_dropout and dropout > 0 and train and num_layers > 1):
        output, *finals = torch_stack(cell, x, hx, params, has_biases, num_layers, dropout, train,
                                      bidirectional, batch_first, batch_sizes, relu)
        return (drop(output, spec.output_dropout), *finals)
    dirs = 2 if bidirectional else 1
    per = len(params) // (num_layers * dirs)
    finals: list[list[Tensor]] = [[] for _ in hx]
    for layer in range(num_layers):
        rows = slice(layer * dirs, (layer + 1) * dirs)
        x, *states = torch_stack(cell, x, [h[rows] for h in hx],
                                 params[layer * dirs * per:(layer + 1) * dirs * per], has_biases,
                                 1, 0.0, train, bidirectional, batch_first, batch_sizes, relu)
        for acc, state in zip(finals, states):
            acc.append(state)
        if layer < num_layers - 1:
            x = drop(x, dropout)
    return (drop(x, spec.output_dropout), *(torch.cat(f, 0) for f in finals))


# ---------------------------------------------------------------------------------- weight drop
class DropConnect(torch.nn.Module):
    """A parametrization: the weight with each element dropped with probability ``p`` and the
    rest scaled by 1/(1-p) (``torch.nn.functional.dropout`` of the weight), in training only.
    A new mask at each evaluation: a module evaluates it once per forward and uses that one
    weight at every step (DropConnect, Wan et al. 2013, on W_hh as AWD-LSTM does)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = probability(p)

    def forward(self, weight: Tensor) -> Tensor:
        return F.dropout(weight, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _recurrent_weights(module: torch.nn.Module) -> list[str]:
    if isinstance(module, torch.nn.RNNBase):
        return [n for n in module._flat_weights_names if n.startswith("weight_hh")]
    if isinstance(module, torch.nn.RNNCellBase):
        return ["weight_hh"]
    raise TypeError(f"weight_drop: names= is needed for a {type(module).__name__} (the default, "
                    "every W_hh, is for torch.nn's (or rnnkernels') RNN, LSTM, GRU and cells)")


def weight_drop(module: torch.nn.Module, p: float,
                names: list[str] | tuple[str, ...] | None = None) -> torch.nn.Module:
    r"""DropConnect on the recurrent weights (the weight drop of AWD-LSTM, Merity et al. 2017).

    Registers a :class:`DropConnect` parametrization (``torch.nn.utils.parametrize``) on each
    weight in ``names`` (default: W_hh of every layer and direction, ``weight_hh_l{k}[_reverse]``,
    or a cell's ``weight_hh``): in training each forward uses the weight with elements dropped
    with probability ``p`` and the rest scaled by 1/(1-p); in eval the weight itself. The mask
    comes from torch's generator (``torch.manual_seed`` reproduces it) and is the same at every
    step of a forward. Works on torch.nn's modules and rnnkernels' (on every backend: the scans
    take W_hh as one tensor); ``rnnkernels.convert`` / ``revert`` keep it; the state_dict holds
    the raw weight as ``parametrizations.weight_hh_l0.original``.
    ``torch.nn.utils.parametrize.remove_parametrizations(module, name, leave_parametrized=False)``
    takes it off again. Returns ``module``.

    >>> lstm = rnnkernels.weight_drop(rnnkernels.LSTM(8, 16, num_layers=2), 0.5)
    >>> out, (h, c) = lstm(torch.randn(5, 3, 8))
    >>> sorted(lstm.parametrizations.keys())
    ['weight_hh_l0', 'weight_hh_l1']
    """
    p = probability(p)
    if names is None:
        names = _recurrent_weights(module)
    elif isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"weight_drop: names should be a list of parameter names, got {names!r}")
    for name in names:
        parametrize.register_parametrization(module, name, DropConnect(p))
    return module
