"""The compiled ``cpu`` backend (rnnkernels._C, ``backends/compiled.py``) against the reference.

Function level, docs/BACKENDS.md: the six functions for every cell (LSTM, LSTM with projection,
GRU with and without b_hn, RNN tanh/relu), forward + backward, unsorted lengths (with L=1 and
L=T), reverse, odd sizes (H=1, H=33, T=1, T=63), in float32 (normwise ≤ 1e-5 of the reference),
float64 (≤ 1e-10) and bfloat16/float16 (relative RMS against the fp32-accumulating reference).
Both CPU paths (per-step GEMM, fused small-batch kernel) and both instruction-set builds are
forced in turn. The extension's ``poison`` option fills every output and scratch buffer with NaN
before the kernels run, so an element a kernel does not write fails the comparison; padded
positions of ``out`` / ``dxp`` must be exact zeros.

The cases and checks are in tests/backend_cases.py (shared with tests/test_cuda_backend.py).
"""
from __future__ import annotations

import pytest
import torch

from rnnkernels.backends import compiled as ext
from rnnkernels.backends import reference as ref
from tests.backend_cases import CELLS, SHAPES, Case, check_case, error

pytestmark = pytest.mark.skipif(not ext.AVAILABLE, reason=f"rnnkernels._C not built: {ext.ERROR}")

# ------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def _poison():
    ext.set_option("poison", "1")
    yield
    ext.set_option("poison", "0")


def _ids(params):
    return [p[0] for p in params]


