"""The scans of the recurrent variants (peephole, head-wise recurrence, zoneout): docs/VARIANTS.md.

``SCANS[cell]`` (``functional``'s one call per layer and direction) hands a scan with a
``variant`` (a ``rnnkernels.variants.ScanVariant``) here, with the plain scan's arguments. Phase 1
has no custom op for them: the backend that ``rnnkernels.variants.resolve`` chose (today only
"reference") runs the scan as differentiable PyTorch, and autograd differentiates it
(``backends/reference_variants.py`` says why). A fused kernel will enter here as a
``torch.ops.rnnkernels.*_variant_scan`` op taking the same tensors, with the reference as its
oracle and its double backward, as the plain scans have.
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
