"""The public face of the drop-in modules: their docstrings and constructor signatures.

Kept out of ``modules.py`` so that file stays code. Each docstring follows torch.nn's form
(description, recurrence, Args, Inputs, Outputs, Attributes, Examples) and is assembled from
parts written once: the ``backend`` paragraph, the layers' common arguments and shapes, the
cells' common arguments. ``SIGNATURES`` holds each class's constructor signature: torch.nn's
documented parameters, in torch's order with torch's defaults, plus the keyword-only ``backend``
and the options of the recurrent variants the class takes (``rnnkernels/variants.py``).
The examples are doctests (``tests/test_api_docs.py`` runs them).
"""
from __future__ import annotations

import inspect

import torch

from ..cells import CELLS
from ..dropout import OPTIONS as DROPOUT_OPTIONS
from ._variant_docs import variant_docs

# ------------------------------------------------------------------------------- signatures
_P = inspect.Parameter
_PARAMETERS = {p.name: p for p in (
    _P("input_size", _P.POSITIONAL_OR_KEYWORD, annotation=int),
    _P("hidden_size", _P.POSITIONAL_OR_KEYWORD, annotation=int),
    _P("num_layers", _P.POSITIONAL_OR_KEYWORD, default=1, annotation=int),
    _P("nonlinearity", _P.POSITIONAL_OR_KEYWORD, default="tanh", annotation=str),
    _P("bias", _P.POSITIONAL_OR_KEYWORD, default=True, annotation=bool),
    _P("batch_first", _P.POSITIONAL_OR_KEYWORD, default=False, annotation=bool),
    _P("dropout", _P.POSITIONAL_OR_KEYWORD, default=0.0, annotation=float),
    _P("bidirectional", _P.POSITIONAL_OR_KEYWORD, default=False, annotation=bool),
    _P("proj_size", _P.POSITIONAL_OR_KEYWORD, default=0, annotation=int),
    _P("device", _P.POSITIONAL_OR_KEYWORD, default=None,
       annotation=torch.device | str | int | None),
    _P("dtype", _P.POSITIONAL_OR_KEYWORD, default=None, annotation=torch.dtype | None),
    _P("backend", _P.KEYWORD_ONLY, default="auto", annotation=str),
    # The variants' options (rnnkernels/variants.py): which class takes which is the cell's.
    _P("peephole", _P.KEYWORD_ONLY, default=False, annotation=bool),
    _P("num_heads", _P.KEYWORD_ONLY, default=1, annotation=int),
    _P("zoneout", _P.KEYWORD_ONLY, default=0.0, annotation=float),
    _P("layer_norm", _P.KEYWORD_ONLY, default=False, annotation=bool),
    # The layers' locked dropouts (rnnkernels/dropout.py).
    _P("locked_dropout", _P.KEYWORD_ONLY, default=False, annotation=bool),
    _P("input_dropout", _P.KEYWORD_ONLY, default=0.0, annotation=float),
    _P("output_dropout", _P.KEYWORD_ONLY, default=0.0, annotation=float),
)}
_LAYER = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
          "bidirectional")
_FACTORY = ("device", "dtype", "backend")


def _signature(kind: str, *names: str, layer: bool = False) -> inspect.Signature:
    """torch's parameters ``names``, then the keyword-only variant options of cell ``kind``
    (and of a ``layer``, the locked dropouts of ``rnnkernels/dropout.py``)."""
    params = [_PARAMETERS[n] for n in names + CELLS[kind].variants
              + (tuple(DROPOUT_OPTIONS) if layer else ())]
    if len(CELLS[kind].states) > 1:       # an LSTM's zoneout may be a pair (p_h, p_c)
        params = [p.replace(annotation=float | tuple[float, float]) if p.name == "zoneout"
                  else p for p in params]
    return inspect.Signature(params, return_annotation=None)


# torch.nn.RNN takes ``nonlinearity`` as its fourth parameter; only the LSTM has ``proj_size``.
SIGNATURES = {
    "LSTM": _signature("lstm", *_LAYER, "proj_size", *_FACTORY, layer=True),
    "GRU": _signature("gru", *_LAYER, *_FACTORY, layer=True),
    "RNN": _signature("rnn", *_LAYER[:3], "nonlinearity", *_LAYER[3:], *_FACTORY, layer=True),
    "LSTMCell": _signature("lstm", "input_size", "hidden_size", "bias", *_FACTORY),
    "GRUCell": _signature("gru", "input_size", "hidden_size", "bias", *_FACTORY),
    "RNNCell": _signature("rnn", "input_size", "hidden_size", "bias", "nonlinearity", *_FACTORY),
}

