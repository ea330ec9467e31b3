"""The drop-in modules on CUDA tensors against torch.nn on CUDA (cuDNN), every GPU backend.

float32 (TF32 off, see conftest.py): every output, final state and gradient (input, h0, c0, every
parameter) within 1e-5 normwise of cuDNN's, on odd sizes, packed (unsorted) + bidirectional +
stacked + projection cases. float16/bfloat16: cuDNN is not an oracle there (it rounds too), so
both are measured against a float64 torch.nn run on the CPU with the same (rounded) weights and
inputs, and ours must be no worse than ``HALF_SLACK`` times cuDNN's error (or under a floor).
Skipped cleanly without a CUDA device.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import rnnkernels
from tests.helpers import copy_parameters, is_lstm, make_twins, our_class, torch_class, MODES
from tests.layer_cases import LayerInputs, make_inputs, parse_spec, run_cell, run_layer, randn

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = "cuda"
GPU_BACKENDS = ("triton", "cuda", "auto")

LAYER_SPECS = [
    "LSTM L1 S fp32",
    "LSTM L2 bidir bf unsorted h0 T7 fp32",
    "LSTM L2 bidir proj unsorted h0 H33 fp32",
    "LSTM L3 bf nobias proj h0 H33 fp32",
    "GRU L2 bidir bf unsorted h0 T7 fp32",
    "GRU L1 bidir nobias sorted H1 fp32",
    "GRU L2 bf unbatched h0 H33 fp32",
    "RNN_TANH L2 bidir bf unsorted h0 T7 fp32",
    "RNN_TANH L1 h0 B1 fp32",
    "RNN_RELU L3 bidir bf unsorted h0 H33 fp32",
    "RNN_RELU L2 nobias H1 fp32",
]

# rel-RMS error of ours vs the fp64 oracle may be at most this many times cuDNN's own, or under
# the floor (half precision rounding of a single value is ~1e-3 fp16, ~8e-3 bf16).
HALF_SLACK = 3.0
HALF_FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _skip_unavailable(backend: str, dtype: torch.dtype) -> None:
    if backend != "auto" and backend not in rnnkernels.available_backends(DEVICE, dtype):
        pytest.skip(f"backend {backend!r} cannot run {DEVICE}/{dtype} here")


def _to(inputs: LayerInputs, device, dtype=None) -> LayerInputs:
    def mv(t):
        return None if t is None else t.to(device=device, dtype=dtype or t.dtype)
    return LayerInputs(mv(inputs.x), mv(inputs.h0), mv(inputs.c0), inputs.lengths)


def _flat(run) -> dict[str, torch.Tensor]:
    """Every tensor a run produced, by name (packed output by its data)."""
    out = {}
    if run.out is not None:
        out["output"] = run.out.data if isinstance(run.out, PackedSequence) else run.out
    out.update(run.states)
    out.update({f"grad {k}": g for k, g in run.grads.items() if g is not None})
    return out


def _rel(a: torch.Tensor, e: torch.Tensor) -> float:
    a, e = a.detach().double().cpu(), e.detach().double().cpu()
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.isfinite(a).all(), "non-finite values"
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def _compare_fp32(ours, ref, exact=None) -> None:
    """Within 1e-5 normwise of cuDNN; where a gradient sums many cancelling terms (tiny B and T)
    two fp32 summation orders can differ by a little more, and then ``exact()`` (a float64 run)
    decides: ours must be within 2x cuDNN's own error of it (or within 1e-5)."""
    if isinstance(ref.out, PackedSequence):
        assert isinstance(ours.out, PackedSequence)
        assert torch.equal(ours.out.batch_sizes, ref.out.batch_sizes)
        if ref.out.sorted_indices is not None:
            assert torch.equal(ours.out.sorted_indices, ref.out.sorted_indices)
    a, e = _flat(ours), _flat(ref)
    assert a.keys() == e.keys(), f"{sorted(a)} != cuDNN's {sorted(e)}"
    oracle = None
    for name in e:
        assert a[name].device == e[name].device and a[name].dtype == e[name].dtype, name
        err = _rel(a[name], e[name])
        if err <= 1e-5:
            continue
        assert exact is not None, f"{name}: normwise error {err:.2e} vs cuDNN (bound 1e-5)"
        oracle = oracle if oracle is not None else _flat(exact())
        mine, cudnn = _rel(a[name], oracle[name]), _rel(e[name], oracle[name])
        assert mine <= max(2 * cudnn, 1e-5), (
            f"{name}: normwise error {err:.2e} vs cuDNN; vs float64 {mine:.2e} (cuDNN {cudnn:.2e})")


