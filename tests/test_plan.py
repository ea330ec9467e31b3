"""The measured routing plan of ``auto`` (``rnnkernels/backends/plan.py``, issue 12): the lookup
rule, the routing it drives (exactly torch.nn's results where it says torch, our kernels where it
says ours, never for a named backend or a recurrent variant), torch.compile, and the generator
``python -m bench.plan``. Plans are synthetic (written here), never timed."""
from __future__ import annotations

import json

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
from rnnkernels import dropout as D
from rnnkernels import functional as RF
from rnnkernels.backends import compiled
from rnnkernels.backends import plan as P

CPU = pytest.mark.skipif(not compiled.AVAILABLE, reason=f"cpu backend: {compiled.ERROR}")
F32 = torch.float32


def _point(cell="LSTM", mode="fwd", B=64, H=32, ratio=0.5, dtype="float32"):
    return {"cell": cell, "mode": mode, "dtype": dtype, "B": B, "H": H, "T": 100, "ratio": ratio}


def _plan(points, key=None, threshold=None):
    doc = {"schema": 1, "device": "cpu", "tables": {key or P.table_key("cpu"): {
        "measured": {"date": "synthetic"}, "points": points}}}
    if threshold is not None:
        doc["threshold"] = threshold
    return doc


@pytest.fixture(autouse=True)
def _package_plan_afterwards(monkeypatch):
    monkeypatch.delenv("RNNKERNELS_PLAN", raising=False)
    monkeypatch.delenv("RNNKERNELS_BACKEND", raising=False)
    yield
    P.set_plan(None)


@pytest.fixture
def isa(monkeypatch):
    """A fixed table key ('avx512'), so the lookup tests do not depend on this machine."""
    monkeypatch.setattr(P, "table_key", lambda device_type, index=None: "avx512"
                        if device_type == "cpu" else None)
    return "avx512"


# ------------------------------------------------------------------------------------ lookup
def test_nearest_point_in_log_batch_and_hidden(isa):
    P.set_plan(_plan([_point(B=1, H=64, ratio=2.0), _point(B=64, H=256, ratio=0.5),
                      _point(B=256, H=1024, ratio=3.0)], isa))
    ask = lambda B, H: P.torch_is_faster("cpu", "LSTM", False, F32, B, H)  # noqa: E731
    assert ask(64, 256) and ask(32, 256) and ask(48, 512)
    assert not ask(2, 64) and not ask(1, 128)
    assert not ask(256, 2048) and not ask(200, 1024)
    # another cell or mode has no point of its own: never routes
    assert not P.torch_is_faster("cpu", "GRU", False, F32, 64, 256)
    assert not P.torch_is_faster("cpu", "LSTM", True, F32, 64, 256)


def test_equidistant_points_the_lowest_ratio_decides(isa):
    P.set_plan(_plan([_point(B=4, H=256, ratio=1.2), _point(B=16, H=256, ratio=0.8)], isa))
    assert P.torch_is_faster("cpu", "LSTM", False, F32, 8, 256)        # log2: 2 and 4 from 3
    assert not P.torch_is_faster("cpu", "LSTM", False, F32, 5, 256)    # nearer B=4


@pytest.mark.parametrize("threshold, routed", [(None, True), (0.7, False), (0.9, True)])
def test_threshold_from_the_file(isa, threshold, routed):
    P.set_plan(_plan([_point(ratio=0.8)], isa, threshold))
    assert P.torch_is_faster("cpu", "LSTM", False, F32, 64, 32) is routed


def test_no_table_for_this_isa_or_device_never_routes(isa):
    P.set_plan(_plan([_point(ratio=0.1)], "some-other-isa"))
    assert not P.torch_is_faster("cpu", "LSTM", False, F32, 64, 32)
    P.set_plan(_plan([_point(ratio=0.1)], isa))
    assert not P.torch_is_faster("cuda", "LSTM", False, F32, 64, 32)   # no key off the CPU


def test_missing_file_never_routes_and_a_broken_one_raises(tmp_path, isa):
    P.set_plan(tmp_path / "absent.json")
    assert P.load("cpu") is None and not P.torch_is_faster("cpu", "LSTM", False, F32, 64, 32)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_plan([{"cell": "LSTM", "mode": "fwd", "B": 64}], isa)))
    P.set_plan(bad)
    with pytest.raises(ValueError, match="malformed point"):
        P.torch_is_faster("cpu", "LSTM", False, F32, 64, 32)
    bad.write_text(json.dumps({"schema": 99, "tables": {}}))
    P.set_plan(str(bad))
    with pytest.raises(ValueError, match="schema 1"):
        P.load("cpu")


