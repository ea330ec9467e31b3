"""The compiled ``cuda`` backend against the reference backend on the GPU (skipped without one).

Same cases as tests/test_cpu_backend.py (tests/backend_cases.py): every cell, forward +
backward, unsorted lengths, reverse, odd sizes, outputs NaN-poisoned; float32 (TF32 off, see
conftest.py) normwise ≤ 1e-5 of the reference, float16/bfloat16 by relative RMS against the
reference (which accumulates in fp32 like the kernels). Both CUDA paths are forced in turn: the
per-step cuBLAS GEMM + fused pointwise kernel, and the persistent kernel with W_hh in shared
memory; plus a size where the persistent kernel does not fit (auto must take the step path), a
side stream, and the errors.
"""
from __future__ import annotations

import pytest
import torch

from rnnkernels.backends import compiled as ext

from tests.backend_cases import CELLS, SHAPES, Case, check_case

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and ext.AVAILABLE and ext.has_cuda()),
    reason="needs a CUDA device and rnnkernels._C built with CUDA")


@pytest.fixture(autouse=True, scope="module")
def _poison():
    ext.set_option("poison", "1")
    yield
    ext.set_option("poison", "0")


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("path", ["step", "persistent"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("cell", list(CELLS))
def test_cuda_vs_reference(cell, shape, path, dtype):
    _, T, B, H, lengths, reverse = shape
    if path == "persistent" and cell == "LSTM-proj":
        pytest.skip("the persistent kernel has no projection (auto routes it to the step path)")
    case = Case(cell, T, B, H, lengths, reverse, DTYPES[dtype], "cuda")
    with ext.option("cuda_path", path):
        check_case(case, ext.cuda, DTYPES[dtype])
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN-tanh"])
def test_cuda_large_hidden_auto(cell, dtype):
    """H=256: W_hh exceeds a block's shared memory (auto → step path) except for the bf16 RNN."""
    case = Case(cell, 12, 6, 256, "unsorted", True, DTYPES[dtype], "cuda", seed=4)
    check_case(case, ext.cuda, DTYPES[dtype])


def test_cuda_side_stream():
    case = Case("GRU", 10, 3, 16, "unsorted", False, torch.float32, "cuda", seed=5)
    want = case.forward(ext.cuda)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    for path in ("step", "persistent"):
        with torch.cuda.stream(stream), ext.option("cuda_path", path):
            got = case.forward(ext.cuda)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        assert torch.allclose(got[0], want[0], rtol=1e-5, atol=1e-6)


def test_cuda_errors():
    case = Case("LSTM-proj", 4, 2, 8, "all", False, torch.float32, "cuda")
    with ext.option("cuda_path", "persistent"):
        with pytest.raises(RuntimeError, match="persistent.*projection"):
            case.forward(ext.cuda)
    d = Case("LSTM", 4, 2, 8, "all", False, torch.float64, "cuda")
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        d.forward(ext.cuda)
    c = Case("LSTM", 4, 2, 8, "all", False, torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="runs cuda tensors only"):
        ext.cuda.lstm_forward(c.xp.cpu(), c.h0.cpu(), c.c0.cpu(), c.w_hh.cpu(), None, None, False,
                              True)
    with pytest.raises(RuntimeError, match="h0 is on cpu"):
        ext.cuda.lstm_forward(c.xp, c.h0.cpu(), c.c0, c.w_hh, None, None, False, True)
    assert ext.cuda.supports("cuda", torch.float32) is None
    assert ext.cuda.supports("cuda", torch.float64) is not None
