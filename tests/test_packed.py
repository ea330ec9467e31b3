"""PackedSequence input: rnnkernels modules against torch.nn on the CPU.

What packing exercises: per-sequence lengths (a sequence's state freezes after its end, and the
reverse direction starts at its own last step, not at T-1), the h0 permutation by
``sorted_indices`` and h_n's un-permutation for ``enforce_sorted=False``, the packed output layout
(data, batch_sizes, sorted/unsorted indices), and gradients through all of it. Length patterns:
mixed with ties and including T and 1, all equal to T, all 1, a single sequence, and a padded
tensor longer than its longest sequence.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from tests.helpers import assert_close, case_backend_params, compare_runs, cpu_backends, make_twins
from tests.layer_cases import LayerCase, make_inputs, randn, run_layer

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN")  # torch.nn (the oracle) warns

F32, F64 = torch.float32, torch.float64

# (name, padded T, lengths in the order of the batch, packing) -- the unsorted variant of a
# pattern lists its lengths out of order.
PATTERNS = [
    ("mixed", 6, (6, 6, 3, 1), "sorted"),
    ("mixed", 6, (3, 6, 1, 6), "unsorted"),
    ("allT", 5, (5, 5, 5), "unsorted"),
    ("all1", 4, (1, 1, 1), "sorted"),
    ("single", 4, (4,), "unsorted"),
    ("shorter", 6, (2, 4, 1), "unsorted"),     # padded T=6, longest sequence 4
]

# mode, proj
MODES = [("LSTM", 0), ("LSTM", 2), ("GRU", 0), ("RNN_TANH", 0), ("RNN_RELU", 0)]


def _cases():
    cases = []
    for m, (mode, proj) in enumerate(MODES):
        for k, (_, T, lengths, packing) in enumerate(PATTERNS):
            j = m + k
            cases.append(LayerCase(
                mode, T=T, B=len(lengths), I=3, H=4, layers=2, bidir=True,
                batch_first=j % 2 == 1, bias=j % 3 != 2, proj=proj, packed=packing,
                h0=j % 2 == 0, dtype=F64 if j % 2 == 0 else F32, lengths=lengths))
    return cases


CASES = _cases()
# Triton (interpreter): the LSTM with ties in its lengths; the other modes' packed-unsorted
# cases run on Triton in test_parity.
TRITON_IDS = frozenset(c.id for c in CASES[:2] if c.dtype == F32)


@pytest.mark.parametrize("case, backend", case_backend_params(CASES, TRITON_IDS))
def test_packed_parity(case, backend):
    ref_mod, our_mod = make_twins(case.mode, backend, case.dtype, seed=5, **case.ctor())
    inputs = make_inputs(case, seed=31)
    compare_runs(run_layer(our_mod, case, inputs), run_layer(ref_mod, case, inputs), "train")
    with torch.no_grad():
        compare_runs(run_layer(our_mod, case, inputs, grad=False),
                     run_layer(ref_mod, case, inputs, grad=False), "no_grad")


@pytest.mark.parametrize("backend", [b for b in cpu_backends(F64) if b != "triton"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_pack_sequence_and_pad_back(mode, backend):
    """A PackedSequence made by pack_sequence (unsorted list), padded back with a total_length
    beyond the longest sequence: padding rows are exact zeros in both, values agree."""
    ref_mod, our_mod = make_twins(mode, backend, F64, seed=9, input_size=3, hidden_size=5,
                                  num_layers=1, bidirectional=True)
    seqs = [randn((L, 3), F64, 40 + L) for L in (2, 5, 1, 3)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    (want, want_state), (got, got_state) = ref_mod(packed), our_mod(packed)
    want_pad, want_len = pad_packed_sequence(want, total_length=7)
    got_pad, got_len = pad_packed_sequence(got, total_length=7)
    assert torch.equal(got_len, want_len)
    assert_close(got_pad, want_pad, "padded output")
    for b, L in enumerate(want_len.tolist()):
        assert torch.count_nonzero(got_pad[L:, b]) == 0, f"padding of sequence {b} is not zero"
    states = zip(got_state, want_state) if mode == "LSTM" else [(got_state, want_state)]
    for k, (g, w) in enumerate(states):
        assert_close(g, w, f"state {k}")


@pytest.mark.parametrize("backend", [b for b in cpu_backends(F64) if b != "triton"])
def test_packed_matches_each_sequence_alone(backend):
    """Independent of torch: each sequence of an unsorted packed batch gives the same output and
    final state as running it alone, unpadded (bidirectional, 2 layers, with h0). Catches a
    length/reverse bug that torch.nn and a kernel could only share by accident."""
    _, mod = make_twins("GRU", backend, F64, seed=13, input_size=3, hidden_size=4, num_layers=2,
                        bidirectional=True)
    lengths = [3, 6, 1, 4]
    seqs = [randn((L, 3), F64, 60 + i) for i, L in enumerate(lengths)]
    h0 = randn((4, len(lengths), 4), F64, 70)
    out, h_n = mod(pack_sequence(seqs, enforce_sorted=False), h0)
    out_pad, _ = pad_packed_sequence(out)
    for b, (seq, L) in enumerate(zip(seqs, lengths)):
        alone, h_alone = mod(seq[:, None], h0[:, b:b + 1].contiguous())
        assert_close(out_pad[:L, b], alone[:, 0], f"output of sequence {b}")
        assert_close(h_n[:, b], h_alone[:, 0], f"h_n of sequence {b}")
