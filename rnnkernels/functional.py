"""Layer-level functions: stacking, directions, packing, dropout and the input projection.

``lstm``, ``gru``, ``rnn_tanh`` and ``rnn_relu`` take torch's arguments (``torch._VF.lstm`` /
``gru`` / ``rnn_*``): ``input``, ``hx``, ``params`` (the flat list ``module._flat_weights``: per
layer and direction w_ih, w_hh[, b_ih, b_hh][, w_hr]), ``has_biases``, ``num_layers``,
``dropout``, ``train``, ``bidirectional``, ``batch_first``; keyword-only ``batch_sizes`` (then
``input`` is a PackedSequence's data) and ``backend`` (as the modules': "auto", a backend's
name or "torch", see ``help(rnnkernels.LSTM)``). They return ``(output, h_n[, c_n])``. The cell
functions take ``torch._VF.lstm_cell``'s (input, hx, w_ih, w_hh, b_ih, b_hh) plus ``backend``.
For each layer and direction, the input projection of ALL steps is one GEMM (``projection.py``),
and only the recurrence goes to the custom op (``torch.ops.rnnkernels.*_scan``), on the backend
chosen by ``rnnkernels.backends.resolve``.

Packed input is passed as (data [N, I], batch_sizes) and handled as padded [T, B, I] plus
per-sequence lengths, so every backend sees one layout. Inter-layer dropout is applied to each
non-last layer's output in the same layout (packed data when packed) and order as torch, so with
the same RNG state the masks are the same as ``torch.nn``'s.

Example::

    >>> x = torch.randn(7, 3, 5)                       # [T, B, I]
    >>> m = torch.nn.LSTM(5, 4)
    >>> out, h, c = rnnkernels.functional.lstm(x, (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)),
    ...     m._flat_weights, True, 1, 0.0, False, False, False)
    >>> out.shape                                      # [T, B, D*P]
    torch.Size([7, 3, 4])
    >>> torch.allclose(out, m(x)[0], atol=1e-6)        # what torch.nn.LSTM computes
    True
"""
from __future__ import annotations

from contextlib import nullcontext as _no_ctx

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends, ops
from . import dropout as D
from .backends import plan
from .cells import CELLS, CellSpec
from .projection import input_projection
from .routes import cell_route, fused_step, fused_step_usable, torch_fn, torch_stack
from .routes import unsupported_autograd_mode as _unsupported_autograd_mode

__all__ = ["lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell",
           "rnn_relu_cell"]

