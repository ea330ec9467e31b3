"""One fused step of a cell on the CPU: ``rnnkernels._C.lstm_cell`` / ``gru_cell`` / ``rnn_cell``.

Each is ONE C++ call (python/cell_step.cpp): the two GEMMs through ATen and one pointwise pass of
the cell math the scans use, with, when a gradient is needed, ONE autograd node whose backward is
one pointwise pass plus the GEMMs of the gradients that are needed. torch's own CPU cells are a
dozen ATen ops (and autograd nodes) each, so a step here costs less per call, which is what a
decoding or streaming loop pays. CPU tensors only, float32/float64/bfloat16/float16, batched
``[B, I]`` input (unsqueeze 1-D input first, as torch.nn's cells do); the half types keep the
cell's state and arithmetic in float32 (the GEMMs themselves round to the input dtype, as torch's).

The wrappers check nothing the extension does not: shapes, dtypes and devices are the modules'
business (they validate as torch.nn does); the extension raises ``RuntimeError`` for anything it
cannot run. Not supported, each raising a clear error: double backward (a backward run with
``create_graph=True``), forward-mode AD (dual tensors) and ``torch.func`` transforms; route those
to torch (``backend="torch"``).

    >>> from rnnkernels.backends import cell_step
    >>> h, c = cell_step.lstm_cell(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih,
    ...                            cell.bias_hh)

The extension is loaded the first time a step runs (or ``AVAILABLE`` is read), the way
``compiled.py`` loads it (never at ``import rnnkernels``).
"""
from __future__ import annotations

import importlib.util
import sys

from . import compiled

__all__ = ["lstm_cell", "gru_cell", "rnn_cell"]

_module = None  # rnnkernels._C once loaded


def _load():
    """The extension module (its functions, not only its ops); raises RuntimeError if there is
    none. A first-use build is loaded by compiled.py as a library (its ops only), so its module is
    imported here from the same shared object."""
    global _module
    if _module is None:
        compiled._require()
        mod = sys.modules.get("rnnkernels._C")
        if mod is None:
            spec = importlib.util.spec_from_file_location("rnnkernels._C",
                                                          compiled.build_info()["path"])
            mod = importlib.util.module_from_spec(spec)
        if not hasattr(mod, "lstm_cell"):
            raise RuntimeError(f"rnnkernels: the compiled extension {mod.__file__} has no cell "
                               "steps (built from older sources): rebuild it")
        _module = mod
    return _module


def _why_not() -> str | None:
    try:
        _load()
    except RuntimeError as exc:
        return str(exc)
    return None


def __getattr__(name: str):
    """``AVAILABLE``: whether the fused steps can run here (loads the extension); ``ERROR``: why
    not, or None."""
    if name == "AVAILABLE":
        return _why_not() is None
    if name == "ERROR":
        return _why_not()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """One LSTM step: input [B, I], hx [B, P], cx [B, H] → (h [B, P], c [B, H]), P = H, or the
    projection size with ``w_hr`` [P, H] (a T = 1 call of an LSTM layer with ``proj_size``)."""
    return (_module or _load()).lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step (torch's form, n = tanh(x·W_inᵀ + b_in + r ⊙ (h·W_hnᵀ + b_hn))): input
    [B, I], hx [B, H] → h [B, H]."""
    return (_module or _load()).gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, relu=False):
    """One Elman step, tanh (or relu when ``relu``): input [B, I], hx [B, H] → h [B, H]."""
    return (_module or _load()).rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu)
