"""Drop-in replacements for torch.nn.LSTM, GRU, RNN, LSTMCell, GRUCell and RNNCell.

Each class subclasses its torch.nn twin, so parameters, their names, shapes and initialisation,
``state_dict``, ``repr``, ``isinstance`` checks and torch's own argument checks are inherited
unchanged. Only the computation differs: it goes through ``rnnkernels.functional`` and the custom
ops, on the backend named by the extra keyword ``backend`` ("auto", "triton", "cuda", "cpu",
"reference", or "torch" for torch's own kernels; env ``RNNKERNELS_BACKEND`` overrides "auto").

Example::

    >>> lstm = rnnkernels.LSTM(10, 20, num_layers=2, batch_first=True)
    >>> out, (h, c) = lstm(torch.randn(3, 5, 10))      # [B, T, I] → [B, T, H]
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .. import backends, routes
from .. import functional as RF
from ..cells import CELLS
from . import _docs
from .variant_mixins import CellVariants, LayerVariants

class HiddenStateError(TypeError, RuntimeError, IndexError, AttributeError):
    """A malformed ``hx`` (wrong container, wrong number of states).

    torch.nn reports these through whatever its code trips over first (TypeError, RuntimeError,
    IndexError or AttributeError, depending on the case); this error says what is wrong and is an
    instance of each of those types, so code written against torch.nn catches it the same way.
    """


class _BackendMixin:
    """The ``backend`` keyword: validated at construction, shown in repr when not "auto"."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)       # the torch.nn class's own constructor and checks
        self._set_backend(backend)

    def _set_backend(self, backend: str) -> None:
        self.backend = backends.check_name(backend)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")

    def __prepare_scriptable__(self):
        """What ``torch.jit.script`` compiles in our place: the torch.nn twin that shares this
        module's Parameters (``rnnkernels.revert``). TorchScript cannot compile our forward
        (PackedSequence unpacking, backend dispatch in Python), and scripted code runs without
        Python, where our kernels' dispatch lives; torch.nn's forward is what it knows."""
        from .convert import revert     # convert imports this module
        return revert(self)


def _public(cls):
    """Give a drop-in class its docstring and a constructor under its true signature.

    The constructor is the mixin's: the arguments reach torch.nn's own constructor untouched,
    so every call torch accepts works and every one it rejects fails with torch's exception.
    Its ``__signature__`` (``_docs.SIGNATURES``: torch's documented parameters plus
    ``backend``) is what ``inspect.signature`` and ``help()`` show. Not spelled-out parameters:
    torch.nn.GRU and RNN accept more than they document (a positional ``proj_size``; a keyword
    one fails with ValueError, not TypeError), and spelling theirs out would change such calls.
    """
    def __init__(self, *args, backend: str = "auto", **kwargs) -> None:
        super(cls, self).__init__(*args, backend=backend, **kwargs)

    sig = _docs.SIGNATURES[cls.__name__]
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    __init__.__signature__ = sig.replace(parameters=[this, *sig.parameters.values()])
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = f"torch.nn.{cls.__name__}'s constructor, then ``backend`` (see the class)."
    cls.__init__, cls.__doc__ = __init__, _docs.DOCS[cls.__name__]
    return cls


def _describe(hx) -> str:
    if isinstance(hx, Tensor):
        return f"a Tensor of shape {tuple(hx.shape)}"
    if isinstance(hx, (tuple, list)):
        return f"a {type(hx).__name__} of {len(hx)} element(s)"
    return type(hx).__name__


