"""The Triton backend's six scan functions against the reference backend (the oracle).

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set here before triton is imported;
if something imported triton earlier without it, the module skips with the reason). Each case
runs the Triton forward and backward (the backward on the Triton forward's own workspaces) and
the reference forward and backward, then compares every output: float32 tightly, fp16/bf16 by
relative RMS against the float32 reference. Every buffer the backend allocates is NaN-poisoned
(``launch.empty`` is patched), so an element the kernels forget to write fails the comparison; the
exact zeros the contract requires at t ≥ L_b are checked separately. Both launch strategies are
forced, with the default tiles and with 16-wide tiles that split H=33 into three tiles and the
reductions into several K chunks.

Ids: ``{cell}-T{T}-B{B}-H{H}[-proj][-rev][-lengths]-{dtype}-{strategy}[-tiles16]``.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import rnnkernels.backends.triton as tb  # noqa: E402
from rnnkernels.backends import reference as ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_REASON = tb.supports(DEVICE, torch.float32)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"triton backend: {_REASON}")


def cuda_only(fn):
    return pytest.mark.cuda(pytest.mark.skipif(
        not torch.cuda.is_available() or _REASON is not None,
        reason="needs a CUDA GPU with triton")(fn))


_DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# rel RMS bounds of half results vs the float32 reference. The interpreter measured at most
# 6e-4 (fp16) and 7e-3 (bf16) on these cases; the GPU's bf16 dot also rounds h to bf16.
_HALF_TOL = {"fp16": 3e-3, "bf16": 3e-2}


@pytest.fixture(autouse=True)
def _tf32_off_and_poison(monkeypatch):
    """Float32 references without TF32, and NaN in every buffer the backend allocates."""
    if torch.cuda.is_available():
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    from rnnkernels.backends.triton import launch
    monkeypatch.setattr(launch, "empty", poisoned)


# ------------------------------------------------------------------------------------ the cases
class Case:
    def __init__(self, cell, T, B, H, *, proj=0, rev=False, lengths=None, dtype="fp32",
                 strategy="persistent", tiles16=False, bhn=True):
        self.cell, self.T, self.B, self.H, self.proj = cell, T, B, H, proj
        self.rev, self.lengths, self.dtype, self.strategy = rev, lengths, dtype, strategy
        self.tiles16, self.bhn = tiles16, bhn
        assert lengths is None or (len(lengths) == B and max(lengths) <= T and min(lengths) >= 1)

    @property
    def id(self):
        parts = [self.cell, f"T{self.T}", f"B{self.B}", f"H{self.H}"]
        if self.proj:
            parts.append(f"proj{self.proj}")
        if self.cell == "GRU" and not self.bhn:
            parts.append("nobhn")
        if self.rev:
            parts.append("rev")
        if self.lengths is not None:
            parts.append("lengths")
        parts += [self.dtype, self.strategy]
        if self.tiles16:
            parts.append("tiles16")
        return "-".join(parts)


def _cases():
    cells = [("LSTM", {}), ("LSTM", {"proj": 17}), ("GRU", {}), ("GRU", {"bhn": False}),
             ("RNN_TANH", {}), ("RNN_RELU", {})]
    out = []
    for cell, kw in cells:
        for strat in ("step", "persistent"):
            out.append(Case(cell, 7, 3, 33, lengths=[7, 1, 4], strategy=strat, **kw))
            out.append(Case(cell, 7, 3, 33, lengths=[2, 7, 1], rev=True, strategy=strat,
                            tiles16=True, **kw))
            out.append(Case(cell, 1, 3, 33, strategy=strat, **kw))
        out.append(Case(cell, 5, 2, 33, rev=True, strategy="persistent", **kw))
        out.append(Case(cell, 6, 3, 33, lengths=[6, 2, 5], rev=True, dtype="fp16",
                        strategy="persistent", **kw))
        out.append(Case(cell, 6, 3, 33, lengths=[3, 6, 1], dtype="bf16", strategy="step", **kw))
    # one row, several batch tiles, a projection wider than H, and one long sequence
    out.append(Case("GRU", 3, 1, 16, lengths=[2], rev=True, strategy="persistent"))
    out.append(Case("GRU", 4, 19, 20, lengths=[4, 1, 3, 2] * 4 + [4, 2, 1], strategy="step",
                    tiles16=True))
    out.append(Case("LSTM", 4, 18, 16, proj=40, lengths=[1, 4, 2] * 6, rev=True,
                    strategy="persistent", tiles16=True))
    out.append(Case("LSTM", 63, 5, 33, proj=17, lengths=[63, 1, 40, 63, 17], rev=True,
                    strategy="persistent"))
    return out


CASES = _cases()


# ---------------------------------------------------------------------------------- harness
def _inputs(case: Case, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T, B, H = case.T, case.B, case.H
    G = {"LSTM": 4, "GRU": 3}.get(case.cell, 1)
    P = case.proj or H

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    x = {"xp": rnd(T, B, G * H), "h0": rnd(B, P, scale=0.5), "w_hh": rnd(G * H, P, scale=P ** -0.5)}
    if case.cell == "LSTM":
        x["c0"] = rnd(B, H, scale=0.5)
        x["w_hr"] = rnd(P, H, scale=H ** -0.5) if case.proj else None
    if case.cell == "GRU":
        x["b_hn"] = rnd(H, scale=0.3) if case.bhn else None
    lengths = None
    if case.lengths is not None:
        lengths = torch.tensor(case.lengths, dtype=torch.int64, device=DEVICE)
    grads = {"grad_out": rnd(T, B, P), "grad_hn": rnd(B, P)}
    if case.cell == "LSTM":
        grads["grad_cn"] = rnd(B, H)
    return x, lengths, grads


def _cast(d, dtype):
    return {k: (v.to(dtype) if v is not None else None) for k, v in d.items()}


def _run(backend, case, x, lengths, grads, save=True):
    """Forward then backward of one backend; returns (forward tuple, backward tuple)."""
    rev = case.rev
    if case.cell == "LSTM":
        fwd = backend.lstm_forward(x["xp"], x["h0"], x["c0"], x["w_hh"], x["w_hr"], lengths, rev,
                                   save)
        if not save:
            return fwd, None
        out, _, _, gates, cs = fwd
        bwd = backend.lstm_backward(grads["grad_out"], grads["grad_hn"], grads["grad_cn"],
                                    x["h0"], x["c0"], x["w_hh"], x["w_hr"], lengths, rev, out,
                                    gates, cs)
    elif case.cell == "GRU":
        fwd = backend.gru_forward(x["xp"], x["h0"], x["w_hh"], x["b_hn"], lengths, rev, save)
        if not save:
            return fwd, None
        out, _, gates, hn_lin = fwd
        bwd = backend.gru_backward(grads["grad_out"], grads["grad_hn"], x["h0"], x["w_hh"],
                                   x["b_hn"], lengths, rev, out, gates, hn_lin)
    else:
        relu = case.cell == "RNN_RELU"
        fwd = backend.rnn_forward(x["xp"], x["h0"], x["w_hh"], lengths, rev, relu, save)
        if not save:
            return fwd, None
        bwd = backend.rnn_backward(grads["grad_out"], grads["grad_hn"], x["h0"], x["w_hh"],
                                   lengths, rev, relu, fwd[0])
    return fwd, bwd


def _run_triton(case, x, lengths, grads, save=True):
    tiles = {"block_b": 16, "block_h": 16, "block_k": 16} if case.tiles16 else {}
    with tb.strategy(case.strategy), tb.tuning(**tiles):
        return _run(tb, case, x, lengths, grads, save)


def _active(case):
    """[T, B, 1] bool: positions t < L_b."""
    L = torch.tensor(case.lengths or [case.T] * case.B, device=DEVICE)
    return (torch.arange(case.T, device=DEVICE)[:, None] < L[None, :]).unsqueeze(-1)


def _rel_rms(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _compare(name, got, want, case, active=None):
    """got (backend dtype) vs want (float32 reference); ``active`` restricts to t < L_b."""
    if active is not None:
        mask = active.expand_as(got)
        got, want = got[mask], want[mask]
    assert not torch.isnan(got).any(), f"{name}: NaN (an element was never written)"
    if case.dtype == "fp32":
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-5, atol=2e-5, msg=name)
    else:
        err = _rel_rms(got, want)
        assert err < _HALF_TOL[case.dtype], f"{name}: rel RMS {err:.3g} vs fp32 reference"


# ------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scan_matches_reference(case):
    _check(case)


def _check(case, seed=0):
    x, lengths, grads = _inputs(case, seed)
    dt = _DT[case.dtype]
    fwd, bwd = _run_triton(case, _cast(x, dt), lengths, _cast(grads, dt))
    # The oracle runs in float32 on the same (rounded) inputs.
    xr = _cast(_cast(x, dt), torch.float32)
    gr = _cast(_cast(grads, dt), torch.float32)
    rfwd, rbwd = _run(ref, case, xr, lengths, gr)
    act = _active(case)

    names = {"LSTM": ["out", "h_n", "c_n", "gates", "cs"], "GRU": ["out", "h_n", "gates", "hn_lin"],
             }.get(case.cell, ["out", "h_n"])
    for name, got, want in zip(names, fwd, rfwd):
        ws = name in ("gates", "cs", "hn_lin")
        assert got.dtype == (torch.float32 if ws else dt), name
        assert got.shape == want.shape, name
        _compare(name, got, want, case, act if ws else None)  # workspaces: only t < L_b defined
    assert (fwd[0][~act.expand_as(fwd[0])] == 0).all(), "out must be exactly 0 at t >= L_b"

    bnames = ["dxp", "dh0", "dc0", "dh"] if case.cell == "LSTM" else ["dxp", "dh0"]
    for name, got, want in zip(bnames, bwd, rbwd):
        if name == "dh" and not case.proj:
            assert got.numel() == 0, "dh must be empty without a projection"
            continue
        assert got.dtype == (torch.float32 if name == "dh" else dt), name
        assert got.shape == want.shape, name
        _compare(name, got, want, case)
    assert (bwd[0][~act.expand_as(bwd[0])] == 0).all(), "dxp must be exactly 0 at t >= L_b"
    if case.proj:
        assert (bwd[3][~act.expand_as(bwd[3])] == 0).all(), "dh must be exactly 0 at t >= L_b"


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_inference_without_workspaces(cell):
    """save=False: empty workspaces, the same outputs as with save=True."""
    case = Case(cell, 5, 3, 33, lengths=[5, 2, 4], rev=True, strategy="step",
                proj=17 if cell == "LSTM" else 0)
    x, lengths, grads = _inputs(case)
    fwd, _ = _run_triton(case, x, lengths, grads, save=False)
    rfwd, _ = _run(ref, case, x, lengths, grads)
    n_ws = {"LSTM": 2, "GRU": 2}.get(cell, 0)
    for got, want in zip(fwd[:len(fwd) - n_ws], rfwd):
        _compare("output", got, want, case)
    for ws in fwd[len(fwd) - n_ws:]:
        assert ws.numel() == 0 and ws.dtype == torch.float32


def test_strategies_agree_and_are_deterministic():
    """No atomics: a rerun is bitwise identical. Both strategies do the same arithmetic in the
    same order (bitwise equal in the interpreter; compiled separately on a GPU)."""
    case = Case("LSTM", 5, 3, 33, lengths=[5, 3, 1], rev=True)
    x, lengths, grads = _inputs(case, seed=3)
    runs = []
    for strat in ("persistent", "persistent", "step"):
        case.strategy = strat
        fwd, bwd = _run_triton(case, x, lengths, grads)
        runs.append(list(fwd[:3]) + list(bwd[:3]))
    for a, b, c in zip(*runs):
        assert torch.equal(a, b)
        if torch.cuda.is_available():
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, c)


def test_lengths_may_be_int32_or_on_another_device():
    case = Case("RNN_TANH", 4, 3, 33, lengths=[4, 1, 3])
    x, lengths, grads = _inputs(case)
    want, _ = _run_triton(case, x, lengths, grads, save=False)
    got, _ = _run_triton(case, x, lengths.to(torch.int32).cpu(), grads, save=False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


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
    assert res.stdout.count("ok   sm_90") == 12, res.stdout
