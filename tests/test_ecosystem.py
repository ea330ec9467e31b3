"""rnnkernels modules inside the rest of PyTorch: compile, export, autocast, serialization,
dtype conversion, frozen parameters, grad modes, retained graphs, odd memory layouts, views and
``torch.func.functional_call``.

The oracle is always torch.nn: each test builds a torch.nn module (or model) and its rnnkernels
twin with identical weights (``load_state_dict`` of torch's state dict, which is itself part of
the drop-in promise) and compares outputs, final states and gradients at fp32 1e-5 / fp64 1e-10
relative (``tests.helpers.assert_close``), or by relative RMS for half precision.

torch.compile with the default (inductor) backend is slow to start on this 2-core CPU (C++ code
generation, ~1-2 min on a cold cache), so it is used for ONE model that stacks an LSTM with a
projection, a bidirectional GRU and a relu RNN; the cell model is compiled with ``aot_eager``,
which still traces every op through Dynamo, the fake impls and AOT autograd.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import rnnkernels
from tests.helpers import assert_close, backend_params, cpu_backends, randn

F32, F64 = torch.float32, torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The module types of the drop-in promise: name → (class name, ctor kwargs). Sizes are odd and
# proj_size differs from hidden_size so a mixed-up dimension changes a shape.
I, H, P = 5, 7, 3
LAYERS = {
    "LSTM": ("LSTM", dict(input_size=I, hidden_size=H, num_layers=2)),
    "LSTM_proj": ("LSTM", dict(input_size=I, hidden_size=H, proj_size=P, bidirectional=True)),
    "GRU": ("GRU", dict(input_size=I, hidden_size=H, num_layers=2, bidirectional=True)),
    "RNN_tanh": ("RNN", dict(input_size=I, hidden_size=H, nonlinearity="tanh")),
    "RNN_relu": ("RNN", dict(input_size=I, hidden_size=H, num_layers=2, nonlinearity="relu")),
}
CELLS = {
    "LSTMCell": ("LSTMCell", dict(input_size=I, hidden_size=H)),
    "GRUCell": ("GRUCell", dict(input_size=I, hidden_size=H)),
    "RNNCell_tanh": ("RNNCell", dict(input_size=I, hidden_size=H, nonlinearity="tanh")),
    "RNNCell_relu": ("RNNCell", dict(input_size=I, hidden_size=H, nonlinearity="relu")),
}
ALL = {**LAYERS, **CELLS}


def fastest_cpu_backend() -> str:
    """The backend a user gets on the CPU: the compiled extension if built, else the reference."""
    names = [n for n in cpu_backends(F32) if n != "triton"]
    return "cpu" if "cpu" in names else names[-1]


def twins(name: str, backend: str, dtype=F32, seed: int = 0, **extra):
    """(torch.nn module, rnnkernels module) with identical weights via load_state_dict."""
    cls, kw = ALL[name]
    kw = {**kw, **extra}
    torch.manual_seed(seed)
    ref = getattr(nn, cls)(**kw).to(dtype)
    ours = getattr(rnnkernels, cls)(**kw, backend=backend).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def is_cell(name: str) -> bool:
    return "Cell" in name


def is_lstm(name: str) -> bool:
    return name.startswith("LSTM")


def input_for(name: str, dtype=F32, T: int = 6, B: int = 3, seed: int = 1) -> torch.Tensor:
    return randn((B, I) if is_cell(name) else (T, B, I), dtype, seed)


def flat(result) -> list[torch.Tensor]:
    """Every tensor a module returned, in order: out, h_n[, c_n] (cells: h[, c])."""
    if isinstance(result, torch.Tensor):
        return [result]
    tensors = []
    for r in result:
        tensors += flat(r)
    return tensors


def weighted_sum(tensors, seed: int = 100) -> torch.Tensor:
    """A loss touching every output with fixed random weights, so no gradient can cancel."""
    return sum((t * randn(t.shape, t.dtype, seed + k).to(t.device)).sum()
               for k, t in enumerate(tensors))


def grads_of(module: nn.Module, outs, extra=()) -> dict:
    named = dict(module.named_parameters())
    named.update({f"input{k}": t for k, t in enumerate(extra)})
    got = torch.autograd.grad(weighted_sum(outs), list(named.values()), allow_unused=True)
    return dict(zip(named, got))


def assert_all_close(actual: list, expected: list, what: str) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} tensors vs {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, f"{what}[{k}]")


def assert_grads_close(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for name, e in expected.items():
        a = actual[name]
        if e is None:
            assert a is None, f"{what}: grad of {name} should be None"
        else:
            assert a is not None, f"{what}: grad of {name} is None"
            assert_close(a, e, f"{what}: grad of {name}")


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-12))


def module_params():
    """(module name, CPU backend) pairs over every layer and cell type."""
    return [pytest.param(n, b, id=f"{n}-{b}") for n in ALL for b in
            (p.values[0] for p in backend_params(F32))]


# ------------------------------------------------------------------------------ compile/export
class Stack(nn.Module):
    """LSTM with projection → bidirectional GRU → relu RNN → Linear, batch_first."""

    def __init__(self, lib, **kw):
        super().__init__()
        self.lstm = lib.LSTM(I, H, proj_size=P, batch_first=True, **kw)
        self.gru = lib.GRU(P, H, bidirectional=True, batch_first=True, **kw)
        self.rnn = lib.RNN(2 * H, H, nonlinearity="relu", batch_first=True, **kw)
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        y, hg = self.gru(y)
        y, hr = self.rnn(y)
        return self.head(y), h, c, hg, hr


class CellLoop(nn.Module):
    """An unrolled loop over three cells (the pattern of seq2seq decoders)."""

    def __init__(self, lib, **kw):
        super().__init__()
        self.lstm = lib.LSTMCell(I, H, **kw)
        self.gru = lib.GRUCell(H, H, **kw)
        self.rnn = lib.RNNCell(H, H, nonlinearity="relu", **kw)

    def forward(self, x):                     # x [T, B, I]
        h = c = g = r = None
        outs = []
        for t in range(x.shape[0]):
            h, c = self.lstm(x[t]) if h is None else self.lstm(x[t], (h, c))
            g = self.gru(h, g)
            r = self.rnn(g, r)
            outs.append(r)
        return torch.stack(outs), h, c, g


def model_twins(cls, backend: str, dtype=F32, seed: int = 0):
    torch.manual_seed(seed)
    ref = cls(nn).to(dtype)
    ours = cls(rnnkernels, backend=backend).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _compile_check(cls, x, compile_backend: str) -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    ref, ours = model_twins(cls, fastest_cpu_backend())
    compiled = torch.compile(ours, fullgraph=True, backend=compile_backend)

    expected = flat(ref(x))
    eager = flat(ours(x))
    got = flat(compiled(x))
    assert_all_close(eager, expected, "eager vs torch.nn")
    assert_all_close(got, expected, "compiled vs torch.nn")

    # The compiled wrapper shares ``ours``'s parameters (named with an ``_orig_mod.`` prefix).
    g_ref, g_eager = (grads_of(m, flat(m(x))) for m in (ref, ours))
    g_comp = grads_of(ours, flat(compiled(x)))
    assert_grads_close(g_eager, g_ref, "eager grads vs torch.nn")
    assert_grads_close(g_comp, g_ref, "compiled grads vs torch.nn")
    # fullgraph=True already fails on a graph break; also no recompilation between calls.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, \
        dict(torch._dynamo.utils.counters["stats"])
    torch._dynamo.reset()


def test_compile_fullgraph_stack_inductor():
    """LSTM(proj) + GRU(bidir) + RNN(relu): one graph, same outputs and grads as eager/torch.nn."""
    _compile_check(Stack, randn((3, 6, I), F32, 1), "inductor")


def test_compile_fullgraph_cells_aot_eager():
    _compile_check(CellLoop, randn((4, 3, I), F32, 2), "aot_eager")


@CUDA
@pytest.mark.cuda
def test_compile_fullgraph_stack_cuda():
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = Stack(nn).cuda()
    ours = Stack(rnnkernels).cuda()
    ours.load_state_dict(ref.state_dict())
    x = randn((3, 6, I), F32, 1).cuda()
    compiled = torch.compile(ours, fullgraph=True)
    for a, e in zip(flat(compiled(x)), flat(ref(x))):
        assert rel_rms(a, e) < 1e-5
    g_c, g_r = grads_of(ours, flat(compiled(x))), grads_of(ref, flat(ref(x)))
    for name in g_r:
        assert rel_rms(g_c[name], g_r[name]) < 1e-5, name
    torch._dynamo.reset()


def _rnnkernels_ops_in(graph_module) -> set[str]:
    names = set()
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and "rnnkernels" in str(node.target):
            names.add(str(node.target))
    return names


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic_batch"])
def test_export_inference_model(dynamic_batch):
    """torch.export of an eval-mode model: the program holds the custom ops (not a Python
    fallback) and reproduces eager outputs, also at a batch size other than the traced one."""
    ref, ours = model_twins(Stack, fastest_cpu_backend())
    ref.eval()
    ours.eval()
    x = randn((3, 6, I), F32, 1)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=2, max=64)}} if dynamic_batch \
        else None
    with torch.no_grad():
        ep = torch.export.export(ours, (x,), dynamic_shapes=dynamic_shapes)
    ops = _rnnkernels_ops_in(ep.graph_module)
    assert any("lstm_scan" in o for o in ops) and any("gru_scan" in o for o in ops) \
        and any("rnn_scan" in o for o in ops), ops
    exported = ep.module()
    with torch.no_grad():
        assert_all_close(flat(exported(x)), flat(ref(x)), "exported vs torch.nn")
        if dynamic_batch:
            x5 = randn((5, 6, I), F32, 3)
            assert_all_close(flat(exported(x5)), flat(ref(x5)), "exported (B=5) vs torch.nn")


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


# ----------------------------------------------------------------------- copy and serialization
def _outputs(m, x):
    with torch.no_grad():
        return flat(m(x))


@pytest.mark.parametrize("name", list(ALL))
def test_deepcopy(name):
    ref, ours = twins(name, "reference")
    x = input_for(name)
    clone = copy.deepcopy(ours)
    assert type(clone) is type(ours) and clone.backend == "reference"
    assert_all_close(_outputs(clone, x), _outputs(ref, x), "deepcopy vs torch.nn")
    # An independent copy: changing it leaves the original alone.
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    assert_all_close(_outputs(ours, x), _outputs(ref, x), "original after editing the copy")
    assert not torch.allclose(_outputs(clone, x)[0], _outputs(ref, x)[0])


@pytest.mark.parametrize("name", ["LSTM_proj", "GRU", "RNN_relu", "LSTMCell"])
def test_save_load_module_and_state_dict(name):
    ref, ours = twins(name, "reference")
    x = input_for(name)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is type(ours) and loaded.backend == "reference"
    assert_all_close(_outputs(loaded, x), _outputs(ref, x), "torch.load(module) vs torch.nn")

    # A state_dict loads with weights_only=True, into rnnkernels and into torch.nn alike.
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert sd.keys() == ref.state_dict().keys()
    fresh_ours = type(ours)(**ALL[name][1], backend="reference")
    fresh_ours.load_state_dict(sd)
    fresh_ref = type(ref)(**ALL[name][1])
    fresh_ref.load_state_dict(sd)
    assert_all_close(_outputs(fresh_ours, x), _outputs(ref, x), "state_dict → rnnkernels")
    assert_all_close(_outputs(fresh_ref, x), _outputs(ref, x), "state_dict → torch.nn")


def test_save_load_whole_model():
    ref, ours = model_twins(Stack, "reference")
    x = randn((3, 6, I), F32, 1)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert isinstance(loaded.lstm, rnnkernels.LSTM) and loaded.gru.backend == "reference"
    assert_all_close(_outputs(loaded, x), _outputs(ref, x), "loaded model vs torch.nn")
    g = grads_of(loaded, flat(loaded(x)))
    assert_grads_close(g, grads_of(ref, flat(ref(x))), "loaded model grads")


# ---------------------------------------------------------------------------- dtype conversion
@pytest.mark.parametrize("name,how", [pytest.param(n, "double", id=f"{n}-double") for n in ALL]
                         + [pytest.param("LSTM_proj", "to_float64", id="LSTM_proj-to_float64")])
def test_to_double(name, how):
    ref, ours = twins(name, "reference")
    ref, ours = (m.double() if how == "double" else m.to(F64) for m in (ref, ours))
    assert all(p.dtype == F64 for p in ours.parameters())
    x = input_for(name, F64).requires_grad_()
    o_out, r_out = flat(ours(x)), flat(ref(x))
    assert_all_close(o_out, r_out, f".{how}() outputs")
    assert_grads_close(grads_of(ours, o_out, [x]), grads_of(ref, r_out, [x]), f".{how}() grads")


@pytest.mark.parametrize("name", list(ALL))
def test_half_then_float(name):
    """.half() rounds the weights (and a forward runs in fp16, like torch.nn's on the CPU);
    .float() brings the module back to fp32 with those rounded weights, equal to torch.nn's.
    (The backend users get: the compiled one when built.)"""
    ref, ours = twins(name, fastest_cpu_backend())
    ref.half()
    ours.half()
    assert all(p.dtype == torch.float16 for p in ours.parameters())
    xh = input_for(name, torch.float16)
    with torch.no_grad():
        for a, e in zip(flat(ours(xh)), flat(ref(xh))):
            assert a.dtype == e.dtype == torch.float16
            assert rel_rms(a, e) < 1e-2
    ref.float()
    ours.float()
    x = input_for(name).requires_grad_()
    o_out, r_out = flat(ours(x)), flat(ref(x))
    assert all(t.dtype == F32 for t in o_out)
    assert_all_close(o_out, r_out, "after .half().float()")
    assert_grads_close(grads_of(ours, o_out, [x]), grads_of(ref, r_out, [x]),
                       "grads after .half().float()")


# ------------------------------------------------------------------- autograd modes and graphs
@pytest.mark.parametrize("name,backend", module_params())
def test_frozen_parameters(name, backend):
    """requires_grad_(False) on some parameters: their .grad stays None, the rest are right.
    Frozen: every input weight and hidden bias (GRU: b_hn needs no grad) and the first layer's
    recurrent weight (the op skips dW_hh there but not in the layers above)."""
    ref, ours = twins(name, backend)
    frozen = [n for n, _ in ours.named_parameters() if n.startswith("weight_ih") or
              n.startswith("bias_hh") or n in ("weight_hh_l0", "weight_hh")]
    assert frozen
    for m in (ref, ours):
        for n, p in m.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
    x = input_for(name).requires_grad_()
    for m in (ref, ours):
        weighted_sum(flat(m(x))).backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        if n in frozen:
            assert p.grad is None, f"frozen {n} got a gradient"
        else:
            assert p.grad is not None, f"{n} got no gradient"
            assert_close(p.grad, q.grad, f"grad of {n}")


@pytest.mark.parametrize("name,backend", module_params())
def test_no_grad_and_inference_mode(name, backend):
    ref, ours = twins(name, backend)
    x = input_for(name)
    with_grad = flat(ours(x))
    assert all(t.requires_grad for t in with_grad)
    expected = flat(ref(x))
    with torch.no_grad():
        got = flat(ours(x))
    assert all(not t.requires_grad and t.grad_fn is None for t in got)
    assert_all_close(got, expected, "no_grad")
    with torch.inference_mode():
        got = flat(ours(x))
    assert all(t.is_inference() and not t.requires_grad for t in got)
    assert_all_close(got, expected, "inference_mode")
    assert_all_close(with_grad, expected, "grad mode")


@pytest.mark.parametrize("name,backend", module_params())
def test_retain_graph_backward_twice(name, backend):
    _, ours = twins(name, backend)
    x = input_for(name).requires_grad_()
    loss = weighted_sum(flat(ours(x)))
    loss.backward(retain_graph=True)
    once = {n: p.grad.clone() for n, p in ours.named_parameters()}
    once["input"] = x.grad.clone()
    loss.backward()
    twice = {n: p.grad for n, p in ours.named_parameters()}
    twice["input"] = x.grad
    for n in once:
        assert_close(twice[n], 2 * once[n], f"2x grad of {n}")


# -------------------------------------------------------------------- layouts, views, func API
def _noncontiguous(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``t`` in a non-contiguous layout (a transposed or strided view)."""
    if kind == "transposed":            # stored with the last two dims swapped
        v = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    else:                               # every other element of a wider buffer
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        v = wide[..., ::2]
    assert not v.is_contiguous() and torch.equal(v, t)
    return v


@pytest.mark.parametrize("kind", ["transposed", "strided"])
@pytest.mark.parametrize("name,backend", module_params())
def test_noncontiguous_inputs_and_states(name, backend, kind):
    """x, h0 and c0 as non-contiguous views (and x batch_first as a transposed time-major
    buffer): same outputs and grads as torch.nn with contiguous inputs, grads land on the
    views' bases."""
    ref, ours = twins(name, backend)
    x = input_for(name)
    B = x.shape[-2]
    if is_cell(name):
        lead, hsize = (), H
    else:
        lead = (ref.num_layers * (2 if ref.bidirectional else 1),)
        hsize = ref.proj_size or H
    h0 = randn((*lead, B, hsize), F32, 5)
    c0 = randn((*lead, B, H), F32, 6)
    leaves = [x.clone().requires_grad_(), h0.clone().requires_grad_(),
              c0.clone().requires_grad_()]
    nc_leaves = [t.clone().requires_grad_() for t in leaves]
    views = [_noncontiguous(t, kind) for t in nc_leaves]

    def call(m, xs):
        hx = (xs[1], xs[2]) if is_lstm(name) else xs[1]
        return flat(m(xs[0], hx))

    expected = call(ref, leaves)
    got = call(ours, views)
    assert_all_close(got, expected, f"{kind} inputs")
    uses = leaves if is_lstm(name) else leaves[:2]
    g_ref = torch.autograd.grad(weighted_sum(expected), uses)
    g_ours = torch.autograd.grad(weighted_sum(got), nc_leaves[:len(uses)])
    for k, (a, e) in enumerate(zip(g_ours, g_ref)):
        assert_close(a, e, f"grad of input {k}")


@pytest.mark.parametrize("name,backend", [p for p in module_params() if not is_cell(p.values[0])])
def test_batch_first_on_time_major_buffer(name, backend):
    """A batch_first module fed x.transpose(0, 1) of a time-major tensor (non-contiguous)."""
    ref, ours = twins(name, backend, batch_first=True)
    x_tm = input_for(name)
    xa = x_tm.clone().requires_grad_()
    xb = x_tm.clone().requires_grad_()
    got = flat(ours(xa.transpose(0, 1)))
    expected = flat(ref(xb.transpose(0, 1).contiguous()))
    assert_all_close(got, expected, "batch_first on a transposed view")
    ga = torch.autograd.grad(weighted_sum(got), xa)[0]
    gb = torch.autograd.grad(weighted_sum(expected), xb)[0]
    assert_close(ga, gb, "grad of the time-major buffer")


@pytest.mark.parametrize("name,backend", module_params())
def test_inputs_are_views_with_offset(name, backend):
    """x and h0 as slices of larger tensors (non-zero storage offset): results equal torch.nn's
    and gradients reach exactly the sliced region of the bases."""
    ref, ours = twins(name, backend)
    x = input_for(name)
    base_r = torch.cat([randn((2, *x.shape[1:]), F32, 7), x]).requires_grad_()
    base_o = base_r.detach().clone().requires_grad_()
    vr, vo = base_r[2:], base_o[2:]
    assert vo.storage_offset() > 0
    expected, got = flat(ref(vr)), flat(ours(vo))
    assert_all_close(got, expected, "view input")
    gr = torch.autograd.grad(weighted_sum(expected), base_r)[0]
    go = torch.autograd.grad(weighted_sum(got), base_o)[0]
    assert_close(go, gr, "grad of the base")
    assert not go[:2].any(), "gradient leaked outside the view"


@pytest.mark.parametrize("name,backend", module_params())
def test_functional_call_replacement_parameters(name, backend):
    """torch.func.functional_call with replacement tensors: the outputs use them, their grads
    equal torch.nn's, and the module's own parameters get nothing."""
    ref, ours = twins(name, backend)
    x = input_for(name)
    new = {n: (p.detach() * 0.5 + 0.01).requires_grad_() for n, p in ref.named_parameters()}
    new_ref = {n: t.detach().clone().requires_grad_() for n, t in new.items()}
    got = flat(torch.func.functional_call(ours, new, (x,)))
    expected = flat(torch.func.functional_call(ref, new_ref, (x,)))
    assert_all_close(got, expected, "functional_call outputs")
    plain = flat(ours(x))
    assert not torch.allclose(plain[0], got[0]), "replacement parameters were not used"
    g = torch.autograd.grad(weighted_sum(got), list(new.values()))
    gr = torch.autograd.grad(weighted_sum(expected), list(new_ref.values()))
    for n, a, e in zip(new, g, gr):
        assert_close(a, e, f"grad of replacement {n}")
    assert all(p.grad is None for p in ours.parameters())
    # The module is unchanged after the call.
    assert_all_close(flat(ours(x)), plain, "after functional_call")