def test_unmeasured_dtype_never_routes(isa):
    """float32's numbers say nothing about the half kernels (different code on both sides)."""
    P.set_plan(_plan([_point(ratio=0.1)], isa))
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        assert not P.torch_is_faster("cpu", "LSTM", False, dtype, 64, 32)
    P.set_plan(_plan([_point(ratio=0.1), _point(ratio=0.1, dtype="bfloat16")], isa))
    assert P.torch_is_faster("cpu", "LSTM", False, torch.bfloat16, 64, 32)


def test_setting_off_never_routes_and_takes_effect_at_once(isa, monkeypatch):
    P.set_plan(_plan([_point(ratio=0.1)], isa))
    assert P.torch_is_faster("cpu", "LSTM", False, F32, 64, 32)
    monkeypatch.setenv("RNNKERNELS_PLAN", "off")
    assert not P.torch_is_faster("cpu", "LSTM", False, F32, 64, 32)
    monkeypatch.setenv("RNNKERNELS_PLAN", "on")
    assert P.torch_is_faster("cpu", "LSTM", False, F32, 64, 32)
    monkeypatch.setenv("RNNKERNELS_PLAN", "maybe")
    with pytest.raises(ValueError, match="RNNKERNELS_PLAN"):
        P.torch_is_faster("cpu", "LSTM", False, F32, 64, 32)


def test_the_package_plan_file_is_valid():
    P.set_plan(None)
    assert P.path("cpu") == P.PLANS_DIR / "cpu.json" and P.path("cpu").is_file()
    doc = P.load("cpu")
    P.validate(doc)
    assert doc["device"] == "cpu"
    info = P.describe("cpu")
    assert info["error"] is None and info["setting"] == "on"
    assert info["points"] == len((P.table("cpu") or {}).get("points", []))


# ----------------------------------------------------------------------------------- routing
@pytest.fixture
def spy(monkeypatch):
    """Counts the calls handed to torch's own RNN (plain stacks, and the locked-dropout path)."""
    calls = {"torch_stack": 0, "torch_layers": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(RF, "torch_stack", counting("torch_stack", RF.torch_stack))
    monkeypatch.setattr(D, "torch_layers", counting("torch_layers", D.torch_layers))
    return calls


def _twins(cls="LSTM", backend="auto", options=None, **kw):
    """(torch.nn module, ours with the same weights); ``options``: our variant options."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(16, 32, **kw)
    ours = getattr(rnnkernels, cls)(16, 32, backend=backend, **kw, **(options or {}))
    ours.load_state_dict(ref.state_dict(), strict=not options)
    return ref, ours


def _flat(result):
    out, states = result
    out = out.data if hasattr(out, "batch_sizes") else out
    return [out, *(states if isinstance(states, tuple) else (states,))]


@CPU
def test_routed_inference_is_torch_nn_bitwise(spy):
    P.set_plan(_plan([_point(mode="fwd", B=64, H=32, ratio=0.5)]))
    ref, ours = _twins(num_layers=2)
    x = torch.randn(7, 60, 16)                     # B=60: the B=64 point is the nearest
    with torch.no_grad():
        for a, b in zip(_flat(ours(x)), _flat(ref(x))):
            assert torch.equal(a, b)
    assert spy["torch_stack"] == 1
    # the same call in training mode: no fwdbwd point, so our kernels
    out = ours(x)
    assert spy["torch_stack"] == 1
    torch.testing.assert_close(_flat(out), _flat(ref(x)), atol=1e-5, rtol=1e-5)


def test_bidirectional_calls_take_the_bidirectional_points(isa):
    """Both directions in one call run differently on each side (torch's oneDNN kernel, our two
    scans): their own points decide; without any, the one-direction points."""
    uni, bi = _point(B=16, H=128, ratio=1.2), _point(B=16, H=128, ratio=0.8) | {
        "bidirectional": True}
    P.set_plan(_plan([uni, bi]))
    assert not P.torch_is_faster("cpu", "LSTM", False, torch.float32, 16, 128)
    assert P.torch_is_faster("cpu", "LSTM", False, torch.float32, 16, 128, bidirectional=True)
    P.set_plan(_plan([uni]))
    assert not P.torch_is_faster("cpu", "LSTM", False, torch.float32, 16, 128, bidirectional=True)
    assert P.routable("cpu", packed=False, projected=False)
    assert not P.routable("cpu", packed=True, projected=False)
    assert not P.routable("cpu", packed=False, projected=True)
    assert P.routable("cuda", packed=True, projected=True)


@CPU
def test_one_step_calls_keep_the_fused_step(spy):
    """A call with one time step runs the fused C++ step (bench/decode.py measures it against
    torch.nn), not the scans the plan's points measured: never routed by the plan."""
    P.set_plan(_plan([_point(mode="fwd", B=64, H=32, ratio=0.5)]))
    ref, ours = _twins(batch_first=True)
    x = torch.randn(64, 1, 16)
    with torch.no_grad():
        got = _flat(ours(x))
        assert spy["torch_stack"] == 0
        torch.testing.assert_close(got, _flat(ref(x)), atol=1e-5, rtol=1e-5)
        ours(torch.randn(64, 3, 16))               # more steps: the plan routes
    assert spy["torch_stack"] == 1


@CPU
def test_routed_training_has_torch_nn_gradients(spy):
    P.set_plan(_plan([_point(cell="GRU", mode="fwdbwd", B=8, H=32, ratio=0.5)]))
    ref, ours = _twins(cls="GRU", bidirectional=True)
    x = torch.randn(5, 8, 16, requires_grad=True)
    grads = []
    for m in (ours, ref):
        out = _flat(m(x))
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out)
        grads.append(torch.autograd.grad(loss, [x, *m.parameters()], create_graph=True))
    assert spy["torch_stack"] == 1
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    # double backward through the routed call is torch's own
    second = [torch.autograd.grad(g[0].square().sum(), x)[0] for g in grads]
    assert torch.equal(second[0], second[1])


