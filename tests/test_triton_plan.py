"""The Triton backend's support reasons, strategy and tuning knobs, plans, launcher and
interpreter switches; the CUDA-only checks (tensor-core dots, the grid barrier, CUDA-graph
replay, speed); empty batches; and the sm_90 compile check without a GPU. Results are checked
against the reference backend with the cases of ``tests/triton_cases.py``.
"""
import os

import pytest
import torch

from tests.triton_cases import _DT, _REASON, DEVICE, Case, _check, _inputs, cuda_only, ref, tb
from tests.triton_cases import _tf32_off_and_poison  # noqa: F401 - autouse fixture, used here

pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"triton backend: {_REASON}")


# ----------------------------------------------------------------------------- supports / knobs
def test_supports_reasons():
    assert tb.NAME == "triton"
    assert tb.supports(DEVICE, torch.float16) is None
    assert tb.supports(DEVICE, torch.bfloat16) is None
    assert "float64" in tb.supports(DEVICE, torch.float64)
    assert isinstance(tb.supports("mps", torch.float32), str)
    with pytest.raises(RuntimeError, match="triton"):
        z = torch.zeros(2, 1, 3, dtype=torch.float64, device=DEVICE)
        tb.rnn_forward(z, z[0], torch.zeros(3, 3, dtype=torch.float64, device=DEVICE), None,
                       False, False)


def test_strategy_and_tuning_validation(monkeypatch):
    with pytest.raises(ValueError, match="strategy"):
        with tb.strategy("fastest"):
            pass
    with pytest.raises(ValueError, match="power of two"):
        with tb.tuning(block_h=24):
            pass
    from rnnkernels.backends.triton import plan
    monkeypatch.setenv("RNNKERNELS_TRITON_STRATEGY", "step")
    dev = torch.device(DEVICE)
    assert plan.make_plan(dev, torch.float32, 3, 33, 33, False).strategy == "step"
    with tb.strategy("persistent"):  # the context manager wins over the environment
        assert plan.make_plan(dev, torch.float32, 3, 33, 33, False).strategy == "persistent"
    monkeypatch.setenv("RNNKERNELS_TRITON_STRATEGY", "auto")
    # auto (GPU tiles): one program up to 4 tile products per step; on a GPU the grid variant
    # up to H, P <= 256; under the interpreter one program up to 16 tile products, else step
    auto = [plan.make_plan(dev, dt, 8, h, p, proj).strategy for dt, h, p, proj in [
        (torch.float16, 128, 128, False), (torch.float16, 129, 128, False),
        (torch.float32, 64, 64, False), (torch.float32, 64, 80, False),
        (torch.bfloat16, 64, 64, True), (torch.bfloat16, 128, 96, True)]]
    assert auto == (["persistent", "step"] * 3 if plan.INTERPRET else ["persistent-grid"] * 6)
    assert plan.make_plan(dev, torch.float32, 8, 32, 32, False).strategy == "persistent"
    assert plan.make_plan(dev, torch.float32, 8, 512, 512, False).strategy == "step"
    assert plan.make_plan(dev, torch.float32, 0, 64, 64, False).strategy in (
        "persistent", "persistent-grid")                  # B = 0 plans too (nothing launches)


def test_auto_plan_on_a_gpu(monkeypatch):
    """auto's GPU rule, planned without a GPU (132 SMs pretended): grid variant while every
    program gets at most 2 hidden tiles, one program for tiny H, step beyond H = 256."""
    from rnnkernels.backends.triton import plan
    monkeypatch.setattr(plan, "INTERPRET", False)
    monkeypatch.setattr(plan, "_num_sms", lambda device: 132)
    monkeypatch.delenv("RNNKERNELS_TRITON_STRATEGY", raising=False)
    cuda = torch.device("cuda")

    def pick(B, H, dt=torch.float32):
        return plan.make_plan(cuda, dt, B, H, H, False)

    assert pick(1, 32).strategy == "persistent"
    for B, H in [(1, 64), (64, 256), (0, 128), (256, 128)]:
        pl = pick(B, H)
        assert pl.strategy == "persistent-grid" and pl.sync == 2, (B, H)
        assert max(1, plan.triton_cdiv(B, pl.BB)) * pl.nprog_h <= 132
    assert pick(16, 512).strategy == "step"
    assert pick(1024, 128).strategy == "step"          # 64 batch tiles x 4 hidden tiles each
    assert pick(4096, 256).strategy == "step"          # 256 batch tiles: more than the SMs
    assert pick(64, 256, torch.float16).strategy == "persistent-grid"
    assert pick(64, 512, torch.float16).strategy == "step"


