"""What rnnkernels tells torch.compile's Dynamo, applied when Dynamo is first imported.

``import torch._dynamo`` costs over a second; most users of rnnkernels never compile, so
importing rnnkernels must not pay it. Dynamo needs two things from us, and only once it exists:

* ``config.allow_rnn = True``: Dynamo refuses to trace any instance of torch.nn.RNN/GRU/LSTM
  without it, and our modules must stay subclasses of those (isinstance, state_dict, repr).
  Our forward is plain Python around custom ops with fake impls, which Dynamo traces without
  graph breaks. The flag is global: it also lets Dynamo trace torch.nn's own RNNs.
* ``assume_constant_result`` on ``functional._resolve``, ``variants._resolve`` and
  ``slstm.resolve`` (the backend choice is a constant of the graph; see their docstrings) and on ``backends.config.get`` (a setting read in traced code,
  e.g. ``RNNKERNELS_BACKEND`` by the routing, is read at trace time: its fast read keeps a
  cache that Dynamo would otherwise guard on).

``when_dynamo_loads(apply)`` runs ``apply`` at once if ``torch._dynamo`` is already imported,
else right after its import finishes (a one-shot ``sys.meta_path`` finder that wraps the
package's loader; it removes itself when it fires).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Callable

_MODULE = "torch._dynamo"


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, callbacks: list[Callable[[], None]]):
        self.callbacks = callbacks

    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        sys.meta_path.remove(self)          # one shot; also keeps the lookup below from recursing
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        callbacks = self.callbacks

        def exec_then_apply(module):
            exec_module(module)
            for callback in callbacks:
                callback()

        spec.loader.exec_module = exec_then_apply
        return spec


_pending: _AfterImport | None = None


def when_dynamo_loads(apply: Callable[[], None]) -> None:
    global _pending
    if _MODULE in sys.modules:
        apply()
        return
    if _pending is None or _pending not in sys.meta_path:
        _pending = _AfterImport([])
        sys.meta_path.insert(0, _pending)
    _pending.callbacks.append(apply)


def _configure() -> None:
    import torch._dynamo

    from . import functional, slstm, variants
    from .backends import config
    torch._dynamo.config.allow_rnn = True
    for resolve in (functional._resolve, variants._resolve, slstm.resolve):
        torch._dynamo.assume_constant_result(resolve)
    torch._dynamo.assume_constant_result(config.get)


when_dynamo_loads(_configure)
