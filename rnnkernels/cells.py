"""One ``CellSpec`` per cell: every fact about a cell that the layers above the kernels need.

``functional``, the ops (``rnnkernels/ops``: the custom ops of every backend and their fake
impls, and the compiled extension's ops in ``backends/compiled.py``), the Triton launcher and the
tests read a cell's gate count, states, workspaces and fake shapes from here; nobody re-derives
them from tensor shapes with a literal ``// 4``. The cell *math* lives in
``csrc/include/rnnkernels/cell_math.h`` (C++/CUDA), ``backends/triton/cell.py`` (Triton) and,
written independently, ``backends/reference.py``.

Adding a cell variant means: one spec here, its math in those three places, and its op.

    >>> from rnnkernels.cells import CELLS
    >>> CELLS["gru"].gates, CELLS["gru"].workspaces
    (3, (('gates', 3), ('hn_lin', 1)))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels keep state and accumulate in: fp32 for half types, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclass(frozen=True)
class CellSpec:
    """The shape-level facts of one recurrent cell (see ``docs/BACKENDS.md`` for the contract).

    gates        G: rows of W_hh per hidden unit (W_hh is [G·H, P]); gate names in torch's order
    states       the carried states: ("h", "c") or ("h",); h is [B, P], the others [B, H]
    workspaces   what the forward saves for the backward, (name, width in units of H), in the
                 accumulation dtype, in time order [T, B, width·H]; empty when not saved
    projection   whether the cell takes a projection W_hr [P, H] (proj_size)
    hidden_bias_in_scan  GRU: b_hn stays inside r ⊙ (h·W_hnᵀ + b_hn), so only b_hr and b_hz
                 fold into the input projection
    autocast_promoted_from  (state, source) pairs: under CPU autocast torch.nn updates these
                 states elementwise from ``source``'s previous value, so they come out in the
                 promoted dtype of the autocast dtype and the caller's ``source`` state (h is
                 exempt when a projection GEMM produces it); the rest stay in the autocast dtype
    variants     the keyword options of the cell's recurrent variants (``rnnkernels/variants.py``,
                 docs/VARIANTS.md), in signature order
    peephole_gates  the gates that see the cell state through a peephole weight, in the row order
                 of ``weight_ch`` (LSTM: i and f see c_{t-1}, o sees c_t)
    """

    name: str
    module: str
    gates: int
    gate_names: tuple[str, ...]
    states: tuple[str, ...]
    workspaces: tuple[tuple[str, int], ...]
    projection: bool = False
    hidden_bias_in_scan: bool = False
    autocast_promoted_from: tuple[tuple[str, str], ...] = ()
    variants: tuple[str, ...] = ()
    peephole_gates: tuple[str, ...] = ()

    # ------------------------------------------------------------------ sizes from tensors
    def hidden_size(self, w_hh: Tensor) -> int:
        """H from the recurrent weight [G·H, P]."""
        return w_hh.shape[0] // self.gates

    def gate_block(self, t: Tensor, gate: str) -> Tensor:
        """The slice of one gate's H columns of a [..., G·H] tensor."""
        H = t.shape[-1] // self.gates
        k = self.gate_names.index(gate)
        return t[..., k * H:(k + 1) * H]

    # ------------------------------------------------------------------- fake (meta) shapes
    def fake_forward(self, xp: Tensor, h0: Tensor, save: bool) -> tuple[Tensor, ...]:
        """Outputs of a forward scan: out [T,B,P], the final states, then the workspaces."""
        T, B, GH = xp.shape
        H, P = GH // self.gates, h0.shape[-1]
        finals = [xp.new_empty((B, P))] + [xp.new_empty((B, H)) for _ in self.states[1:]]
        acc = acc_dtype(xp.dtype)
        ws = [xp.new_empty((T, B, width * H) if save else (0,), dtype=acc)
              for _, width in self.workspaces]
        return (xp.new_empty((T, B, P)), *finals, *ws)

    def fake_backward(self, grad_out: Tensor, h0: Tensor, w_hh: Tensor,
                      w_hr: Tensor | None = None) -> tuple[Tensor, ...]:
        """Outputs of a backward scan: dxp [T,B,G·H], the initial states' grads and, for a cell
        with a projection, dh [T,B,P] in the accumulation dtype (empty without W_hr)."""
        T, B = grad_out.shape[:2]
        H = self.hidden_size(w_hh)
        grads = [h0.new_empty((T, B, w_hh.shape[0])), h0.new_empty(h0.shape)]
        grads += [h0.new_empty((B, H)) for _ in self.states[1:]]
        if self.projection:
            acc = acc_dtype(h0.dtype)
            grads.append(h0.new_empty((T, B, h0.shape[-1]) if w_hr is not None else (0,),
                                      dtype=acc))
        return tuple(grads)


LSTM = CellSpec("lstm", "LSTM", gates=4, gate_names=("i", "f", "g", "o"), states=("h", "c"),
                workspaces=(("gates", 4), ("cs", 1)), projection=True,
                autocast_promoted_from=(("h", "c"), ("c", "c")),
                variants=("peephole", "num_heads", "zoneout", "layer_norm"),
                peephole_gates=("i", "f", "o"))
GRU = CellSpec("gru", "GRU", gates=3, gate_names=("r", "z", "n"), states=("h",),
               workspaces=(("gates", 3), ("hn_lin", 1)), hidden_bias_in_scan=True,
               autocast_promoted_from=(("h", "h"),),
               variants=("num_heads", "zoneout", "layer_norm"))
RNN = CellSpec("rnn", "RNN", gates=1, gate_names=("h",), states=("h",), workspaces=(),
               variants=("num_heads",))

CELLS: dict[str, CellSpec] = {c.name: c for c in (LSTM, GRU, RNN)}

# The sLSTM (xLSTM, Beck et al. 2024): gates i, f, z, o; states h, c, the normalizer n and the
# stabilizer m (all [B, H]). Not in CELLS, which lists the cells the plain scan ops implement:
# the sLSTM has its own routing (rnnkernels/slstm.py: KERNELS, resolve); its cpu kernel is the
# head-wise LSTM variant scan with an sLSTM unit (backends/cpu_slstm.py), its triton kernels
# one program per head (backends/triton/slstm.py).
SLSTM = CellSpec("slstm", "SLSTM", gates=4, gate_names=("i", "f", "z", "o"),
                 states=("h", "c", "n", "m"), workspaces=(), variants=("num_heads",))