class _RNNBaseMixin(LayerVariants, _BackendMixin):   # variants: variant_mixins.py
    """forward() for the three layer types, mirroring torch.nn's handling of every input form."""

    def _run(self, input, hx, batch_sizes):  # pragma: no cover - defined by each class
        raise NotImplementedError

    def _zeros(self, batch: int, size: int, ref: Tensor) -> Tensor:
        dirs = 2 if self.bidirectional else 1
        return torch.zeros(self.num_layers * dirs, batch, size, dtype=ref.dtype, device=ref.device)

    def _weights(self) -> list[Tensor]:
        # The parameters as torch.nn's forward reads them (RNNBase._update_flat_weights), without
        # writing module state (so torch.export and functional_call see pure reads): each weight
        # once (hasattr + getattr) up to the first that is no longer the cached object, and if
        # one is, all of them again. A random parametrization (weight drop through
        # torch.nn.utils.parametrize) is then evaluated as often as under torch.nn, so the same
        # seed gives the same masks; the last evaluation is the one used, as there.
        names = self._flat_weights_names
        for ref, name in zip(self._flat_weight_refs, names):
            weight = getattr(self, name) if hasattr(self, name) else None
            if weight is not None and ref is not None and ref() is not weight:
                return [getattr(self, n) if hasattr(self, n) else None for n in names]
        return list(self._flat_weights)

    def forward(self, input: Tensor | PackedSequence,
                hx: Tensor | tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor | PackedSequence, Tensor | tuple[Tensor, Tensor]]:
        is_lstm = self.mode == "LSTM"
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        batch_sizes = sorted_indices = unsorted_indices = None
        is_batched = True
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                tensor = " tensor" if self.mode.startswith("RNN_") else ""   # torch's wording
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, "
                                 f"got {input.dim()}D{tensor} instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            batch = input.size(0) if self.batch_first else input.size(1)

        if hx is None:
            hx = self._zeros(batch, out_size, input)
            if is_lstm:
                hx = (hx, self._zeros(batch, self.hidden_size, input))
        else:
            name = type(self).__name__
            if is_lstm and not (isinstance(hx, (tuple, list)) and len(hx) == 2
                                and all(isinstance(h, Tensor) for h in hx)):
                raise HiddenStateError(f"{name}: hx must be a tuple (h_0, c_0) of two tensors "
                                       f"(lstm expects two hidden states), got {_describe(hx)}")
            if not is_lstm and not isinstance(hx, Tensor):
                raise HiddenStateError(f"{name}: hx must be a Tensor, got {_describe(hx)}")
            states = tuple(hx) if is_lstm else (hx,)
            if not packed:
                want = 3 if is_batched else 2
                if any(h.dim() != want for h in states):
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    if is_lstm:
                        raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D "
                                           f"but got ({states[0].dim()}-D, {states[1].dim()}-D) "
                                           "tensors")
                    raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got "
                                       f"{states[0].dim()}-D tensor")
                if not is_batched:
                    states = tuple(h.unsqueeze(1) for h in states)
            hx = states if is_lstm else states[0]
        # torch's own checks: input dims/size/dtype, hidden shapes (same types and messages).
        self.check_forward_args(input, hx, batch_sizes)
        hx = self.permute_hidden(hx, sorted_indices)

        run = self._run if self._variant is None else self._variant_run
        output, hidden = run(input, hx, batch_sizes)
        if packed:
            return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden) if is_lstm else hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)

    def _args(self, batch_sizes):
        return dict(batch_sizes=batch_sizes, backend=self.backend)


@_public   # docstring and signature: _docs.py
class LSTM(_RNNBaseMixin, torch.nn.LSTM):
    def _run(self, input, hx, batch_sizes):
        out, h, c = RF.lstm(input, hx, self._weights(), self.bias, self.num_layers,
                            float(self.dropout), self.training, self.bidirectional,
                            self.batch_first, **self._args(batch_sizes))
        return out, (h, c)


@_public   # docstring and signature: _docs.py
class GRU(_RNNBaseMixin, torch.nn.GRU):
    def _run(self, input, hx, batch_sizes):
        return RF.gru(input, hx, self._weights(), self.bias, self.num_layers,
                      float(self.dropout), self.training, self.bidirectional, self.batch_first,
                      **self._args(batch_sizes))


@_public   # docstring and signature: _docs.py
class RNN(_RNNBaseMixin, torch.nn.RNN):
    def _run(self, input, hx, batch_sizes):
        # torch.nn.RNN fixes `mode` at construction and dispatches on it, not on `nonlinearity`
        # (which a user may reassign later without effect); so do we.
        fn = RF.rnn_tanh if self.mode == "RNN_TANH" else RF.rnn_relu
        return fn(input, hx, self._weights(), self.bias, self.num_layers,
                  float(self.dropout), self.training, self.bidirectional, self.batch_first,
                  **self._args(batch_sizes))


# ---------------------------------------------------------------------------------- the cells
class _CellMixin(CellVariants, _BackendMixin):   # variants: variant_mixins.py
    def _route(self, input: Tensor, hx) -> str:
        """This call's route (``routes.cell_route``): "torch" runs torch.nn's own forward,
        "step" the fused C++ step, "scan" a one-step scan on the module's backend."""
        def tensors():
            states = () if hx is None else tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
            return (input, *states, *self.parameters())

        return routes.cell_route(self.backend, input, tensors)

    def _step(self, input: Tensor, states, relu: bool = False) -> list[Tensor]:
        return routes.fused_step(CELLS[self._cell], relu, input, states, *self._cell_weights())

    def _cell_weights(self) -> tuple:
        """(weight_ih, weight_hh, bias_ih, bias_hh) as ``self.weight_ih`` ... reads them.
        Straight from ``_parameters`` (0.1 µs each against 0.75 through ``Module.__getattr__``,
        a cell call's largest Python cost): that is where ``__getattr__`` finds them, and a name
        missing there (a parametrization, weight_norm or a plain tensor set in its place, found
        by attribute lookup first) takes the attribute path."""
        p = self._parameters
        try:
            return p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]
        except KeyError:
            return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def _checked_step(self, input: Tensor, hx, states, relu: bool = False) -> list[Tensor]:
        """The fused step on a batched call with its states given, without the Python argument
        checks: the extension checks every shape and dtype it reads; only when it refuses does
        ``_prepare`` run, to raise torch's own error for the call (else the extension's)."""
        try:
            return self._step(input, states, relu)
        except RuntimeError:
            self._prepare(input, hx, len(states))
            raise

    def _prepare(self, input: Tensor, hx, n_states: int):
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = None
        if hx is not None:
            if n_states == 2 and not (isinstance(hx, (tuple, list)) and len(hx) == 2
                                      and all(isinstance(h, Tensor) for h in hx)):
                raise HiddenStateError(f"{name}: hx must be a tuple (h_0, c_0) of two tensors "
                                       f"(lstm_cell expects two hidden states), got "
                                       f"{_describe(hx)}")
            if n_states == 1 and not isinstance(hx, Tensor):
                raise HiddenStateError(f"{name}: hx must be a Tensor, got {_describe(hx)}")
            states = tuple(hx) if n_states == 2 else (hx,)
            for i, h in enumerate(states):
                if h.dim() not in (1, 2):
                    label = f"hx[{i}]" if n_states == 2 else "hidden"
                    raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got "
                                     f"{h.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if states is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            states = (zeros,) * n_states
        elif not is_batched:
            states = tuple(h.unsqueeze(0) for h in states)
        check_cell_sizes(self, input, states, name)
        return input, states, is_batched


