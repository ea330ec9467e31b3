"""float64 ``torch.autograd.gradcheck`` through the drop-in modules, at tiny sizes.

Gradients are checked with respect to the input, h0, c0 AND every weight: the module's own
Parameters are passed to gradcheck as inputs (gradcheck perturbs them in place and the module reads
them at each call), so the full path is checked — projection GEMM, scan op backward, the op's
weight-gradient GEMMs, stacking, directions and packing. gradcheck also feeds undefined output
gradients (check_undefined_grad) for outputs the loss would not use.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from tests.helpers import case_backend_params, is_lstm, make_twins
from tests.layer_cases import LayerCase, randn

F64 = torch.float64

LAYER_CASES = [
    LayerCase("LSTM", T=3, B=2, I=2, H=2, layers=2, bidir=True, h0=True, dtype=F64),
    LayerCase("LSTM", T=3, B=3, I=2, H=3, proj=1, bidir=True, packed="unsorted", h0=True,
              dtype=F64),
    LayerCase("LSTM", T=3, B=1, I=2, H=2, bias=False, unbatched=True, h0=True, dtype=F64),
    LayerCase("GRU", T=3, B=2, I=2, H=2, layers=2, bidir=True, batch_first=True, h0=True,
              dtype=F64),
    LayerCase("GRU", T=4, B=3, I=2, H=2, packed="unsorted", dtype=F64),
    LayerCase("RNN_TANH", T=4, B=3, I=2, H=2, layers=2, packed="unsorted", h0=True, dtype=F64),
    LayerCase("RNN_RELU", T=3, B=2, I=2, H=3, bidir=True, unbatched=True, h0=True, dtype=F64),
    LayerCase("RNN_RELU", T=1, B=2, I=2, H=1, layers=2, dtype=F64),
]


def _fast(inputs) -> bool:
    """Full (element by element) Jacobians up to ~120 input elements; above that (the stacked
    bidirectional cases) gradcheck's fast mode, which compares the Jacobians projected on random
    vectors: any gradient error still shows, at a fraction of the forward calls. Element-wise
    gradients of those cases are compared against torch.nn in test_parity."""
    return sum(t.numel() for t in inputs) > 120


def _layer_fn(module, case: LayerCase, lengths):
    n_state = (2 if is_lstm(case.mode) else 1) if case.h0 else 0

    def fn(x, *rest):
        states = rest[:n_state]   # the parameters (rest[n_state:]) are read by the module itself
        feed = x
        if case.packed:
            feed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=case.batch_first,
                                        enforce_sorted=case.packed == "sorted")
        if n_state == 0:
            out, st = module(feed)
        else:
            out, st = module(feed, tuple(states) if n_state == 2 else states[0])
        if isinstance(out, PackedSequence):
            out = out.data
        return (out, *st) if is_lstm(case.mode) else (out, st)
    return fn


@pytest.mark.parametrize("case, backend", case_backend_params(LAYER_CASES))
def test_gradcheck_layer(case, backend):
    _, mod = make_twins(case.mode, backend, F64, seed=2, **case.ctor())
    nb = () if case.unbatched else (case.B,)
    shape = (case.T, *nb, case.I)
    if case.batch_first and not case.unbatched:
        shape = (case.B, case.T, case.I)
    inputs = [randn(shape, F64, 3).requires_grad_()]
    if case.h0:
        inputs.append(randn((case.layers * case.dirs, *nb, case.out_size), F64, 4)
                      .requires_grad_())
        if is_lstm(case.mode):
            inputs.append(randn((case.layers * case.dirs, *nb, case.H), F64, 5).requires_grad_())
    inputs += list(mod.parameters())
    fn = _layer_fn(mod, case, case.seq_lengths() if case.packed else None)
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=_fast(inputs))


CELLS = [("LSTMCell", True), ("LSTMCell", False), ("GRUCell", True), ("GRUCell", False),
         ("RNNCell_TANH", True), ("RNNCell_RELU", False)]


class _Cell:
    def __init__(self, mode, hx):
        self.mode, self.hx, self.dtype = mode, hx, F64
        self.id = f"{mode}-B2-I2-H3{'-hx' if hx else ''}-fp64"


@pytest.mark.parametrize("case, backend", case_backend_params([_Cell(m, hx) for m, hx in CELLS]))
def test_gradcheck_cell(case, backend):
    _, mod = make_twins(case.mode, backend, F64, seed=2, input_size=2, hidden_size=3)
    inputs = [randn((2, 2), F64, 6).requires_grad_()]
    n_state = (2 if is_lstm(case.mode) else 1) if case.hx else 0
    inputs += [randn((2, 3), F64, 7 + k).requires_grad_() for k in range(n_state)]
    inputs += list(mod.parameters())

    def fn(x, *rest):
        states = rest[:n_state]
        if n_state == 0:
            return mod(x)
        return mod(x, tuple(states) if n_state == 2 else states[0])

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=_fast(inputs))
