"""``rnnkernels.convert(model)``: swap torch.nn recurrent modules for the drop-in ones, in place."""
from __future__ import annotations

import torch

from .. import backends
from . import modules as M

# Exact types only: a user's subclass of torch.nn.LSTM may override forward; leave it alone.
_SWAP = {
    torch.nn.LSTM: M.LSTM, torch.nn.GRU: M.GRU, torch.nn.RNN: M.RNN,
    torch.nn.LSTMCell: M.LSTMCell, torch.nn.GRUCell: M.GRUCell, torch.nn.RNNCell: M.RNNCell,
}


def _swap(module: torch.nn.Module, backend: str) -> torch.nn.Module:
    new_cls = _SWAP[type(module)]
    new = new_cls.__new__(new_cls)
    # Same parameters (the very Parameter objects, so optimisers and ties keep working), buffers,
    # hooks, training mode, device and dtype: the state is shared, only the class changes.
    new.__dict__.update(module.__dict__)
    new.backend = backend
    if isinstance(new, torch.nn.RNNBase):
        new._init_flat_weights()
    return new


def convert(model: torch.nn.Module, backend: str = "auto") -> torch.nn.Module:
    """Replace every torch.nn LSTM/GRU/RNN/LSTMCell/GRUCell/RNNCell inside ``model`` (and
    ``model`` itself if it is one) by its rnnkernels twin, keeping the weights. Returns the model
    (a new object only when ``model`` itself is swapped).

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GRU(8, 16))
    >>> rnnkernels.convert(model)[1]
    GRU(8, 16)
    """
    backends.check_name(backend)
    if type(model) in _SWAP:
        return _swap(model, backend)
    for name, child in list(model.named_children()):
        if type(child) in _SWAP:
            setattr(model, name, _swap(child, backend))
        else:
            convert(child, backend)
    return model