def test_resident_plan_and_layout(monkeypatch):
    """``resident`` planned for an H200 without one (132 SMs pretended): exact rows below 16
    (a GEMV per row), groups of 16 above; units a program doubled until the groups fit the SMs;
    a clear error past them; auto's strategy for what it does not run; W_hh's [unit][gate]
    layout with zero padding gates and units; the projection's plan and W_hr layouts."""
    from rnnkernels.backends.triton import plan
    from rnnkernels.backends.triton import resident_launch as RL
    from rnnkernels.cells import CELLS
    monkeypatch.setattr(plan, "_num_sms", lambda device: 132)
    gpu = torch.device("cuda")
    shape = {(cell, B, H): (p.BB, p.BH, p.nprog_h, p.BK, p.sync, p.num_warps)
             for cell, B, H in [("lstm", 1, 512), ("lstm", 64, 512), ("lstm", 16, 1024),
                                ("rnn", 16, 512), ("gru", 3, 33)]
             for p in [RL.make_plan(CELLS[cell], gpu, torch.float32, B, H, {})]}
    sync = 0 if plan.INTERPRET else 2
    # (BB, U, programs, KC, sync, warps): KC = KP = the whole padded K axis when W_own and
    # one operand fit the registers (loaded once), else the columns streamed at a time
    assert shape == {("lstm", 1, 512): (1, 4, 128, 512, sync, 4),
                     ("lstm", 64, 512): (16, 16, 32, 64, sync, 8),
                     ("lstm", 16, 1024): (16, 8, 128, 128, sync, 8),
                     ("rnn", 16, 512): (16, 16, 32, 128, sync, 8),
                     ("gru", 3, 33): (4, 4, 9, 64, sync, 4)}
    # two pipeline stages when streamed (the next chunk's loads during the current product)
    assert [RL.make_plan(CELLS["lstm"], gpu, torch.float32, B, 512, {}).num_stages
            for B in (1, 16)] == [1, 2]
    # a streamed fp32 backward in tl.dot form reads 32 columns a step (aot: spills at 128)
    p32, p16 = (RL.make_plan(CELLS["lstm"], gpu, dt, 16, 512, {})
                for dt in (torch.float32, torch.float16))
    assert (RL.chunk(p32, 512, True), RL.chunk(p32, 512, False), RL.chunk(p16, 512, True)) == \
        (32, 128, 128)
    with pytest.raises(RuntimeError, match="132 SMs"):
        RL.make_plan(CELLS["lstm"], gpu, torch.float32, 16 * 133, 64, {})
    dev = torch.device(DEVICE)
    with tb.strategy("resident"):
        auto = plan._auto_strategy(dev, torch.float32, 3, 33, 17, True)
        assert plan.make_plan(dev, torch.float32, 3, 33, 17, True).strategy == auto
        assert plan.make_plan(dev, torch.float32, 3, 33, 33, False,
                              cell=CELLS["gru"]).strategy == "resident"
    # with a projection (resident_proj.py): K = P for W_hh, both phases' blocks in the budget;
    # (BB, U, programs, KC, UP columns of P a program, (KCR, KPR) of the forward's W_hr)
    proj = {B: (p.BB, p.BH, p.nprog_h, p.BK, RL.proj_columns(p, 256), RL.proj_chunks(p, 512, 256))
            for B in (1, 16)
            for p in [RL.make_plan(CELLS["lstm"], gpu, torch.float32, B, 512, {}, P=256)]}
    assert proj == {1: (1, 4, 128, 256, 2, (512, 512)), 16: (16, 4, 128, 64, 16, (64, 512))}
    P, H, U = 6, 5, 4
    w_hr = torch.arange(P * H, dtype=torch.float32).reshape(P, H)
    fwd, bwd = RL.reorder_proj(w_hr, U, 4, False), RL.reorder_proj(w_hr, U, 4, True)
    assert fwd.shape == (2, 4, H) and torch.equal(fwd.reshape(-1, H)[:P], w_hr)
    assert not fwd.reshape(-1, H)[P:].any()
    assert bwd.shape == (2, U * 4, P)
    for c in range(2):
        for u in range(U):
            for g in range(4):
                unit = c * U + u
                want = w_hr[:, unit] if g == 0 and unit < H else torch.zeros(P)
                assert torch.equal(bwd[c, u * 4 + g], want), (c, u, g)
    w = torch.arange(3 * H * H, dtype=torch.float32).reshape(3 * H, H)
    assert RL.make_plan(CELLS["lstm"], gpu, torch.float32, 3, 33, {"block_k": 16}).BK == 16
    r = RL.reorder(w, CELLS["gru"], U)
    assert r.shape == (2, U * 4, H)
    for c in range(2):
        for u in range(U):
            for g in range(4):
                unit = c * U + u
                want = w[g * H + unit] if g < 3 and unit < H else torch.zeros(H)
                assert torch.equal(r[c, u * 4 + g], want), (c, u, g)


