"""The measured plan of ``auto`` on CUDA (``rnnkernels/backends/plan.py``, issue 12), proven
without a GPU: the GPU's table key from (mocked) device properties, the lookup in a synthetic
``cuda.json`` next to an unaffected ``cpu.json``, no CUDA initialisation by CPU routing, and the
generator's ``--device cuda`` path (argument defaults, the ``--budget-s`` logic, the merge into
the file) with a fake device target. Plans are synthetic; nothing is timed."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import types

import pytest
import torch

from bench import plan as G
from rnnkernels.backends import compiled
from rnnkernels.backends import plan as P

CPU = pytest.mark.skipif(not compiled.AVAILABLE, reason=f"cpu backend: {compiled.ERROR}")
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
F32, BF16 = torch.float32, torch.bfloat16
GPUS = {0: types.SimpleNamespace(name="NVIDIA H200", major=9, minor=0,
                                 multi_processor_count=132),
        1: types.SimpleNamespace(name="NVIDIA H100 PCIe", major=9, minor=0,
                                 multi_processor_count=114)}
H200, H100 = "NVIDIA H200/sm_90/132sm", "NVIDIA H100 PCIe/sm_90/114sm"


def _point(cell="LSTM", mode="fwd", B=64, H=512, ratio=0.5, dtype="bfloat16"):
    return {"cell": cell, "mode": mode, "dtype": dtype, "B": B, "H": H, "T": 128, "ratio": ratio}


def _plan(device, tables):
    return {"schema": 1, "device": device, "threshold": 1.0, "tables": {
        key: {"measured": {"date": "synthetic"}, "points": points}
        for key, points in tables.items()}}


@pytest.fixture(autouse=True)
def _package_plan_afterwards(monkeypatch):
    monkeypatch.delenv("RNNKERNELS_PLAN", raising=False)
    yield
    P.set_plan(None)


@pytest.fixture
def gpus(monkeypatch):
    """Two fake GPUs (an H200 as cuda:0, the current device, and an H100 PCIe as cuda:1):
    torch.cuda answers from GPUS; ``asked`` counts the property reads."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: asked.append(index) or GPUS[index])
    P.forget()
    return asked


@pytest.fixture
def plans_dir(tmp_path, monkeypatch):
    """The package's plans folder moved to ``tmp_path``: write(device, tables) puts a plan."""
    monkeypatch.setattr(P, "PLANS_DIR", tmp_path)
    P.set_plan(None)

    def write(device, tables):
        (tmp_path / f"{device}.json").write_text(json.dumps(_plan(device, tables)))
        P.forget()
    return write


# ------------------------------------------------------------------------------------ lookup
def test_cuda_key_is_name_capability_and_sm_count():
    assert P.cuda_key(GPUS[0]) == H200
    assert P.cuda_key(GPUS[1]) == H100      # same sm_90, other part: another table


def test_cuda_lookup_by_the_points_of_this_gpu(gpus, plans_dir):
    plans_dir("cuda", {H200: [_point(B=1, H=128, ratio=1.8), _point(B=256, H=1024, ratio=0.6),
                              _point(dtype="float32", B=1, H=128, ratio=0.9)]})
    ask = lambda dt, B, H: P.torch_is_faster("cuda", "LSTM", False, dt, B, H)  # noqa: E731
    assert ask(BF16, 128, 1024) and ask(BF16, 256, 2048)
    assert not ask(BF16, 1, 128) and not ask(BF16, 4, 256)
    assert ask(F32, 200, 1024)                       # float32's only point says torch
    assert not ask(torch.float16, 256, 1024)         # an unmeasured dtype never routes
    assert not P.torch_is_faster("cuda", "LSTM", True, BF16, 256, 1024)   # no fwdbwd point
    assert not P.torch_is_faster("cuda", "GRU", False, BF16, 256, 1024)
    assert P.torch_is_faster(torch.device("cuda:0"), "LSTM", False, BF16, 256, 1024)
    assert gpus == [0]                               # the properties read once, then memoised
    assert P.describe("cuda")["key"] == H200 and P.describe("cuda")["points"] == 3


