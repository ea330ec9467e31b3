"""Which code runs a call, besides the scans: torch's own RNN, or the fused one-step kernels.

Three routes exist for a call that ``functional`` receives:

* **torch's own RNN** (``torch._VF.lstm``, ``lstm_cell``, ...), exactly what torch.nn runs: when
  asked for (``backend="torch"``), or under ``auto`` in an autograd mode the scans cannot
  differentiate (forward-mode AD, torch.func transforms) or while ``torch.jit.trace`` /
  ``torch.onnx.export`` record the model (``unsupported_autograd_mode``).
* **the fused step** (``backends/cell_step.py``, ``rnnkernels._C.lstm_cell`` ...): ONE C++ call and
  one autograd node per step. A step costs per call, not per element, so this is what a cell
  call, and a layer called with one time step, runs on the CPU under ``auto`` or ``cpu``
  (``fused_step_usable``; bench/decode.py measures it against torch.nn).
* **the scans** (``ops``), for everything else.
"""
from __future__ import annotations

import sys

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from . import backends
from .cells import CellSpec

_STEP_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_step_impl = None   # backends.cell_step once it has loaded, False if it cannot run here


def unsupported_autograd_mode(tensors) -> str | None:
    """The mode of this call that the scan ops cannot run in, or None.

    The scans' autograd formula is a reverse scan: forward-mode AD (a dual tensor among the
    inputs) and torch.func transforms (grad, vjp, jacrev, jacfwd, jvp, vmap) need more, and a
    trace or an ONNX export must record torch.nn's ops, so such calls go to torch's own RNN (see
    ``backends.torch_route``). ``tensors`` is the call's tensors, or a function returning them
    (only called while forward AD is on: reading a module's parameters costs ~1 µs each)."""
    if torch.jit.is_tracing():      # a trace records torch.nn's ops (aten::lstm), not ours
        return "torch.jit.trace"
    onnx = sys.modules.get("torch.onnx")      # unimported (64 ms to import): not exporting
    if onnx is not None and onnx.is_in_onnx_export():  # Dynamo folds both checks to False
        return "torch.onnx.export"
    if torch.compiler.is_compiling():
        return None
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "a torch.func transform (grad, vjp, jacrev, jacfwd, jvp, vmap)"
    if fwAD._current_level >= 0:
        if callable(tensors):
            tensors = tensors()
        if any(isinstance(t, Tensor) and fwAD.unpack_dual(t).tangent is not None
               for t in tensors):
            return "forward-mode AD (dual tensors)"
    return None


def torch_fn(cell: CellSpec, relu: bool, step: bool):
    """torch's own function for a cell: the layer (``torch._VF.lstm``) or one step
    (``lstm_cell``), as torch.nn calls them."""
    name = "rnn_relu" if cell.name == "rnn" and relu else \
        "rnn_tanh" if cell.name == "rnn" else cell.name
    return getattr(torch._VF, f"{name}_cell" if step else name)


def torch_stack(cell: CellSpec, input: Tensor, hx: list[Tensor], params: list[Tensor],
                has_biases: bool, num_layers: int, dropout: float, train: bool,
                bidirectional: bool, batch_first: bool, batch_sizes: Tensor | None, relu: bool):
    """The whole call on torch's own RNN (``torch._VF``), exactly what torch.nn runs."""
    fn = torch_fn(cell, relu, step=False)
    states = tuple(hx) if len(cell.states) > 1 else hx[0]
    if batch_sizes is not None:
        result = fn(input, batch_sizes, states, params, has_biases, num_layers, dropout, train,
                    bidirectional)
    else:
        result = fn(input, states, params, has_biases, num_layers, dropout, train, bidirectional,
                    batch_first)
    return tuple(result)


# ------------------------------------------------------------------------------ the fused step
def _steps():
    global _step_impl
    if _step_impl is None:
        from .backends import cell_step
        _step_impl = cell_step if cell_step.AVAILABLE else False
    return _step_impl


def fused_step_usable(backend: str, x: Tensor) -> bool:
    """Whether the fused C++ step can run a one-step call on ``x`` for ``backend`` (the
    requested name or the resolved one): on the CPU under ``auto`` or ``cpu``, in a dtype it
    has, when the extension has it; not while compiling (Dynamo cannot trace a C function, so
    compiled code keeps the scan op) nor under CPU autocast (torch's cells cast op by op, which
    the step does not)."""
    # Cheapest checks first: this runs on every cell call (x.is_cpu: 0.1 µs, x.device.type 0.8).
    return (backend in ("auto", "cpu") and x.is_cpu and x.dtype in _STEP_DTYPES
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
            and bool(_steps())
            and (backend == "cpu" or backends.requested(backend) in ("auto", "cpu")))


def fused_step(cell: CellSpec, relu: bool, x: Tensor, states, w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None = None) -> list:
    """One step: x [B, I], states [B, *] → the new states (h [, c]), as a list."""
    impl = _steps()
    if cell.name == "lstm":
        return list(impl.lstm_cell(x, states[0], states[1], w_ih, w_hh, b_ih, b_hh, w_hr))
    if cell.name == "gru":
        return [impl.gru_cell(x, states[0], w_ih, w_hh, b_ih, b_hh)]
    return [impl.rnn_cell(x, states[0], w_ih, w_hh, b_ih, b_hh, relu)]


def cell_route(backend: str, x: Tensor, tensors) -> str:
    """The route of a cell call: "torch", "step" or "scan". Under ``auto`` on the CPU the fused
    step, else torch's own cell (cheaper per call than a one-step scan); ``cpu`` takes the step
    where it can run, the scan otherwise; other backends their scan. ``tensors``: as
    ``unsupported_autograd_mode``."""
    usable = fused_step_usable(backend, x)     # the cheaper check first: it decides most calls
    mode = unsupported_autograd_mode(tensors)
    if usable and mode is None:
        return "step"
    if backends.torch_route(backend, mode, torch_is_faster=x.device.type == "cpu"):
        return "torch"
    return "scan"