def test_resident_launches_a_spill_free_build():
    """On a GPU the launcher compiles the plan's build and, if the driver counts spilled
    registers, the variants most like it in order (other warps, other stages, half and a
    quarter of the chunk), launching the first without a spill; once per kernel and plan.
    A triton without ``warmup`` or spill counts launches the plan's build."""
    from rnnkernels.backends.triton import resident_launch as RL
    compiled = []

    class Build:
        def __init__(self, spills):
            self.n_spills = spills

        def _init_handles(self):
            pass

    class Kernel:
        def warmup(self, *args, grid, **kw):
            compiled.append((kw["KC"], kw.get("KCR"), kw["num_warps"], kw["num_stages"]))
            return Build(0 if (kw["KC"], kw["num_warps"]) == (64, 4) else 48)
    kernel = Kernel()
    consts = {"KC": 128, "KP": 512, "CELL": 0}
    opts = {"num_warps": 8, "num_stages": 2, "launch_cooperative_grid": True}
    c, o = RL.spill_free(kernel, [1, 2], (1, 4), consts, opts)
    assert (c, o) == ({**consts, "KC": 64}, {**opts, "num_warps": 4})
    assert [k[::2] for k in compiled] == [(128, 8), (128, 8), (128, 4), (128, 4), (64, 8),
                                          (64, 8), (64, 4)]
    assert RL.spill_free(kernel, [1, 2], (1, 4), consts, opts) == (c, o) and len(compiled) == 7
    # a projection's W_hr chunk follows KC; a resident block (KC = KP) has one stage
    compiled.clear()
    RL.spill_free(Kernel(), [], (1, 4), {"KC": 128, "KP": 128, "KCR": 256, "KPR": 256},
                  {"num_warps": 8, "num_stages": 1})
    assert compiled[:4] == [(128, 256, 8, 1), (128, 256, 4, 1), (64, 64, 8, 1),
                            (64, 64, 8, 2)]
    assert RL.spill_free(object(), [], (1, 1), consts, opts) == (consts, opts)


def test_auto_takes_resident_where_the_plan_measured_it(monkeypatch):
    """On a GPU ``auto`` runs a scan with ``resident`` where the measured plan names it for the
    call's cell, mode (training or not), dtype, B and H; elsewhere, for a variant, and where
    resident cannot run the shape (more batch groups than SMs), auto's own rules."""
    from rnnkernels.backends import plan as P
    from rnnkernels.backends.triton import plan
    from rnnkernels.cells import CELLS
    monkeypatch.setattr(plan, "_num_sms", lambda device: 132)
    monkeypatch.setattr(P, "table_key", lambda device_type, index=None: "a GPU")
    monkeypatch.delenv("RNNKERNELS_PLAN", raising=False)     # conftest turns the plan off
    point = {"cell": "LSTM", "mode": "fwdbwd", "dtype": "float32", "B": 16, "H": 512, "T": 128,
             "ratio": 2.0, "triton_strategy": "resident"}
    P.set_plan({"schema": 1, "device": "cuda", "threshold": 1.03,
                "tables": {"a GPU": {"points": [point]}}})
    gpu = torch.device("cuda")

    def pick(B=16, training=True, cell="lstm", dtype=torch.float32):
        spec = CELLS[cell] if cell else None
        return plan.make_plan(gpu, dtype, B, 512, 512, False, cell=spec,
                              training=training).strategy
    try:
        assert pick() == "resident"
        assert pick(B=8) == "resident"                      # the nearest point
        assert "resident" not in (pick(training=False), pick(cell="gru"), pick(cell=None),
                                  pick(dtype=torch.float16), pick(B=16 * 133))
    finally:
        P.set_plan(None)


@pytest.mark.parametrize("cell,proj", [("LSTM", 0), ("LSTM", 20), ("GRU", 0), ("RNN_TANH", 0)])
def test_resident_streamed_product(cell, proj):
    """``resident`` with W_own (and W_hr) streamed 16 columns at a time (what large H takes on
    a GPU): the per-row GEMV (B = 3) and tl.dot (B = 17) forms against the reference."""
    with tb.tuning(block_k=16):
        _check(Case(cell, 4, 3, 33, proj=proj, lengths=[4, 1, 3], rev=True, strategy="resident"))
        _check(Case(cell, 3, 17, 20, proj=2 * proj, lengths=[3, 1, 2] * 5 + [3, 3],
                    strategy="resident"))