# ------------------------------------------------------------------------- the shared parts
_BACKEND = """\
What differs from torch.nn.{name} is the keyword-only argument ``backend``: which kernels run
the recurrence. Everything else is torch.nn.{name}'s own (this class subclasses it):
constructor checks, parameters, their names, shapes and initialisation, ``state_dict`` (a
torch.nn.{name} state_dict loads unchanged, both ways), ``repr``, ``isinstance`` and the error
types of bad inputs. ``rnnkernels.convert(model)`` / ``rnnkernels.revert(model)`` swap the
classes in a model, sharing the parameters.

``backend`` values (the attribute ``backend``; ``repr`` shows it unless "auto"):

* ``"auto"`` (default): the fastest backend that can run the call's device and dtype: on CUDA
  "triton", else "cuda", else "reference"; on the CPU "cpu" (the compiled extension), else
  "reference". A cell's call on the CPU, and a layer's with one time step, run a fused C++
  step (one call and one autograd node per step; torch's own cell under CPU autocast). Calls under forward-mode AD or a ``torch.func`` transform run torch's own
  kernels (said once, with a ``RuntimeWarning``). The environment variable
  ``RNNKERNELS_BACKEND`` replaces "auto" (never an explicit name).
* ``"triton"`` (CUDA), ``"cuda"``, ``"cpu"``, ``"reference"`` (plain PyTorch loops, any
  device: the test oracle): that backend, or a ``RuntimeError`` saying why it cannot run the
  call; never a silent fallback.
* ``"torch"``: torch.nn's own kernels for the whole call.

An unknown name raises ``ValueError`` here. ``rnnkernels.available_backends(device)`` lists the
backends this installation can run; docs/BACKENDS.md describes them and every setting."""

_LAYER_ARGS = """\
    input_size: the number of features of the input ``x``.
    hidden_size: the number of features of the hidden state ``h``.
    num_layers: the number of stacked recurrent layers; layer l > 1 reads the output of
        layer l - 1. Default: 1
{nonlinearity}\
    bias: if False, the layers have no bias weights ``b_ih`` and ``b_hh``. Default: True
    batch_first: if True, ``input`` and ``output`` are ``(N, L, feature)`` instead of
        ``(L, N, feature)``; the states are not affected. Default: False
    dropout: if non-zero, dropout with this probability on the output of every layer but the
        last, in training mode (the same masks as torch.nn's under the same RNG state).
        Default: 0
    bidirectional: if True, each layer also runs over the reversed sequence (within each
        sequence's own length) and concatenates both. Default: False
{proj_size}\
    device, dtype: where and in which dtype the parameters are created. Default: torch's
        current default device and dtype
    backend: keyword only, the kernels that run the recurrence (see above). Default: "auto\""""

_LAYER_IO = """\
Inputs: input, {h0}
    input: tensor of shape (L, H_in) for unbatched input, (L, N, H_in) when
        ``batch_first=False`` or (N, L, H_in) when ``batch_first=True``; or a
        ``torch.nn.utils.rnn.PackedSequence`` of variable-length sequences (sorted or not).
    h_0: tensor of shape (D * num_layers, H_out) for unbatched input or
        (D * num_layers, N, H_out): the initial hidden state. Zeros when not given.
{c0}\

    where N = batch size, L = sequence length, D = 2 if bidirectional else 1,
    H_in = input_size, {sizes}.

Outputs: output, {hn}
    output: tensor of shape (L, D * H_out) for unbatched input, (L, N, D * H_out) when
        ``batch_first=False`` or (N, L, D * H_out) when ``batch_first=True``: h_t of the last
        layer for every t, both directions concatenated; a PackedSequence if the input was.
    h_n: tensor of shape (D * num_layers, H_out) for unbatched input or
        (D * num_layers, N, H_out): the final hidden state of every layer and direction
        (for packed input, each sequence's state after its own last element).
{cn}
Attributes:
    weight_ih_l[k]: the input-hidden weights {ih} of layer k, shape
        ({g}, H_in) for k = 0, else ({g}, D * H_out).
    weight_hh_l[k]: the hidden-hidden weights {hh} of layer k, shape
        ({g}, H_out).
    bias_ih_l[k], bias_hh_l[k]: the biases, shape ({g}) (only when ``bias``).
{hr}\
    The ``_reverse`` counterparts (``weight_ih_l[k]_reverse``, ...) hold the reverse direction
    when ``bidirectional``. torch.nn's ``reset_parameters`` initialises every one from
    U(-√k, √k), k = 1 / hidden_size, so a seed gives the same weights as torch.nn.{name}.
    backend: the backend name given at construction."""