CONFIGS = [  # id, dtype, cpu_path, isa
    ("fp32-gemm", torch.float32, "gemm", "auto"),
    ("fp32-fused", torch.float32, "fused", "auto"),
    ("fp64", torch.float64, "auto", "auto"),
    ("bf16", torch.bfloat16, "auto", "auto"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_cpu_vs_reference(cell, shape, config):
    _, T, B, H, lengths, reverse = shape
    _, dtype, path, isa = config
    if path == "fused" and cell == "LSTM-proj":
        pytest.skip("the fused CPU path has no projection (auto routes it to the GEMM path)")
    case = Case(cell, T, B, H, lengths, reverse, dtype, "cpu")
    with ext.option("cpu_path", path), ext.option("cpu_isa", isa):
        check_case(case, ext.cpu, dtype)


GENERIC = [
    ("T63-B3-H33-len-rev", 63, 3, 33, "unsorted", True),
    ("T7-B20-H24-len-rev", 7, 20, 24, "unsorted", True),
]


def _isa_available(isa: str) -> bool:
    try:
        with ext.option("cpu_isa", isa):
            return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("path", ["gemm", "fused"])
@pytest.mark.parametrize("shape", GENERIC, ids=_ids(GENERIC))
@pytest.mark.parametrize("cell", list(CELLS))
def test_cpu_each_isa(cell, shape, path, isa):
    """Every instruction-set build this CPU can run gives the same results: the generic one (a
    CPU without AVX2/FMA), AVX2 and AVX-512 (16-lane vectors, other register tiles), whichever
    `auto` picks here (the other tests run that one)."""
    _, T, B, H, lengths, reverse = shape
    if path == "fused" and cell == "LSTM-proj":
        pytest.skip("no fused projection")
    if not _isa_available(isa):
        pytest.skip(f"this CPU cannot run the {isa} build")
    case = Case(cell, T, B, H, lengths, reverse, torch.float32, "cpu", seed=1)
    with ext.option("cpu_path", path), ext.option("cpu_isa", isa):
        assert ext.get_option("cpu_isa") == isa
        check_case(case, ext.cpu, torch.float32)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN-tanh"])
def test_cpu_float16(cell):
    case = Case(cell, 17, 3, 12, "unsorted", True, torch.float16, "cpu", seed=2)
    check_case(case, ext.cpu, torch.float16)


@pytest.mark.parametrize("path", ["gemm", "fused"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN-relu"])
def test_inference_has_no_workspaces(cell, path):
    case = Case(cell, 6, 3, 10, "unsorted", False, torch.float32, "cpu")
    with ext.option("cpu_path", path):
        full = case.forward(ext.cpu, save=True)
        inf = case.forward(ext.cpu, save=False)
    for a, b in zip(full[:2], inf[:2]):
        assert torch.equal(a, b)
    for ws in inf[3 if case.kind == "lstm" else 2:]:
        assert ws.numel() == 0
    if case.kind != "rnn":
        with pytest.raises(RuntimeError, match="save=False"):
            case.backward(ext.cpu, inf)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_paths_and_thread_counts_agree(cell):
    """GEMM path, fused path, 1 and 2 threads: same numbers up to fp32 rounding; the fused path
    is bitwise independent of the thread count (a thread's rows are summed in one order)."""
    case = Case(cell, 20, 4, 40, "unsorted", True, torch.float32, "cpu", seed=3)
    threads = torch.get_num_threads()
    try:
        results = {}
        for path in ("gemm", "fused"):
            for nt in (1, 2):
                torch.set_num_threads(nt)
                with ext.option("cpu_path", path):
                    fwd = case.forward(ext.cpu)
                    results[path, nt] = (fwd[0], case.backward(ext.cpu, fwd)[0])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results["fused", 1][0], results["fused", 2][0])
    assert torch.equal(results["fused", 1][1], results["fused", 2][1])
    for key, (out, dxp) in results.items():
        assert error(out, results["fused", 1][0]) < 1e-5, key
        assert error(dxp, results["fused", 1][1]) < 1e-5, key


def test_errors_name_the_backend_and_the_argument():
    case = Case("LSTM", 4, 2, 8, "all", False, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=r"cpu backend: lstm_forward: h0 has shape"):
        ext.cpu.lstm_forward(case.xp, case.h0[:1], case.c0, case.w_hh, None, None, False, True)
    with pytest.raises(RuntimeError, match=r"c0 has dtype"):
        ext.cpu.lstm_forward(case.xp, case.h0, case.c0.double(), case.w_hh, None, None, False, True)
    with pytest.raises(RuntimeError, match=r"lengths\[1\] = 5 is outside \[1, T = 4\]"):
        ext.cpu.lstm_forward(case.xp, case.h0, case.c0, case.w_hh, None, torch.tensor([1, 5]),
                             False, True)
    with pytest.raises(RuntimeError, match=r"lengths must be int64"):
        ext.cpu.lstm_forward(case.xp, case.h0, case.c0, case.w_hh, None,
                             torch.tensor([1, 2], dtype=torch.int32), False, True)
    with pytest.raises(RuntimeError, match=r"4\*hidden_size"):
        ext.cpu.lstm_forward(case.xp[..., :-1], case.h0, case.c0, case.w_hh, None, None, False,
                             True)
    with pytest.raises(RuntimeError, match=r"unsupported dtype"):
        ext.cpu.rnn_forward(case.xp.int(), case.h0.int(), case.w_hh.int(), None, False, False,
                            True)
    with pytest.raises(RuntimeError, match=r"cpu_path must be"):
        ext.set_option("cpu_path", "fast")


def test_supports():
    assert ext.cpu.NAME == "cpu" and ext.cuda.NAME == "cuda"
    assert ext.cpu.supports("cpu", torch.float32) is None
    assert ext.cpu.supports("cpu", torch.bfloat16) is None
    assert "dtype" in ext.cpu.supports("cpu", torch.int64)
    assert "cpu" in ext.cpu.supports("cuda", torch.float32)
    assert ext.cuda.supports("cpu", torch.float32) is not None
    assert ext.cuda.supports("cuda", torch.float64) is not None  # no fp64 CUDA kernels


OPS = {
    "lstm_forward": lambda c: (c.xp, c.h0, c.c0, c.w_hh, c.w_hr, c.lengths, c.reverse, True),
    "gru_forward": lambda c: (c.xp, c.h0, c.w_hh, c.b_hn, c.lengths, c.reverse, True),
    "rnn_forward": lambda c: (c.xp, c.h0, c.w_hh, c.lengths, c.reverse, c.relu, True),
}


@pytest.mark.parametrize("op,cell", [("lstm_forward", "LSTM-proj"), ("gru_forward", "GRU"),
                                     ("rnn_forward", "RNN-relu")])
def test_opcheck(op, cell):
    """Schema and fake (meta) kernels of the rnnkernels_C ops, forward and backward."""
    case = Case(cell, 5, 3, 6, "unsorted", True, torch.float32, "cpu")
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(getattr(torch.ops.rnnkernels_C, op).default, OPS[op](case),
                          test_utils=utils)
    fwd = case.forward(ext.cpu)
    bwd_op = op.replace("forward", "backward")
    if case.kind == "lstm":
        args = (case.gout, case.ghn, case.gcn, case.h0, case.c0, case.w_hh, case.w_hr,
                case.lengths, case.reverse, fwd[0], fwd[3], fwd[4])
    elif case.kind == "gru":
        args = (case.gout, case.ghn, case.h0, case.w_hh, case.b_hn, case.lengths, case.reverse,
                fwd[0], fwd[2], fwd[3])
    else:
        args = (case.gout, case.ghn, case.h0, case.w_hh, case.lengths, case.reverse, case.relu,
                fwd[0])
    torch.library.opcheck(getattr(torch.ops.rnnkernels_C, bwd_op).default, args,
                          test_utils=utils)


def test_package_imports_without_the_extension():
    """A missing/broken rnnkernels._C leaves the package importable; both backends say why."""
    import os
    import subprocess
    import sys
    code = ("import sys, torch; sys.modules['rnnkernels._C'] = None\n"
            "import rnnkernels\n"
            "from rnnkernels.backends import compiled as ext\n"
            "assert not ext.AVAILABLE and 'rnnkernels._C' in ext.ERROR, ext.ERROR\n"
            "print(ext.cpu.supports('cpu', torch.float32))\n"
            "print(ext.cuda.supports('cuda', torch.float32))\n"
            "try:\n"
            "    ext.cpu.rnn_forward(None, None, None, None, False, False, True)\n"
            "except RuntimeError as e:\n"
            "    print('raised', e)\n")
    # RNNKERNELS_NO_JIT: with _C blocked the package would otherwise build its own on first use.
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RNNKERNELS_NO_JIT": "1"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "not available" in lines[0] and "not available" in lines[1]
    assert lines[2].startswith("raised") and "not available" in lines[2]


@pytest.mark.skipif(not ext.AVAILABLE, reason="rnnkernels._C is not built")
def test_cpu_pool_reuses_blocks_without_aliasing():
    """Outputs of >= 1 MiB come from the extension's block pool (python/cpu_pool.cpp): live
    outputs never share memory, a freed block is reused for the next call of that size, results
    stay right, and cpu_pool_mb=0 turns pooling off and frees the cached blocks."""
    old = ext.get_option("cpu_pool_mb")
    try:
        ext.set_option("cpu_pool_mb", "64")
        T, B, H = 64, 64, 64                      # out: exactly 1 MiB of float32
        g = torch.Generator().manual_seed(3)
        w = torch.randn(H, H, generator=g) * H ** -0.5
        h0 = torch.zeros(B, H)
        xs = [torch.randn(T, B, H, generator=g) for _ in range(3)]
        want = [ref.rnn_forward(x, h0, w, None, False, False, False)[0] for x in xs]
        a = ext.cpu.rnn_forward(xs[0], h0, w, None, False, False, False)[0]
        b = ext.cpu.rnn_forward(xs[1], h0, w, None, False, False, False)[0]
        assert a.data_ptr() != b.data_ptr()
        torch.testing.assert_close(a, want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, want[1], rtol=1e-5, atol=1e-6)
        ptr_a = a.data_ptr()
        del a
        assert int(ext.get_option("cpu_pool_cached_bytes")) >= T * B * H * 4
        c = ext.cpu.rnn_forward(xs[2], h0, w, None, False, False, False)[0]
        assert c.data_ptr() == ptr_a, "the freed block was not reused"
        torch.testing.assert_close(c, want[2], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, want[1], rtol=1e-5, atol=1e-6)   # untouched by c
        c.add_(1.0)                               # an ordinary, writable CPU tensor
        del b, c
        ext.set_option("cpu_pool_mb", "0")
        assert ext.get_option("cpu_pool_cached_bytes") == "0"
        d = ext.cpu.rnn_forward(xs[0], h0, w, None, False, False, False)[0]
        torch.testing.assert_close(d, want[0], rtol=1e-5, atol=1e-6)
        with pytest.raises(RuntimeError, match="cpu_pool_mb"):
            ext.set_option("cpu_pool_mb", "-1")
    finally:
        ext.set_option("cpu_pool_mb", old)
