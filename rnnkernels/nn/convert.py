"""``rnnkernels.convert(model)`` and its inverse ``rnnkernels.revert(model)``: swap torch.nn
recurrent modules for the drop-in ones and back, in place, sharing every Parameter."""
from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from .. import backends
from . import modules as M

# Exact types only: a user's subclass of torch.nn.LSTM (or of ours) may override forward; leave
# it alone. (A parametrized module's class is torch's one-off subclass of one of these: handled.)
_SWAP = {
    torch.nn.LSTM: M.LSTM, torch.nn.GRU: M.GRU, torch.nn.RNN: M.RNN,
    torch.nn.LSTMCell: M.LSTMCell, torch.nn.GRUCell: M.GRUCell, torch.nn.RNNCell: M.RNNCell,
}
_REVERT = {ours: theirs for theirs, ours in _SWAP.items()}


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
    return _replace(model, _SWAP, backend, {})


def revert(model: torch.nn.Module) -> torch.nn.Module:
    """The inverse of :func:`convert`: replace every rnnkernels LSTM/GRU/RNN/LSTMCell/GRUCell/
    RNNCell inside ``model`` (and ``model`` itself if it is one) by the torch.nn class it derives
    from. Returns the model (a new object only when ``model`` itself is swapped).

    For what needs torch.nn's own classes: ``torch.onnx.export``, TorchScript (``torch.jit.script``
    calls this through ``__prepare_scriptable__``), or a checkpoint for a machine without
    rnnkernels. The twin holds the very same Parameter objects, buffers, hooks, parametrizations,
    ``training`` flag and attributes; only ``backend`` goes. Its state_dict keys are those of the
    original (they always equal torch.nn's). A module held under several names is reverted once
    and every reference is rewired to the one twin, as in :func:`convert`.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), rnnkernels.GRU(8, 16))
    >>> type(rnnkernels.revert(model)[1])
    <class 'torch.nn.modules.rnn.GRU'>
    """
    return _replace(model, _REVERT, None, {})


def _replace(module: torch.nn.Module, table: dict, backend: str | None,
             memo: dict) -> torch.nn.Module:
    # memo: id -> (original, result); holding the original keeps its id from being reused by a
    # module created during this call.
    seen = memo.get(id(module))
    if seen is not None:
        return seen[1]
    twin_cls = _twin_class(module, table)
    if twin_cls is not None:
        result = _twin(module, twin_cls, backend)
        memo[id(module)] = (module, result)
        return result
    memo[id(module)] = (module, module)
    for name, child in list(module._modules.items()):
        if child is not None:
            new = _replace(child, table, backend, memo)
            if new is not child:
                module._modules[name] = new
    return module


def _twin_class(module: torch.nn.Module, table: dict) -> type | None:
    """The class ``module`` becomes under ``table``, or None when it stays as it is.

    torch.nn.utils.parametrize gives a parametrized module a class of its own: a subclass
    ``Parametrized<Name>`` of the module's class whose properties compute the parametrized
    tensors. The twin gets the same construction on top of the twin's class (same name, same
    class attributes), so its parametrizations keep working; the ``parametrizations`` container
    itself is an ordinary submodule, shared like every other.
    """
    cls = type(module)
    if cls in table:
        return table[cls]
    if not parametrize.is_parametrized(module) or len(cls.__bases__) != 1:
        return None
    base = cls.__bases__[0]
    if base not in table or cls.__name__ != f"Parametrized{base.__name__}":
        return None
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    return type(cls.__name__, (table[base],), body)


def _twin(module: torch.nn.Module, twin_cls: type, backend: str | None) -> torch.nn.Module:
    variant = getattr(module, "_variant", None)
    if backend is None and variant is not None:
        # torch.nn's forward would silently ignore the variant's terms (or fail on its shapes).
        raise ValueError(f"revert: this {type(module).__name__} uses {variant.describe()}, which "
                         f"torch.nn.{twin_cls.__name__} lacks; it has no torch.nn equivalent")
    new = twin_cls.__new__(twin_cls)
    # Same parameters (the very Parameter objects, so optimisers and ties keep working), buffers,
    # hooks, training mode, device and dtype: the state is shared, only the class changes.
    new.__dict__.update(module.__dict__)
    if backend is None:
        new.__dict__.pop("backend", None)       # torch.nn's classes have no such attribute
    else:
        new.backend = backend
    if isinstance(new, torch.nn.RNNBase):
        new._init_flat_weights()
    return new