# ------------------------------------------------------------------------------ packing helpers
def packed_to_padded(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(data [N, *], batch_sizes [T]) → padded [T, B, *], mask [T, B] bool, lengths [B] int64.

    Packed data is time-major over the sequences active at each step, in sorted order, so it is
    exactly ``padded[mask]`` (boolean indexing walks t then b).
    """
    batch_sizes = batch_sizes.cpu()
    T, B = batch_sizes.numel(), int(batch_sizes[0])
    mask = torch.arange(B)[None, :] < batch_sizes[:, None]            # [T, B]
    lengths = mask.sum(0)
    mask = mask.to(data.device)
    padded = data.new_zeros((T, B) + tuple(data.shape[1:]))
    padded = padded.index_put((mask,), data)
    return padded, mask, lengths


def _dropout(layer_out: Tensor, p: float, mask: Tensor | None) -> Tensor:
    """Inter-layer dropout on the layout torch uses (packed data when the input was packed)."""
    if mask is None:
        return F.dropout(layer_out, p, training=True)
    dropped = F.dropout(layer_out[mask], p, training=True)
    return layer_out.new_zeros(layer_out.shape).index_put((mask,), dropped)


# --------------------------------------------------------------------- the steps of a stack
# _stack runs them in this order; each is a function of its own so it can be read and tested alone.
def _params_per_direction(name: str, params: list[Tensor], num_layers: int, dirs: int) -> int:
    """How many tensors each (layer, direction) has: 2 or 4 (+1 with a projection)."""
    per = len(params) // (num_layers * dirs)
    if per * num_layers * dirs != len(params):
        raise ValueError(f"{name}: expected a multiple of {num_layers * dirs} parameters, "
                         f"got {len(params)}")
    return per


def _autocast_dtype(input: Tensor) -> tuple[torch.dtype | None, bool]:
    """(dtype the RNN runs in under autocast or None, whether torch runs it op by op).

    Which of torch's two autocast behaviours to mirror: on CUDA with cuDNN usable, torch's
    autocast wrapper of _cudnn_rnn runs the whole RNN in float16 whatever the autocast dtype (a
    bfloat16 autocast region still gets float16 RNN outputs from torch.nn); elsewhere (CPU, or
    CUDA with cuDNN off) torch runs its ATen cells op by op (see _autocast_output_dtypes).
    Autocast casts fp32 only: a float64 model stays float64.
    """
    device_type = input.device.type
    if input.dtype == torch.float64 or not torch.is_autocast_enabled(device_type):
        return None, False
    cast = torch.get_autocast_dtype(device_type)
    op_by_op = not (device_type == "cuda" and torch.backends.cudnn.is_acceptable(input))
    return (cast if op_by_op else torch.float16), op_by_op


def _check_consistent(name: str, x: Tensor, hx: list[Tensor], params: list[Tensor]) -> None:
    """Every state and parameter in the input's dtype and on its device (torch.nn's rule)."""
    labelled = [("hidden state", f"hx[{i}]", f"hx[{i}]", h) for i, h in enumerate(hx)]
    labelled += [("parameters", "a parameter of", "a parameter", p) for p in params]
    for what, of_dtype, on_device, t in labelled:
        if t.dtype != x.dtype:
            raise RuntimeError(f"{name}: input and {what} must have the same dtype, got "
                               f"input {x.dtype} and {of_dtype} {t.dtype}")
        if t.device != x.device:
            raise RuntimeError(f"{name}: input and {what} must be on the same device, got "
                               f"input on {x.device} and {on_device} on {t.device}")


_SCALAR_TYPE_NAMES = {torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
                      torch.uint8: "Byte", torch.float32: "Float", torch.float64: "Double"}


def _to_time_major(input: Tensor, batch_sizes: Tensor | None, batch_first: bool):
    """(x [T, B, I], packing mask [T, B] or None, lengths [B] or None) of the caller's input."""
    if batch_sizes is not None:
        if batch_sizes.dtype != torch.int64:        # torch's own check and message
            raise RuntimeError(f"expected scalar type Long but found "
                               f"{_SCALAR_TYPE_NAMES.get(batch_sizes.dtype, batch_sizes.dtype)}")
        x, mask, lengths = packed_to_padded(input, batch_sizes)
        return x, mask, lengths.to(input.device)
    x = input.transpose(0, 1) if batch_first else input
    if x.shape[0] == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    return x, None, None


def _from_time_major(output: Tensor, mask: Tensor | None, batch_first: bool) -> Tensor:
    """The caller's layout of the last layer's output (packed data, or batch first)."""
    if mask is not None:
        return output[mask]
    return output.transpose(0, 1) if batch_first else output


def _resolve(backend: str, device_type: str, dtype: torch.dtype) -> str:
    """The backend for a call. Marked ``assume_constant_result`` once Dynamo is loaded
    (``rnnkernels/_dynamo_setup.py``): under torch.compile it runs once at trace time and its
    answer is a constant of the graph (it imports modules, reads the environment and may warn).
    It depends on no size, so a dynamic T or B never retraces it; a backend handles any size
    itself (choosing among its own variants)."""
    return backends.resolve(backend, device_type, dtype)


def _layer_weights(cell: CellSpec, p: list[Tensor], has_biases: bool):
    """(w_ih, w_hh, projection bias, b_hn, w_hr) of one (layer, direction) in torch's order
    [w_ih, w_hh, (b_ih, b_hh), (w_hr)]; the projection bias folds b_ih and b_hh together, except
    the part of b_hh a cell keeps inside its scan (GRU's b_hn)."""
    w_ih, w_hh = p[0], p[1].contiguous()
    w_hr = p[-1].contiguous() if cell.projection and len(p) in (3, 5) else None
    if not has_biases:
        return w_ih, w_hh, None, None, w_hr
    b_ih, b_hh = p[2], p[3]
    if cell.hidden_bias_in_scan:
        # b_hn stays inside r ⊙ (h·W_hnᵀ + b_hn); only b_hr and b_hz fold into the projection.
        b_n = cell.gate_block(b_hh, "n")
        bias = b_ih + torch.cat([b_hh[:-b_n.shape[0]], torch.zeros_like(b_n)])
        return w_ih, w_hh, bias, b_n.contiguous(), w_hr
    return w_ih, w_hh, b_ih + b_hh, None, w_hr