_CELL_ARGS = """\
    input_size: the number of features of the input ``x``.
    hidden_size: the number of features of the hidden state ``h``.
    bias: if False, the cell has no bias weights ``b_ih`` and ``b_hh``. Default: True
{nonlinearity}\
    device, dtype: where and in which dtype the parameters are created. Default: torch's
        current default device and dtype
    backend: keyword only, the kernels that run the step (see above). Default: "auto\""""

_CELL_WEIGHTS = """\
    weight_ih: the input-hidden weights {ih}, shape ({g}, input_size).
    weight_hh: the hidden-hidden weights {hh}, shape ({g}, hidden_size).
    bias_ih, bias_hh: the biases, shape ({g}) (only when ``bias``). All initialised by
        torch.nn from U(-√k, √k), k = 1 / hidden_size.
    backend: the backend name given at construction."""

_NONLINEARITY = ("    nonlinearity: the activation, ``'tanh'`` or ``'relu'``. Default: "
                 "``'tanh'``\n")

_GATES = {  # name: (gate count factor, input-hidden blocks, hidden-hidden blocks)
    "LSTM": ("4*hidden_size", "(W_ii|W_if|W_ig|W_io)", "(W_hi|W_hf|W_hg|W_ho)"),
    "GRU": ("3*hidden_size", "(W_ir|W_iz|W_in)", "(W_hr|W_hz|W_hn)"),
    "RNN": ("hidden_size", "W_ih", "W_hh"),
}

_LSTM_MATH = """\
    i{t} = σ(W_ii x{t} + b_ii + W_hi {h} + b_hi)
    f{t} = σ(W_if x{t} + b_if + W_hf {h} + b_hf)
    g{t} = tanh(W_ig x{t} + b_ig + W_hg {h} + b_hg)
    o{t} = σ(W_io x{t} + b_io + W_ho {h} + b_ho)
    {c_new} = f{t} ⊙ {c} + i{t} ⊙ g{t}
    {h_new} = o{t} ⊙ tanh({c_new})"""

_GRU_MATH = """\
    r{t} = σ(W_ir x{t} + b_ir + W_hr {h} + b_hr)
    z{t} = σ(W_iz x{t} + b_iz + W_hz {h} + b_hz)
    n{t} = tanh(W_in x{t} + b_in + r{t} ⊙ (W_hn {h} + b_hn))
    {h_new} = (1 - z{t}) ⊙ n{t} + z{t} ⊙ {h}"""

_RNN_MATH = "    {h_new} = act(W_ih x{t} + b_ih + W_hh {h} + b_hh),  act = tanh or relu"

# What the symbols of each recurrence are, for the layers and the cells alike.
_TERMS = {
    "LSTM": "σ is the sigmoid and ⊙ the elementwise product; i, f, g, o are the input, forget, "
            "cell\nand output gates, whose weights are blocks of the attributes below, in this "
            "order.",
    "GRU": "σ is the sigmoid and ⊙ the elementwise product; r, z, n are the reset, update and "
           "new\ngates (torch's convention: r multiplies W_hn h + b_hn), whose weights are "
           "blocks of the\nattributes below, in this order.",
    "RNN": "act is ``nonlinearity``.",
}


def _layer_math(template: str) -> str:
    return template.format(t="_t", h="h_{t-1}", c="c_{t-1}", h_new="h_t", c_new="c_t")


def _cell_math(template: str) -> str:
    return template.format(t="", h="h", c="c", h_new="h'", c_new="c'")


