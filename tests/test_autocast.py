"""rnnkernels modules under autocast: CPU bf16 and CUDA fp16/bf16 against torch.nn under the
same autocast, and a float64 model that autocast leaves alone.

The oracle is always torch.nn: each test builds a torch.nn module (or model) and its rnnkernels
twin with identical weights (``load_state_dict`` of torch's state dict, which is itself part of
the drop-in promise) and compares outputs, final states and gradients at fp32 1e-5 / fp64 1e-10
relative (``tests.helpers.assert_close``), or by relative RMS for half precision.
"""
from __future__ import annotations

import pytest
import torch

from tests.ecosystem_helpers import (CUDA, F32, F64, assert_all_close, flat, input_for, rel_rms,
                                     twins, weighted_sum)
from tests.helpers import backend_params


# ------------------------------------------------------------------------------------ autocast
AMP_NAMES = ["LSTM", "LSTM_proj", "GRU", "RNN_tanh", "RNN_relu", "LSTMCell", "GRUCell",
             "RNNCell_relu"]


def _amp_runs(name: str, backend: str, device: str, dtype: torch.dtype):
    """torch.nn's and our outputs and parameter grads (fp32 parameters) under autocast.

    On the CPU, torch.nn runs with oneDNN disabled: its oneDNN LSTM is a CPU-dependent path
    (on this machine it raises for bf16), while the ATen path is what every CPU can run and is
    what torch uses for proj_size anyway."""
    ref, ours = twins(name, backend)
    ref.to(device)
    ours.to(device)
    x = input_for(name).to(device)
    results = []
    for m in (ref, ours):
        with torch.backends.mkldnn.flags(enabled=False), torch.autocast(device, dtype=dtype):
            outs = flat(m(x))
            loss = weighted_sum([o.float() for o in outs])
        grads = dict(zip([n for n, _ in m.named_parameters()],
                         torch.autograd.grad(loss, list(m.parameters()))))
        results.append((outs, grads))
    return results


def _amp_params(device_dtypes):
    out = []
    for name in AMP_NAMES:
        for b in backend_params(torch.bfloat16):
            for dev, dt in device_dtypes:
                out.append(pytest.param(name, b.values[0], dev, dt,
                                        id=f"{name}-{dev}-{str(dt)[6:]}-{b.values[0]}"))
    return out


@pytest.mark.parametrize("name,backend,device,dtype", _amp_params([("cpu", torch.bfloat16)]))
def test_autocast_cpu_values_match_torch(name, backend, device, dtype):
    (r_out, r_grad), (o_out, o_grad) = _amp_runs(name, backend, device, dtype)
    assert len(o_out) == len(r_out)
    for k, (a, e) in enumerate(zip(o_out, r_out)):
        assert torch.isfinite(a).all(), f"output {k} not finite"
        err = rel_rms(a, e)
        assert err < 2e-2, f"output {k}: rel RMS {err:.2e} vs torch.nn under autocast"
    for pname, e in r_grad.items():
        a = o_grad[pname]
        assert a.dtype == e.dtype == F32, f"grad of {pname}: {a.dtype}, torch {e.dtype}"
        err = rel_rms(a, e)
        assert err < 3e-2, f"grad of {pname}: rel RMS {err:.2e} vs torch.nn under autocast"


@pytest.mark.parametrize("name,backend,device,dtype", _amp_params([("cpu", torch.bfloat16)]))
def test_autocast_cpu_dtypes_match_torch(name, backend, device, dtype):
    """Output and state dtypes equal torch.nn's under CPU autocast. There, torch runs each GEMM
    in bf16 and the elementwise cell update in the promoted dtype of the gates and the incoming
    state: GRU and LSTM states (and LSTM outputs without projection) stay fp32, while the
    Elman RNN (tanh of a GEMM result) and the LSTM projection are bf16."""
    (r_out, _), (o_out, _) = _amp_runs(name, backend, device, dtype)
    got = [t.dtype for t in o_out]
    want = [t.dtype for t in r_out]
    assert got == want, f"dtypes {got} != torch.nn's {want} under CPU autocast"


@pytest.mark.parametrize("name", ["LSTM_proj", "GRU", "RNN_relu", "LSTMCell"])
def test_autocast_leaves_float64_alone(name):
    """Autocast casts only fp32 tensors; a float64 model under autocast runs in float64, as
    torch.nn's does (exact to fp64 tolerance, not bf16-rounded)."""
    ref, ours = twins(name, "reference", F64)
    x = input_for(name, F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = flat(ours(x)), flat(ref(x))
    assert all(t.dtype == F64 for t in expected), "torch.nn changed: fp64 under autocast"
    assert_all_close(got, expected, "fp64 model under autocast")


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("name,backend,device,dtype",
                         [pytest.param(n, "auto", "cuda", dt, id=f"{n}-cuda-{str(dt)[6:]}")
                          for n in AMP_NAMES for dt in (torch.float16, torch.bfloat16)])
def test_autocast_cuda_matches_torch(name, backend, device, dtype):
    (r_out, r_grad), (o_out, o_grad) = _amp_runs(name, backend, device, dtype)
    assert [t.dtype for t in o_out] == [t.dtype for t in r_out]
    for k, (a, e) in enumerate(zip(o_out, r_out)):
        assert rel_rms(a, e) < 2e-2, f"output {k}"
    for pname, e in r_grad.items():
        assert rel_rms(o_grad[pname], e) < 3e-2, f"grad of {pname}"