def _run_layers(cell: CellSpec, x: Tensor, hx: list[Tensor], params: list[Tensor], per: int,
                has_biases: bool, num_layers: int, dirs: int, dropout: float, train: bool,
                mask: Tensor | None, lengths: Tensor | None, backend: str, relu: bool,
                variant=None):
    """Layers × directions: for each, the projection GEMM then the scan op. Returns the last
    layer's output [T, B, D·P] and the final states, one list per state (h, c) over L·D.
    ``variant`` (a ``variants.Call`` or None) gives each scan its part of the variants, and
    its locked dropout (``dropout.py``) masks the input and, with ``locked_dropout``, the
    inter-layer outputs once per sequence."""
    finals: list[list[Tensor]] = [[] for _ in cell.states]
    scan = ops.SCANS[cell.name]
    one_step = x.shape[0] == 1 and lengths is None and \
        (variant is None or not variant.spec.recurrent()) and \
        fused_step_usable(backend, x)      # T = 1: a fused step per layer (routes.py)
    extras = variant.per_scan(x, num_layers * dirs) if variant else [None] * (num_layers * dirs)
    # (after zoneout's masks: the documented order of the draws)
    layer_in = D.locked(x, variant.spec.input_dropout, variant.training) if variant else x
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            p = params[k * per:(k + 1) * per]
            if one_step:
                states = fused_step(cell, relu, layer_in[0], [h[k] for h in hx], p[0], p[1],
                                    *(p[2:4] if has_biases else (None, None)),
                                    p[-1] if per in (3, 5) else None)
                outs.append(states[0][None])
                for acc, state in zip(finals, states):
                    acc.append(state)
                continue
            w_ih, w_hh, bias, b_hn, w_hr = _layer_weights(cell, p, has_biases)
            xp = input_projection(layer_in, w_ih, bias)
            out, states = scan(xp, tuple(h[k].contiguous() for h in hx), w_hh, w_hr, b_hn,
                               lengths, d == 1, relu, backend, extras[k])
            outs.append(out)
            for acc, state in zip(finals, states):
                acc.append(state)
        layer_in = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and train and layer < num_layers - 1:
            layer_in = D.locked(layer_in, dropout) if variant and variant.spec.locked_dropout \
                else _dropout(layer_in, dropout, mask)
    return layer_in, finals


def _autocast_output_dtypes(cell: CellSpec, cast: torch.dtype, state_dtypes: list[torch.dtype],
                            projected: bool, output: Tensor, finals: list[Tensor]):
    """CPU autocast has no RNN entry: torch.nn runs its ATen cells op by op, the GEMMs in
    ``cast`` and the elementwise update in the promoted dtype of the gates and the incoming
    state. So a state updated elementwise from its previous value keeps the caller's state dtype
    (GRU h, LSTM c, and LSTM h = o⊙tanh(c) unless a projection GEMM produces it); the Elman
    RNN's h (an activation of a GEMM result) stays in ``cast``. The output follows h. (CUDA
    autocast with cuDNN runs the whole RNN in float16, which the kernels already do.)"""
    promoted = dict(cell.autocast_promoted_from)
    if projected:
        promoted.pop("h", None)
    index = {name: i for i, name in enumerate(cell.states)}
    finals = list(finals)
    for name, source in promoted.items():
        dt = torch.promote_types(cast, state_dtypes[index[source]])
        finals[index[name]] = finals[index[name]].to(dt)
        if name == "h":
            output = output.to(dt)
    return output, finals