def test_launcher_phases_and_signatures():
    """The launches of each strategy, as the launcher builds them for every cell: ``step`` one
    launch per phase (SYNC=0), the persistent strategies one launch running every phase with
    its barriers numbered by NPH (the grid-barrier variant runs on a GPU only, so its
    constexprs are pinned here); a kernel signature out of the convention is refused."""
    from rnnkernels.backends.triton import gru, launch, lstm, rnn
    known = dict(HAS_LEN=True, REVERSE=False, SAVE=True, G=4, DOT_F32=True, BB=16, BH=16,
                 BK=16)

    def phases(kernels, backward, flags, sync):
        return [tuple((k, c[k]) for k in sorted(c) if k.startswith("DO_") or k in ("NPH", "SYNC"))
                for c in launch.launches(kernels, backward, {**known, **flags}, sync)]

    proj, plain = {"PROJ": True}, {"PROJ": False}
    assert phases(lstm.KERNELS, False, proj, 0) == [
        (("DO_CELL", 1), ("DO_PROJ", 0), ("NPH", 1), ("SYNC", 0)),
        (("DO_CELL", 0), ("DO_PROJ", 1), ("NPH", 1), ("SYNC", 0))]
    assert phases(lstm.KERNELS, False, proj, 2) == [
        (("DO_CELL", 1), ("DO_PROJ", 1), ("NPH", 2), ("SYNC", 2))]
    assert phases(lstm.KERNELS, True, proj, 2) == [
        (("DO_CARRY", 1), ("DO_PROJ", 1), ("NPH", 2), ("SYNC", 2))]
    for backward, first in ((False, "DO_CELL"), (True, "DO_CARRY")):
        for sync in (0, 1):
            assert phases(lstm.KERNELS, backward, plain, sync) == [
                tuple(sorted(((first, 1), ("DO_PROJ", 0), ("NPH", 1), ("SYNC", sync))))]
    for kernels, flags in ((gru.KERNELS, {"HAS_BHN": True}), (rnn.KERNELS, {"RELU": True})):
        for backward in (False, True):
            assert phases(kernels, backward, flags, 2) == [(("SYNC", 2),)]
    with pytest.raises(TypeError, match="RELU"):
        launch.launches(rnn.KERNELS, False, known, 0)

    class Bad:
        __name__ = "bad"
        arg_names = ["x_ptr", "s_first", "n_steps", "BB", "T"]
    with pytest.raises(TypeError, match="expected pointers"):
        launch._Signature.of(Bad())


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter-only behaviour")
def test_interpreter_switches():
    from rnnkernels.backends.triton import plan
    # The documented bf16 switch: the interpreter's bf16 tl.dot is wrong, so it upcasts.
    assert plan.dot_f32(torch.bfloat16, torch.device("cpu"))
    assert not plan.dot_f32(torch.float16, torch.device("cpu"))
    with tb.strategy("persistent-grid"), pytest.raises(RuntimeError, match="deadlock"):
        plan.make_plan(torch.device("cpu"), torch.float32, 3, 33, 33, False)