def test_each_gpu_reads_its_own_table(gpus, plans_dir):
    """A machine may mix GPU models: a tensor on cuda:1 is routed by cuda:1's table; a GPU
    that was never measured has none and never routes."""
    plans_dir("cuda", {H200: [_point(ratio=0.5)], H100: [_point(ratio=1.5)]})
    assert P.torch_is_faster("cuda", "LSTM", False, BF16, 64, 512)
    assert P.torch_is_faster(torch.device("cuda", 0), "LSTM", False, BF16, 64, 512)
    assert not P.torch_is_faster(torch.device("cuda", 1), "LSTM", False, BF16, 64, 512)
    plans_dir("cuda", {H100: [_point(ratio=0.5)]})
    assert not P.torch_is_faster("cuda", "LSTM", False, BF16, 64, 512)
    assert P.torch_is_faster("cuda:1", "LSTM", False, BF16, 64, 512)


def test_bench_run_tags_auto_rows_by_the_gpu_table(gpus, plans_dir):
    from bench import configs as C
    plans_dir("cuda", {H200: [_point(B=64, H=256, ratio=0.5)]})
    cfg = C.REGISTRY["q-b64"]
    assert G.auto_route(cfg, "LSTM", "fwd", BF16, torch.device("cuda", 0)) == "plan: torch"
    assert G.auto_route(cfg, "LSTM", "fwd", BF16, torch.device("cuda", 1)) == "plan: ours"
    assert G.auto_route(cfg, "LSTM", "fwd", BF16) == "plan: ours"      # the CPU's plan


def test_no_cuda_plan_file_never_routes(gpus, plans_dir):
    assert P.load("cuda") is None
    assert not P.torch_is_faster("cuda", "LSTM", False, BF16, 64, 512)


@CPU
def test_cpu_lookup_is_unaffected_by_the_cuda_plan(gpus, plans_dir):
    isa = P.table_key("cpu")
    plans_dir("cpu", {isa: [_point(dtype="float32", ratio=1.5)]})
    plans_dir("cuda", {H200: [_point(dtype="float32", ratio=0.5)], isa: [_point(ratio=0.5)]})
    assert not P.torch_is_faster("cpu", "LSTM", False, F32, 64, 512)
    assert P.torch_is_faster("cuda", "LSTM", False, F32, 64, 512)
    assert P.describe("cpu")["key"] == isa and P.describe("cpu")["points"] == 1


@CPU
def test_cpu_routing_never_asks_torch_cuda(monkeypatch, plans_dir):
    """Routing CPU calls (and describing the CPU plan) must not touch torch.cuda: on a GPU
    machine that would initialise CUDA in a CPU-only program."""
    import rnnkernels
    plans_dir("cpu", {P.table_key("cpu"): [_point(dtype="float32", B=4, H=32, ratio=0.5)]})

    def poisoned(*args, **kwargs):
        raise AssertionError("torch.cuda asked while routing a CPU call")
    for name in ("is_available", "is_initialized", "current_device", "get_device_properties",
                 "device_count", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, poisoned)
    lstm = rnnkernels.LSTM(8, 32)
    with torch.no_grad():
        lstm(torch.randn(5, 4, 8))                    # routed to torch by the plan
    lstm(torch.randn(5, 4, 8))                        # training: our kernels
    assert P.describe("cpu")["in_force"]