def _plan_says_torch(cell: CellSpec, backend: str, input: Tensor, hx: list[Tensor],
                     params: list[Tensor], batch_first: bool, batch_sizes: Tensor | None,
                     bidirectional: bool) -> bool:
    """Under ``auto`` (the kwarg; ``torch_route`` then applies ``RNNKERNELS_BACKEND``): whether
    the measured plan (``backends/plan.py``) says torch's own RNN runs this call faster than our
    kernels. Mode: "fwdbwd" when the call will be differentiated (grad mode on and a tensor
    requires grad); dtype: the one the call runs in (autocast's); B, H from the last state
    (c for the LSTM, so H is the hidden size even with a projection). A named backend never asks:
    users and the benchmark ask for our kernels by name."""
    if backend != "auto" or torch.compiler.is_compiling():
        return False
    if batch_sizes is None and input.shape[1 if batch_first and input.dim() == 3 else 0] == 1:
        return False   # one step: the fused step runs it (routes.py; bench/decode.py measures it)
    device_type = "cpu" if input.is_cpu else input.device.type   # is_cpu: 0.1 µs, .type 0.8
    if not plan.routable(device_type, batch_sizes is not None,
                         projected=hx[0].shape[-1] != hx[-1].shape[-1]):   # h narrower than c
        return False
    dtype = input.dtype
    if torch.is_autocast_enabled(device_type):
        dtype = _autocast_dtype(input)[0] or dtype
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (input, *hx, *params))
    *_, B, H = hx[-1].shape
    device = "cpu" if input.is_cpu else input.device   # a GPU's own table (models may differ)
    return plan.torch_is_faster(device, cell.name.upper(), training, dtype, B, H, bidirectional)


# --------------------------------------------------------------------------------- the stack
def _stack(cell: CellSpec, name: str, input: Tensor, hx: list[Tensor], params: list[Tensor],
           has_biases: bool, num_layers: int, dropout: float, train: bool, bidirectional: bool,
           batch_first: bool, batch_sizes: Tensor | None, backend: str, relu: bool = False):
    """A whole multi-layer call; returns (output, *final states) in the caller's layout."""
    params = list(params)
    if backends.torch_route(backend, _unsupported_autograd_mode([input, *hx, *params]),
                            torch_is_faster=_plan_says_torch(cell, backend, input, hx, params,
                                                             batch_first, batch_sizes,
                                                             bidirectional)):
        return torch_stack(cell, input, hx, params, has_biases, num_layers, dropout, train,
                            bidirectional, batch_first, batch_sizes, relu)
    dirs = 2 if bidirectional else 1
    per = _params_per_direction(name, params, num_layers, dirs)
    cast, op_by_op = _autocast_dtype(input)
    state_dtypes = [h.dtype for h in hx]
    if cast is not None:       # torch.nn runs the whole RNN in the autocast dtype; so do we
        input, hx = input.to(cast), [h.to(cast) for h in hx]
        params = [q.to(cast) for q in params]
    _check_consistent(name, input, hx, params)
    x, mask, lengths = _to_time_major(input, batch_sizes, batch_first)
    chosen = _resolve(backend, x.device.type, x.dtype)
    # Everything is in `cast` now; autocast must not re-cast the GEMMs inside (a bfloat16 region
    # would turn the float16 cuDNN-style run back into bfloat16).
    with torch.autocast(input.device.type, enabled=False) if cast is not None else _no_ctx():
        output, finals = _run_layers(cell, x, hx, params, per, has_biases, num_layers, dirs,
                                     dropout, train, mask, lengths, chosen, relu)
    output = _from_time_major(output, mask, batch_first)
    finals = [torch.stack(f, 0) for f in finals]
    if op_by_op:
        output, finals = _autocast_output_dtypes(cell, cast, state_dtypes, per in (3, 5),
                                                 output, finals)
    return (output, *finals)


