"""Inter-layer dropout: the same masks as torch.nn under the same RNG seed.

torch.nn applies dropout to each non-last layer's output, in its layout ([T, B, D*H] time-major,
or the packed data when the input is packed) and in layer order, drawing from the global CPU
generator. rnnkernels does the same, so with ``torch.manual_seed(s)`` before each call the outputs,
states and gradients are equal (not only statistically alike) and the generator ends in the same
state (a model's later random ops stay in sync). Eval mode and dropout=0 draw nothing.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from tests.helpers import case_backend_params, compare_runs, make_twins
from tests.layer_cases import LayerCase, make_inputs, run_layer

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN")  # torch.nn (the oracle) warns

F32, F64 = torch.float32, torch.float64

CASES = [
    LayerCase("LSTM", T=5, B=3, I=4, H=6, layers=3, dropout=0.5, dtype=F64),
    LayerCase("LSTM", T=5, B=3, I=4, H=6, layers=3, dropout=0.5, dtype=F32),
    LayerCase("LSTM", T=5, B=3, I=4, H=6, layers=2, bidir=True, proj=3, dropout=0.3,
              batch_first=True, h0=True, dtype=F32),
    LayerCase("GRU", T=5, B=3, I=4, H=6, layers=3, bidir=True, dropout=0.5, dtype=F64),
    LayerCase("GRU", T=6, B=4, I=4, H=5, layers=2, dropout=0.5, packed="unsorted", h0=True,
              dtype=F32),
    LayerCase("RNN_TANH", T=6, B=4, I=4, H=5, layers=3, bidir=True, dropout=0.4,
              packed="unsorted", dtype=F64),
    LayerCase("RNN_RELU", T=4, B=2, I=3, H=5, layers=2, dropout=0.5, batch_first=True, dtype=F32),
    LayerCase("LSTM", T=6, B=4, I=4, H=5, layers=2, bidir=True, dropout=0.5, packed="sorted",
              dtype=F64),
    LayerCase("LSTM", T=4, B=2, I=3, H=4, layers=2, dropout=0.5, unbatched=True, dtype=F64),
    LayerCase("GRU", T=4, B=2, I=3, H=4, layers=2, dropout=1.0, dtype=F64),  # drops everything
]
TRITON_IDS = frozenset({CASES[1].id, CASES[4].id})


@pytest.mark.parametrize("case, backend", case_backend_params(CASES, TRITON_IDS))
def test_dropout_same_masks_as_torch(case, backend):
    ref_mod, our_mod = make_twins(case.mode, backend, case.dtype, seed=17, **case.ctor())
    inputs = make_inputs(case, seed=19)
    for seed in (0, 1234):
        torch.manual_seed(seed)
        want = run_layer(ref_mod, case, inputs)
        rng_after_torch = torch.get_rng_state()
        torch.manual_seed(seed)
        got = run_layer(our_mod, case, inputs)
        compare_runs(got, want, f"seed {seed}")
        assert torch.equal(torch.get_rng_state(), rng_after_torch), \
            "the global generator advanced differently from torch.nn's (different random draws)"
    # The comparison means something only if dropout changed the result.
    our_mod.eval()
    plain = run_layer(our_mod, case, inputs, grad=False)
    out, base = want.out, plain.out
    if isinstance(out, PackedSequence):
        out, base = out.data, base.data
    assert not torch.allclose(out.detach(), base), "dropout had no effect in train mode"


@pytest.mark.parametrize("case, backend", case_backend_params(CASES[:6:2]))
def test_eval_mode_applies_no_dropout(case, backend):
    """eval(): no dropout and no random draws; equal to torch.nn in eval mode."""
    ref_mod, our_mod = make_twins(case.mode, backend, case.dtype, seed=17, **case.ctor())
    ref_mod.eval()
    our_mod.eval()
    inputs = make_inputs(case, seed=19)
    state = torch.get_rng_state()
    first = run_layer(our_mod, case, inputs)
    assert torch.equal(torch.get_rng_state(), state), "eval mode drew random numbers"
    compare_runs(first, run_layer(ref_mod, case, inputs), "eval")
    second = run_layer(our_mod, case, inputs)
    compare_runs(second, first, "eval, second call")


@pytest.mark.parametrize("case, backend", case_backend_params(CASES[:6:2]))
def test_dropout_zero_in_train_mode(case, backend):
    """dropout=0 in train mode: equal to torch.nn, and no random draws."""
    ctor = dict(case.ctor(), dropout=0.0)
    ref_mod, our_mod = make_twins(case.mode, backend, case.dtype, seed=17, **ctor)
    inputs = make_inputs(case, seed=19)
    state = torch.get_rng_state()
    got = run_layer(our_mod, case, inputs)
    assert torch.equal(torch.get_rng_state(), state), "dropout=0 drew random numbers"
    compare_runs(got, run_layer(ref_mod, case, inputs), "dropout=0")


@pytest.mark.parametrize("backend", [p.values[1] for p in case_backend_params(CASES[:1])])
def test_dropout_changes_between_calls(backend):
    """Without reseeding, two train-mode calls draw different masks (dropout is not frozen)."""
    case = CASES[0]
    _, our_mod = make_twins(case.mode, backend, case.dtype, seed=17, **case.ctor())
    inputs = make_inputs(case, seed=19)
    torch.manual_seed(0)
    a = run_layer(our_mod, case, inputs, grad=False).out
    b = run_layer(our_mod, case, inputs, grad=False).out
    assert not torch.allclose(a, b)