def test_float32_products_follow_torchs_matmul_precision(monkeypatch):
    """float32 products are IEEE unless torch lets its own float32 matmuls use TF32 (planned
    for an Ampere-or-later GPU without one)."""
    from rnnkernels.backends.triton import plan
    monkeypatch.setattr(plan, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    gpu, prec = torch.device("cuda"), torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert plan.dot_f32(torch.float32, gpu) == plan.DOT_IEEE
        torch.set_float32_matmul_precision("high")
        assert plan.dot_f32(torch.float32, gpu) == plan.DOT_TF32
        assert plan.dot_f32(torch.float32, torch.device("cpu")) == plan.DOT_IEEE
        assert plan.dot_f32(torch.bfloat16, gpu) == plan.DOT_HALF
    finally:
        torch.set_float32_matmul_precision(prec)


# ----------------------------------------------------------------------------------- CUDA only
@cuda_only
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("strategy", ["step", "persistent"])
def test_cuda_tensor_core_dot(dtype, strategy):
    """The real bf16/fp16 tensor-core path (the interpreter cannot check bf16 dots)."""
    from rnnkernels.backends.triton import plan
    assert not plan.dot_f32(_DT[dtype], torch.device("cuda")) or \
        torch.cuda.get_device_capability() < (8, 0)
    for cell, proj in (("LSTM", 24), ("GRU", 0)):
        case = Case(cell, 9, 37, 65, proj=proj, lengths=list(range(1, 10)) * 4 + [9],
                    rev=True, dtype=dtype, strategy=strategy)
        _check(case)


@cuda_only
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_cuda_persistent_grid_barrier(cell):
    """The grid-barrier variant (hidden tiles spread over programs), forced, vs the oracle."""
    for proj in ((0, 24) if cell == "LSTM" else (0,)):
        case = Case(cell, 11, 5, 100, proj=proj, lengths=[11, 3, 1, 7, 11], rev=True,
                    strategy="persistent-grid")
        with tb.tuning(block_h=16, nprog_h=4):
            _check(case)


@cuda_only
@pytest.mark.parametrize("cell, kw", [("LSTM", {}), ("LSTM", {"proj": 17}), ("GRU", {}),
                                      ("RNN_TANH", {})], ids=["LSTM", "LSTM-proj", "GRU", "RNN"])
def test_cuda_step_graph_replay(cell, kw):
    """``step`` scans replay a CUDA graph from the second call of a signature on: fresh inputs
    and other lengths at every call must still match the oracle (no stale static buffer)."""
    from rnnkernels.backends.triton import graphs
    graphs.clear()
    for seed, lengths in enumerate([[20, 3, 11], [5, 20, 1], [20, 20, 20], [1, 2, 3]]):
        _check(Case(cell, 20, 3, 33, lengths=lengths, strategy="step", **kw), seed)
    assert graphs._entries, "no CUDA graph was captured"
    graphs.clear()


@cuda_only
def test_cuda_speed_sanity():
    """Both strategies beat the reference loop on a mid-size LSTM (catches a silent fallback to
    something absurd, e.g. recompiling every call or a per-step host sync)."""
    import time
    T, B, H = 128, 32, 256
    x = torch.randn(T, B, 4 * H, device="cuda", dtype=torch.float16)
    h0 = torch.zeros(B, H, device="cuda", dtype=torch.float16)
    w = torch.randn(4 * H, H, device="cuda", dtype=torch.float16) * H ** -0.5

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / 3

    t_ref = timed(lambda: ref.lstm_forward(x, h0, h0, w, None, None, False, True))
    for strat in ("step", "persistent"):
        with tb.strategy(strat):
            t = timed(lambda: tb.lstm_forward(x, h0, h0, w, None, None, False, True))
        assert t < t_ref, f"{strat}: {t * 1e3:.2f} ms vs reference {t_ref * 1e3:.2f} ms"


def test_empty_batch_and_missing_workspaces():
    x = torch.randn(3, 0, 4 * 33, device=DEVICE)
    h0 = torch.zeros(0, 33, device=DEVICE)
    w = torch.randn(4 * 33, 33, device=DEVICE)
    out, h_n, c_n, gates, cs = tb.lstm_forward(x, h0, h0, w, None, None, False, True)
    assert out.shape == (3, 0, 33) and h_n.shape == (0, 33) and gates.shape == (3, 0, 132)
    case = Case("LSTM", 3, 2, 33)
    x, lengths, grads = _inputs(case)
    fwd = tb.lstm_forward(x["xp"], x["h0"], x["c0"], x["w_hh"], None, None, False, False)
    with pytest.raises(RuntimeError, match="save=True"):
        tb.lstm_backward(grads["grad_out"], grads["grad_hn"], grads["grad_cn"], x["h0"], x["c0"],
                         x["w_hh"], None, None, False, fwd[0], fwd[3], fwd[4])


# -------------------------------------------------------------- GPU compile check without a GPU
def _ptxas_available():
    try:
        import triton
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                       "bin", "ptxas"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the other tests compile them")
@pytest.mark.skipif(not _ptxas_available(), reason="triton's bundled ptxas is missing")
def test_kernels_compile_for_sm90():
    """The interpreter never runs the GPU compiler: compile the largest variant of each kernel
    for sm_90 (frontend to ptxas) in a subprocess without TRITON_INTERPRET."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-m", "rnnkernels.backends.triton.aot", "--quick",
                          "--dtypes", "fp16,fp32"], capture_output=True, text=True, env=env,
                         timeout=600, cwd=root)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert res.stdout.count("ok   sm_90") == 2 * (6 + 8), res.stdout   # per dtype: 6 + 8 resident
