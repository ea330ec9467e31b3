"""The scans of the recurrent variants (peephole, head-wise recurrence, zoneout, layer norm):
docs/VARIANTS.md.

``SCANS[cell]`` (``functional``'s one call per layer and direction) hands a scan with a
``variant`` (a ``rnnkernels.variants.ScanVariant``) here, with the plain scan's arguments; the
backend that ``rnnkernels.variants.resolve`` chose runs it: ``backends/cpu_variants.py`` and
``backends/triton/variants.py`` (custom ops with fake impls and hand-written reverse scans) or
``backends/reference_variants.py`` (differentiable PyTorch, the oracle of both, and the path
of their double backward, forward-mode AD and torch.func).
"""
from __future__ import annotations

from torch import Tensor

from .. import variants as V
from ..cells import CellSpec


def scan(cell: CellSpec, xp: Tensor, states: tuple[Tensor, ...], w_hh: Tensor,
         w_hr: Tensor | None, b_hn: Tensor | None, lengths: Tensor | None, reverse: bool,
         relu: bool, backend: str, variant: V.ScanVariant):
    """One direction of one layer of ``cell`` with ``variant``: (out, final states), as the
    plain scans return them."""
    return V.implementation(backend).scan(cell, xp, states, w_hh, w_hr, b_hn, lengths, reverse,
                                          relu, variant)