def _oracle(ref_mod, case, inputs, grad=True):
    """torch.nn in float64 on the CPU with ref_mod's weights, on the same inputs."""
    oracle = torch_class(case.mode)(**dict(MODES[case.mode][1], **case.ctor())).double()
    copy_parameters(ref_mod, oracle)
    return run_layer(oracle, dataclasses.replace(case, dtype=torch.float64),
                     _to(inputs, "cpu", torch.float64), grad=grad)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("spec", LAYER_SPECS)
def test_layer_matches_cudnn_fp32(spec, backend):
    _skip_unavailable(backend, torch.float32)
    case = parse_spec(spec)
    ref_mod, our_mod = make_twins(case.mode, backend, torch.float32, seed=7, **case.ctor())
    ref_mod, our_mod = ref_mod.to(DEVICE), our_mod.to(DEVICE)
    inputs = _to(make_inputs(case, seed=11), DEVICE)
    _compare_fp32(run_layer(our_mod, case, inputs), run_layer(ref_mod, case, inputs),
                  lambda: _oracle(ref_mod, case, inputs))
    with torch.no_grad():
        _compare_fp32(run_layer(our_mod, case, inputs, grad=False),
                      run_layer(ref_mod, case, inputs, grad=False),
                      lambda: _oracle(ref_mod, case, inputs, grad=False))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell", "RNNCell_TANH", "RNNCell_RELU"])
def test_cell_matches_cudnn_fp32(mode, backend):
    _skip_unavailable(backend, torch.float32)
    ref_mod, our_mod = make_twins(mode, backend, torch.float32, seed=3, input_size=5,
                                  hidden_size=33)
    ref_mod, our_mod = ref_mod.to(DEVICE), our_mod.to(DEVICE)
    x = randn((4, 5), torch.float32, 1).to(DEVICE)
    h0 = randn((4, 33), torch.float32, 2).to(DEVICE)
    c0 = randn((4, 33), torch.float32, 3).to(DEVICE) if is_lstm(mode) else None
    _compare_fp32(run_cell(our_mod, mode, x, h0, c0), run_cell(ref_mod, mode, x, h0, c0))


HALF_SPECS = ["LSTM L2 bidir unsorted h0 H33 fp32", "LSTM L1 proj h0 T7 fp32",
              "GRU L2 bidir bf unsorted h0 T7 fp32", "RNN_TANH L2 h0 H33 fp32",
              "RNN_RELU L1 bidir sorted h0 H33 fp32"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("spec", HALF_SPECS)
def test_layer_half_no_worse_than_cudnn(spec, backend, dtype):
    _skip_unavailable(backend, dtype)
    case = parse_spec(spec)
    case = dataclasses.replace(case, dtype=dtype)
    ref_mod, our_mod = make_twins(case.mode, backend, dtype, seed=7, **case.ctor())
    ref_mod, our_mod = ref_mod.to(DEVICE), our_mod.to(DEVICE)
    inputs = _to(make_inputs(case, seed=11), DEVICE)
    # the oracle: float64 on the CPU, from the very same rounded weights and inputs
    exact = _flat(_oracle(ref_mod, case, inputs))
    ours = _flat(run_layer(our_mod, case, inputs))
    theirs = _flat(run_layer(ref_mod, case, inputs))
    assert ours.keys() == theirs.keys() == exact.keys()
    failures = []
    for name in exact:
        assert ours[name].dtype == dtype and ours[name].device.type == DEVICE, name
        mine, cudnn = _rel(ours[name], exact[name]), _rel(theirs[name], exact[name])
        if mine > max(HALF_SLACK * cudnn, HALF_FLOOR[dtype]):
            failures.append(f"{name}: rel RMS {mine:.2e}, cuDNN {cudnn:.2e}")
    assert not failures, "; ".join(failures)


def test_our_class_on_cuda_is_a_drop_in():
    """Module conversion keeps the very parameters and moves with .to(DEVICE) like torch.nn's."""
    mod = our_class("GRU")(input_size=3, hidden_size=4).to(DEVICE)
    assert all(p.device.type == DEVICE for p in mod.parameters())
    out, h = mod(torch.randn(2, 5, 3, device=DEVICE))
    assert out.device.type == DEVICE and h.shape == (1, 5, 4)