# The variants' options (rnnkernels/variants.py, docs/VARIANTS.md), for the classes that take them.
def _layer_doc(name: str, what: str, math: str, notes: str, example: str) -> str:
    g, ih, hh = _GATES[name]
    lstm = name == "LSTM"
    args = _LAYER_ARGS.format(
        nonlinearity=_NONLINEARITY if name == "RNN" else "",
        proj_size="    proj_size: if > 0, an LSTM with projections of that size. Default: 0\n"
        if lstm else "")
    variant_args, variant_attrs = variant_docs(name, _GATES[name][0], "_l[k]", layer=True)
    io = _LAYER_IO.format(
        name=name, g=g, ih=ih, hh=hh,
        h0="(h_0, c_0)" if lstm else "h_0", hn="(h_n, c_n)" if lstm else "h_n",
        c0="    c_0: tensor of shape (D * num_layers, H_cell) for unbatched input or\n"
           "        (D * num_layers, N, H_cell): the initial cell state. Zeros when not given.\n"
        if lstm else "",
        sizes="H_cell = hidden_size, H_out = proj_size if proj_size > 0 else hidden_size"
        if lstm else "H_out = hidden_size",
        cn="    c_n: tensor of shape (D * num_layers, H_cell) for unbatched input or\n"
           "        (D * num_layers, N, H_cell): the final cell state.\n" if lstm else "",
        hr="    weight_hr_l[k]: the projection weights of layer k, shape (proj_size, "
           "hidden_size)\n        (only when ``proj_size > 0``).\n" if lstm else "")
    return (f"{what}\n\nFor each element of the input sequence, each layer computes::\n\n"
            f"{_layer_math(math)}\n\nwhere x_t is the input at time t (for layer l > 1: the "
            f"output of layer l - 1,\nafter dropout in training) and h_t the hidden state at "
            f"time t (h_0: the initial state).\n{_TERMS[name]}{notes}\n\n"
            f"{_BACKEND.format(name=name)}\n\nArgs:\n{args}{variant_args}\n\n{io}"
            f"{variant_attrs}\n\nExamples::\n\n{example}\n")


def _cell_doc(name: str, what: str, math: str, states: str, example: str) -> str:
    kind = name.removesuffix("Cell")
    g, ih, hh = _GATES[kind]
    args = _CELL_ARGS.format(nonlinearity=_NONLINEARITY if kind == "RNN" else "")
    variant_args, variant_attrs = variant_docs(kind, _GATES[kind][0], "")
    return (f"{what}\n\nOne step, from the input x and the state {states}::\n\n"
            f"{_cell_math(math)}\n\n{_TERMS[kind]}\n\n{_BACKEND.format(name=name)}\n\n"
            f"Args:\n{args}{variant_args}\n\n{_CELL_IO[name]}\n\nAttributes:\n"
            f"{_CELL_WEIGHTS.format(g=g, ih=ih, hh=hh)}{variant_attrs}\n\n"
            f"Examples::\n\n{example}\n")


_CELL_IO = {
    "LSTMCell": """\
Inputs: input, (h_0, c_0)
    input: tensor of shape (N, input_size) or (input_size) for unbatched input.
    h_0, c_0: tensors of shape (N, hidden_size) or (hidden_size): the hidden and cell state.
        Zeros when (h_0, c_0) is not given.

Outputs: (h_1, c_1)
    h_1, c_1: tensors of shape (N, hidden_size) or (hidden_size): the next states.""",
    **dict.fromkeys(("GRUCell", "RNNCell"), """\
Inputs: input, hidden
    input: tensor of shape (N, input_size) or (input_size) for unbatched input.
    hidden: tensor of shape (N, hidden_size) or (hidden_size): the state. Zeros when not
        given.

Outputs: h'
    h': tensor of shape (N, hidden_size) or (hidden_size): the next state."""),
}