def check_cell_sizes(cell, input: Tensor, states, name: str | None = None) -> None:
    """The checks torch's cell kernels make, with their exception type (RuntimeError), of a
    batched input [B, I] and states [B, H] against ``cell``'s sizes; with ``name``, also that
    each state is 2-D (a 2-D hx given with 1-D input became 3-D, as in torch)."""
    if input.size(1) != cell.input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                           f"expected {cell.input_size}")
    for i, h in enumerate(states):
        if h.size(0) != input.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{i} "
                               f"batch size {h.size(0)}")
        if h.size(1) != cell.hidden_size:
            raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, "
                               f"expected {cell.hidden_size}")
        if name is not None and h.dim() != 2:
            raise RuntimeError(f"{name}: for 1-D input hx[{i}] must be 1-D, got "
                               f"{h.dim() - 1}-D")


@_public   # docstring and signature: _docs.py
class LSTMCell(_CellMixin, torch.nn.LSTMCell):
    _cell = "lstm"     # its CellSpec in cells.CELLS

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor]:
        if self._variant is not None:
            return self._variant_step(input, hx)
        route = self._route(input, hx)
        if route == "torch":
            return super().forward(input, hx)
        if route == "step" and input.dim() == 2 and type(hx) is tuple and len(hx) == 2:
            return tuple(self._checked_step(input, hx, hx))
        input, (h, c), is_batched = self._prepare(input, hx, 2)
        if route == "step":
            h, c = self._step(input, (h, c))
        else:
            h, c = RF.lstm_cell(input, (h, c), self.weight_ih, self.weight_hh, self.bias_ih,
                                self.bias_hh, backend=self.backend)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


@_public   # docstring and signature: _docs.py
class GRUCell(_CellMixin, torch.nn.GRUCell):
    _cell = "gru"     # its CellSpec in cells.CELLS

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if self._variant is not None:
            return self._variant_step(input, hx)
        route = self._route(input, hx)
        if route == "torch":
            return super().forward(input, hx)
        if route == "step" and input.dim() == 2 and isinstance(hx, Tensor):
            return self._checked_step(input, hx, (hx,))[0]
        input, (h,), is_batched = self._prepare(input, hx, 1)
        if route == "step":
            (h,) = self._step(input, (h,))
            return h if is_batched else h.squeeze(0)
        h = RF.gru_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                        backend=self.backend)
        return h if is_batched else h.squeeze(0)


@_public   # docstring and signature: _docs.py
class RNNCell(_CellMixin, torch.nn.RNNCell):
    _cell = "rnn"     # its CellSpec in cells.CELLS

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if self._variant is not None:
            return self._variant_step(input, hx)
        route = self._route(input, hx)
        if route == "torch":
            return super().forward(input, hx)
        if route == "step" and input.dim() == 2 and isinstance(hx, Tensor) and \
                self.nonlinearity in ("tanh", "relu"):
            return self._checked_step(input, hx, (hx,), self.nonlinearity == "relu")[0]
        input, (h,), is_batched = self._prepare(input, hx, 1)
        if route == "step" and self.nonlinearity in ("tanh", "relu"):
            (h,) = self._step(input, (h,), relu=self.nonlinearity == "relu")
            return h if is_batched else h.squeeze(0)
        if self.nonlinearity == "tanh":
            fn = RF.rnn_tanh_cell
        elif self.nonlinearity == "relu":
            fn = RF.rnn_relu_cell
        else:
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        h = fn(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
               backend=self.backend)
        return h if is_batched else h.squeeze(0)
