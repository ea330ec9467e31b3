"""The named steps of ``functional._stack``, each on its own (the module tests check them together).

Oracles are written here from torch's conventions, not from the code under test: the flat
parameter order [w_ih, w_hh, b_ih, b_hh, (w_hr)], GRU's b_hn kept inside r ⊙ (·), packed data
as ``padded[mask]``, and the dtypes torch.nn returns under CPU autocast.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnkernels import functional as Fn
from rnnkernels.cells import CELLS


def test_params_per_direction():
    p = [torch.zeros(1)] * 8
    assert Fn._params_per_direction("LSTM", p, num_layers=2, dirs=1) == 4
    assert Fn._params_per_direction("LSTM", p, num_layers=1, dirs=2) == 4
    with pytest.raises(ValueError, match="expected a multiple of 3 parameters, got 8"):
        Fn._params_per_direction("GRU", p, num_layers=3, dirs=1)


def test_layer_weights_fold_biases_except_grus_b_hn():
    H, I = 3, 2
    w_ih, w_hh = torch.randn(3 * H, I), torch.randn(3 * H, H)
    b_ih, b_hh = torch.randn(3 * H), torch.randn(3 * H)
    got_ih, got_hh, bias, b_hn, w_hr = Fn._layer_weights(CELLS["gru"], [w_ih, w_hh, b_ih, b_hh],
                                                         True)
    assert got_ih is w_ih and torch.equal(got_hh, w_hh) and w_hr is None
    assert torch.equal(bias[:2 * H], b_ih[:2 * H] + b_hh[:2 * H])   # r and z fold
    assert torch.equal(bias[2 * H:], b_ih[2 * H:])                    # n: only b_in
    assert torch.equal(b_hn, b_hh[2 * H:])
    _, _, bias, b_hn, _ = Fn._layer_weights(CELLS["rnn"], [w_ih[:H], w_hh[:H, :], b_ih[:H],
                                                           b_hh[:H]], True)
    assert torch.equal(bias, b_ih[:H] + b_hh[:H]) and b_hn is None
    w_hr = torch.randn(2, 4)
    out = Fn._layer_weights(CELLS["lstm"], [torch.randn(16, I), torch.randn(16, 2), w_hr], False)
    assert out[2] is None and out[3] is None and torch.equal(out[4], w_hr)


def test_time_major_round_trip_packed_and_batch_first():
    x = torch.randn(3, 5, 2)                      # [B, T, I]
    tm, mask, lengths = Fn._to_time_major(x, None, batch_first=True)
    assert torch.equal(tm, x.transpose(0, 1)) and mask is None and lengths is None
    assert torch.equal(Fn._from_time_major(tm, None, batch_first=True), x)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 1]), batch_first=True,
                                  enforce_sorted=False)
    tm, mask, lengths = Fn._to_time_major(packed.data, packed.batch_sizes, batch_first=True)
    assert lengths.tolist() == [5, 2, 1] and tm.shape == (5, 3, 2)
    assert torch.equal(Fn._from_time_major(tm, mask, batch_first=True), packed.data)
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        Fn._to_time_major(torch.randn(0, 2, 2), None, batch_first=False)


@pytest.mark.parametrize("cell, projected, want", [
    ("lstm", False, (torch.float32, torch.float32, torch.float32)),   # output, h_n, c_n
    ("lstm", True, (torch.bfloat16, torch.bfloat16, torch.float32)),  # h from the W_hr GEMM
    ("gru", False, (torch.float32, torch.float32)),
    ("rnn", False, (torch.bfloat16, torch.bfloat16)),                 # act(GEMM) stays bf16
])
def test_cpu_autocast_output_dtypes(cell, projected, want):
    """torch.nn's op-by-op CPU autocast dtypes (module-level parity: tests/test_autocast.py)."""
    spec = CELLS[cell]
    bf = torch.zeros(2, dtype=torch.bfloat16)
    finals = [bf for _ in spec.states]
    output, finals = Fn._autocast_output_dtypes(spec, torch.bfloat16,
                                                [torch.float32] * len(spec.states), projected,
                                                bf, finals)
    assert (output.dtype, *(f.dtype for f in finals)) == want
