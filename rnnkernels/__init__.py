"""rnnkernels: fused LSTM / GRU / Elman-RNN kernels for PyTorch behind drop-in torch.nn modules.

    >>> import rnnkernels
    >>> lstm = rnnkernels.LSTM(32, 64, num_layers=2)      # same arguments as torch.nn.LSTM
    >>> model = rnnkernels.convert(model)                  # or swap them in an existing model

Backends: "triton" (GPU), "cuda" and "cpu" (the compiled extension ``rnnkernels._C``) and
"reference" (plain PyTorch, the test oracle); ``backend="auto"`` picks the fastest that can run.
"""
from . import _dynamo_setup, functional, ops  # noqa: F401  (_dynamo_setup: see its docstring)
from .backends import available_backends
from .dropout import weight_drop
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert, revert
from .nn import SLSTM, SLSTMCell

from ._version import __version__  # the one version source
__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "revert",
           "weight_drop",
           "SLSTM", "SLSTMCell",
           "available_backends", "functional", "ops", "__version__"]
