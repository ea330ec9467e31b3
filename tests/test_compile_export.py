"""rnnkernels modules under torch.compile and torch.export.

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

import pytest
import torch
from torch import nn

import rnnkernels
from tests.ecosystem_helpers import (CUDA, F32, H, I, Stack, assert_all_close, assert_grads_close,
                                     fastest_cpu_backend, flat, grads_of, model_twins, rel_rms)
from tests.layer_cases import randn


# ------------------------------------------------------------------------------ compile/export
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


@pytest.mark.parametrize("dynamo_first", [False, True], ids=["rnnkernels-first", "dynamo-first"])
def test_import_does_not_load_dynamo_and_compile_still_works(dynamo_first):
    """``import rnnkernels`` must not import torch._dynamo (over a second); what Dynamo needs
    from us (allow_rnn, the constant backend choice) is applied when Dynamo loads, in either
    import order, so fullgraph compilation still works. A fresh interpreter for each order."""
    import subprocess
    import sys
    code = (
        "import sys, torch\n"
        + ("import torch._dynamo\n" if dynamo_first else "")
        + "import rnnkernels\n"
        + ("" if dynamo_first else
           "assert 'torch._dynamo' not in sys.modules, 'import rnnkernels loaded Dynamo'\n")
        + "m = rnnkernels.LSTM(3, 4, backend='reference')\n"
        "x = torch.randn(5, 2, 3)\n"
        "out = torch.compile(m, backend='eager', fullgraph=True)(x)[0]\n"
        "assert torch.allclose(out, m(x)[0])\n"
        "import torch._dynamo\n"
        "assert torch._dynamo.config.allow_rnn\n"
        "assert rnnkernels.functional._resolve._dynamo_marked_constant\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
