"""Parity of rnnkernels.LSTM/GRU/RNN and the three cells with torch.nn on the CPU.

For every case: outputs, final states and the gradients of the input, h0, c0 and every parameter
(of a loss touching outputs AND final states) equal torch.nn's within fp32 1e-5 / fp64 1e-10
relative, on every CPU backend (reference, cpu; triton through its interpreter on a marked subset).
The inference path (no_grad, where kernels save no workspaces) is compared as well.

The layer cases are a deliberate covering design, not a full cross product: ``PAIRWISE`` covers
every pair of values of any two axes (mode, layers, bidirectional, batch_first, bias, proj_size,
packed sorted/unsorted, unbatched, h0, size profile, dtype) and every (mode, dtype, value) triple,
as ``test_case_table_covers_all_pairs`` checks; ``HARD`` adds the combinations where most axes
interact at once (packed unsorted + bidirectional + stacked + h0 + batch_first, and B=1).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from tests.helpers import (case_backend_params, compare_runs, cpu_backends, is_lstm, make_twins,
                           requested_test_backends)
from tests.layer_cases import make_inputs, parse_spec, randn, run_cell, run_layer

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN")  # torch.nn (the oracle) warns

# Generated once by a greedy all-pairs search over the axes of AXES (+ all (mode, dtype, value)
# triples), then frozen here so the ids stay stable. Token grammar: see layer_cases.parse_spec.
PAIRWISE = [
    "LSTM L3 bf nobias proj unsorted h0 T1 fp32",
    "LSTM L2 bidir proj sorted S fp32",
    "LSTM L1 bidir proj unbatched h0 T7 fp32",
    "LSTM L1 bidir bf unbatched H1 fp32",
    "LSTM L2 bidir proj unsorted h0 H33 fp32",
    "LSTM L2 bidir sorted h0 H1 fp64",
    "LSTM L1 proj unbatched T1 fp64",
    "LSTM L3 bf nobias proj h0 H33 fp64",
    "LSTM L3 bf nobias proj unsorted h0 S fp64",
    "LSTM L3 bidir bf h0 T7 fp64",
    "GRU L2 bf unbatched h0 H33 fp32",
    "GRU L3 bidir nobias sorted H1 fp32",
    "GRU L1 bidir nobias unsorted h0 S fp32",
    "GRU L3 bidir bf unsorted T1 fp32",
    "GRU L2 bf unsorted T7 fp32",
    "GRU L1 bidir nobias unsorted H33 fp64",
    "GRU L3 bf unbatched h0 T7 fp64",
    "GRU L2 bidir bf nobias sorted T1 fp64",
    "GRU L3 nobias sorted S fp64",
    "GRU L1 bidir bf nobias sorted H1 fp64",
    "RNN_TANH L1 bf nobias unbatched T7 fp32",
    "RNN_TANH L3 bidir bf sorted h0 T1 fp32",
    "RNN_TANH L2 nobias unsorted h0 S fp32",
    "RNN_TANH L1 bf sorted H33 fp32",
    "RNN_TANH L1 bidir nobias sorted h0 H1 fp32",
    "RNN_TANH L2 bidir unsorted h0 T7 fp64",
    "RNN_TANH L1 bf nobias unbatched H1 fp64",
    "RNN_TANH L3 bidir sorted H33 fp64",
    "RNN_TANH L3 nobias h0 T1 fp64",
    "RNN_TANH L2 bf sorted h0 S fp64",
    "RNN_RELU L1 bf nobias sorted h0 S fp32",
    "RNN_RELU L2 bidir unbatched T1 fp32",
    "RNN_RELU L3 bidir bf unsorted h0 H33 fp32",
    "RNN_RELU L3 unbatched T7 fp32",
    "RNN_RELU L2 nobias H1 fp32",
    "RNN_RELU L3 bidir unbatched S fp64",
    "RNN_RELU L2 bf nobias unsorted h0 H1 fp64",
    "RNN_RELU L1 bidir bf sorted T7 fp64",
    "RNN_RELU L2 bf nobias unsorted T1 fp64",
    "RNN_RELU L3 bidir unbatched h0 H33 fp64",
]

# Where everything interacts: reverse direction within each sequence's own length, h0 permuted by
# sorted_indices, layer 2 reading the concatenated directions of layer 1, batch_first packing.
HARD = [f"{mode} L2 bidir bf unsorted h0 T7 {dt}"
        for mode in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU") for dt in ("fp32", "fp64")]
HARD += [
    "LSTM L3 bidir proj unsorted h0 T7 fp64",
    "LSTM L2 bidir bf proj sorted h0 T7 fp32",
    "LSTM L2 bidir proj h0 B1 fp32",
    "GRU L1 bidir sorted B1 fp64",
    "RNN_TANH L1 h0 B1 fp32",
    "LSTM L1 S fp32",               # the plainest case: a failure here is not about an option
]

LAYER_CASES = [parse_spec(s) for s in PAIRWISE + HARD]
assert len({c.id for c in LAYER_CASES}) == len(LAYER_CASES), "duplicate case ids"

# Triton runs through its interpreter on the CPU (slow): a few fp32 cases only.
TRITON_LAYER_IDS = frozenset(c.id for c in LAYER_CASES if c.dtype == torch.float32 and (
    "-L2-bidir-bf-packedunsorted-h0-" in c.id or c.id == "LSTM-T5-B3-I7-H6-L1-fp32"
    or "proj2-packedsorted-h0" in c.id))


@pytest.mark.parametrize("case, backend", case_backend_params(LAYER_CASES, TRITON_LAYER_IDS))
def test_layer_parity(case, backend):
    ref_mod, our_mod = make_twins(case.mode, backend, case.dtype, seed=7, **case.ctor())
    inputs = make_inputs(case, seed=11)
    compare_runs(run_layer(our_mod, case, inputs), run_layer(ref_mod, case, inputs), "train")
    # Inference: no graph, so kernels may skip their workspaces; results must not change.
    with torch.no_grad():
        compare_runs(run_layer(our_mod, case, inputs, grad=False),
                     run_layer(ref_mod, case, inputs, grad=False), "no_grad")


@pytest.mark.parametrize("env", [None, "reference"])
@pytest.mark.parametrize("spec", ["LSTM L2 bidir proj unsorted h0 T7 fp32", "GRU L1 bf S fp64",
                                  "RNN_TANH L1 unbatched h0 T1 fp32"])
def test_auto_backend_parity(spec, env, monkeypatch):
    """backend="auto" (the default), alone or steered by RNNKERNELS_BACKEND, matches torch.nn."""
    if env is None:
        monkeypatch.delenv("RNNKERNELS_BACKEND", raising=False)
    else:
        monkeypatch.setenv("RNNKERNELS_BACKEND", env)
    case = parse_spec(spec)
    ref_mod, our_mod = make_twins(case.mode, "auto", case.dtype, seed=7, **case.ctor())
    inputs = make_inputs(case, seed=11)
    compare_runs(run_layer(our_mod, case, inputs), run_layer(ref_mod, case, inputs), "auto")


# ---------------------------------------------------------------------------------------- cells
CELL_SIZES = [(3, 5, 4), (2, 3, 1), (4, 2, 33)]  # (B, I, H): plain, H=1, H=33


class CellCase:
    def __init__(self, mode, B, I, H, bias, hx, unbatched, dtype):
        self.mode, self.B, self.I, self.H = mode, B, I, H
        self.bias, self.hx, self.unbatched, self.dtype = bias, hx, unbatched, dtype

    @property
    def id(self):
        parts = [self.mode] + ([] if self.unbatched else [f"B{self.B}"]) + [f"I{self.I}",
                                                                             f"H{self.H}"]
        parts += [] if self.bias else ["nobias"]
        parts += ["unbatched"] if self.unbatched else []
        parts += ["hx"] if self.hx else []
        parts.append("fp32" if self.dtype == torch.float32 else "fp64")
        return "-".join(parts)


def _cell_cases():
    cases = []
    for mode in ("LSTMCell", "GRUCell", "RNNCell_TANH", "RNNCell_RELU"):
        combos = itertools.product((torch.float32, torch.float64), (False, True), (False, True))
        for k, (dtype, hx, unbatched) in enumerate(combos):
            B, I, H = CELL_SIZES[k % 3]
            cases.append(CellCase(mode, B, I, H, bias=k % 4 not in (1, 2), hx=hx,
                                  unbatched=unbatched, dtype=dtype))
    return cases


CELL_CASES = _cell_cases()
TRITON_CELL_IDS = frozenset(c.id for c in CELL_CASES
                            if c.dtype == torch.float32 and c.hx and not c.unbatched)


@pytest.mark.parametrize("case, backend", case_backend_params(CELL_CASES, TRITON_CELL_IDS))
def test_cell_parity(case, backend):
    ref_mod, our_mod = make_twins(case.mode, backend, case.dtype, seed=3,
                                  input_size=case.I, hidden_size=case.H, bias=case.bias)
    nb = () if case.unbatched else (case.B,)
    x = randn((*nb, case.I), case.dtype, 21)
    h0 = randn((*nb, case.H), case.dtype, 22) if case.hx else None
    c0 = randn((*nb, case.H), case.dtype, 23) if case.hx and is_lstm(case.mode) else None
    compare_runs(run_cell(our_mod, case.mode, x, h0, c0), run_cell(ref_mod, case.mode, x, h0, c0),
                 "train")
    with torch.no_grad():
        compare_runs(run_cell(our_mod, case.mode, x, h0, c0, grad=False),
                     run_cell(ref_mod, case.mode, x, h0, c0, grad=False), "no_grad")


# ----------------------------------------------------------------------------- meta / coverage
AXES = {
    "mode": ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"],
    "layers": [1, 2, 3],
    "bidir": [False, True],
    "bf": [False, True],
    "bias": [True, False],
    "proj": [False, True],
    "packed": ["", "sorted", "unsorted"],
    "unbatched": [False, True],
    "h0": [False, True],
    "size": ["S", "H1", "H33", "T1", "T7"],
    "dtype": ["fp32", "fp64"],
}


def _axes_of(spec: str) -> dict:
    tok = spec.split()
    rest = set(tok[1:])
    return {
        "mode": tok[0],
        "layers": int(next(t for t in tok if t.startswith("L") and t[1:].isdigit())[1:]),
        "bidir": "bidir" in rest, "bf": "bf" in rest, "bias": "nobias" not in rest,
        "proj": "proj" in rest,
        "packed": "sorted" if "sorted" in rest else "unsorted" if "unsorted" in rest else "",
        "unbatched": "unbatched" in rest, "h0": "h0" in rest,
        "size": next(t for t in tok if t in AXES["size"]),
        "dtype": next(t for t in tok if t in AXES["dtype"]),
    }


def _pair_possible(a, va, b, vb) -> bool:
    # the constraints of the design: a projection only on an LSTM with H > 1; packed input is
    # always batched
    vals = {a: va, b: vb}
    if vals.get("proj") is True and ("mode" in vals and vals["mode"] != "LSTM"
                                     or vals.get("size") == "H1"):
        return False
    if vals.get("packed") and vals.get("unbatched") is True:
        return False
    return True


def test_case_table_covers_all_pairs():
    """Guards edits of PAIRWISE: every feasible pair of axis values (and every mode x dtype x
    value triple) must occur in some case."""
    rows = [_axes_of(s) for s in PAIRWISE]
    seen = {((a, r[a]), (b, r[b])) for r in rows for a, b in itertools.combinations(AXES, 2)}
    missing = [((a, va), (b, vb)) for a, b in itertools.combinations(AXES, 2)
               for va in AXES[a] for vb in AXES[b]
               if _pair_possible(a, va, b, vb) and ((a, va), (b, vb)) not in seen]
    assert not missing, f"pairs not covered: {missing}"
    triples = {(r["mode"], r["dtype"], a, r[a]) for r in rows for a in AXES}
    missing3 = [(m, d, a, v) for m in AXES["mode"] for d in AXES["dtype"] for a in AXES
                if a not in ("mode", "dtype") for v in AXES[a]
                if _pair_possible("mode", m, a, v) and (m, d, a, v) not in triples]
    assert not missing3, f"(mode, dtype, value) triples not covered: {missing3}"


def test_requested_backends_are_available():
    """RNNKERNELS_TEST_BACKENDS narrows the backends; naming one that cannot run here must fail
    loudly rather than silently test less."""
    wanted = requested_test_backends()
    if wanted is None:
        assert "reference" in cpu_backends(), "the reference backend must always run on the CPU"
        return
    missing = [n for n in wanted if n not in cpu_backends()]
    assert not missing, f"RNNKERNELS_TEST_BACKENDS asks for {missing}, not available on the CPU"



# ------------------------------------------------------------------- the large-input projection
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("spec", ["LSTM L2 bidir h0 S fp32", "GRU L2 bidir h0 S fp32",
                                  "RNN_TANH L2 bidir nobias h0 S fp32"])
def test_parity_through_the_onednn_projection(spec, backend, monkeypatch):
    """Inputs of >= 2^16 elements take the oneDNN GEMM for x·W_ihᵀ + b (projection.py), with its
    own backward; train and no_grad must still match torch.nn (all grads, bias included)."""
    if backend not in cpu_backends():
        pytest.skip(f"backend {backend!r} not available")
    from rnnkernels import projection
    import dataclasses
    case = parse_spec(spec)
    case = dataclasses.replace(case, T=40, B=33, I=50, H=25)   # layer 2 reads 2H = 50
    assert case.T * case.B * case.I >= 1 << 16
    op = projection._onednn_linear()
    if not op:
        pytest.skip("oneDNN's linear is not available in this torch")
    calls = []
    monkeypatch.setattr(projection, "_ONEDNN_LINEAR", lambda *a: calls.append(1) or op(*a))
    ref_mod, our_mod = make_twins(case.mode, backend, case.dtype, seed=5, **case.ctor())
    inputs = make_inputs(case, seed=9)
    compare_runs(run_layer(our_mod, case, inputs), run_layer(ref_mod, case, inputs), "train")
    with torch.no_grad():
        compare_runs(run_layer(our_mod, case, inputs, grad=False),
                     run_layer(ref_mod, case, inputs, grad=False), "no_grad")
    assert len(calls) == 2 * 2 * 2, "the oneDNN projection was not taken (2 layers x 2 dirs x 2)"