@CPU
def test_plan_saying_ours_runs_our_backend(spy, monkeypatch):
    P.set_plan(_plan([_point(B=64, H=32, ratio=1.5)]))
    ran = []
    real = RF._resolve
    monkeypatch.setattr(RF, "_resolve", lambda *a: ran.append(real(*a)) or ran[-1])
    _, ours = _twins()
    with torch.no_grad():
        ours(torch.randn(4, 64, 16))
    assert spy["torch_stack"] == 0 and ran == ["cpu"]


@CPU
@pytest.mark.parametrize("how", ["kwarg", "env"])
def test_a_named_backend_never_routes(spy, monkeypatch, how):
    P.set_plan(_plan([_point(ratio=0.1)]))
    ref, ours = _twins(backend="cpu" if how == "kwarg" else "auto")
    if how == "env":
        monkeypatch.setenv("RNNKERNELS_BACKEND", "cpu")
    x = torch.randn(3, 64, 16)
    with torch.no_grad():
        torch.testing.assert_close(_flat(ours(x)), _flat(ref(x)), atol=1e-5, rtol=1e-5)
    assert spy["torch_stack"] == 0


@CPU
def test_plan_off_runs_our_backend(spy, monkeypatch):
    P.set_plan(_plan([_point(ratio=0.1)]))
    monkeypatch.setenv("RNNKERNELS_PLAN", "off")
    _, ours = _twins()
    with torch.no_grad():
        ours(torch.randn(3, 64, 16))
    assert spy["torch_stack"] == 0


