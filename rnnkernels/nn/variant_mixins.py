"""The modules' side of the recurrent variants (``rnnkernels/variants.py``, docs/VARIANTS.md).

``LayerVariants`` (LSTM, GRU, RNN) and ``CellVariants`` (the cells) come first among the bases
of ``modules.py``'s mixins. They take the variant options out of the constructor's keywords
before torch.nn's constructor runs (an option a cell does not take stays there, and torch.nn
raises its ``TypeError`` for it), check them (``variants.parse``), reshape or add the parameters
(``variants.install``), expose them read-only (``peephole``, ``num_heads``, ``zoneout``, and
the layers' ``locked_dropout``, ``input_dropout``, ``output_dropout``; an option a class does
not take is no attribute of it) and in ``repr``, and run the forward of a
module with variants: torch.nn's checks as ``modules.py`` makes them, then ``stack``, the layers
× directions of ``functional`` with each scan given its part of the variants. A module whose
options are all at their defaults has no variant (``_variant`` is None) and never comes here.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch
from torch import Tensor

from .. import backends, routes
from .. import dropout as D
from .. import functional as RF
from .. import variants as V
from ..cells import CELLS, CellSpec

_CELL_OF = ((torch.nn.LSTM, "lstm"), (torch.nn.LSTMCell, "lstm"), (torch.nn.GRU, "gru"),
            (torch.nn.GRUCell, "gru"), (torch.nn.RNN, "rnn"), (torch.nn.RNNCell, "rnn"))


def cell_of(cls: type) -> CellSpec:
    """The cell spec of a module class (a torch.nn recurrent class or a subclass of one)."""
    return next(CELLS[name] for base, name in _CELL_OF if issubclass(cls, base))


def stack(cell: CellSpec, name: str, input: Tensor, hx: list[Tensor], params: list[Tensor],
          has_biases: bool, num_layers: int, dropout: float, train: bool, bidirectional: bool,
          batch_first: bool, batch_sizes: Tensor | None, backend: str, relu: bool,
          call: V.Call):
    """``functional._stack`` for a call with variants: the same steps (parameter grouping,
    autocast, checks, layout, inter-layer dropout, output layout) from its helpers. With a
    recurrent variant never torch's own RNN nor a one-step kernel (neither has one): the backend
    comes from ``variants.resolve`` and every scan gets ``call``'s part of the variants. A call
    whose only variants are the locked dropouts (``dropout.py``: they act between the scans)
    keeps the plain routes: torch's own RNN where the plain stack takes it (autograd modes,
    and the measured plan under ``auto``: ``dropout.torch_layers``), else the plain scans (and
    the fused step at T = 1)."""
    plain = not call.spec.recurrent()
    if plain and backends.torch_route(backend, routes.unsupported_autograd_mode(
            [input, *hx, *params]), RF._plan_says_torch(cell, backend, input, hx, params,
                                                        batch_first, batch_sizes, bidirectional)):
        return D.torch_layers(cell, input, hx, list(params), has_biases, num_layers, dropout,
                              train, bidirectional, batch_first, batch_sizes, relu, call.spec)
    RF._check_consistent(name, input, [], call.parameters())
    dirs = 2 if bidirectional else 1
    per = RF._params_per_direction(name, params, num_layers, dirs)
    cast, op_by_op = RF._autocast_dtype(input)
    state_dtypes = [h.dtype for h in hx]
    if cast is not None:
        input, hx, params = input.to(cast), [h.to(cast) for h in hx], [q.to(cast) for q in params]
    RF._check_consistent(name, input, hx, params)
    if call.layer_norm is not None and has_biases:
        call, params, per = _biases_after_norm(cell, call, params, per)
        has_biases = False
    x, mask, lengths = RF._to_time_major(input, batch_sizes, batch_first)
    chosen = RF._resolve(backend, x.device.type, x.dtype) if plain else \
        call.resolve(backend, x.device.type, x.dtype)
    with torch.autocast(x.device.type, enabled=False) if cast is not None else nullcontext():
        output, finals = RF._run_layers(cell, x, hx, params, per, has_biases, num_layers, dirs,
                                        dropout, train, mask, lengths, chosen, relu, call)
        output = D.locked(output, call.spec.output_dropout, call.training)   # the last draw
    output = RF._from_time_major(output, mask, batch_first)
    finals = [torch.stack(f, 0) for f in finals]
    if op_by_op:
        output, finals = RF._autocast_output_dtypes(cell, cast, state_dtypes, per in (3, 5),
                                                    output, finals)
    return (output, *finals)


def _biases_after_norm(cell: CellSpec, call: V.Call, params: list[Tensor], per: int):
    """Layer norm normalises x·W_ihᵀ alone and adds the biases after the norm (haste's form),
    where functional's projection would fold them in before it: so the biases leave the
    parameters (per layer and direction, as ``functional._layer_weights`` folds them: the
    projection bias and GRU's b_hn) and travel with ``call`` to the scans. The plain path is
    untouched. Returns (call, params without biases, tensors per layer and direction)."""
    groups = [params[i:i + per] for i in range(0, len(params), per)]
    biases = [RF._layer_weights(cell, p, True)[2:4] for p in groups]
    params = [q for p in groups for q in (*p[:2], *p[4:])]
    return dataclasses.replace(call, biases=biases), params, per - 2


class _Variants:
    """What layers and cells share: options, parameters, properties, repr."""

    _variant: V.VariantSpec | None = None    # the default (also of old pickles, convert()'s twins)
    _stack_options: tuple[str, ...] = ()      # options beyond the cell's (the layers' dropouts)

    def __init__(self, *args, **kwargs):
        cell = cell_of(type(self))
        options = {name: kwargs.pop(name) for name in cell.variants + self._stack_options
                   if name in kwargs}
        super().__init__(*args, **kwargs)
        spec = V.parse(cell, self.hidden_size, getattr(self, "proj_size", 0), options)
        if spec is not None:
            V.install(self, cell, spec, self._suffixes())
            self._variant = spec
            self._installed()

    def _suffixes(self) -> list[str]:            # pragma: no cover - defined by each kind
        raise NotImplementedError

    def _installed(self) -> None:
        """Hook after the variant's parameters are in place."""

    def _option(self, name: str):
        if name not in cell_of(type(self)).variants:    # → Module.__getattr__'s AttributeError
            raise AttributeError(f"{type(self).__name__} has no option {name!r}")
        return (self._variant or V.VariantSpec()).value(name)

    @property
    def peephole(self) -> bool:
        """LSTM: whether the gates see the cell state (``weight_ch``); read-only."""
        return self._option("peephole")

    @property
    def num_heads(self) -> int:
        """The blocks of the block-diagonal W_hh (1: dense, torch.nn's); read-only."""
        return self._option("num_heads")

    @property
    def zoneout(self) -> float | tuple[float, float]:
        """The zoneout probability as given (LSTM: a float or (p_h, p_c)); read-only."""
        return self._option("zoneout")

    @property
    def layer_norm(self) -> bool:
        """LSTM, GRU: whether the gate pre-activations (and c) are layer-normalised; read-only."""
        return self._option("layer_norm")

    def reset_parameters(self) -> None:
        """torch.nn's (every parameter from U(-1/√H, 1/√H)), then the layer norm's gains and
        biases back at 1 and 0."""
        super().reset_parameters()
        if self._variant is not None and self._variant.layer_norm:
            V.reset_layer_norm(self, cell_of(type(self)), self._suffixes())

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self._variant is None:
            return s
        return s + "".join(f", {o}={self._variant.value(o)!r}" for o in self._variant.options())

    def __prepare_scriptable__(self):
        if self._variant is not None:
            raise RuntimeError(f"rnnkernels: torch.jit.script cannot compile a "
                               f"{type(self).__name__} with {self._variant.describe()}: "
                               "TorchScript runs torch.nn's forward, which has no such variant")
        return super().__prepare_scriptable__()

    def _call(self, sizes: tuple[int, ...]) -> V.Call:
        peephole = None
        if self._variant.peephole:
            peephole = [getattr(self, f"weight_ch{sfx}") for sfx in self._suffixes()]
        layer_norm = None
        if self._variant.layer_norm:
            names = [name for name, _, _ in V.layer_norm_parameters(cell_of(type(self)))]
            layer_norm = [tuple(getattr(self, f"{n}{sfx}") for n in names)
                          for sfx in self._suffixes()]
        return V.Call(self._variant, peephole, self.training, sizes, layer_norm=layer_norm)


class LayerVariants(_Variants):
    """The variants of LSTM, GRU and RNN (parameters per layer and direction), and their
    locked dropout (``rnnkernels/dropout.py``)."""

    _stack_options = tuple(D.OPTIONS)

    @property
    def locked_dropout(self) -> bool:
        """Whether the inter-layer ``dropout`` draws one mask per sequence; read-only."""
        return (self._variant or V.VariantSpec()).locked_dropout

    @property
    def input_dropout(self) -> float:
        """The locked dropout probability of the stack's input; read-only."""
        return (self._variant or V.VariantSpec()).input_dropout

    @property
    def output_dropout(self) -> float:
        """The locked dropout probability of the last layer's output; read-only."""
        return (self._variant or V.VariantSpec()).output_dropout

    def _suffixes(self) -> list[str]:
        dirs = ("", "_reverse") if self.bidirectional else ("",)
        return [f"_l{k}{d}" for k in range(self.num_layers) for d in dirs]

    def _installed(self) -> None:
        self._init_flat_weights()        # torch.nn's list of (and references to) the weights

    def flatten_parameters(self) -> None:
        """torch.nn's (cuDNN's weight buffer on CUDA), except with head-wise weights: cuDNN has
        no such layout, and no cuDNN kernel ever runs them."""
        if self.num_heads == 1:
            super().flatten_parameters()

    def _variant_run(self, input: Tensor, hx, batch_sizes: Tensor | None):
        """``_run`` of a layer with variants (input and hx checked and laid out by forward)."""
        cell = cell_of(type(self))
        lstm = len(cell.states) == 2
        out_size = self.proj_size if getattr(self, "proj_size", 0) > 0 else self.hidden_size
        sizes = (out_size, self.hidden_size) if lstm else (out_size,)
        output, *finals = stack(cell, cell.module, input, list(hx) if lstm else [hx],
                                self._weights(), self.bias, self.num_layers, float(self.dropout),
                                self.training, self.bidirectional, self.batch_first, batch_sizes,
                                self.backend, self.mode == "RNN_RELU", self._call(sizes))
        return output, (tuple(finals) if lstm else finals[0])


class CellVariants(_Variants):
    """The variants of LSTMCell, GRUCell and RNNCell: a one-step, one-layer stack."""

    def _suffixes(self) -> list[str]:
        return [""]

    def _variant_step(self, input: Tensor, hx):
        """``forward`` of a cell with variants, with torch.nn's checks (``_prepare``)."""
        cell = cell_of(type(self))
        name = type(self).__name__
        input, states, is_batched = self._prepare(input, hx, len(cell.states))
        relu = False
        if cell.name == "rnn":
            if self.nonlinearity not in ("tanh", "relu"):
                raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
            relu = self.nonlinearity == "relu"
        params = [self.weight_ih, self.weight_hh]
        if self.bias:
            params += [self.bias_ih, self.bias_hh]
        _, *finals = stack(cell, name, input.unsqueeze(0), [h[None] for h in states], params,
                           self.bias, 1, 0.0, False, False, False, None, self.backend, relu,
                           self._call((self.hidden_size,) * len(cell.states)))
        finals = [f[0] if is_batched else f[0, 0] for f in finals]
        return tuple(finals) if len(finals) > 1 else finals[0]