@CPU
def test_a_cpu_only_process_never_initialises_cuda():
    code = """if True:
        import torch, rnnkernels
        from rnnkernels.backends import plan as P
        lstm = rnnkernels.LSTM(8, 16)
        with torch.no_grad():
            lstm(torch.randn(5, 4, 8))
        lstm(torch.randn(5, 4, 8)).__getitem__(0).sum().backward()
        P.describe("cpu")
        assert not torch.cuda.is_initialized(), "CUDA initialised"
        print("ok")"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# --------------------------------------------------------------------------------- generator
def test_generator_defaults_per_device():
    cuda = G._parse_args(["--device", "cuda"])
    assert (cuda.batches, cuda.hidden, cuda.T, cuda.reps) == ((1, 16, 64, 256),
                                                              (128, 512, 1024), 128, 3)
    assert cuda.dtypes == [torch.float32, torch.bfloat16, torch.float16]
    cpu = G._parse_args([])
    assert (cpu.device, cpu.batches, cpu.hidden, cpu.T, cpu.reps, cpu.dtypes) == (
        "cpu", (1, 4, 16, 64, 256), (64, 128, 256, 512, 1024), None, 9, [torch.float32])
    assert G._parse_args(["--device", "cuda", "--budget-s", "90", "--dtypes", "bf16",
                          "--T", "64"]).budget_s == 90.0
    with pytest.raises(SystemExit):
        G._parse_args(["--device", "cuda", "--isa", "avx2"])


def test_budget_drops_the_unfinished_group_whole(monkeypatch, capsys):
    """One clock tick a point, a budget of 5.5 ticks: two groups of two points complete, the
    third is cut after one point, which is dropped (alone it would stand for sizes it never
    measured), and the rest is reported missing."""
    args = G._parse_args(["--cells", "LSTM,GRU", "--batches", "1,2", "--hidden", "8", "--T", "3",
                          "--budget-s", "5.5", "--layouts", "uni"])
    measured = []

    def fake_point(target, cell, mode, dtype, B, Hs, T, reps, seed, bidir=False):
        measured.append((cell, mode, B))
        return _point(cell, mode, B, Hs, 1.0, "float32") | {"torch_ms": 1.0, "ours_ms": 1.0}
    monkeypatch.setattr(G, "measure_point", fake_point)
    ticks = iter(range(100))
    points, missing = G.sweep(args, None, "key", clock=lambda: next(ticks))
    assert len(measured) == 5
    assert [(p["cell"], p["mode"], p["B"]) for p in points] == measured[:4]
    assert missing == ["GRU/fwd/float32", "GRU/fwdbwd/float32"]
    assert "1 points of GRU/fwd/float32 dropped" in capsys.readouterr().out
    args.budget_s = None
    assert len(G.sweep(args, None, "key", clock=lambda: next(ticks))[0]) == 8


def _fake_cuda_target(args):
    """The cuda target with this machine's CPU as the device (and the reference backend as
    ours): what ``cuda_target`` gives, but runnable without a GPU."""
    rounds = []

    def samples(step):
        step()
        rounds.append(1)
        return [1.0, 3.0, 2.0]
    return G.Target("cuda", torch.device("cpu"), lambda: P.table_key("cuda"),
                    lambda dtype: "reference", samples,
                    {"device_name": "NVIDIA H200", "sm_count": 132, "tf32": False,
                     "rounds": rounds})


def test_generator_cuda_merges_into_the_cuda_plan(gpus, plans_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(G.TARGETS, "cuda", _fake_cuda_target)
    plans_dir("cuda", {H100: [_point(ratio=0.7)]})
    args = ["--device", "cuda", "--cells", "LSTM,RNN", "--modes", "fwd", "--batches", "2",
            "--hidden", "8", "--T", "3", "--dtypes", "float32,bfloat16", "--reps", "2",
            "--layouts", "uni"]
    assert G.main(args) == 0
    doc = json.loads((tmp_path / "cuda.json").read_text())     # the default file: plans/cuda.json
    P.validate(doc)
    assert doc["device"] == "cuda" and set(doc["tables"]) == {H100, H200}
    table = doc["tables"][H200]
    assert {(p["cell"], p["dtype"], p["B"], p["H"], p["T"]) for p in table["points"]} == {
        (c, d, 2, 8, 3) for c in ("LSTM", "RNN") for d in ("float32", "bfloat16")}
    assert all(p["ratio"] == 1.0 and p["torch_ms"] == 2.0 for p in table["points"])
    measured = table["measured"]
    assert measured["device_name"] == "NVIDIA H200" and measured["complete"] is True
    assert len(measured["rounds"]) == 4 * 2 * 2                 # points × sides × reps
    assert doc["tables"][H100]["points"] == [_point(ratio=0.7)]
    assert P.table("cuda")["points"] == table["points"]         # what the loader reads


def test_generator_keeps_the_faster_triton_strategy(gpus, plans_dir, monkeypatch, tmp_path):
    """Where ours is triton, one-direction points also time the strategies auto takes only
    where measured (in the same rounds): the faster sets the ratio and is named; one that
    cannot run the shape is left out; bidirectional points time auto's alone."""
    active = []

    @contextlib.contextmanager
    def resident():
        active.append(1)
        yield
        active.pop()

    @contextlib.contextmanager
    def broken():
        raise RuntimeError("needs more SMs than the GPU has")
        yield   # noqa: unreachable - a generator

    def target(args):
        t = _fake_cuda_target(args)
        t.samples = lambda step: (step(), [0.5 if active else 2.0])[1]
        t.alternatives = lambda dtype: {"resident": resident, "broken": broken}
        return t
    monkeypatch.setitem(G.TARGETS, "cuda", target)
    plans_dir("cuda", {})
    assert G.main(["--device", "cuda", "--cells", "GRU", "--modes", "fwdbwd", "--batches", "2",
                   "--hidden", "8", "--T", "3", "--dtypes", "float32", "--reps", "2"]) == 0
    points = json.loads((tmp_path / "cuda.json").read_text())["tables"][H200]["points"]
    uni, bidir = sorted(points, key=lambda p: bool(p.get("bidirectional")))
    assert uni["triton_strategy"] == "resident" and uni["ratio"] == 4.0
    assert uni["strategies_ms"] == {"auto": 2.0, "resident": 0.5}
    assert bidir["ratio"] == 1.0 and "triton_strategy" not in bidir
    assert "strategies_ms" not in bidir
    assert P.triton_strategy("cuda", "GRU", True, F32, 2, 8) == "resident"