@CPU
def test_bidirectional_routed_packed_and_projected_not(spy):
    """B, H: the batch and the hidden size. On the CPU a packed batch and a projection are never
    routed: torch runs them with ATen's cell loop, not the oneDNN kernel the plan measured."""
    P.set_plan(_plan([_point(B=64, H=32, ratio=0.5)]))
    ref, ours = _twins(num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(64, 9, 16)
    with torch.no_grad():
        got, want = _flat(ours(x)), _flat(ref(x))
    assert spy["torch_stack"] == 1
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    lengths = torch.randint(1, 10, (64,))
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_p, ours_p = _twins(bidirectional=True, proj_size=8, batch_first=True)
    with torch.no_grad():
        for a, b, inp in ((ours, ref, packed), (ours_p, ref_p, x), (ours_p, ref_p, packed)):
            torch.testing.assert_close(_flat(a(inp)), _flat(b(inp)), atol=1e-5, rtol=1e-5)
    assert spy["torch_stack"] == 1


@CPU
def test_variants_route_only_without_recurrent_options(spy):
    P.set_plan(_plan([_point(B=64, H=32, ratio=0.5)]))
    x = torch.randn(5, 64, 16)
    _, peephole = _twins(options=dict(peephole=True))
    with torch.no_grad():
        peephole(x)
    assert spy["torch_layers"] == spy["torch_stack"] == 0
    ref, locked = _twins(num_layers=2, dropout=0.2,
                         options=dict(locked_dropout=True, input_dropout=0.3))
    locked.eval(), ref.eval()
    with torch.no_grad():
        for a, b in zip(_flat(locked(x)), _flat(ref(x))):
            assert torch.equal(a, b)                  # eval: no dropout, exactly torch.nn
    assert spy["torch_layers"] == 1


@CPU
def test_compile_fullgraph_skips_the_plan(spy):
    """While Dynamo traces, the plan is not consulted: the graph keeps our scan op."""
    P.set_plan(_plan([_point(B=8, H=32, ratio=0.5)]))
    torch._dynamo.reset()
    ref, ours = _twins()
    x = torch.randn(5, 8, 16)
    compiled_model = torch.compile(ours, fullgraph=True, backend="eager")
    with torch.no_grad():
        got = _flat(compiled_model(x))
        assert spy["torch_stack"] == 0
        torch.testing.assert_close(got, _flat(ref(x)), atol=1e-5, rtol=1e-5)
        ours(x)                                        # eager: the plan routes it
    assert spy["torch_stack"] == 1
    torch._dynamo.reset()


@CPU
@pytest.mark.parametrize("strict", [True, False])
def test_export_keeps_our_op_with_a_dynamic_batch(strict):
    """torch.export (Dynamo, or non-strict tracing with symbolic sizes) never consults the
    plan either: the program holds our scan and serves every batch size."""
    P.set_plan(_plan([_point(B=8, H=32, ratio=0.1)]))
    ref, ours = _twins()
    ours.eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(ours, (torch.randn(5, 8, 16),), strict=strict,
                             dynamic_shapes={"input": {1: batch}})
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "rnnkernels.lstm_scan.default" in targets
    x = torch.randn(5, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(_flat(ep.module()(x)), _flat(ref(x)), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------- generator
@CPU
def test_generator_writes_a_valid_plan_and_merges(tmp_path, capsys):
    from bench import plan as G
    out = tmp_path / "cpu.json"
    out.write_text(G.dumps(_plan([_point(ratio=3.0)], "other-isa")))
    args = ["--quick", "--cells", "LSTM,RNN", "--batches", "2,5", "--hidden", "8", "--T", "3",
            "--reps", "1", "--out", str(out)]
    assert G.main(args) == 0
    doc = json.loads(out.read_text())
    P.validate(doc)
    key = P.table_key("cpu")
    assert set(doc["tables"]) == {"other-isa", key}
    points = doc["tables"][key]["points"]
    assert {(p["cell"], p["mode"], p["B"], p["H"], p["T"]) for p in points} == {
        (c, m, b, 8, 3) for c in ("LSTM", "RNN") for m in ("fwd", "fwdbwd") for b in (2, 5)}
    assert all(p["ratio"] > 0 and p["torch_ms"] > 0 and p["ours_ms"] > 0 for p in points)
    measured = doc["tables"][key]["measured"]
    assert measured["threads"] == torch.get_num_threads() and measured["quick"] is True
    # measuring again replaces this ISA's table, keeps the other
    assert G.main(args[:2] + ["GRU", *args[3:]]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["tables"]) == {"other-isa", key}
    assert {p["cell"] for p in doc["tables"][key]["points"]} == {"GRU"}
    assert doc["tables"]["other-isa"]["points"] == [_point(ratio=3.0)]
    # the file it writes is what the loader reads
    P.set_plan(out)
    assert P.table("cpu")["points"] == doc["tables"][key]["points"]
    assert "wrote table" in capsys.readouterr().out


# ------------------------------------------------------------------------------- diagnostics
def test_diagnostics_line_says_which_table_is_in_force(isa, tmp_path, monkeypatch):
    from rnnkernels import diagnostics
    file = tmp_path / "cpu.json"
    file.write_text(json.dumps(_plan([_point(), _point(B=1)], isa, threshold=0.95)))
    P.set_plan(file)
    line = diagnostics._plan_line(diagnostics.plan_info())
    assert line == (f"plan        cpu: {file}; table 'avx512' (2 points, measured synthetic): "
                    "torch's RNN where its ratio < 0.95")
    file.write_text(json.dumps(_plan([_point()], "avx2")))
    P.forget()
    assert "none for this machine (table key avx512; the file has avx2)" in \
        diagnostics._plan_line(diagnostics.plan_info())
    monkeypatch.setenv("RNNKERNELS_PLAN", "off")
    assert "RNNKERNELS_PLAN=off" in diagnostics._plan_line(diagnostics.plan_info())


# --------------------------------------------------------------------------------- bench.run
@CPU
def test_bench_runs_auto_next_to_cpu_and_tags_its_route():
    from bench import configs as C
    from bench import plan as G
    from bench import run as R
    cfg = C.REGISTRY["q-b64"]
    providers = R._providers_for(cfg, torch.device("cpu"), F32, None)
    assert providers[:3] == ["torch", "cpu", "auto"]
    assert R._providers_for(cfg, torch.device("cpu"), F32, ["torch", "cpu"]) == ["torch", "cpu"]
    P.set_plan(_plan([_point(B=64, H=256, ratio=0.5)]))
    assert G.auto_route(cfg, "LSTM", "fwd", F32) == "plan: torch"
    assert G.auto_route(cfg, "LSTM", "fwdbwd", F32) == "plan: ours"