def lstm(input: Tensor, hx: tuple[Tensor, Tensor], params: list[Tensor], has_biases: bool,
         num_layers: int, dropout: float, train: bool, bidirectional: bool, batch_first: bool,
         *, batch_sizes: Tensor | None = None,
         backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """Multi-layer LSTM (``torch.nn.LSTM``'s computation; arguments: the module docstring).

    input [T,B,I] ([B,T,I] if batch_first; packed data [N,I] with ``batch_sizes``),
    hx = (h0 [L*D,B,P], c0 [L*D,B,H]) → (output [T,B,D*P], h_n [L*D,B,P], c_n [L*D,B,H])."""
    return _stack(CELLS["lstm"], "LSTM", input, list(hx), params, has_biases, num_layers,
                  dropout, train, bidirectional, batch_first, batch_sizes, backend)


def gru(input: Tensor, hx: Tensor, params: list[Tensor], has_biases: bool, num_layers: int,
        dropout: float, train: bool, bidirectional: bool, batch_first: bool,
        *, batch_sizes: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Multi-layer GRU (``torch.nn.GRU``'s computation; arguments: the module docstring).

    input [T,B,I] (as ``lstm``), hx = h0 [L*D,B,H] → (output [T,B,D*H], h_n [L*D,B,H])."""
    return _stack(CELLS["gru"], "GRU", input, [hx], params, has_biases, num_layers, dropout,
                  train, bidirectional, batch_first, batch_sizes, backend)


def rnn_tanh(input: Tensor, hx: Tensor, params: list[Tensor], has_biases: bool, num_layers: int,
             dropout: float, train: bool, bidirectional: bool, batch_first: bool,
             *, batch_sizes: Tensor | None = None,
             backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Multi-layer Elman RNN with tanh (``torch.nn.RNN``'s; arguments: the module docstring).

    input [T,B,I] (as ``lstm``), hx = h0 [L*D,B,H] → (output [T,B,D*H], h_n [L*D,B,H])."""
    return _stack(CELLS["rnn"], "RNN", input, [hx], params, has_biases, num_layers, dropout,
                  train, bidirectional, batch_first, batch_sizes, backend, relu=False)


def rnn_relu(input: Tensor, hx: Tensor, params: list[Tensor], has_biases: bool, num_layers: int,
             dropout: float, train: bool, bidirectional: bool, batch_first: bool,
             *, batch_sizes: Tensor | None = None,
             backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Multi-layer Elman RNN with relu (``torch.nn.RNN(nonlinearity='relu')``'s computation).

    Arguments and shapes as ``rnn_tanh``."""
    return _stack(CELLS["rnn"], "RNN", input, [hx], params, has_biases, num_layers, dropout,
                  train, bidirectional, batch_first, batch_sizes, backend, relu=True)


# ---------------------------------------------------------------------------------- the cells
def _one_step(cell: CellSpec, name: str, input: Tensor, states: tuple[Tensor, ...], w_ih: Tensor,
              w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, backend: str,
              relu: bool = False) -> list[Tensor]:
    """A cell call is a one-layer, one-step stack: input [B,I], states [B,*] → new states."""
    params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
    route = cell_route(backend, input, [input, *states, *params])
    if route == "step":
        return fused_step(cell, relu, input, states, w_ih, w_hh, b_ih, b_hh)
    if route == "torch":
        # torch's cell function, as torch.nn's cells call it (composite: vmap works there)
        result = torch_fn(cell, relu, step=True)(
            input, states if len(states) > 1 else states[0], w_ih, w_hh, b_ih, b_hh)
        return list(result) if len(states) > 1 else [result]
    _, *finals = _stack(cell, name, input.unsqueeze(0), [h[None] for h in states], params,
                        b_ih is not None, 1, 0.0, False, False, False, None, backend, relu)
    return [f[0] for f in finals]


def lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None, *,
              backend: str = "auto") -> tuple[Tensor, Tensor]:
    """One LSTM step (``torch.nn.LSTMCell``'s computation, batched input only).

    input [B,I], hx = (h [B,H], c [B,H]), w_ih [4H,I], w_hh [4H,H], b_ih, b_hh [4H] or None
    → (h' [B,H], c' [B,H])."""
    h, c = _one_step(CELLS["lstm"], "LSTMCell", input, tuple(hx), w_ih, w_hh, b_ih, b_hh, backend)
    return h, c


def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """One GRU step (``torch.nn.GRUCell``'s computation, batched input only).

    input [B,I], hx [B,H], w_ih [3H,I], w_hh [3H,H], b_ih, b_hh [3H] or None → h' [B,H]."""
    return _one_step(CELLS["gru"], "GRUCell", input, (hx,), w_ih, w_hh, b_ih, b_hh, backend)[0]


def rnn_tanh_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Tensor | None = None, b_hh: Tensor | None = None, *,
                  backend: str = "auto") -> Tensor:
    """One Elman step with tanh (``torch.nn.RNNCell``'s computation, batched input only).

    input [B,I], hx [B,H], w_ih [H,I], w_hh [H,H], b_ih, b_hh [H] or None → h' [B,H]."""
    return _one_step(CELLS["rnn"], "RNNCell", input, (hx,), w_ih, w_hh, b_ih, b_hh, backend)[0]


def rnn_relu_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Tensor | None = None, b_hh: Tensor | None = None, *,
                  backend: str = "auto") -> Tensor:
    """One Elman step with relu (``torch.nn.RNNCell(nonlinearity='relu')``'s computation).

    Arguments and shapes as ``rnn_tanh_cell``."""
    return _one_step(CELLS["rnn"], "RNNCell", input, (hx,), w_ih, w_hh, b_ih, b_hh, backend,
                     relu=True)[0]
