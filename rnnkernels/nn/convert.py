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

    A module held under several names (or by several parents) is converted once and every
    reference is rewired to the one twin, so the model keeps a single object there (one
    ``training`` flag, one set of hooks), as it had before.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GRU(8, 16))
    >>> rnnkernels.convert(model)[1]
    GRU(8, 16)
    """
    backends.check_name(backend)
    return _convert(model, backend, {})


def _convert(module: torch.nn.Module, backend: str, memo: dict) -> torch.nn.Module:
    # memo: id -> (original, result); holding the original keeps its id from being reused by a
    # module created during this call.
    seen = memo.get(id(module))
    if seen is not None:
        return seen[1]
    if type(module) in _SWAP:
        result = _swap(module, backend)
        memo[id(module)] = (module, result)
        return result
    memo[id(module)] = (module, module)
    for name, child in list(module._modules.items()):
        if child is not None:
            new = _convert(child, backend, memo)
            if new is not child:
                module._modules[name] = new
    return module