def test_triton_strategy_lookup(gpus, monkeypatch):
    """A point's triton_strategy reaches the Triton plan through ``triton_strategy``: the nearest
    point of the call's cell, mode and dtype on this GPU's table; None elsewhere, with the plan
    off, and a strategy outside TRITON_STRATEGIES is a malformed plan."""
    P.set_plan(_plan("cuda", {H200: [
        _point("LSTM", "fwdbwd", 16, 512, 2.0, "float32") | {"triton_strategy": "resident"},
        _point("LSTM", "fwd", 16, 512, 1.5, "float32")]}))
    assert P.triton_strategy("cuda", "LSTM", True, F32, 16, 512) == "resident"
    assert P.triton_strategy("cuda", "LSTM", True, F32, 8, 1024) == "resident"   # the nearest
    assert P.triton_strategy("cuda", "LSTM", False, F32, 16, 512) is None
    assert P.triton_strategy("cuda", "GRU", True, F32, 16, 512) is None
    assert P.triton_strategy("cuda", "LSTM", True, BF16, 16, 512) is None
    assert P.triton_strategy(torch.device("cuda", 1), "LSTM", True, F32, 16, 512) is None
    monkeypatch.setenv("RNNKERNELS_PLAN", "off")
    assert P.triton_strategy("cuda", "LSTM", True, F32, 16, 512) is None
    with pytest.raises(ValueError, match="malformed point"):
        P.validate(_plan("cuda", {H200: [_point() | {"triton_strategy": "fastest"}]}))


def test_generator_with_no_time_leaves_the_file_alone(gpus, plans_dir, monkeypatch, tmp_path,
                                                      capsys):
    monkeypatch.setitem(G.TARGETS, "cuda", _fake_cuda_target)
    plans_dir("cuda", {H200: [_point(ratio=0.7)]})
    before = (tmp_path / "cuda.json").read_text()
    assert G.main(["--device", "cuda", "--budget-s", "0"]) == 1
    assert (tmp_path / "cuda.json").read_text() == before
    assert "left unchanged" in capsys.readouterr().err


@NO_GPU
def test_generator_cuda_without_a_gpu_says_so(capsys):
    assert G.main(["--device", "cuda", "--quick"]) == 1
    err = capsys.readouterr().err
    assert "bench.plan --device cuda: torch.cuda.is_available() is False" in err
    assert "needs a GPU" in err
