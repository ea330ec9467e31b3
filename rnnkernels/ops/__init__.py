"""The custom ops (``torch.ops.rnnkernels.*``): one per cell for the recurrence, plus its backward.

Each op takes the precomputed input projection, the initial state, the recurrent weights,
optional per-sequence lengths, a reverse flag, whether to save workspaces for backward, and the
concrete backend name; its fake (meta) impl comes from the cell's spec (``rnnkernels/cells.py``)
and it has a registered autograd formula. ``SCANS[cell]`` runs one direction of one layer with
the same signature for every cell (what ``functional`` calls); given a ``variant`` (peephole,
head-wise recurrence, zoneout: docs/VARIANTS.md) it runs that variant's scan (``ops/variants.py``).
"""
import inspect

from . import gru, lstm, rnn
from .gru import gru_scan, gru_scan_backward
from .lstm import lstm_scan, lstm_scan_backward
from .rnn import rnn_scan, rnn_scan_backward

SCANS = {"lstm": lstm.scan, "gru": gru.scan, "rnn": rnn.scan}

# help() and inspect.signature of a CustomOpDef show its class's docstring and (*args, **kwargs):
# give each op those of the function it was defined from (metadata only; calls are unchanged).
for _op in (lstm_scan, lstm_scan_backward, gru_scan, gru_scan_backward, rnn_scan,
            rnn_scan_backward):
    _fn = getattr(_op, "_init_fn", None)       # torch's (private) name for that function
    if _fn is not None:
        _op.__doc__, _op.__signature__ = _fn.__doc__, inspect.signature(_fn, eval_str=True)
del _op, _fn

__all__ = ["lstm_scan", "lstm_scan_backward", "gru_scan", "gru_scan_backward", "rnn_scan",
           "rnn_scan_backward", "SCANS"]
