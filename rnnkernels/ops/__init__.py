"""The custom ops (``torch.ops.rnnkernels.*``): one per cell for the recurrence, plus its backward.

Each op takes the precomputed input projection, the initial state, the recurrent weights,
optional per-sequence lengths, a reverse flag, whether to save workspaces for backward, and the
concrete backend name; it has a fake (meta) impl and a registered autograd formula.
"""
from .gru import gru_scan, gru_scan_backward
from .lstm import lstm_scan, lstm_scan_backward
from .rnn import rnn_scan, rnn_scan_backward

__all__ = ["lstm_scan", "lstm_scan_backward", "gru_scan", "gru_scan_backward", "rnn_scan",
           "rnn_scan_backward"]