# -------------------------------------------------------------------------------- the six
DOCS = {
    "LSTM": _layer_doc(
        "LSTM",
        "A multi-layer long short-term memory (LSTM) RNN: ``torch.nn.LSTM`` on fused kernels.",
        _LSTM_MATH,
        " c_t is the cell state. With ``proj_size > 0``,\nh_t = W_hr (o_t ⊙ tanh(c_t)) "
        "has proj_size features.",
        """\
    >>> lstm = rnnkernels.LSTM(10, 20, 2)                     # torch.nn.LSTM's arguments
    >>> x, h0, c0 = torch.randn(5, 3, 10), torch.randn(2, 3, 20), torch.randn(2, 3, 20)
    >>> output, (hn, cn) = lstm(x, (h0, c0))
    >>> output.shape, hn.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    >>> twin = torch.nn.LSTM(10, 20, 2)
    >>> twin.load_state_dict(lstm.state_dict())               # the same parameters
    <All keys matched successfully>
    >>> torch.allclose(twin(x, (h0, c0))[0], output, atol=1e-6)
    True
    >>> rnnkernels.LSTM(10, 20, proj_size=5, backend="reference")
    LSTM(10, 20, proj_size=5, backend='reference')
    >>> variant = rnnkernels.LSTM(10, 20, peephole=True, num_heads=4, zoneout=0.1)
    >>> variant                                                # docs/VARIANTS.md
    LSTM(10, 20, peephole=True, num_heads=4, zoneout=0.1)
    >>> variant.weight_hh_l0.shape, variant.weight_ch_l0.shape   # (4*20, 20/4), (3, 20)
    (torch.Size([80, 5]), torch.Size([3, 20]))
    >>> variant(x)[0].shape
    torch.Size([5, 3, 20])"""),
    "GRU": _layer_doc(
        "GRU",
        "A multi-layer gated recurrent unit (GRU) RNN: ``torch.nn.GRU`` on fused kernels.",
        _GRU_MATH,
        "",
        """\
    >>> gru = rnnkernels.GRU(10, 20, num_layers=2, batch_first=True)
    >>> x = torch.randn(3, 5, 10)                              # (N, L, H_in)
    >>> output, hn = gru(x)
    >>> output.shape, hn.shape
    (torch.Size([3, 5, 20]), torch.Size([2, 3, 20]))
    >>> packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 2, 4], batch_first=True,
    ...                                                  enforce_sorted=False)
    >>> type(gru(packed)[0]).__name__
    'PackedSequence'"""),
    "RNN": _layer_doc(
        "RNN",
        "A multi-layer Elman RNN with tanh or relu: ``torch.nn.RNN`` on fused kernels.",
        _RNN_MATH,
        "",
        """\
    >>> rnn = rnnkernels.RNN(10, 20, 2, "relu")             # positional, as torch.nn.RNN
    >>> rnn.nonlinearity, rnn.mode
    ('relu', 'RNN_RELU')
    >>> output, hn = rnn(torch.randn(5, 10))                 # unbatched: (L, H_in)
    >>> output.shape, hn.shape
    (torch.Size([5, 20]), torch.Size([2, 20]))"""),
    "LSTMCell": _cell_doc(
        "LSTMCell",
        "A long short-term memory (LSTM) cell: ``torch.nn.LSTMCell`` on fused kernels.",
        _LSTM_MATH, "(h, c)",
        """\
    >>> cell = rnnkernels.LSTMCell(10, 20)
    >>> x = torch.randn(6, 3, 10)                              # 6 steps of a batch of 3
    >>> h, c = torch.zeros(3, 20), torch.zeros(3, 20)
    >>> for x_t in x:
    ...     h, c = cell(x_t, (h, c))
    >>> h.shape
    torch.Size([3, 20])"""),
    "GRUCell": _cell_doc(
        "GRUCell",
        "A gated recurrent unit (GRU) cell: ``torch.nn.GRUCell`` on fused kernels.",
        _GRU_MATH, "h",
        """\
    >>> cell = rnnkernels.GRUCell(10, 20, backend="reference")
    >>> h = cell(torch.randn(3, 10))                           # hidden defaults to zeros
    >>> h.shape
    torch.Size([3, 20])"""),
    "RNNCell": _cell_doc(
        "RNNCell",
        "An Elman RNN cell with tanh or relu: ``torch.nn.RNNCell`` on fused kernels.",
        _RNN_MATH, "h",
        """\
    >>> cell = rnnkernels.RNNCell(10, 20, nonlinearity="relu")
    >>> h = cell(torch.randn(10), torch.zeros(20))             # unbatched
    >>> h.shape
    torch.Size([20])"""),
}
